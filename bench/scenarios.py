"""The four scenarios: each measures direct calls, the bare relay and the proxy at each worker count.

Each figure's targets are checked where they apply: some at one worker (the cost of the proxy's own
work per request), some at two or more (what the workers buy), some at every count. See bench/README.md.
"""

from __future__ import annotations

import functools
import math
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any

from bench.clients import has_b64, has_url, hold_many, hosted_image_ok, stream_latencies, throughput, warm_up
from bench.harness import PROBE_HOLD_MS, Harness, Measure, request_body, say
from bench.procs import Child
from bench.report import MB, Report, Target, fmt, share, targets, versus, versus_ms, workers_label
from bench.tree import PeakSampler

DEFAULT_CONCURRENCY = 4  # proxy.core.rules.DEFAULT_CONCURRENCY, restated: the bench does not import the proxy
PROBE_REQUESTS = 40
HIGH = 64  # the concurrency whose throughput targets are checked
STREAM_FIGURES = (("first event ms (median)", "first_p50"), ("every event p50 ms", "p50"), ("every event p99 ms", "p99"))


def _raw(measure: Measure) -> dict[str, Any]:
    """A load's figures for --json; the middle's CPU is null for direct calls."""
    middle = None if math.isnan(measure.cpu) else {"cpu_s": measure.cpu, "cpu_us": measure.cpu_us}
    upstream = {"upstream_cpu_s": measure.upstream_cpu, "upstream_cpu_us": measure.upstream_us}
    return asdict(measure.result) | upstream | {"middle": middle}


def _when(condition: bool, text: str, met: bool) -> Target | None:
    return Target(text, met) if condition else None


# -- 1: small JSON, and 4: streaming (one group: the same relay and proxies) -------------------------


async def small_group(h: Harness, report: Report) -> None:
    """Scenarios 1 and 4 on one relay and one proxy per worker count, all started together."""
    o = h.options
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(h.relay())
        proxies = {workers: await stack.enter_async_context(h.proxy(workers)) for workers in o.workers}
        if "small" in o.only:
            await small(h, report, relay, proxies)
        if "stream" in o.only:
            await stream(h, report, proxies)


async def small(h: Harness, report: Report, relay: Child, proxies: dict[int, Child]) -> None:
    body = request_body("bench-small")
    for url in (h.direct("small"), h.relayed(relay, "small"), *(h.via(proxy) for proxy in proxies.values())):
        await warm_up(url, body, 200)
    raw: dict[str, Any] = {}
    for concurrency in h.options.concurrency:
        say(f"small JSON, concurrency {concurrency}: direct, relay, then the proxy at {list(h.options.workers)} workers")
        direct = await h.load(h.direct("small"), body, concurrency)
        relayed = await h.load(h.relayed(relay, "small"), body, concurrency, relay)
        proxied = {workers: await h.load(h.via(proxy), body, concurrency, proxy) for workers, proxy in proxies.items()}
        raw[f"c{concurrency}"] = {
            "direct": _raw(direct),
            "relay": _raw(relayed),
            "proxy": {str(workers): _raw(measure) for workers, measure in proxied.items()},
        }
        for workers, measure in proxied.items():
            small_rows(report, h.generator, workers, direct, relayed, measure)
        if concurrency == max(h.options.concurrency) and concurrency > DEFAULT_CONCURRENCY:
            raw[f"c{concurrency}_default_channel"] = await default_channel(h, report, direct, relayed, proxies)
    report.raw["small"] = raw


def small_rows(report: Report, generator: str, workers: int, d: Measure, r: Measure, p: Measure) -> None:
    c = p.result.concurrency
    section = f"1 small JSON c={c} ({generator}), {workers_label(workers)}"
    clean = p.result.errors == 0  # wrk counts error answers in its rate and percentiles: no target passes on them
    rps = share(p.result.rps, d.result.rps)
    report.add(
        section, "requests/s", fmt(d.result.rps, 0), fmt(r.result.rps, 0), fmt(p.result.rps, 0),
        versus(p.result.rps, d.result.rps, r.result.rps),
        **targets(
            _when(c == HIGH and workers == 1, ">= 30% of direct", clean and rps >= 0.30),
            _when(c == HIGH and workers >= 2, ">= 40% of direct", clean and rps >= 0.40),
        ),
    )
    added = p.result.p50_ms - d.result.p50_ms
    report.add(
        "", "p50 latency ms", fmt(d.result.p50_ms, 3), fmt(r.result.p50_ms, 3), fmt(p.result.p50_ms, 3),
        versus_ms(p.result.p50_ms, d.result.p50_ms, r.result.p50_ms),
        **targets(_when(c == 1 and workers == 1, "added <= 0.5 ms", clean and added <= 0.5)),
    )
    report.add(
        "", "p99 latency ms", fmt(d.result.p99_ms, 3), fmt(r.result.p99_ms, 3), fmt(p.result.p99_ms, 3),
        versus_ms(p.result.p99_ms, d.result.p99_ms, r.result.p99_ms),
    )
    report.add("", "CPU % of a core: upstream [/ middle]", d.shares(), r.shares(), p.shares())
    cpu = share(p.cpu_us, r.cpu_us)
    report.add(
        "", "CPU us/request: upstream (direct), middle", fmt(d.upstream_us, 0), fmt(r.cpu_us, 0), fmt(p.cpu_us, 0),
        f"{cpu:.2f}x relay; {share(p.cpu_us, d.upstream_us):.1f}x the upstream's",
        **targets(_when(c == HIGH and workers == 1, "<= 1.3x relay", clean and cpu <= 1.3)),
    )
    if d.result.errors + r.result.errors + p.result.errors:
        errors = (str(m.result.errors) for m in (d, r, p))
        report.add("", "errors (non-2xx, socket)", *errors, "", target="none", verdict="MISS")


async def default_channel(h: Harness, report: Report, d: Measure, r: Measure, proxies: dict[int, Child]) -> dict[str, Any]:
    """The same load on a channel that leaves `concurrency` at its default, at the first worker count."""
    workers, proxy = next(iter(proxies.items()))
    concurrency = d.result.concurrency
    say(f"small JSON, concurrency {concurrency}, channel without `concurrency` set: proxy, {workers_label(workers)}")
    default = await h.load(h.via(proxy), request_body("bench-small-default"), concurrency, proxy)
    report.add(
        f"1 small JSON c={concurrency}, channel `concurrency` default ({DEFAULT_CONCURRENCY}), {workers_label(workers)}",
        "requests/s", fmt(d.result.rps, 0), fmt(r.result.rps, 0), fmt(default.result.rps, 0),
        versus(default.result.rps, d.result.rps, r.result.rps) + f"; p50 {default.result.p50_ms:.1f} ms",
    )
    return _raw(default)


async def stream(h: Harness, report: Report, proxies: dict[int, Child]) -> None:
    """Per-event latency of an SSE stream. The relay reads answers whole, so it has no figure here."""
    o = h.options
    say(f"streaming: {o.sse_streams} streams of {o.sse_events} events, direct then the proxy")
    body = request_body("bench-sse", stream=True)
    direct = await stream_latencies(h.direct("sse"), body, o.sse_streams)
    raw: dict[str, Any] = {"direct": direct, "proxy": {}}
    for workers, proxy in proxies.items():
        await stream_latencies(h.via(proxy), body, 2)
        proxied = raw["proxy"][str(workers)] = await stream_latencies(h.via(proxy), body, o.sse_streams)
        section = f"4 SSE, {o.sse_events} events of {o.sse_bytes // 1024} KiB x {o.sse_streams}, {workers_label(workers)}"
        for metric, key in STREAM_FIGURES:
            figures = fmt(direct[key], 3), "-", fmt(proxied[key], 3), versus_ms(proxied[key], direct[key], None)
            report.add(section, metric, *figures)
            section = ""
        if direct["events"] != proxied["events"]:
            report.add("", "events received", str(direct["events"]), "-", str(proxied["events"]), target="equal", verdict="MISS")
    report.raw["stream"] = raw


# -- 2: 3 MB b64 ------------------------------------------------------------------------------------


async def big_through(h: Harness, middle: Child, url: str, response_format: str) -> dict[str, Any]:
    """Throughput of the 3 MB answer through `middle`, with its tree's memory idle and at its sampled peak."""
    o = h.options
    body = request_body("bench-big", response_format=response_format)
    await warm_up(url, body, 2)
    idle = middle.memory()
    sampler = PeakSampler(middle.pid)
    sampler.start()
    check = functools.partial(has_b64, chars=o.big_bytes) if response_format == "b64_json" else has_url
    result = await throughput(url, body, o.big_concurrency, o.duration, check=check)
    peak = await sampler.stop()
    result |= {"idle_pss": idle.pss, "idle_rss": idle.rss, "peak_pss": peak.pss, "peak_rss": sampler.peak_rss}
    if response_format == "url" and result.get("sample_url"):
        result["hosted_bytes_ok"] = await hosted_image_ok(result["sample_url"], o.big_bytes * 3 // 4)
    return result


async def big(h: Harness, report: Report) -> None:
    o = h.options
    say(f"3 MB b64: direct, then the relay ({o.duration:g}s each)")
    body = request_body("bench-big")
    await warm_up(h.direct("big"), body, 2)
    whole = functools.partial(has_b64, chars=o.big_bytes)
    direct = await throughput(h.direct("big"), body, o.big_concurrency, o.duration, check=whole)
    answer_bytes = direct["last_bytes"]  # MB/s counts the upstream's answer, whatever the proxy answered
    async with h.relay() as relay:
        relayed = await big_through(h, relay, h.relayed(relay, "big"), "b64_json")
    raw: dict[str, Any] = {"direct": direct, "relay": relayed, "answer_bytes": answer_bytes}
    for label, response_format in (("pass-through", "b64_json"), ("-> url", "url")):
        raw[label] = {}
        for workers in o.workers:
            say(f"3 MB b64 {label}: fresh proxy, {workers_label(workers)} ({o.duration:g}s)")
            async with h.proxy(workers) as proxy:
                raw[label][str(workers)] = await big_through(h, proxy, h.via(proxy), response_format)
    for result in (direct, relayed, *raw["pass-through"].values(), *raw["-> url"].values()):
        result["mbs"] = result["rps"] * answer_bytes / MB
    report.raw["big"] = raw
    for label in ("pass-through", "-> url"):
        for workers in o.workers:
            big_rows(report, o.big_concurrency, answer_bytes, label, workers, direct, relayed, raw[label][str(workers)])


def big_rows(report: Report, concurrency: int, answer_bytes: int, label: str, workers: int,
             d: dict[str, Any], r: dict[str, Any], p: dict[str, Any]) -> None:
    section = f"2 {answer_bytes / MB:.1f} MB b64_json answer {label}, c={concurrency}, {workers_label(workers)}"
    floor, relay_share = (200.0, 1.1) if label == "pass-through" else (100.0, 0.8)
    clean = p["errors"] == 0
    ratio = share(p["mbs"], r["mbs"])
    report.add(
        section, "MB/s", fmt(d["mbs"]), fmt(r["mbs"]), fmt(p["mbs"]), versus(p["mbs"], d["mbs"], r["mbs"]),
        **targets(
            Target(f">= {floor:.0f} MB/s", p["mbs"] >= floor and clean),
            _when(workers >= 2, f">= {relay_share:g}x relay pass-through", ratio >= relay_share and clean),
        ),
    )
    report.add(
        "", "requests/s", fmt(d["rps"]), fmt(r["rps"]), fmt(p["rps"]), f"{p['requests']} requests, {p['errors']} errors"
    )
    report.add(
        "", "memory MB: PSS idle / peak (tree)", "-", _idle_peak(r), _idle_peak(p),
        f"peak {share(p['peak_pss'], r['peak_pss']):.2f}x relay; RSS sum peak {p['peak_rss'] / MB:.0f} MB",
    )
    if "hosted_bytes_ok" in p:
        report.add("", "hosted image fetched back", "-", "-", "ok" if p["hosted_bytes_ok"] else "WRONG")


def _rss(result: dict[str, Any]) -> str:
    return f"{result['idle_rss'] / MB:.0f} / {result['peak_rss'] / MB:.0f}"


def _idle_peak(result: dict[str, Any]) -> str:
    return f"{result['idle_pss'] / MB:.0f} / {result['peak_pss'] / MB:.0f}"


# -- 3: thousands of held requests ------------------------------------------------------------------


async def held_through(h: Harness, middle: Child, url: str, body: str) -> dict[str, Any]:
    """`--held` requests at once through `middle`, its tree's PSS sampled every 100 ms for the peak."""
    idle, idle_fds = middle.memory(), middle.fds()
    await h.upstream_stats(reset=True)
    sampler = PeakSampler(middle.pid)
    sampler.start()
    result = await hold_many(url, body, h.options.held, middle.fds, h.upstream_held)
    peak = await sampler.stop()
    result["upstream_peak"] = (await h.upstream_stats())["hold_peak"]
    result |= {"idle_pss": idle.pss, "idle_rss": idle.rss, "peak_pss": peak.pss, "peak_rss": sampler.peak_rss}
    result |= {"idle_fds": idle_fds, "processes": peak.processes, "supervisor_vmhwm": middle.peak_rss()}
    return result


async def held(h: Harness, report: Report) -> None:
    o = h.options
    body = request_body("bench-hold")
    hold = f"hold-{round(o.hold * 1000)}"
    say(f"{o.held} held requests ({o.hold:g}s each): direct, then the relay")
    await h.upstream_stats(reset=True)
    direct = await hold_many(h.direct(hold), body, o.held)
    direct["upstream_peak"] = (await h.upstream_stats())["hold_peak"]
    async with h.relay() as relay:
        await warm_up(h.relayed(relay, "small"), request_body("bench-small"), 50)
        relayed = await held_through(h, relay, h.relayed(relay, hold), body)
    raw: dict[str, Any] = {"direct": direct, "relay": relayed, "proxy": {}}
    for workers in o.workers:
        say(f"{o.held} held requests: through the proxy, {workers_label(workers)}")
        async with h.proxy(workers) as proxy:
            await warm_up(h.via(proxy), request_body("bench-small"), 50)
            raw["proxy"][str(workers)] = await held_through(h, proxy, h.via(proxy), body)
            if workers == o.workers[0]:
                raw["default_concurrency_probe"] = await probe(h, proxy)
    report.raw["held"] = raw
    for workers in o.workers:
        held_rows(report, o.held, o.hold, workers, direct, relayed, raw["proxy"][str(workers)])
    probe_row(report, raw["default_concurrency_probe"], o.workers[0])


async def probe(h: Harness, proxy: Child) -> dict[str, Any]:
    say(f"{PROBE_REQUESTS} requests held {PROBE_HOLD_MS} ms on a channel without `concurrency` set")
    await h.upstream_stats(reset=True)
    result = await hold_many(h.via(proxy), request_body("bench-queue"), PROBE_REQUESTS)
    result["upstream_peak"] = (await h.upstream_stats())["hold_peak"]
    return result


def held_rows(report: Report, n: int, hold: float, workers: int, d: dict[str, Any], r: dict[str, Any], p: dict[str, Any]) -> None:
    section = f"3 {n} requests held {hold:g}s, {workers_label(workers)}"
    all_ok = d["ok"] == n and p["ok"] == n
    report.add(section, "succeeded", f"{d['ok']}/{n}", f"{r['ok']}/{n}", f"{p['ok']}/{n}", **targets(Target("all", all_ok)))
    report.add(
        "", "wall time s (all answered)", fmt(d["wall"]), fmt(r["wall"]), fmt(p["wall"]),
        f"{p['wall'] - d['wall']:+.1f} s vs direct, {p['wall'] - r['wall']:+.1f} s vs relay",
    )
    report.add("", "latency p50 / max s", *(f"{x['p50']:.2f} / {x['max']:.2f}" for x in (d, r, p)))
    capped = p["upstream_peak"] < 0.95 * n  # a few may start late or end early: only a real cap counts
    report.add(
        "", "peak upstream in flight", *(str(x["upstream_peak"]) for x in (d, r, p)),
        "the proxy capped upstream calls" if capped else "",
    )
    all_in = f"{n} in by {p['all_in_s']:.1f} s" if p["all_in_s"] is not None else "never all in at once"
    report.add("", "open fds idle / peak (tree)", "-", *(f"{x['idle_fds']} / {x['peak_fds']}" for x in (r, p)), all_in)
    report.add(
        "", "memory MB: PSS idle / peak (tree)", "-", _idle_peak(r), _idle_peak(p),
        f"peak {share(p['peak_pss'], r['peak_pss']):.2f}x relay; {p['processes']} process(es)",
        **targets(Target("peak < 250 MB", p["peak_pss"] < 250 * MB)),
    )
    report.add(
        "", "memory MB: RSS sum idle / peak (tree)", "-", *(_rss(x) for x in (r, p)),
        f"supervisor VmHWM {p['supervisor_vmhwm'] / MB:.0f} MB",
    )
    per_request = [(x["peak_pss"] - x["idle_pss"]) / n / 1024 for x in (r, p)]
    report.add(
        "", "PSS per held request KiB", "-", *(fmt(value) for value in per_request),
        f"(peak - idle) / n; {share(per_request[1], per_request[0]):.2f}x relay",
    )


def probe_row(report: Report, probe: dict[str, Any], workers: int) -> None:
    report.add(
        f"3 probe, {workers_label(workers)}", f"default `concurrency`: {PROBE_REQUESTS} x {PROBE_HOLD_MS} ms", "-", "-",
        f"peak {probe['upstream_peak']} upstream", f"{probe['ok']}/{PROBE_REQUESTS} ok in {probe['wall']:.1f} s",
    )
    report.notes.append(
        f"held: the probe row uses a channel with the default `concurrency` ({DEFAULT_CONCURRENCY}): "
        f"{probe['upstream_peak']} of {PROBE_REQUESTS} requests reached the upstream at once "
        f"(`concurrency` bounds the calls of one fanned-out request, not clients)."
    )
