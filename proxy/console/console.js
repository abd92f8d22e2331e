// imagegate console: a single-page app over the proxy's own API. Every string from the API is untrusted
// (prompts, errors): it is rendered with textContent and createElement only, never parsed as HTML.
// The admin key lives in sessionStorage (this tab only) and travels in the Authorization header, never
// in a URL or a cookie; hash routes carry page names only.

const KEY_SLOT = "imagegate.adminKey";
const PAGES = ["playground", "gallery", "usage", "channels", "tasks"];
const main = document.getElementById("main");
let openProxy = false; // the proxy answered /admin/usage without a key (it has none): no sign-in needed
let timer = null; // the tasks page's auto-refresh

// -- DOM building -------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let uid = 0;
function field(labelText, control, hint) {
  control.id = control.id || `f${++uid}`;
  const parts = [el("label", { for: control.id, text: labelText }), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(el("p", { class: "hint", id: hintId, text: hint }));
  }
  return el("div", {}, parts);
}

function select(name, options, chosen) {
  return el("select", { name }, options.map(([value, text]) => el("option", { value, selected: value === chosen, text })));
}

function radios(legend, name, options, chosen, onchange) {
  return el("fieldset", {}, el("legend", { text: legend }), options.map(([value, text]) =>
    el("label", {}, el("input", { type: "radio", name, value, checked: value === chosen, onchange }), text)));
}

function dl(pairs) {
  return el("dl", { class: "meta" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: typeof v === "object" ? JSON.stringify(v) : v })]));
}

function errorBox() { return el("p", { class: "error", role: "alert", "aria-live": "assertive" }); }
function fmtUsd(v) { return v === null || v === undefined ? "—" : `$${Number(v).toFixed(6).replace(/0{1,4}$/, "")}`; }
function fmtMs(v) { return v === null || v === undefined ? "—" : `${Math.round(v)} ms`; }
function fmtTime(seconds) { return new Date(seconds * 1000).toLocaleString(); }

class ApiError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_SLOT);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
  const message = body?.error?.message || `${response.status} ${response.statusText || "error"}`;
  return new ApiError(response.status, message, body);
}

// Every call goes through here: a refused key sends the operator back to the sign-in with the reason.
async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!response.ok) {
    const error = await errorOf(response);
    if ((response.status === 401 || response.status === 403) && !options.quietAuth) showSignIn(error.message);
    throw error;
  }
  return response;
}

async function getJson(path) { return (await call(path)).json(); }

// -- sign-in and routing --------------------------------------------------------------------------

function showSignIn(message) {
  sessionStorage.removeItem(KEY_SLOT);
  stopTimer();
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  main.replaceChildren();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("admin-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("admin-key");
  const errorLine = document.getElementById("sign-in-error");
  errorLine.textContent = "";
  const response = await fetch("/admin/usage", { headers: { Authorization: `Bearer ${input.value}` } });
  // Only a refusal is a wrong key: a proxy without a ledger (503) still takes it, and its pages say why.
  if (response.status === 401 || response.status === 403) {
    errorLine.textContent = (await errorOf(response)).message;
    return;
  }
  sessionStorage.setItem(KEY_SLOT, input.value);
  input.value = "";
  enter();
}

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  showSignIn("Signed out.");
}

function enter() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = openProxy;
  route();
}

function stopTimer() { if (timer) { clearTimeout(timer); timer = null; } }

function route() {
  if (!openProxy && !sessionStorage.getItem(KEY_SLOT)) { showSignIn(""); return; }
  stopTimer();
  const name = location.hash.replace(/^#\//, "");
  const page = PAGES.includes(name) ? name : "playground";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  const render = { playground, gallery, usage, channels, tasks }[page];
  render().catch((error) => {
    if (error.status === 401 || error.status === 403) return; // the sign-in is shown with the reason
    main.append(el("p", { class: "error", role: "alert", text: `Could not load: ${error.message}` }));
  });
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  try {
    // A proxy with no keys answers its admin routes to loopback clients without one (a 503 without a ledger).
    const status = sessionStorage.getItem(KEY_SLOT) ? 401 : (await fetch("/admin/usage")).status;
    openProxy = status === 200 || status === 503;
  } catch { openProxy = false; }
  if (openProxy || sessionStorage.getItem(KEY_SLOT)) enter(); else showSignIn("");
}

// -- playground -----------------------------------------------------------------------------------

async function playground() {
  const { data } = await getJson("/v1/images/models");
  const cards = data.filter((card) => !card.pattern);
  const form = el("form", { "aria-label": "Image request" });
  const results = el("section", { "aria-live": "polite", "aria-label": "Results" });
  const modelSelect = select("model", cards.map((c) => [c.id, c.available ? c.id : `${c.id} (no channel available)`]));
  const options = el("div");
  form.append(field("Model", modelSelect), options);
  const rebuild = () => buildOptions(cards.find((c) => c.id === modelSelect.value), options, results);
  modelSelect.addEventListener("change", rebuild);
  main.append(el("h1", { text: "Playground" }), el("div", { class: "grid2" }, el("div", { class: "panel" }, form), results));
  if (cards.length) rebuild(); else options.append(el("p", { text: "The rules serve no image models." }));
}

function buildOptions(card, box, results) {
  const ops = card.operations || {};
  const state = { card, mask: null };
  const operation = radios("Operation", "operation", [["generate", "Generate"], ops.edit && ["edit", "Edit"],
    ops.variation && ["variation", "Variation"]].filter(Boolean), "generate", () => sync());
  const mode = radios("Mode", "mode", [["sync", "Sync"], ops.stream && ["stream", "Stream"], ops.async && ["async", "Async"]]
    .filter(Boolean), "sync", () => sync());
  const prompt = field("Prompt", el("textarea", { name: "prompt", required: true }));
  const fields = el("div", { class: "fields" });
  const size = card.sizes
    ? field("Size", select("size", [["", "default"], ...card.sizes.map((s) => [s, s])]))
    : field("Size", el("input", { type: "text", name: "size", placeholder: "WxH, e.g. 1024x1024" }),
      card.size_rules?.description || "Any WxH; empty for the model's default.");
  fields.append(size);
  for (const [name, values] of Object.entries(card.values || {})) {
    fields.append(field(name.replace("_", " "), select(name, [["", "default"], ...values.map((v) => [v, v])])));
  }
  fields.append(field("n", el("input", { type: "number", name: "n", min: 1, max: card.max_n || 10, value: 1 })));
  const partial = field("Partial images", select("partial_images", [["0", "0"], ["1", "1"], ["2", "2"], ["3", "3"]], "2"));
  const uploads = uploadFields(state);
  const submit = el("button", { type: "submit", text: "Send" });
  box.replaceChildren(operation, mode, prompt, fields, partial, uploads, submit);
  const chosen = (name) => box.querySelector(`input[name=${name}]:checked`)?.value;
  function sync() {
    const op = chosen("operation");
    prompt.hidden = op === "variation";
    prompt.querySelector("textarea").required = op !== "variation";
    uploads.hidden = op === "generate";
    uploads.querySelector(".mask-part").hidden = op !== "edit";
    partial.hidden = chosen("mode") !== "stream";
  }
  sync();
  box.closest("form").onsubmit = (event) => {
    event.preventDefault();
    send(box, state, chosen("operation"), chosen("mode"), results, submit);
  };
}

function uploadFields(state) {
  const image = el("input", { type: "file", name: "image", accept: "image/png,image/jpeg,image/webp" });
  const maskFile = el("input", { type: "file", name: "mask_file", accept: "image/png" });
  const brush = el("input", { type: "range", min: 4, max: 120, value: 40, name: "brush" });
  const wrap = el("div", { class: "mask-wrap" });
  const clear = el("button", { type: "button", class: "secondary", text: "Clear mask", onclick: () => state.mask?.clear() });
  image.addEventListener("change", async () => {
    state.mask = image.files[0] ? await maskPainter(image.files[0], wrap, brush) : null;
  });
  const maskPart = el("div", { class: "mask-part" },
    el("p", { class: "hint", text: "Paint over the areas to change: painted areas become transparent in the mask." }),
    field("Brush size", brush), wrap, clear, field("Or a mask file (PNG)", maskFile));
  return el("div", {}, field("Image", image), maskPart);
}

// The uploaded image on a canvas; strokes are drawn on it in red and cut out of an opaque mask of the
// image's own size, which is sent as the PNG mask (transparent where the image should change).
async function maskPainter(file, wrap, brush) {
  const bitmap = await createImageBitmap(file);
  const view = el("canvas", { width: bitmap.width, height: bitmap.height, "aria-label": "Mask painter: drag to paint",
    role: "img", "data-testid": "mask-canvas" });
  const mask = document.createElement("canvas");
  mask.width = bitmap.width; mask.height = bitmap.height;
  const vc = view.getContext("2d"); const mc = mask.getContext("2d");
  const reset = () => { vc.drawImage(bitmap, 0, 0); mc.globalCompositeOperation = "source-over"; mc.fillStyle = "#000";
    mc.fillRect(0, 0, mask.width, mask.height); painter.painted = false; };
  const painter = { painted: false, clear: reset, blob: () => new Promise((ok) => mask.toBlob(ok, "image/png")) };
  let down = false;
  const paint = (event) => {
    const box = view.getBoundingClientRect();
    const x = (event.clientX - box.left) * (view.width / box.width);
    const y = (event.clientY - box.top) * (view.height / box.height);
    const radius = (Number(brush.value) / 2) * (view.width / box.width);
    vc.fillStyle = "rgba(220, 30, 30, 0.5)"; vc.beginPath(); vc.arc(x, y, radius, 0, Math.PI * 2); vc.fill();
    mc.globalCompositeOperation = "destination-out"; mc.beginPath(); mc.arc(x, y, radius, 0, Math.PI * 2); mc.fill();
    painter.painted = true;
  };
  view.addEventListener("pointerdown", (e) => { down = true; view.setPointerCapture?.(e.pointerId); paint(e); });
  view.addEventListener("pointermove", (e) => { if (down) paint(e); });
  view.addEventListener("pointerup", () => { down = false; });
  view.addEventListener("pointercancel", () => { down = false; });
  reset();
  wrap.replaceChildren(view);
  return painter;
}

function collect(box, operation, mode) {
  const fields = { model: box.closest("form").querySelector("select[name=model]").value };
  if (operation !== "variation") fields.prompt = box.querySelector("textarea[name=prompt]").value;
  for (const control of box.querySelectorAll(".fields select, .fields input")) {
    if (control.value === "") continue;
    fields[control.name] = control.name === "n" ? Number(control.value) : control.value;
  }
  if (fields.n === 1) delete fields.n;
  if (mode === "stream") {
    fields.stream = true;
    const partial = Number(box.querySelector("select[name=partial_images]").value);
    if (partial) fields.partial_images = partial;
  } else {
    fields.response_format = "url"; // hosted images also appear in the gallery
    if (mode === "async") fields.async = true;
  }
  return fields;
}

async function send(box, state, operation, mode, results, button) {
  const fields = collect(box, operation, mode);
  const path = { generate: "/v1/images/generations", edit: "/v1/images/edits", variation: "/v1/images/variations" }[operation];
  const files = [];
  if (operation !== "generate") {
    const image = box.querySelector("input[name=image]").files[0];
    if (!image) { results.replaceChildren(el("p", { class: "error", role: "alert", text: "Choose an image file first." })); return; }
    files.push(["image", image, image.name]);
    const maskFile = box.querySelector("input[name=mask_file]").files[0];
    if (operation === "edit" && maskFile) files.push(["mask", maskFile, maskFile.name]);
    else if (operation === "edit" && state.mask?.painted) files.push(["mask", await state.mask.blob(), "mask.png"]);
  }
  const images = el("div", { class: "images", "data-testid": "result-images" });
  const status = el("p", { role: "status", text: "Working…" });
  const error = errorBox();
  const meta = el("div");
  results.replaceChildren(el("h2", { text: "Result" }), status, error, images, meta, snippets(path, fields, files));
  button.disabled = true;
  const began = performance.now();
  try {
    const body = files.length ? formBody(fields, files) : JSON.stringify(fields);
    const headers = files.length ? {} : { "Content-Type": "application/json" };
    const answer = mode === "stream"
      ? await streamed(path, body, headers, images)
      : await requested(path, body, headers, mode, status);
    if (mode !== "stream") showImages(images, answer.data || []);
    const ms = performance.now() - began;
    const md = answer.metadata || {};
    meta.replaceChildren(dl([["model", md.model || fields.model], ["channel", md.channel], ["cost", md.cost_usd !== undefined ? fmtUsd(md.cost_usd) : mode === "stream" ? "see Usage (streams do not report it)" : "not priced"],
      ["time", `${(ms / 1000).toFixed(2)} s (in the browser)`], ["revised prompt", answer.data?.[0]?.revised_prompt]]));
    status.textContent = `Done: ${images.querySelectorAll("img:not(.partial)").length} image(s).`;
  } catch (failure) {
    status.textContent = "Failed.";
    error.textContent = failure.message;
  } finally {
    button.disabled = false;
  }
}

function formBody(fields, files) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  for (const [name, blob, filename] of files) form.append(name, blob, filename);
  return form;
}

async function requested(path, body, headers, mode, status) {
  const answer = await (await call(path, { method: "POST", body, headers })).json();
  if (mode !== "async") return answer;
  const id = answer.task_id;
  for (let polls = 1; ; polls++) {
    status.textContent = `Task ${id}: ${answer.task_status || "pending"} (poll ${polls})`;
    await new Promise((ok) => setTimeout(ok, Math.min(500 * polls, 3000)));
    const response = await fetch(`/v1/images/generations/${encodeURIComponent(id)}`, { headers: authHeaders() });
    const record = await response.json();
    if (record.task_status === "succeed") return record;
    if (record.task_status === "failed" || (!response.ok && response.status !== 202)) {
      throw new ApiError(response.status, record.error?.message || "The task failed.", record);
    }
    answer.task_status = record.task_status;
  }
}

// A stream read with fetch: SSE lines are parsed as they arrive, each partial image shown at once.
async function streamed(path, body, headers, images) {
  const response = await call(path, { method: "POST", body, headers });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = ""; let data = []; let last = {};
  const handle = (payload) => {
    const type = String(payload.type || "");
    if (type.endsWith(".partial_image")) images.append(imageOf(payload, "partial", `Partial image ${payload.partial_image_index}`));
    else if (type.endsWith(".completed")) {
      images.querySelectorAll("img.partial").forEach((node) => node.remove());
      images.append(imageOf(payload, "final", "Generated image"));
      last = payload;
    } else if (type === "error") throw new ApiError(0, payload.error?.message || "The stream failed.", payload);
  };
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      data = block.split(/\r?\n/).filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim());
      if (data.length && data.join("") !== "[DONE]") handle(JSON.parse(data.join("\n")));
    }
    if (done) break;
  }
  return { data: [], metadata: last.metadata || {} };
}

function imageOf(item, kind, alt) {
  const src = item.b64_json ? `data:image/${item.output_format || "png"};base64,${item.b64_json}` : item.url;
  return el("img", { src, alt, class: kind });
}

function showImages(box, data) {
  data.forEach((item, index) => box.append(imageOf(item, "final", `Generated image ${index + 1}`)));
}

function quote(text) { return `'${text.replace(/'/g, "'\\''")}'`; }

// What was sent, as curl and as the OpenAI SDK would send it; the key is always $IMAGEGATE_KEY.
function snippets(path, fields, files) {
  const base = location.origin;
  let curl = `curl ${base}${path} \\\n  -H "Authorization: Bearer $IMAGEGATE_KEY"`;
  if (files.length) {
    for (const [name, value] of Object.entries(fields)) curl += ` \\\n  -F ${quote(`${name}=${value}`)}`;
    for (const [name, , filename] of files) curl += ` \\\n  -F ${quote(`${name}=@${filename}`)}`;
  } else {
    curl += ` \\\n  -H "Content-Type: application/json" \\\n  -d ${quote(JSON.stringify(fields))}`;
  }
  if (fields.stream) curl = curl.replace("curl ", "curl -N ");
  const method = { "/v1/images/generations": "generate", "/v1/images/edits": "edit", "/v1/images/variations": "create_variation" }[path];
  const known = new Set(["model", "prompt", "n", "size", "quality", "style", "background", "output_format", "response_format",
    "stream", "partial_images"]);
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries(fields)) {
    if (known.has(name) && !(method === "create_variation" && name === "prompt")) args.push(`    ${name}=${pyValue(value)},`);
    else extra[name] = value;
  }
  for (const [name, , filename] of files) args.push(`    ${name}=open(${JSON.stringify(filename)}, "rb"),`);
  if (Object.keys(extra).length) args.push(`    extra_body=${pyValue(extra)},`);
  const python = `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key=os.environ["IMAGEGATE_KEY"])\n`
    + `result = client.images.${method}(\n${args.join("\n")}\n)\n`;
  return el("details", {}, el("summary", { text: "Equivalent curl and Python" }),
    el("h3", { text: "curl" }), el("pre", { "data-testid": "curl", text: curl }),
    el("h3", { text: "Python (OpenAI SDK)" }), el("pre", { "data-testid": "python", text: python }));
}

function pyValue(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyValue(v)}`).join(", ")}}`;
  return JSON.stringify(value);
}

// -- gallery --------------------------------------------------------------------------------------

async function gallery() {
  const filters = el("form", { class: "filters panel", "aria-label": "Filters" },
    field("Key name", el("input", { type: "text", name: "key" })),
    field("Model", el("input", { type: "text", name: "model" })),
    field("Status", select("status", [["", "any"], ["ok", "ok"], ["error", "error"]])),
    field("From", el("input", { type: "date", name: "start" })),
    field("To", el("input", { type: "date", name: "end" })),
    el("button", { type: "submit", text: "Apply" }));
  const grid = el("div", { class: "cards", "aria-live": "polite", "data-testid": "gallery" });
  const error = errorBox();
  const more = el("button", { type: "button", class: "secondary", text: "More", hidden: true });
  const dialog = el("dialog", { "aria-labelledby": "detail-title" });
  main.append(el("h1", { text: "Gallery" }), filters, error, grid, more, dialog);
  let before = null;
  const load = async (fresh) => {
    error.textContent = "";
    if (fresh) { before = null; grid.replaceChildren(); }
    try {
      const page = await getJson(`/admin/generations?${galleryQuery(filters, before)}`);
      const wanted = page.data.filter((row) => matches(row, filters));
      wanted.forEach((row) => grid.append(galleryCard(row, dialog)));
      if (!grid.children.length) grid.append(el("p", { text: "No generations in this range." }));
      before = page.next_before;
      more.hidden = !page.has_more;
    } catch (failure) { error.textContent = failure.message; }
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); load(true); });
  more.addEventListener("click", () => load(false));
  await load(true);
}

function daySeconds(value, endOfDay) {
  if (!value) return null;
  const seconds = Date.parse(`${value}T00:00:00Z`) / 1000;
  return endOfDay ? seconds + 86400 : seconds;
}

function galleryQuery(filters, before) {
  const query = new URLSearchParams({ limit: "48" });
  const form = new FormData(filters);
  for (const name of ["key", "model", "status"]) if (form.get(name)) query.set(name, form.get(name));
  const start = daySeconds(form.get("start"), false); const end = daySeconds(form.get("end"), true);
  if (start !== null) query.set("start_time", String(start));
  if (end !== null) query.set("end_time", String(end));
  if (before !== null) query.set("before", String(before));
  return query;
}

// The same filters applied here too: a proxy whose API filters only by key still shows what was asked.
function matches(row, filters) {
  const form = new FormData(filters);
  if (form.get("model") && row.model !== form.get("model")) return false;
  if (form.get("status") === "ok" && row.status >= 400) return false;
  return !(form.get("status") === "error" && row.status < 400);
}

function hostedImages(row) {
  const alive = row.images_expire_at && Date.parse(row.images_expire_at) > Date.now();
  return alive && row.image_ids ? row.image_ids.split(" ").filter(Boolean).map((name) => `/images/${encodeURIComponent(name)}`) : [];
}

function galleryCard(row, dialog) {
  const urls = hostedImages(row);
  const preview = urls.length
    ? el("div", { class: "images" }, urls.slice(0, 4).map((src, i) => el("img", { src, alt: `Image ${i + 1} of request ${row.id}`, loading: "lazy" })))
    : el("div", { class: "placeholder", text: row.status >= 400 ? "No image: the request failed."
      : !row.images ? "No images." : row.image_ids ? "The hosted images have expired."
        : "Delivered as base64: the images were not kept." });
  return el("button", { type: "button", class: "card", "data-testid": "gallery-card", onclick: () => detail(row, urls, dialog) },
    preview, el("strong", { text: row.model || "(no model)" }),
    el("div", { class: row.status >= 400 ? "error" : "", text: `${row.status} · ${row.operation} · ${row.mode}` }),
    el("div", { class: "hint", text: new Date(row.at).toLocaleString() }));
}

function detail(row, urls, dialog) {
  const close = el("button", { type: "button", text: "Close", onclick: () => dialog.close() });
  dialog.replaceChildren(el("h2", { id: "detail-title", text: `Generation ${row.id}` }),
    el("div", { class: "images" }, urls.map((src, i) => el("img", { src, alt: `Image ${i + 1}` }))),
    dl([["at", row.at], ["key", row.key_name], ["model", row.model], ["upstream model", row.upstream_model], ["channel", row.channel],
      ["operation", row.operation], ["mode", row.mode], ["status", row.status], ["error", [row.error_type, row.error_code].filter(Boolean).join(" / ")],
      ["n", row.n], ["images", row.images], ["size", row.size], ["quality", row.quality], ["output format", row.output_format],
      ["prompt", row.prompt], ["cost", row.cost_micro_usd === null ? null : fmtUsd(row.cost_micro_usd / 1e6)],
      ["total time", fmtMs(row.total_ms)], ["upstream time", fmtMs(row.upstream_ms)], ["attempts", row.attempts],
      ["tokens", row.total_tokens], ["task", row.task_id], ["request id", row.request_id], ["images expire", row.images_expire_at]]),
    close);
  dialog.showModal();
  close.focus();
}

// -- usage ----------------------------------------------------------------------------------------

async function usage() {
  const range = select("days", [["1", "last 24 hours"], ["7", "last 7 days"], ["30", "last 30 days"], ["90", "last 90 days"],
    ["365", "last 365 days"]], "30");
  const csv = el("button", { type: "button", class: "secondary", text: "Download CSV" });
  const body = el("div", { "aria-live": "polite" });
  const error = errorBox();
  main.append(el("h1", { text: "Usage" }), el("div", { class: "filters panel" }, field("Range", range), csv), error, body);
  const span = () => { const end = Math.ceil(Date.now() / 1000); return { start_time: String(end - Number(range.value) * 86400), end_time: String(end) }; };
  const load = async () => {
    error.textContent = "";
    try { body.replaceChildren(...await usageViews(span())); } catch (failure) { error.textContent = failure.message; }
  };
  range.addEventListener("change", load);
  csv.addEventListener("click", async () => {
    try {
      const query = new URLSearchParams({ ...span(), group_by: "day,model,key,channel", format: "csv" });
      const blob = await (await call(`/admin/usage?${query}`)).blob();
      const link = el("a", { href: URL.createObjectURL(blob), download: "imagegate-usage.csv" });
      document.body.append(link); link.click(); link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    } catch (failure) { error.textContent = failure.message; }
  });
  await load();
}

async function usageViews(span) {
  const get = (group) => getJson(`/admin/usage?${new URLSearchParams({ ...span, ...(group ? { group_by: group } : {}) })}`);
  const [total, days, models, keys, chans] = await Promise.all([get(""), get("day"), get("model"), get("key"), get("channel")]);
  const sum = total.data[0] || { requests: 0, images: 0, cost_usd: 0, errors: 0, p50_ms: null, p95_ms: null };
  const totals = el("div", { class: "table-wrap" }, usageTable("Totals", [["", { ...sum, name: "all" }]], "name"),
    usageTable("Per model", models.data.map((r) => [r.model, r]), "model"));
  return [
    totals,
    el("h2", { text: "Images per day" }), dayChart(days.data, "images", (v) => `${v} images`, ""),
    el("h2", { text: "Cost per day" }), dayChart(days.data, "cost_usd", fmtUsd, "cost"),
    el("h2", { text: "Requests per model" }), hbars(models.data, "model"),
    el("h2", { text: "Requests per key" }), hbars(keys.data, "key"),
    el("h2", { text: "Requests per channel" }), hbars(chans.data, "channel"),
  ];
}

function usageTable(caption, rows, label) {
  return el("table", { "data-testid": `usage-table-${label}` }, el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, [label, "requests", "images", "cost", "errors", "p50", "p95"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.map(([, r]) => el("tr", {}, el("th", { scope: "row", text: r[label] ?? "(none)" }),
      [r.requests, r.images, fmtUsd(r.cost_usd), r.errors, fmtMs(r.p50_ms), fmtMs(r.p95_ms)].map((v) => el("td", { text: v }))))));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function dayChart(rows, measure, format, kind) {
  if (!rows.length) return el("p", { text: "No requests in this range." });
  const width = 720; const height = 200; const pad = 24;
  const top = Math.max(...rows.map((r) => Number(r[measure]) || 0), 1e-9);
  const step = (width - pad * 2) / rows.length;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height + 20}`, role: "img",
    "aria-label": `${measure} per day` }, svg("title", {}, `${measure} per day`));
  rows.forEach((row, i) => {
    const h = ((Number(row[measure]) || 0) / top) * (height - pad);
    const barWidth = Math.min(Math.max(step - 2, 1), 60); // one day alone is a bar, not a wall
    const bar = svg("rect", { class: `bar ${kind}`, x: pad + i * step + 1, y: height - h, width: barWidth, height: h });
    bar.append(svg("title", {}, `${row.day}: ${format(row[measure])} (${row.requests} requests)`));
    chart.append(bar);
    if (rows.length <= 14 || i % Math.ceil(rows.length / 10) === 0) {
      chart.append(svg("text", { x: pad + i * step + 2, y: height + 14 }, row.day.slice(5)));
    }
  });
  return chart;
}

function hbars(rows, label) {
  if (!rows.length) return el("p", { text: "No requests in this range." });
  const width = 720; const rowHeight = 24; const left = 180;
  const top = Math.max(...rows.map((r) => r.requests), 1);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${rows.length * rowHeight + 8}`, role: "img",
    "aria-label": `requests per ${label}` }, svg("title", {}, `requests per ${label}`));
  rows.forEach((row, i) => {
    const name = row[label] ?? "(none)";
    const w = (row.requests / top) * (width - left - 60);
    const bar = svg("rect", { class: "bar", x: left, y: i * rowHeight + 4, width: Math.max(w, 1), height: rowHeight - 8 });
    bar.append(svg("title", {}, `${name}: ${row.requests} requests, ${row.images} images, ${fmtUsd(row.cost_usd)}`));
    chart.append(svg("text", { x: 4, y: i * rowHeight + 17 }, String(name).slice(0, 28)), bar,
      svg("text", { x: left + w + 6, y: i * rowHeight + 17 }, String(row.requests)));
  });
  return chart;
}

// -- channels -------------------------------------------------------------------------------------

async function channels() {
  main.append(el("h1", { text: "Channels" }));
  const error = errorBox();
  main.append(error);
  let list;
  try { list = await getJson("/admin/channels"); } catch (failure) {
    error.textContent = `The channels could not be loaded: ${failure.message}`;
    return;
  }
  const cards = el("div", { class: "cards wide" });
  for (const channel of list.data || []) cards.append(channelCard(channel));
  if (!cards.children.length) cards.append(el("p", { text: "No channels." }));
  main.append(cards);
}

function channelCard(channel) {
  const windows = (channel.windows || []).map((w) => [`${w.window}`, !w.requests ? "no requests"
    : `${w.requests} requests, ${(w.success_rate * 100).toFixed(1)}% ok, p50 ${fmtMs(w.p50_ms)}, p95 ${fmtMs(w.p95_ms)}`]);
  const outcome = el("div", { "aria-live": "polite" });
  const test = el("button", { type: "button", text: `Test ${channel.name}` });
  test.addEventListener("click", () => testChannel(channel.name, test, outcome));
  const errors = channel.last_errors?.length
    ? el("div", { class: "table-wrap" }, el("table", {}, el("caption", { text: "Last errors" }),
      el("thead", {}, el("tr", {}, ["at", "status", "code", "type", "model", "request"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, channel.last_errors.map((e) => el("tr", {}, [new Date(e.at).toLocaleString(), e.status, e.error_code, e.error_type, e.model, e.request_id]
        .map((v) => el("td", { text: v ?? "" })))))))
    : el("p", { class: "hint", text: "No recent errors." });
  return el("section", { class: "panel", "aria-label": `Channel ${channel.name}` },
    el("h2", { text: `${channel.name} (${channel.type})` }),
    el("p", { class: channel.credentials ? "ok" : "error", text: channel.credentials ? "Credentials present" : "Credentials missing" }),
    dl([["models", (channel.models || []).join(", ")], ...windows]), errors, test, outcome);
}

async function testChannel(name, button, outcome) {
  button.disabled = true;
  outcome.replaceChildren(el("p", { role: "status", text: "Testing…" }));
  try {
    const answer = await (await call(`/admin/channels/${encodeURIComponent(name)}/test`, { method: "POST" })).json();
    const line = answer.ok ? el("p", { class: "ok", text: `ok (${answer.status}) in ${fmtMs(answer.ms)}` })
      : el("p", { class: "error", text: `error (${answer.status}) in ${fmtMs(answer.ms)}: ${answer.error?.message || ""}` });
    const images = el("div", { class: "images" });
    showImages(images, answer.data || []);
    outcome.replaceChildren(line, images);
  } catch (failure) {
    outcome.replaceChildren(el("p", { class: "error", role: "alert", text: failure.message }));
  } finally { button.disabled = false; }
}

// -- tasks ----------------------------------------------------------------------------------------

async function tasks() {
  const error = errorBox();
  const table = el("div", { class: "table-wrap", "aria-live": "polite" });
  const view = el("section", { "aria-live": "polite", "aria-label": "Task result" });
  main.append(el("h1", { text: "Tasks" }), error, table, view);
  const refresh = async () => {
    timer = null;
    try {
      const list = await getJson("/admin/tasks?limit=50");
      table.replaceChildren(taskTable(list.data || [], view));
      error.textContent = "";
      const busy = (list.data || []).some((t) => t.status === "pending" || t.status === "running");
      if (busy && location.hash.replace(/^#\//, "") === "tasks") timer = setTimeout(refresh, 2000);
    } catch (failure) { error.textContent = `The tasks could not be loaded: ${failure.message}`; }
  };
  await refresh();
}

function taskTable(list, view) {
  if (!list.length) return el("p", { text: "No tasks." });
  return el("table", {}, el("caption", { text: "Async tasks, newest first" }),
    el("thead", {}, el("tr", {}, ["task", "status", "progress", "model", "key", "channel", "created", "images", "error"]
      .map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, list.map((t) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "secondary", text: String(t.id).slice(0, 8), "aria-label": `Open task ${t.id}`,
        onclick: () => openTask(t.id, view) })),
      [t.status, t.polls === null || t.polls === undefined ? "—" : `${t.polls} polls`, t.model, t.key_name, t.channel, t.created ? fmtTime(t.created) : "", t.images,
        t.error ? (t.error.message || JSON.stringify(t.error)) : ""].map((v) => el("td", { text: v ?? "" }))))));
}

// A failed task answers with its error's status (as its owner's poll does): its record is shown all the same.
async function taskRecord(id) {
  const response = await fetch(`/admin/tasks/${encodeURIComponent(id)}`, { headers: authHeaders() });
  let body = null;
  try { body = await response.clone().json(); } catch { /* not JSON: an error below */ }
  if (body?.task_id !== undefined) return body;
  const error = await errorOf(response);
  if (response.status === 401 || response.status === 403) showSignIn(error.message);
  throw error;
}

// The task's signed callback, when it has one: delivered / pending / failed, its attempts and last answer.
function webhookState(hook) {
  if (!hook) return null;
  const last = hook.last_status === null || hook.last_status === undefined ? "no answer yet" : `last HTTP ${hook.last_status}`;
  return `${hook.status}, ${hook.attempts} attempt(s), ${last}`;
}

async function openTask(id, view) {
  view.replaceChildren(el("p", { role: "status", text: "Loading…" }));
  try {
    const record = await taskRecord(id);
    const images = el("div", { class: "images" });
    showImages(images, record.data || []);
    view.replaceChildren(el("h2", { text: `Task ${id}` }),
      dl([["status", record.task_status], ["error", record.error?.message || record.error],
          ["webhook", webhookState(record.metadata?.webhook)]]), images);
  } catch (failure) {
    view.replaceChildren(el("p", { class: "error", role: "alert", text: failure.message }));
  }
}

start();
