"""Adapter-test helper: a Job as the shell hands it to an adapter (proxy.input_images.plan_for).

The plan carries `output_format` (and `output_compression`) only when the channel's provider makes the
client's format itself; otherwise it carries the conversion the proxy owes.
"""

from __future__ import annotations

from dataclasses import replace

from proxy.adapters.base import AdapterSpec, Job
from proxy.core.plan import Plan, with_output_format
from proxy.core.rules import Channel


def channel_job(spec: AdapterSpec, plan: Plan, channel: Channel, api_key: str | None) -> Job:
    job = Job(plan, channel, api_key)
    return replace(job, plan=with_output_format(plan, spec.native_formats(job)))
