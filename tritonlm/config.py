"""Runtime configuration: environment variables are read here and nowhere else.

Configuration objects are frozen dataclasses validated in ``__post_init__``; a bad value
raises :class:`~tritonlm.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tritonlm.errors import ConfigError

Backend = Literal["torch", "triton", "interpret"]
BACKENDS: tuple[str, ...] = ("torch", "triton", "interpret")
# The float dtypes by name: the one table (torch dtypes by these names: tritonlm.kernels.dtypes).
FLOAT_DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DTYPES: tuple[str, ...] = ("auto", *FLOAT_DTYPE_NAMES)  # auto: tritonlm.model.loader.auto_dtype
PROGRESS_MODES: tuple[str, ...] = ("auto", "bar", "lines", "off")  # tritonlm.progress
QUANTIZATIONS: tuple[str | None, ...] = ("auto", "gguf", "int8", "int4", None)


@dataclass(frozen=True)
class Environment:
    """A snapshot of the environment variables tritonlm honours."""

    cache_dir: Path  # TRITONLM_CACHE_DIR: derived data (constraint tables, compiled CPU kernels)
    models_dir: Path  # TRITONLM_MODELS_DIR: fetched model files (default: cache_dir / "models")
    backend: str | None  # TRITONLM_BACKEND; None means "pick by device"
    triton_interpret: bool  # TRITON_INTERPRET=1 (must be set before triton is imported)
    num_threads: int | None  # TRITONLM_NUM_THREADS
    api_key: str | None = field(default=None, repr=False)  # TRITONLM_API_KEY: `tritonlm serve`'s key
    quiet: bool = False  # TRITONLM_QUIET=1: no progress on stderr (tritonlm.progress)
    progress: str = "auto"  # TRITONLM_PROGRESS: auto, bar, lines or off

    @staticmethod
    def read() -> Environment:
        cache = os.environ.get("TRITONLM_CACHE_DIR")
        if cache:
            cache_dir = Path(cache).expanduser()
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            cache_dir = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tritonlm"
        models = os.environ.get("TRITONLM_MODELS_DIR")
        models_dir = Path(models).expanduser() if models else cache_dir / "models"
        backend = os.environ.get("TRITONLM_BACKEND") or None
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"TRITONLM_BACKEND={backend!r}: expected one of {BACKENDS}")
        threads = os.environ.get("TRITONLM_NUM_THREADS")
        num_threads: int | None = None
        if threads:
            try:
                num_threads = int(threads)
            except ValueError as exc:
                raise ConfigError(f"TRITONLM_NUM_THREADS={threads!r}: not an integer") from exc
            if num_threads < 1:
                raise ConfigError(f"TRITONLM_NUM_THREADS={threads!r}: must be >= 1")
        progress = os.environ.get("TRITONLM_PROGRESS") or "auto"
        if progress not in PROGRESS_MODES:
            raise ConfigError(f"TRITONLM_PROGRESS={progress!r}: expected one of {PROGRESS_MODES}")
        return Environment(
            cache_dir=cache_dir,
            models_dir=models_dir,
            backend=backend,
            triton_interpret=os.environ.get("TRITON_INTERPRET", "0") == "1",
            num_threads=num_threads,
            api_key=os.environ.get("TRITONLM_API_KEY") or None,
            quiet=os.environ.get("TRITONLM_QUIET", "0") not in ("", "0"),
            progress=progress,
        )


def env() -> Environment:
    """The current environment (read on each call, so tests may monkeypatch it)."""
    return Environment.read()


def resolve_backend(requested: str | None, device_type: str) -> str:
    """Pick the op backend: explicit request > TRITONLM_BACKEND > by device.

    ``torch`` runs anywhere; ``triton`` needs a CUDA device; ``interpret`` runs the Triton
    kernels through Triton's CPU interpreter and needs TRITON_INTERPRET=1 set before triton
    is first imported.
    """
    e = env()
    backend = requested or e.backend or ("triton" if device_type == "cuda" else "torch")
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend == "triton" and device_type != "cuda":
        raise ConfigError(f"backend='triton' needs a CUDA device, got device {device_type!r}")
    if backend == "interpret":
        if device_type != "cpu":
            raise ConfigError("backend='interpret' runs on the CPU only")
        if not e.triton_interpret:
            raise ConfigError("backend='interpret' needs TRITON_INTERPRET=1 set before triton is imported")
    return backend


@dataclass(frozen=True)
class ModelConfig:
    """How to load a model: where from, in what dtype, on what device, with which op backend."""

    model: str = "default"
    dtype: str = "auto"
    device: str = "cpu"
    backend: str | None = None
    max_model_len: int | None = None
    seed: int = 0
    deterministic: bool = False  # batch-invariant numerics (Qwen2ForCausalLM.batch_invariant)
    quantization: str | None = "auto"  # "auto", "gguf", "int8", "int4" or None (tritonlm.model.loader)

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization={self.quantization!r}: expected one of {QUANTIZATIONS}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(f"deterministic={self.deterministic!r}: expected a bool")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model={self.model!r}: expected a path, hub id or 'default'")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}: expected 'cpu' or 'cuda[:N]'")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: expected one of {BACKENDS}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 1):
            raise ConfigError(f"max_model_len={self.max_model_len!r}: must be a positive integer")
