"""Shell layer: the one production path every delivery mode shares (sync, async task, emulated stream).

    plan -> driver.generate (channels, failover, retries) -> finish.deliver (the client's formats)
         -> revised prompts for translated legacy models -> per-key usage counted -> Produced

A sync request renders the result as the ImagesResponse body, an async task stores that body, and a
stream by emulation turns the same result into completed events; so what a client gets, and what its
key is charged for, does not depend on how it asked to receive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from proxy.core.errors import ProxyError
from proxy.core.formats import Conversion
from proxy.core.plan import Plan
from proxy.core.pricing import Delivered, Price, cost, delivered, render_usd
from proxy.core.response import ImagesResult, render
from proxy.core.rules import Channel
from proxy.core.translate import with_revised_prompt
from proxy.driver import Attempt, Outcome, generate
from proxy.finish import Delivery, deliver, metadata
from proxy.observe import note
from proxy.services import Services


@dataclass(frozen=True)
class Produced:
    result: ImagesResult  # delivered in the client's format, revised prompts applied
    metadata: dict[str, Any]  # how it was made: models, channel, attempts, missing images
    cost: Decimal | None = None  # what the delivered images cost at the model's price (None: unpriced)

    def body(self, raw_base64: bool = False) -> dict[str, Any]:
        """The ImagesResponse body a sync request answers and an async task keeps.
        `raw_base64`: as core.response.render (a sync answer, encoded by proxy.core.json_body and sent at once)."""
        return render(self.result, int(time.time()), self.metadata, raw_base64)


@dataclass(frozen=True)
class Caller:
    """Who a production is for: the client's key (None: an open proxy, or a task taken over after a restart,
    which never holds a key) and the key's name for metrics (None: the key's own)."""

    key: str | None
    name: str | None = None


async def produce(
    services: Services, plan: Plan, caller: Caller, delivery: Delivery, attempt: Attempt | None = None,
    serves: Callable[[Channel], bool] | None = None,
) -> Produced:
    """The plan's images from its channels, in the client's format, counted against the client's key.
    `attempt` and `serves` as in driver.generate (an async task's checkpoints, a resumed task)."""
    outcome = await generate(services.driver, services.rules, plan, caller.key, attempt, serves)
    channel = services.rules.channels.get(outcome.channel)
    result, lost = await finish_result(services, plan, channel, outcome.conversion, outcome.result, delivery)
    outcome = Outcome(result, outcome.channel, outcome.attempts, outcome.failed + lost, outcome.conversion)
    served_by = plan.rule.upstream_for(outcome.channel, plan.model)
    images = delivered(result, plan.fields.get("size"), plan.fields.get("quality"), plan.rule.price)
    served = Served(plan.rule.pattern, outcome.channel, images, lost=len(lost))
    spent = count_usage(services, caller, served, result.usage, plan.rule.price)
    cost_field = {} if spent is None else {"cost_usd": render_usd(spent)}
    return Produced(result, {**metadata(outcome, plan.model, served_by, plan.n), **cost_field}, spent)


async def produce_body(
    services: Services, plan: Plan, caller: Caller, delivery: Delivery, attempt: Attempt | None = None,
    serves: Callable[[Channel], bool] | None = None, raw_base64: bool = False,
) -> tuple[dict[str, Any], Decimal | None]:
    """The ImagesResponse body (Produced.body) and what its images cost."""
    produced = await produce(services, plan, caller, delivery, attempt, serves)
    return produced.body(raw_base64), produced.cost


async def finish_result(
    services: Services,
    plan: Plan,
    channel: Channel | None,
    conversion: Conversion | None,
    result: ImagesResult,
    delivery: Delivery,
) -> tuple[ImagesResult, tuple[ProxyError, ...]]:
    """A channel's images in the client's formats with revised prompts applied (every answer that is not a
    relayed upstream stream ends here), and the images lost on the way."""
    here = delivery.from_channel(channel, services.rules.server.download) if channel is not None else delivery
    if here.conversion != conversion:
        here = replace(here, conversion=conversion)
    delivered, lost = await deliver(services.finisher, result, here)
    return with_revised_prompt(delivered, plan.client_prompt, plan.rule.translation), lost


def key_name(services: Services, client_key: str | None) -> str:
    client = services.rules.server.client(client_key)
    return client.name if client is not None else "anonymous"


@dataclass(frozen=True)
class Served:
    """What reached a client: the model rule that served it (its pattern: the names a glob serves are one
    metrics series, not one per name a client invents), the channel that made it, the images as priced."""

    model: str
    channel: str
    images: Sequence[Delivered]
    lost: int = 0  # images made but lost on the way to the client (not charged)


def note_served(served: Served, usage: Mapping[str, Any] | None, spent: Decimal | None) -> None:
    """What reached the client, for the access line and the ledger: images, reported tokens and cost."""
    tokens = {kind: value for kind in ("input_tokens", "output_tokens", "total_tokens")
              if isinstance(value := (usage or {}).get(kind), int) and not isinstance(value, bool)}
    note(images=len(served.images), cost_usd=None if spent is None else render_usd(spent), **tokens)


def count_usage(
    services: Services, caller: Caller, served: Served, usage: Mapping[str, Any] | None, price: Price | None
) -> Decimal | None:
    """Images, tokens and cost delivered to a key, for the metrics (by key name; images and cost also by
    model and channel). Returns what the images cost at the model's price (None: it has none)."""
    spent = cost(price, served.images, usage, served.lost)
    note_served(served, usage, spent)
    metrics = services.metrics
    if metrics is None:
        return spent
    name = caller.name or key_name(services, caller.key)
    metrics.key_images.labels(name).inc(len(served.images))
    metrics.images.labels(name, served.model, served.channel).inc(len(served.images))
    if spent is not None:
        metrics.cost.labels(name, served.model, served.channel).inc(float(spent))
    for kind in ("input_tokens", "output_tokens", "total_tokens"):
        value = (usage or {}).get(kind)
        if isinstance(value, int) and not isinstance(value, bool):
            metrics.key_tokens.labels(name, kind.removesuffix("_tokens")).inc(value)
    return spent
