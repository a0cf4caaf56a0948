"""Resource tracking for provider calls: real token usage, call count, latency, and limits.

Accounting is by reservation so that concurrent calls cannot jointly overshoot a limit:
before a call the tracker reserves one LLM call and the call's worst-case tokens (its prompt
tokens when the provider can count them, plus its ``max_tokens``); a call that would take the
used-plus-reserved total past a limit is refused with :class:`ResourceLimitExceeded` and never
reaches the provider. When the call ends the reservation is replaced by the usage the engine
or server reported. ``max_wall_s`` is a budget from the tracker's first call: a call is refused
once it is spent, and a call still running when it runs out is cancelled.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tritonlm.providers.base import TokenUsage
from tritonlm.providers.errors import ResourceLimitExceeded


class ResourceLimits(BaseModel):
    """Upper bounds over everything a tracker has seen; ``None`` = unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, description="prompt + completion tokens over all calls")
    max_llm_calls: int | None = Field(default=None, ge=1)
    max_wall_s: float | None = Field(default=None, gt=0, description="seconds from the first call")


@dataclass(frozen=True)
class CallRecord:
    """One finished provider call: real token usage (None when the provider reported none),
    latency in seconds, and whether it succeeded."""

    usage: TokenUsage | None
    latency_s: float
    ok: bool


@dataclass(frozen=True)
class ResourceUsage:
    """A snapshot of a tracker's totals."""

    llm_calls: int
    failed_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_latency_s: float
    wall_s: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def mean_latency_s(self) -> float:
        return self.total_latency_s / self.llm_calls if self.llm_calls else 0.0


@dataclass(frozen=True)
class Reservation:
    """What :meth:`ResourceTracker.reserve` set aside for one call in flight."""

    tokens: int
    started_at: float


class ResourceTracker:
    """Counts provider calls and their real usage, and enforces :class:`ResourceLimits`.

    Thread-safe. ``llm_calls`` counts calls that reached the provider (failed ones included:
    they may have cost tokens); refused calls are not counted.
    """

    def __init__(self, limits: ResourceLimits | None = None) -> None:
        self.limits = limits or ResourceLimits()
        self._lock = threading.Lock()
        self._records: list[CallRecord] = []
        # running totals of the finished calls (the records are kept for inspection)
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._failed_calls = 0
        self._total_latency_s = 0.0
        self._reserved_tokens = 0
        self._in_flight = 0
        self._first_call_at: float | None = None

    # ---- the call protocol ------------------------------------------------------------------
    def reserve(self, *, max_completion_tokens: int, prompt_tokens: int | None = None) -> Reservation:
        """Reserve one call; raises ResourceLimitExceeded when it would exceed a limit."""
        worst_case = max_completion_tokens + (prompt_tokens or 0)
        now = time.perf_counter()
        limits = self.limits
        with self._lock:
            if limits.max_wall_s is not None and self._first_call_at is not None:
                elapsed = now - self._first_call_at
                if elapsed >= limits.max_wall_s:
                    raise ResourceLimitExceeded(
                        f"the wall-clock budget of {limits.max_wall_s}s is spent ({elapsed:.3f}s elapsed)",
                        limit="max_wall_s",
                    )
            calls = len(self._records) + self._in_flight
            if limits.max_llm_calls is not None and calls + 1 > limits.max_llm_calls:
                raise ResourceLimitExceeded(
                    f"another call would exceed max_llm_calls={limits.max_llm_calls} ({calls} made or in flight)",
                    limit="max_llm_calls",
                )
            committed = self._prompt_tokens + self._completion_tokens + self._reserved_tokens
            if limits.max_tokens is not None and committed + worst_case > limits.max_tokens:
                raise ResourceLimitExceeded(
                    f"a call of up to {worst_case} tokens would exceed max_tokens={limits.max_tokens} "
                    f"({committed} used or reserved)",
                    limit="max_tokens",
                )
            if self._first_call_at is None:
                self._first_call_at = now
            self._in_flight += 1
            self._reserved_tokens += worst_case
            return Reservation(tokens=worst_case, started_at=now)

    def remaining_wall_s(self) -> float | None:
        """Seconds left of the wall-clock budget (None when there is no such limit)."""
        if self.limits.max_wall_s is None:
            return None
        with self._lock:
            start = self._first_call_at
        if start is None:
            return self.limits.max_wall_s
        return max(0.0, self.limits.max_wall_s - (time.perf_counter() - start))

    def settle(self, reservation: Reservation, usage: TokenUsage | None, *, ok: bool) -> CallRecord:
        """Replace a reservation by the call's real usage."""
        record = CallRecord(usage=usage, latency_s=time.perf_counter() - reservation.started_at, ok=ok)
        with self._lock:
            self._in_flight -= 1
            self._reserved_tokens -= reservation.tokens
            self._records.append(record)
            if usage is not None:
                self._prompt_tokens += usage.prompt_tokens
                self._completion_tokens += usage.completion_tokens
            self._failed_calls += not ok
            self._total_latency_s += record.latency_s
        return record

    # ---- reading --------------------------------------------------------------------------------
    @property
    def records(self) -> tuple[CallRecord, ...]:
        with self._lock:
            return tuple(self._records)

    @property
    def usage(self) -> ResourceUsage:
        with self._lock:
            start = self._first_call_at
            return ResourceUsage(
                llm_calls=len(self._records),
                failed_calls=self._failed_calls,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                total_latency_s=self._total_latency_s,
                wall_s=0.0 if start is None else time.perf_counter() - start,
            )

    def reset(self) -> None:
        """Forget every finished call and restart the wall clock (calls in flight stay reserved)."""
        with self._lock:
            self._records.clear()
            self._prompt_tokens = self._completion_tokens = self._failed_calls = 0
            self._total_latency_s = 0.0
            self._first_call_at = None if self._in_flight == 0 else time.perf_counter()


__all__ = ["CallRecord", "Reservation", "ResourceLimits", "ResourceTracker", "ResourceUsage"]
