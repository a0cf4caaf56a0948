"""Engine sizing options, validated on construction. No torch."""

from __future__ import annotations

from dataclasses import dataclass

from tritonlm.errors import ConfigError


def _check_positive(name: str, value: object, *, optional: bool = False, owner: str = "EngineConfig") -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner}.{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost. A request over a cap is refused with
    :class:`~tritonlm.errors.RequestTooLargeError`; a grammar over a budget with
    :class:`~tritonlm.errors.SchemaBudgetError` (the request fails alone, the engine goes on).

    Grammars compile on worker threads, never on the step loop; the budgets are checked while
    they compile. ``mask_time_budget_s`` bounds one grammar state's first token mask, which is
    computed during a step (the start state's mask is computed with the compile).
    """

    max_n: int = 64
    max_request_tokens: int = 65536  # n * max_tokens
    compile_time_budget_s: float = 10.0
    compile_size_budget: int = 200_000  # automaton states and expanded alternatives of one compile
    mask_time_budget_s: float = 2.0
    grammar_cache_bytes: int = 256 << 20  # compiled grammars kept for reuse, by their size

    def __post_init__(self) -> None:
        for name in ("max_n", "max_request_tokens", "compile_size_budget", "grammar_cache_bytes"):
            _check_positive(name, getattr(self, name), owner="RequestLimits")
        for name in ("compile_time_budget_s", "mask_time_budget_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"RequestLimits.{name}={value!r}: must be a positive number of seconds")


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizing. The KV cache gets ``num_kv_blocks`` blocks if given, else
    ``kv_cache_bytes``, else ``kv_cache_fraction`` of the free memory (never more than
    ``max_num_seqs`` full-length sequences need)."""

    block_size: int = 16
    kv_cache_bytes: int | None = None
    kv_cache_fraction: float = 0.1
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    limits: RequestLimits = RequestLimits()
    num_compile_workers: int = 2  # threads that compile grammars (prompts are tokenized on another)

    def __post_init__(self) -> None:
        _check_positive("block_size", self.block_size)
        _check_positive("kv_cache_bytes", self.kv_cache_bytes, optional=True)
        _check_positive("num_kv_blocks", self.num_kv_blocks, optional=True)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _check_positive("max_model_len", self.max_model_len, optional=True)
        _check_positive("num_compile_workers", self.num_compile_workers)
        if not isinstance(self.limits, RequestLimits):
            raise ConfigError(f"EngineConfig.limits must be RequestLimits, got {type(self.limits).__name__}")
        if not isinstance(self.kv_cache_fraction, (int, float)) or not 0 < self.kv_cache_fraction <= 0.95:
            raise ConfigError(f"EngineConfig.kv_cache_fraction={self.kv_cache_fraction!r}: must be in (0, 0.95]")
        if not isinstance(self.seed, int):
            raise ConfigError(f"EngineConfig.seed={self.seed!r}: must be an integer")


@dataclass(frozen=True)
class KVCachePlan:
    """How big the paged KV cache is, and the longest sequence it serves."""

    num_blocks: int
    max_model_len: int


def plan_kv_cache(config: EngineConfig, model_context: int, blocks_that_fit: int | None) -> KVCachePlan:
    """The cache for ``config`` over a model of ``model_context`` positions.

    ``blocks_that_fit``: the blocks the memory budget holds (capped at what ``max_num_seqs``
    full-length sequences need); None when ``config.num_kv_blocks`` fixes the count.
    """
    model_len = model_context
    if config.max_model_len is not None:
        if config.max_model_len > model_context:
            raise ConfigError(f"max_model_len={config.max_model_len} exceeds the model's context of {model_context}")
        model_len = config.max_model_len
    bs = config.block_size
    num_blocks = config.num_kv_blocks if config.num_kv_blocks is not None else blocks_that_fit
    if num_blocks is None or num_blocks < 1:
        raise ConfigError("the KV cache budget is smaller than one block")
    if config.max_model_len is None:
        model_len = min(model_len, num_blocks * bs)
    elif model_len > num_blocks * bs:
        raise ConfigError(f"max_model_len={model_len} does not fit the KV cache ({num_blocks} blocks of {bs} tokens)")
    return KVCachePlan(num_blocks, model_len)


def max_blocks_needed(config: EngineConfig, model_context: int) -> int:
    """Blocks for ``max_num_seqs`` sequences of the full context (the cache never needs more)."""
    model_len = config.max_model_len if config.max_model_len is not None else model_context
    return config.max_num_seqs * -(-model_len // config.block_size)


__all__ = ["EngineConfig", "KVCachePlan", "RequestLimits", "max_blocks_needed", "plan_kv_cache"]
