"""Qwen2 model configuration, read from a HF ``config.json`` or from GGUF metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonlm.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class Qwen2Config:
    """The architecture hyper-parameters of a Qwen2 / Qwen2.5 decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    name: str = "qwen2"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Qwen2Config.{name}={value!r}: must be a positive integer")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"Qwen2Config.hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; give head_dim"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(f"Qwen2Config.head_dim={self.head_dim!r}: must be a positive even integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"Qwen2Config.num_key_value_heads={self.num_key_value_heads}: must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            raise ConfigError(f"Qwen2Config.rope_theta={self.rope_theta!r}: must be > 0")
        if not isinstance(self.rms_norm_eps, (int, float)) or not 0 < self.rms_norm_eps < 1:
            raise ConfigError(f"Qwen2Config.rms_norm_eps={self.rms_norm_eps!r}: must be in (0, 1)")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ConfigError(f"Qwen2Config.{name}={value!r}: must be a token id below vocab_size")
        for eos in self.eos_token_ids:
            if not (isinstance(eos, int) and 0 <= eos < self.vocab_size):
                raise ConfigError(f"Qwen2Config.eos_token_id={self.eos_token_id!r}: must be token ids below vocab_size")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim  # type: ignore[operator]

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim  # type: ignore[operator]

    # ---- HF config.json -------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> Qwen2Config:
        """From a parsed HF ``config.json`` (transformers 4 and 5 spellings)."""
        model_type = data.get("model_type", "qwen2")
        if model_type not in ("qwen2",):
            raise ConfigError(f"config.json model_type={model_type!r}: only 'qwen2' is supported")
        rope_theta = data.get("rope_theta")
        if rope_theta is None:
            rope_params = data.get("rope_parameters") or data.get("rope_scaling") or {}
            rope_theta = rope_params.get("rope_theta", 1_000_000.0)
        rope_type = (data.get("rope_parameters") or data.get("rope_scaling") or {}).get("rope_type", "default")
        if rope_type not in ("default", None):
            raise ConfigError(f"config.json rope_type={rope_type!r}: only default RoPE is supported")
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        for key in required:
            if key not in data:
                raise ConfigError(f"config.json: missing field {key!r}")
        return cls(
            vocab_size=data["vocab_size"],
            hidden_size=data["hidden_size"],
            intermediate_size=data["intermediate_size"],
            num_hidden_layers=data["num_hidden_layers"],
            num_attention_heads=data["num_attention_heads"],
            num_key_value_heads=data.get("num_key_value_heads", data["num_attention_heads"]),
            head_dim=data.get("head_dim"),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            max_position_embeddings=data.get("max_position_embeddings", 32768),
            bos_token_id=data.get("bos_token_id"),
            eos_token_id=data.get("eos_token_id"),
            pad_token_id=data.get("pad_token_id"),
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> Qwen2Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{path}: config.json not found") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: cannot read config.json ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: config.json is not a JSON object")
        return cls.from_hf_dict(data)

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """A ``config.json`` that HF ``Qwen2ForCausalLM`` loads."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "torch_dtype": torch_dtype,
        }

    # ---- GGUF metadata ----------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], *, vocab_size: int, has_output: bool) -> Qwen2Config:
        """From GGUF key/values (``qwen2.block_count`` etc.) already decoded to Python values.

        ``vocab_size`` is the embedding's row count; ``has_output`` whether ``output.weight``
        is stored (if not, the lm_head is tied to the embedding).
        """
        arch = meta.get("general.architecture")
        if arch != "qwen2":
            raise ConfigError(f"GGUF general.architecture={arch!r}: only 'qwen2' is supported")

        def get(key: str, default: Any = ...) -> Any:
            full = f"{arch}.{key}"
            if full in meta:
                return meta[full]
            if default is ...:
                raise ConfigError(f"GGUF metadata: missing field {full!r}")
            return default

        num_heads = int(get("attention.head_count"))
        hidden = int(get("embedding_length"))
        head_dim = meta.get(f"{arch}.attention.key_length")
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=num_heads,
            num_key_value_heads=int(get("attention.head_count_kv", num_heads)),
            head_dim=int(head_dim) if head_dim is not None else None,
            rope_theta=_f32(get("rope.freq_base", 10000.0)),
            rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-6)),
            tie_word_embeddings=not has_output,
            max_position_embeddings=int(get("context_length", 32768)),
            bos_token_id=_opt_int(meta.get("tokenizer.ggml.bos_token_id")),
            eos_token_id=_opt_int(meta.get("tokenizer.ggml.eos_token_id")),
            pad_token_id=_opt_int(meta.get("tokenizer.ggml.padding_token_id")),
            name=str(meta.get("general.name", "qwen2")),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


def _f32(value: Any) -> float:
    """A float32 GGUF value as the shortest decimal that round-trips (9.99999997e-07 -> 1e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
