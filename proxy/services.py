"""Shell layer: what the handlers share, made once at start-up, and the keys it is stored under.

`rules` is the one field that changes while the proxy runs: a reload (SIGHUP) swaps it for new
requests, while requests in flight keep the rules they started with (they hold their own Plan).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.core.rules import Rules
from proxy.driver import Driver
from proxy.finish import Finisher
from proxy.guard import GuardedResolver, trusted_hosts
from proxy.image_store import ImageStore
from proxy.ledger import Ledger
from proxy.metrics import Metrics
from proxy.shared_state import Counters, Idempotency, MemoryCounters, MemoryIdempotency
from proxy.tasks import TaskStore
from proxy.webhooks import Webhooks


@dataclass
class Services:
    rules: Rules
    driver: Driver
    finisher: Finisher
    store: ImageStore
    tasks: TaskStore
    metrics: Metrics | None = None
    counters: Counters = field(default_factory=MemoryCounters)
    idempotency: Idempotency = field(default_factory=MemoryIdempotency)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    running_tasks: set[str] = field(default_factory=set)  # ids of the async tasks this process runs: leased
    draining: bool = False  # shutting down: /readyz answers 503 so balancers move traffic away
    resolver: GuardedResolver | None = None
    ledger: Ledger | None = None  # one record per image request (proxy.ledger); None in apps made without one
    webhooks: Webhooks | None = None  # signed deliveries of async tasks' ends, in the ledger's database
    started: int = field(default_factory=lambda: int(time.time()))  # `created` of the models the proxy lists

    def use_rules(self, rules: Rules) -> None:
        """Rules for new requests (a reload); download limits and trusted hosts follow them."""
        self.rules = rules
        self.driver.download = rules.server.download
        if self.resolver is not None:
            self.resolver.trusted = trusted_hosts(rules)
        if self.webhooks is not None:
            self.webhooks.resolver.trusted = frozenset(rules.server.webhooks.allow_hosts)


RULES = web.AppKey("rules", Rules)  # the rules the app started with
RULES_PATH = web.AppKey("rules_path", str)  # set when served from a file: SIGHUP re-reads it
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", ImageStore)
TASK_STORE = web.AppKey("task_store", TaskStore)
HOST_STATE = web.AppKey("host_state", Path)  # a worker's: the run directory whose state its siblings share
CLIENT_KEY = web.RequestKey("client_key", str)  # "" when the client sent none
JSON_FIELDS = web.RequestKey("json_fields", dict[str, Any])  # a JSON request's fields, as the client sent them
