"""Shell layer: the client's input images, checked once per request and then in the form each channel
takes (and its output format).

`check_client_images` runs once, when the request has been parsed and before any channel is tried: an
inline image that is not one is a 400 naming `image`, `image[1]` or `mask` whichever channel would have
served it, even one that forwards the value untouched (proxy.core.image_input says what is checked).

Per channel, just before its adapter runs, the plan gets the `output_format` fields that channel's
provider can take and the conversion the proxy owes for the rest (proxy.core.plan.with_output_format).
Two conversions of input images happen here too:
- an edit sent to a channel without a native edit endpoint becomes a generation whose `image` field
  holds the uploads as data URIs (and `mask` the mask), when the model's rules forward those fields;
- image URLs sent to a channel that needs the bytes (Stability, Gemini, SD WebUI) are downloaded and
  inlined as data URIs.

Downloading a URL the client chose goes through proxy.guard (public addresses only unless the rules
trust the host, every redirect checked, size cap, timeout, images only).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from proxy.adapters.base import AdapterSpec, Job
from proxy.core.errors import InvalidRequest, ProxyError
from proxy.core.image_input import check_image_fields, check_uploads, inline_size
from proxy.core.mime import sniff_image_type
from proxy.core.multipart import Part
from proxy.core.plan import EDIT, GENERATE, VARIATION, Plan, forwarded, with_output_format
from proxy.core.rules import Channel, DownloadRules
from proxy.cpu import off_loop
from proxy.guard import Refused, as_client_error, fetch

# As in proxy.finish: below this many characters the scan is cheaper inline than a thread hop.
_INLINE_LIMIT = 256 * 1024


async def check_client_images(options: Mapping[str, Any], uploads: Sequence[Part] = (), mask: Part | None = None) -> None:
    """Raise InvalidRequest unless every input image the client sent is an image (URLs are the channels' business)."""
    if inline_size(options) < _INLINE_LIMIT:
        check_image_fields(options)
    else:
        # Megabytes of base64 are scanned in a worker thread, never on the event loop.
        await off_loop(check_image_fields, options)
    check_uploads(uploads, mask)  # a few bytes per file, already in memory


async def download_input(session: aiohttp.ClientSession, url: str, download: DownloadRules) -> tuple[bytes, str]:
    """The image behind a client's URL, through the guard; every failure is the client's to fix (400)."""
    try:
        fetched = await fetch(
            session, url, trusted=frozenset(download.allow_hosts), max_bytes=download.max_bytes, timeout=download.timeout
        )
    except (Refused, ProxyError) as error:
        raise as_client_error(error) from None
    return fetched.data, fetched.content_type


def data_uri(data: bytes | bytearray, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


async def _upload_uri(part: Part) -> str:
    content_type = sniff_image_type(bytes(part.data[:512])) or part.content_type or "image/png"
    return await off_loop(data_uri, part.data, content_type)


async def uploads_as_fields(plan: Plan) -> Plan:
    """An edit for a channel without an edit endpoint: the uploads travel in `image` (and `mask`)."""
    if not forwarded("image", plan.rule):
        raise InvalidRequest(f"Model '{plan.model}' does not take input images.", param="image", code="unsupported_operation")
    if plan.mask is not None and not forwarded("mask", plan.rule):
        raise InvalidRequest(f"Model '{plan.model}' does not take a mask.", param="mask", code="unsupported_operation")
    images = [await _upload_uri(part) for part in plan.uploads]
    fields: dict[str, Any] = dict(plan.fields)
    existing = fields.get("image")
    extra = [existing] if isinstance(existing, str) else list(existing or [])
    combined = extra + images
    fields["image"] = combined[0] if len(combined) == 1 else combined
    if plan.mask is not None:
        fields["mask"] = await _upload_uri(plan.mask)
    return replace(plan, fields=fields, uploads=(), mask=None, operation=GENERATE)


def _urls(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str) and item.startswith(("http://", "https://"))]


async def inline_urls(plan: Plan, session: aiohttp.ClientSession, download: DownloadRules) -> Plan:
    """`image` URLs replaced by data URIs of what they point at, for channels that need the bytes."""
    value = plan.fields.get("image")
    if not _urls(value):
        return plan
    items = value if isinstance(value, list) else [value]
    inlined: list[Any] = []
    for item in items:
        if item in _urls(item):
            data, content_type = await download_input(session, item, download)
            inlined.append(await off_loop(data_uri, data, content_type))
        else:
            inlined.append(item)
    fields = {**plan.fields, "image": inlined if isinstance(value, list) else inlined[0]}
    return replace(plan, fields=fields)


async def plan_for(
    plan: Plan, channel: Channel, spec: AdapterSpec, session: aiohttp.ClientSession, download: DownloadRules
) -> Plan:
    """The plan as this channel's adapter can take it, or InvalidRequest when it cannot."""
    upstream_model = plan.rule.upstream_for(channel.name, plan.model)
    if upstream_model != plan.upstream_model:
        plan = replace(plan, upstream_model=upstream_model)
    plan = with_output_format(plan, spec.native_formats(Job(plan, channel, None)))
    if plan.operation not in spec.operations:
        if plan.operation == VARIATION:
            raise InvalidRequest(
                f"Model '{plan.model}' does not support variations.", param="model", code="unsupported_operation"
            )
        if plan.operation == EDIT:
            plan = await uploads_as_fields(plan)
    if spec.needs_image_bytes:
        plan = await inline_urls(plan, session, download)
    return plan
