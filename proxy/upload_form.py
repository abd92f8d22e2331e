"""Shell layer: reading a client's multipart upload (edits, variations) without holding it twice.

Each file part is read chunk by chunk into one growing buffer, which then travels to the upstream
as it is (aiohttp streams it into the outgoing form), so an upload costs about its own size in memory.
The whole form is capped at `server.max_request_bytes`: a declared length over it is refused before
reading (proxy.body), and the cap is enforced while reading, before the rest arrives. A compressed
form is refused (415): its images are compressed already.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.body import check_head, continue_if_expected
from proxy.core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from proxy.core.multipart import Part

_CHUNK = 1024 * 1024
# aiohttp's multipart reader costs more per part the more parts it has read (20,000 one-byte fields took
# 1.8 s of event-loop time, 100,000 took 22 s, all inside max_request_bytes), so the part count is capped:
# an edit has a dozen fields and at most a few dozen images.
MAX_PARTS = 256
IMAGE_FIELDS = frozenset({"image", "image[]"})


@dataclass
class Form:
    fields: dict[str, str | list[str]] = field(default_factory=dict)
    files: list[Part] = field(default_factory=list)

    @property
    def images(self) -> tuple[Part, ...]:
        return tuple(part for part in self.files if part.name in IMAGE_FIELDS)

    @property
    def mask(self) -> Part | None:
        return next((part for part in self.files if part.name == "mask"), None)


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadTooLarge(f"The upload is larger than {self.limit} bytes.", code="request_too_large")


async def _read_part(part: BodyPartReader, budget: _Budget) -> bytearray:
    buffer = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        budget.spend(len(chunk))
        buffer += chunk  # large buffers grow in place (realloc), not by copying into a new one
    return buffer


def _add_field(form: Form, name: str, value: str) -> None:
    # Repeated text fields (`image[]` given as URLs) become lists; a single one stays a string.
    current = form.fields.get(name)
    if current is None:
        form.fields[name] = value
    elif isinstance(current, list):
        current.append(value)
    else:
        form.fields[name] = [current, value]


def _text(name: str, data: bytes | bytearray) -> str:
    """A field's text, which must be UTF-8 as a JSON body must: replaced characters would change its meaning."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"The form field '{name}' is not UTF-8 text.", param=name, code="invalid_value") from None


async def read_form(request: web.Request, limit: int) -> Form:
    # Uploads are images, compressed already: a compressed form gains nothing and is refused (415).
    check_head(request, limit, accepted=())
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("This endpoint takes multipart/form-data, as OpenAI's does.", code="unsupported_media_type")
    await continue_if_expected(request)
    budget = _Budget(limit)
    form = Form()
    try:
        reader = await request.multipart()
        count = 0
        async for part in reader:
            count += 1
            if count > MAX_PARTS:
                raise InvalidRequest(f"The form has more than {MAX_PARTS} parts.", code="too_many_parts")
            if not isinstance(part, BodyPartReader) or not part.name:
                raise InvalidRequest("Nested or unnamed multipart parts are not supported.", code="invalid_multipart")
            data = await _read_part(part, budget)
            if part.filename is None:
                _add_field(form, part.name, _text(part.name, data))
            else:
                content_type = part.headers.get("Content-Type") or "application/octet-stream"
                form.files.append(Part(part.name, data, filename=part.filename, content_type=content_type))
    except (ValueError, HttpProcessingError) as exc:
        # aiohttp's multipart reader raises ValueError for a missing, empty or wrong boundary and for a body
        # that ends early ("Reading after EOF"), and InvalidHeader (an HttpProcessingError) for a part header
        # holding a NUL or other forbidden byte. Each is a malformed upload, the client's to fix: a 400, not a 500.
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(f"The multipart body is malformed: {reason}", code="invalid_multipart") from None
    _check_files(form)
    return form


def _check_files(form: Form) -> None:
    """Files are images and one mask: any other would be dropped unread, so it is refused by name."""
    for part in form.files:
        if part.name not in IMAGE_FIELDS and part.name != "mask":
            raise InvalidRequest(f"The form field '{part.name}' takes text, not a file; files go in 'image' and 'mask'.",
                                 param=part.name, code="invalid_value")
    if sum(part.name == "mask" for part in form.files) > 1:
        raise InvalidRequest("The form has more than one 'mask': send one.", param="mask", code="invalid_value")
