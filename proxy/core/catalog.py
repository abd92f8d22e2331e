"""Core layer: the model catalog. Which names the rules serve, as OpenAI model objects, merged with
the default channel's own list.

    GET /v1/models        {"object": "list", "data": [model, ...]}
    GET /v1/models/{id}   model, or 404 `model_not_found`
    model = {"id", "object": "model", "created", "owned_by"}

What is listed, and why:
  * exact names only: a glob such as `gpt-image-*` matches names nobody can enumerate, so it is served
    but never listed (when its channel is the default channel, that channel's own list names them);
  * only models with at least one channel whose credentials are set: a name that could only answer
    503 is not something the proxy serves (reachability is not checked per request);
  * `owned_by` is "imagegate" for every model of the rules: the model is the proxy's, whichever
    channels serve it, and the channel layout (failover order, provider names) stays the operator's;
  * `created` is when the proxy started serving (a constant for the process, not per request);
  * the proxy's entries come first and win over the default channel's entry with the same id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from proxy.core.errors import NotFound
from proxy.core.rules import Rules, iter_usable

OWNER = "imagegate"


def served_names(rules: Rules) -> tuple[str, ...]:
    """Exact model names with a usable channel, in the order of the rules file."""
    return tuple(
        rule.pattern for rule in rules.models if not rule.is_glob and next(iter_usable(rules, rule), None) is not None
    )


def model_object(name: str, created: int, owned_by: str = OWNER) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def own_models(rules: Rules, created: int) -> list[dict[str, Any]]:
    return [model_object(name, created) for name in served_names(rules)]


def find_model(rules: Rules, name: str, created: int) -> dict[str, Any] | None:
    """The model object when the proxy itself serves `name` exactly, else None."""
    return model_object(name, created) if name in served_names(rules) else None


def upstream_entries(body: Any) -> list[dict[str, Any]] | None:
    """The model objects of an upstream's list answer; None when it is not a list answer at all.

    Entries without a string `id` are dropped one by one: one odd entry must not hide the rest.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
        return None
    return [dict(entry) for entry in body["data"] if isinstance(entry, Mapping) and isinstance(entry.get("id"), str)]


def upstream_model(body: Any, name: str) -> dict[str, Any] | None:
    """An upstream's answer to a retrieve, when it is a model object for the name asked."""
    if isinstance(body, Mapping) and body.get("id") == name:
        return dict(body)
    return None


def merge(own: Iterable[Mapping[str, Any]], upstream: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The proxy's models first, then the upstream's whose id is new (first occurrence wins)."""
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in (*own, *upstream):
        if entry["id"] not in seen:
            seen.add(entry["id"])
            merged.append(dict(entry))
    return merged


def list_body(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": models}


def askable(name: str) -> bool:
    """Whether a model name may be asked of the default channel: a `.` or `..` path segment would make
    `/v1/models/{name}` another path upstream (`../files`), so such a name is simply not found."""
    return not any(segment in (".", "..") for segment in name.split("/"))


def model_not_found(name: str) -> NotFound:
    return NotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")
