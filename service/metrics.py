"""Prometheus text exposition of what the workers and the API record in Redis."""

from __future__ import annotations

from collections import Counter

from contract.jobs import (
    JOB_SECONDS,
    JOBS_COUNTER_KEY,
    STEP_SECONDS,
    Histogram,
    Status,
    as_text,
    queue_name,
)
from service.jobs import JobStore


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    """One metric family; each sample is (name suffix and labels, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{labels} {value:g}" for labels, value in samples]


async def _histogram(store: JobStore, h: Histogram) -> list[str]:
    raw = {as_text(k): float(v) for k, v in (await store.redis.hgetall(h.key)).items()}
    count = raw.get("count", 0.0)
    samples = [(f'_bucket{{le="{b}"}}', raw.get(f"le:{b}", 0.0)) for b in h.bounds]
    samples += [('_bucket{le="+Inf"}', count), ("_sum", raw.get("sum", 0.0)), ("_count", count)]
    return _family(h.name, "histogram", h.help, samples)


async def render_metrics(store: JobStore) -> str:
    jobs = await store.redis.hgetall(JOBS_COUNTER_KEY)
    entered = {as_text(k): int(v) for k, v in jobs.items()}
    models = sorted(await store.models())
    depth = [await store.redis.llen(queue_name(m)) for m in models]
    ready = Counter(b.model for b in await store.heartbeats() if b.ready)
    lines = _family(
        "ddnm_jobs_total",
        "counter",
        "Jobs that entered each status.",
        [(f'{{status="{s}"}}', entered.get(s.value, 0)) for s in Status],
    )
    lines += _family(
        "ddnm_queue_depth",
        "gauge",
        "Jobs waiting in each model's queue.",
        [(f'{{model="{m}"}}', d) for m, d in zip(models, depth, strict=True)],
    )
    lines += _family(
        "ddnm_workers_ready",
        "gauge",
        "Worker processes with their model loaded.",
        [(f'{{model="{m}"}}', ready[m]) for m in models],
    )
    for histogram in (STEP_SECONDS, JOB_SECONDS):
        lines += await _histogram(store, histogram)
    return "\n".join(lines) + "\n"
