"""Engine counters: :class:`EngineStats` (mutated by the engine each step) and
:class:`EngineMetrics` (a frozen snapshot for monitoring, e.g. the server's ``/metrics``). No torch."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Per-step history, owned and mutated by the engine loop only."""

    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # requests per step
    batch_tokens: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # tokens per step
    num_steps: int = 0
    num_closed_early: int = 0  # constrained outputs completed by the grammar to fit their budget


@dataclass(frozen=True)
class EngineMetrics:
    """The engine's state at one moment (read without stopping the loop: each field is current,
    the set of them may straddle a step)."""

    num_requests_running: int  # sequences in the running batch (a request with n > 1 counts n)
    num_requests_waiting: int  # sequences waiting to be scheduled
    last_batch_size: int  # sequences in the last step (0 before the first)
    num_steps: int
    num_preemptions: int
    num_closed_early: int
    num_kv_blocks: int
    num_kv_blocks_used: int  # blocks referenced by requests (free and cached blocks excluded)
    num_prefix_cache_hit_blocks: int  # prompt blocks served from the prefix cache, in total
    max_model_len: int


@dataclass(frozen=True)
class EngineHealth:
    """Whether the engine loop serves requests: ``ok`` False once it has failed or closed, or when
    it holds work but has not finished a step for longer than the stall limit; ``detail`` says why."""

    ok: bool
    detail: str


__all__ = ["EngineHealth", "EngineMetrics", "EngineStats"]
