"""Adapter layer: the values adapters and the driver exchange (ARCHITECTURE.md §5).

    Step = Send(call) | Wait(seconds, call) | Done(ImagesResult) | Fail(ProxyError)

`state` rides along with Send and Wait and comes back to `advance`, so an adapter keeps nothing itself.
An adapter that makes images itself (the local generator) can also stream: a generator of Partial
previews ending in Done or Fail, which the shell advances and relays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.core.errors import ProxyError
from proxy.core.formats import NativeFormats
from proxy.core.multipart import Part
from proxy.core.plan import Plan
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import Channel, ChannelSchema
from proxy.core.sse import Event


@dataclass(frozen=True)
class Call:
    """One HTTP request to an upstream. At most one of `json`, `data` and `form` is the body.

    `form` is a multipart/form-data body the shell streams part by part (uploads are not copied into
    one buffer); the shell sets its Content-Type with the boundary.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    json: Any = None
    data: bytes | None = None
    form: tuple[Part, ...] | None = None
    timeout: float | None = None  # None: the channel's timeout


class UpstreamResponse:
    """An upstream's answer. Its body is kept as the chunks it was received in: `body` joins them when an
    adapter first asks for it, and `chunks` hands them out as they are, so a large image can be read out
    of them without a copy of the whole answer first (proxy.core.plain_base64)."""

    __slots__ = ("_body", "chunks", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes | tuple[bytes, ...]) -> None:
        self.status = status
        self.headers = headers  # names lower-cased
        self.chunks: tuple[bytes, ...] = (body,) if isinstance(body, bytes) else body
        self._body = body if isinstance(body, bytes) else None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.chunks)
        return self._body

    def __repr__(self) -> str:
        return f"UpstreamResponse(status={self.status}, {len(self.chunks)} chunk(s))"


# `state` is the adapter's own frozen dataclass (or None), opaque to the driver, which only hands it back
# to the same adapter's `advance` (and `cancel`); each adapter types those parameters with its dataclass.
@dataclass(frozen=True)
class Send:
    call: Call
    state: object = None


@dataclass(frozen=True)
class Wait:
    seconds: float
    call: Call
    state: object = None


@dataclass(frozen=True)
class Done:
    result: ImagesResult


@dataclass(frozen=True)
class Fail:
    error: ProxyError


Step = Send | Wait | Done | Fail


@dataclass(frozen=True)
class Partial:
    """A preview of an image still being made: OpenAI's `partial_image` event, numbered from 0 per image.

    `extra` holds what the final answer's extra will say (size, output_format, background): the event's fields.
    """

    image: GeneratedImage
    index: int
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


Drawn = Partial | Done | Fail


@dataclass(frozen=True)
class Job:
    """Everything an adapter may know: the plan, its channel, and the key to use (resolved by the shell)."""

    plan: Plan
    channel: Channel
    api_key: str | None

    def __repr__(self) -> str:
        return f"Job(model={self.plan.model!r}, channel={self.channel.name!r})"


UNDECLARED_FORMATS = NativeFormats(default=None)


def _no_advance(job: Job, state: object, response: UpstreamResponse) -> Step:
    raise ValueError(f"adapter for channel '{job.channel.name}' sends no requests")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    schema: ChannelSchema
    start: Callable[[Job], Step]
    # `Any` for the state here only: each adapter's advance takes its own state dataclass, which a
    # Callable over `object` would not admit (parameters are contravariant).
    advance: Callable[[Job, Any, UpstreamResponse], Step] = _no_advance
    # Starting does real CPU work (the local generator): the shell runs it off the event loop.
    cpu_bound: bool = False
    # Most images one upstream call can return; None: any n. Above it the driver fans out parallel
    # calls of at most this many each and merges their data[] (providers without a native `n`: 1).
    # A function of the job where it depends on the upstream model (Imagen takes 4, Gemini 1).
    max_n_per_call: int | Callable[[Job], int | None] | None = None
    # Providers whose calls carry a derived, expiring credential (Kling's JWT): given the channel, its
    # configured key and the current time, returns (credential, expires_at). The shell caches it and
    # hands it to the adapter as Job.api_key until shortly before it expires.
    credential: Callable[[Channel, str | None, float], tuple[str, float]] | None = None
    # Task providers that can stop work nobody will collect: the call that cancels the task `state`
    # describes (None when there is nothing to cancel yet). Sent best-effort when a sync request is abandoned.
    # `Any` for the state, as in `advance`: each adapter's cancel takes its own state dataclass.
    cancel: Callable[[Job, Any], Call | None] | None = None
    # Task providers whose async tasks another process can take over after a restart (proxy.task_keeper):
    # the class of the adapter's state (a dataclass of plain values, kept in the task's checkpoint), and
    # the step that continues from such a state (the next poll). Both or neither.
    task_state: type[Any] | None = None
    resume: Callable[[Job, Any], Step] | None = None
    # What `start` can do besides generating from a prompt: "edit" (plan.uploads, plan.mask) and
    # "variation". An edit to a channel without "edit" is sent as a generation with the uploads as
    # data URIs in the `image` field, when the model's rules forward `image`.
    operations: frozenset[str] = frozenset({"generate"})
    # The provider takes input images only as bytes (base64), never as URLs: the shell downloads
    # a client's image URLs (guarded) and inlines them before `start` sees the plan.
    needs_image_bytes: bool = False
    # Native streaming (`stream: true`): the call that opens the provider's SSE stream, and the mapping
    # of each upstream event to OpenAI stream payloads (each sent as `event: <type>`). Channels without
    # them stream by emulation: keep-alives while the work runs, then one completed event per image.
    stream_call: Callable[[Job], Step] | None = None  # Send(the stream's call) or Fail
    stream_events: Callable[[Job, Event], list[dict[str, Any]]] | None = None
    # The usage an upstream event reports apart from any payload (Ark's closing event): priced and counted.
    stream_usage: Callable[[Event], dict[str, Any] | None] | None = None
    # Native streaming with no upstream (the local generator): the job's previews as they are made, then
    # Done or Fail. The shell advances it (off the event loop when cpu_bound) and relays each preview.
    stream_steps: Callable[[Job], Iterator[Drawn]] | None = None
    # Headers that authenticate a pass-through request on this channel; None: no pass-through here.
    auth_headers: Callable[[str | None], dict[str, str]] | None = None
    # The image formats the provider makes itself (proxy.core.formats): the plan's fields carry
    # `output_format` only when the client's format is among `asked`, and the proxy converts the rest.
    # A function of the job where it depends on the upstream model. Not declared: nothing is asked and
    # the proxy looks at the bytes it gets.
    output_formats: NativeFormats | Callable[[Job], NativeFormats] = UNDECLARED_FORMATS

    def per_call(self, job: Job) -> int | None:
        """Most images one call for this job can return (None: any n)."""
        limit = self.max_n_per_call
        return limit(job) if callable(limit) else limit

    @property
    def streams_natively(self) -> bool:
        """Whether its channels stream natively: over the upstream's own stream, or by drawing it here."""
        return self.stream_call is not None or self.stream_steps is not None

    def native_formats(self, job: Job) -> NativeFormats:
        """The formats this job's provider and upstream model make themselves."""
        formats = self.output_formats
        return formats(job) if callable(formats) else formats
