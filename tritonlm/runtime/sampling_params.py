"""Per-request generation parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tritonlm.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. Validated on construction (``ConfigError`` on nonsense).

    ``temperature=0`` is greedy. ``top_k=0`` (or -1), ``top_p=1``, ``min_p=0`` and zero / unit
    penalties disable the corresponding transform. ``seed`` makes the sampled tokens a
    function of (seed, completion index, position) only, whatever else shares the batch.
    ``logprobs=k`` returns, per generated token, its logprob and the ``k`` most likely
    alternatives (``0`` = only the chosen token). At most one of ``json_schema``, ``regex``
    and ``choice`` constrains the output.
    """

    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    json_schema: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # accept lists (and a bare string for ``stop``) for convenience; store tuples
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is None:
            object.__setattr__(self, "stop", ())
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, list) or self.stop_token_ids is None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if isinstance(self.choice, list):
            object.__setattr__(self, "choice", tuple(self.choice))

        if not _is_int(self.n) or self.n < 1:
            raise ConfigError(f"SamplingParams.n={self.n!r}: must be an integer >= 1")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ConfigError(f"SamplingParams.max_tokens={self.max_tokens!r}: must be an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ConfigError(f"SamplingParams.temperature={self.temperature!r}: must be a finite number >= 0")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingParams.top_p={self.top_p!r}: must be in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ConfigError(f"SamplingParams.top_k={self.top_k!r}: must be an integer >= 0 (0 or -1 = off)")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise ConfigError(f"SamplingParams.min_p={self.min_p!r}: must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ConfigError(f"SamplingParams.{name}={value!r}: must be in [-2, 2]")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ConfigError(f"SamplingParams.repetition_penalty={self.repetition_penalty!r}: must be > 0")
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError(f"SamplingParams.seed={self.seed!r}: must be an integer or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"SamplingParams.stop={self.stop!r}: must be non-empty strings")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ConfigError(f"SamplingParams.stop_token_ids={self.stop_token_ids!r}: must be token ids")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            raise ConfigError(f"SamplingParams.logprobs={self.logprobs!r}: must be None or an integer in [0, 20]")
        if not isinstance(self.ignore_eos, bool) or not isinstance(self.skip_special_tokens, bool):
            raise ConfigError("SamplingParams.ignore_eos / skip_special_tokens must be booleans")
        constraints = [c for c in (self.json_schema, self.regex, self.choice) if c is not None]
        if len(constraints) > 1:
            raise ConfigError("SamplingParams: give at most one of json_schema, regex, choice")
        if self.json_schema is not None and not isinstance(self.json_schema, (dict, str, bool)):
            raise ConfigError("SamplingParams.json_schema: must be a dict (or its JSON text)")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ConfigError("SamplingParams.regex: must be a non-empty string")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) and c for c in self.choice)):
            raise ConfigError("SamplingParams.choice: must be a non-empty list of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_constraint(self) -> bool:
        return self.json_schema is not None or self.regex is not None or self.choice is not None

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
