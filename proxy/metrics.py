"""Shell layer: Prometheus metrics, through the official `prometheus-client` (the `metrics` extra).

Each app has its own registry, so several apps in one process (tests, embedding) do not collide. Under
workers (proxy.workers) the figures live in prometheus-client's multiprocess files and `/metrics` sums them.
Without the package the proxy runs the same and `/metrics` says how to enable it. Labels carry model,
channel, route, status and error type: never a key, a prompt or a client address.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

AVAILABLE = importlib.util.find_spec("prometheus_client") is not None
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Image generation spans milliseconds (cached, local) to minutes (GPT image high quality, task APIs).
LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)


class Labelled:
    """A labelled metric whose child per label tuple is looked up once: prometheus' own `labels()` converts,
    validates and takes a lock on every call, several times per request."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


@dataclass
class Metrics:
    registry: Any
    requests: Any
    upstream_seconds: Any
    attempts: Any
    failovers: Any
    in_flight: Any
    async_tasks: Any
    image_bytes: Any
    errors: Any
    key_requests: Any
    key_images: Any
    key_tokens: Any
    images: Any
    cost: Any
    ledger_written: Any
    ledger_dropped: Any
    ledger_write_failures: Any
    ledger_lag: Any

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        data: bytes = generate_latest(aggregate() if multiprocess() else self.registry)
        return data


def multiprocess() -> bool:
    """Several workers (proxy.workers): each writes its figures to files in this directory, any one reads them all."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def aggregate() -> Any:
    """A registry that sums every worker's files (gauges of workers alive only: `livesum`)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def make_metrics() -> Metrics | None:
    """The app's metrics, or None when `prometheus-client` is not installed."""
    if not AVAILABLE:
        return None
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    # Arguments are evaluated in order: /metrics lists the families in this order.
    return Metrics(registry=registry, **_request_metrics(registry), **_key_metrics(registry), **_ledger_metrics(registry))


def _request_metrics(registry: Any) -> dict[str, Any]:
    """Requests, upstream calls, attempts, errors, and what is in flight now."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "requests": Labelled(Counter(
            "imagegate_requests", "Client requests by route, model, channel and status.",
            ["route", "model", "channel", "status"], registry=registry,
        )),
        "upstream_seconds": Labelled(Histogram(
            "imagegate_upstream_seconds", "Time of one upstream call, by channel.", ["channel"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )),
        "attempts": Labelled(Counter(
            "imagegate_attempts", "Channel attempts made for requests, by model.", ["model"], registry=registry
        )),
        "failovers": Labelled(Counter(
            "imagegate_failovers", "Attempts that moved on to another channel or round, by model.", ["model"],
            registry=registry,
        )),
        "in_flight": Gauge(
            "imagegate_in_flight_requests", "Client requests being served now.", registry=registry,
            multiprocess_mode="livesum",
        ),
        "async_tasks": Gauge(
            "imagegate_async_tasks_running", "Async tasks still generating.", registry=registry, multiprocess_mode="livesum"
        ),
        "image_bytes": Counter("imagegate_image_bytes_served", "Bytes of hosted images served.", registry=registry),
        "errors": Labelled(Counter(
            "imagegate_errors", "Error answers by error type and status.", ["type", "status"], registry=registry
        )),
    }


def _key_metrics(registry: Any) -> dict[str, Labelled]:
    """Per client key, by the key's name in the rules (never the key itself)."""
    from prometheus_client import Counter

    def counter(name: str, documentation: str, labels: list[str]) -> Labelled:
        return Labelled(Counter(name, documentation, labels, registry=registry))

    return {
        "key_requests": counter("imagegate_key_requests", "Image requests by client key name.", ["key"]),
        "key_images": counter("imagegate_key_images", "Images delivered by client key name.", ["key"]),
        "key_tokens": counter("imagegate_key_tokens", "Upstream tokens reported, by client key name and kind.", ["key", "kind"]),
        "images": counter(
            "imagegate_images", "Images delivered, by client key name, model and channel.", ["key", "model", "channel"]
        ),
        "cost": counter(
            "imagegate_cost_usd", "What delivered images cost at the models' prices (USD), by client key name, model "
            "and channel.", ["key", "model", "channel"],
        ),
    }


def _ledger_metrics(registry: Any) -> dict[str, Any]:
    """The ledger's (proxy.ledger): records written, lost to a full queue, lost to a failing database, and lag."""
    from prometheus_client import Counter, Histogram

    return {
        "ledger_written": Counter("imagegate_ledger_written", "Ledger records written to the database.", registry=registry),
        "ledger_dropped": Counter(
            "imagegate_ledger_dropped", "Ledger records dropped because the write queue was full.", registry=registry
        ),
        "ledger_write_failures": Counter(
            "imagegate_ledger_write_failures", "Ledger records lost because the database refused or failed the write.",
            registry=registry,
        ),
        "ledger_lag": Histogram(
            "imagegate_ledger_write_lag_seconds", "Time from a request's end to its ledger record's commit.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry,
        ),
    }
