"""``/metrics``: the server's request counters and the engine's gauges in Prometheus text format.

:class:`RequestCounters` is owned by one server and mutated only from its event loop (one
:meth:`RequestCounters.account` per finished, failed or aborted request). The engine's side
comes from :meth:`LLM.metrics` as a snapshot; nothing here reads engine internals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tritonlm.runtime.metrics import EngineMetrics
from tritonlm.runtime.outputs import RequestOutput

# (labels, value) pairs of one metric family
Samples = list[tuple[str, float]]


@dataclass
class RequestCounters:
    """Requests by outcome and the tokens they used, since ``started`` (a Unix time)."""

    requests_ok: int = 0
    requests_failed: int = 0
    requests_aborted: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.time)

    def account(self, output: RequestOutput | None) -> None:
        """Count one request that ended; ``None`` is a request the client abandoned."""
        if output is None:
            self.requests_aborted += 1
            return
        if output.error is not None:
            self.requests_failed += 1
        elif any(c.finish_reason == "abort" for c in output.outputs):
            self.requests_aborted += 1
        else:
            self.requests_ok += 1
        self.prompt_tokens += output.usage.prompt_tokens
        self.cached_prompt_tokens += output.usage.cached_prompt_tokens
        self.completion_tokens += output.usage.completion_tokens

    def account_rejected(self) -> None:
        """Count a request the engine refused before generating anything."""
        self.requests_failed += 1

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _families(counters: RequestCounters, engine: EngineMetrics) -> list[tuple[str, str, str, Samples]]:
    """(name, type, help, samples) of every exported metric, in output order."""
    c = counters
    return [
        (
            "tritonlm_requests_total",
            "counter",
            "Finished requests by status",
            [
                ('{status="ok"}', c.requests_ok),
                ('{status="error"}', c.requests_failed),
                ('{status="aborted"}', c.requests_aborted),
            ],
        ),
        ("tritonlm_prompt_tokens_total", "counter", "Prompt tokens processed", [("", c.prompt_tokens)]),
        ("tritonlm_completion_tokens_total", "counter", "Completion tokens generated", [("", c.completion_tokens)]),
        ("tritonlm_requests_running", "gauge", "Requests in the running batch", [("", engine.num_requests_running)]),
        ("tritonlm_requests_waiting", "gauge", "Requests waiting to be scheduled", [("", engine.num_requests_waiting)]),
        ("tritonlm_batch_size", "gauge", "Requests in the last engine step", [("", engine.last_batch_size)]),
        ("tritonlm_engine_steps_total", "counter", "Engine steps run", [("", engine.num_steps)]),
        ("tritonlm_kv_blocks_total", "gauge", "KV cache blocks", [("", engine.num_kv_blocks)]),
        (
            "tritonlm_kv_blocks_used",
            "gauge",
            "KV cache blocks referenced by requests",
            [("", engine.num_kv_blocks_used)],
        ),
        (
            "tritonlm_prefix_cache_hit_blocks_total",
            "counter",
            "Prompt blocks served from the prefix cache",
            [("", engine.num_prefix_cache_hit_blocks)],
        ),
        (
            "tritonlm_prefix_cache_hit_rate",
            "gauge",
            "Prompt tokens served from the prefix cache / prompt tokens",
            [("", c.prefix_cache_hit_rate)],
        ),
    ]


def render_metrics(counters: RequestCounters, engine: EngineMetrics) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``counters`` and ``engine``."""
    lines: list[str] = []
    for name, kind, help_text, samples in _families(counters, engine):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines) + "\n"


__all__ = ["RequestCounters", "render_metrics"]
