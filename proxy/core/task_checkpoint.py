"""Core layer: what an unfinished async task keeps with its record, so that another process can take it
over after a restart or a crash (proxy.task_keeper; ARCHITECTURE.md §6).

Written when the task is created: the request's trace (its ledger notes, so the ledger records the task
whoever ends it), how the client wants its images, and the limit counters it reserved in. Written again
once a task provider has accepted the job (`at_upstream`): the channel, the adapter's polling state and
the client's request fields, enough to rebuild the plan and poll the same upstream task instead of
starting (and paying for) another. Cleared when the task ends: the prompt stays in a record only while
its task runs. It holds no key: limit counters are named by the key's hash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

from proxy.core.stored import known

T = TypeVar("T")


@dataclass(frozen=True)
class Trace:
    """The POST's notes for its ledger record (proxy.observe.RequestRecord, as plain values)."""

    request_id: str
    arrived: float
    fields: dict[str, Any]
    unlogged: dict[str, Any]


@dataclass(frozen=True)
class Reserved:
    """The counters the request was admitted in (proxy.key_limits.Admission, as plain values)."""

    images_key: str | None = None
    reserved_images: int = 0
    budget_keys: tuple[tuple[str, int], ...] = ()
    reserved_micro: int = 0
    counted_in: str = ""  # the lifetime of the counters it is counted in (proxy.shared_state.Counters)


@dataclass(frozen=True)
class Checkpoint:
    trace: Trace
    response_format: str | None
    public_base: str
    keep_for: float
    reserved: Reserved = Reserved()
    # Set once the upstream task exists:
    channel: str | None = None
    state: dict[str, Any] | None = None  # {"type": the adapter's state class, "fields": its values}
    request: dict[str, Any] | None = None  # the client's JSON fields (None: an upload, which is not kept)
    operation: str = "generate"
    # Where the task's end is reported (proxy.webhooks): {"url", "secret_set"}; None: no webhook.
    webhook: dict[str, str] | None = None

    @property
    def resumable(self) -> bool:
        """Whether a process taking the task over can poll its upstream task rather than fail it."""
        return self.channel is not None and self.state is not None and self.request is not None

    def at_upstream(self, channel: str, state: object, request: dict[str, Any] | None, trace: Trace) -> Checkpoint:
        return replace(self, channel=channel, state=encode_state(state), request=request, trace=trace)

    def without_upstream(self) -> Checkpoint:
        """The attempt on the checkpointed channel failed: its upstream task is not to be resumed."""
        return replace(self, channel=None, state=None)

    def dumps(self) -> dict[str, Any]:
        saved = asdict(self)
        if not self.reserved.counted_in:  # as versions before it wrote (proxy.core.stored)
            del saved["reserved"]["counted_in"]
        return saved

    @staticmethod
    def loads(saved: dict[str, Any]) -> Checkpoint:
        """The checkpoint a record holds, whichever version wrote it (proxy.core.stored); raises (KeyError,
        TypeError, ValueError) when it is not one."""
        reserved = saved.get("reserved") or {}
        return Checkpoint(**{
            **known(Checkpoint, saved),
            "trace": Trace(**known(Trace, saved["trace"])),
            "reserved": Reserved(**{**known(Reserved, reserved), "budget_keys": _tuples(reserved.get("budget_keys", []))}),
        })


def encode_state(state: object) -> dict[str, Any]:
    """An adapter's polling state (a dataclass of plain values) as JSON-ready values."""
    if not is_dataclass(state) or isinstance(state, type):
        raise TypeError(f"an adapter state must be a dataclass instance, not {type(state).__name__}")
    return {"type": type(state).__name__, "fields": asdict(state)}


def decode_state(kind: type[T], saved: dict[str, Any]) -> T | None:
    """The state `encode_state` wrote, as `kind` again (tuples restored); None when it was another kind."""
    if saved.get("type") != kind.__name__ or not is_dataclass(kind):
        return None
    known = {item.name for item in fields(kind)}
    values = {name: _tuples(value) for name, value in saved.get("fields", {}).items() if name in known}
    return kind(**values)


def _tuples(value: Any) -> Any:
    """JSON gives lists back where the state held tuples (frozen dataclasses keep tuples)."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value
