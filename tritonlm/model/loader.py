"""Load Qwen2 weights and tokenizer from a HF folder, a GGUF file, a hub id, or the default model.

:func:`load_model` is the entry point: it resolves ``model`` to a file or folder (the default
model through :mod:`tritonlm.model.default`, a hub id through ``huggingface_hub``), reads its
weights (a GGUF through :mod:`tritonlm.model.gguf`, a HF folder's safetensors here), optionally
quantizes them, and builds a :class:`~tritonlm.model.qwen2.Qwen2ForCausalLM`. Every failure to
read a file is a :class:`ModelLoadError` that names the file.

Imports point one way (this module is the top of the model package's loading path)::

    loader ──> default ──> gguf ──> gguf_reader, gguf_quant
       └───────────────────^
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tritonlm.config import QUANTIZATIONS, resolve_backend  # QUANTIZATIONS "auto": .gguf -> "gguf", folder -> None
from tritonlm.errors import ConfigError, ModelLoadError
from tritonlm.kernels import Ops, get_ops
from tritonlm.kernels.dtypes import resolve_dtype
from tritonlm.kernels.qweight import QuantizedWeight, quantize_rtn
from tritonlm.model.config import Qwen2Config
from tritonlm.model.default import ensure_default_gguf, ensure_default_model
from tritonlm.model.gguf import GGUFFile
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.model.tokenizer import Tokenizer
from tritonlm.threads import call_on_fresh_thread


# ---------------------------------------------------------------------------------------------
# HF folders
# ---------------------------------------------------------------------------------------------
class _SafetensorsState(Mapping[str, torch.Tensor]):
    """The tensors of safetensors files, each read (and cast to ``dtype``) when looked up, so a
    model built from it never holds a second copy of its weights: a float32 file loaded as
    bfloat16 holds one float32 tensor at a time. Each lookup maps the file afresh and unmaps it
    after (a mapping kept open would keep every page read so far resident)."""

    def __init__(self, files: list[Path], dtype: torch.dtype) -> None:
        from safetensors import SafetensorError, safe_open

        self._dtype = dtype
        self._where: dict[str, Path] = {}
        for f in files:
            if not f.exists():
                raise ModelLoadError(f"{f}: weight shard missing")
            try:
                with safe_open(str(f), framework="pt") as handle:
                    names = list(handle.keys())
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise ModelLoadError(f"{f}: cannot read safetensors ({exc})") from exc
            self._where.update(dict.fromkeys(names, f))

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        path = self._where[name]
        try:
            with safe_open(str(path), framework="pt") as handle:
                t = handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: cannot read {name} ({exc})") from exc
        return t if t.dtype == self._dtype else t.to(self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_safetensors_folder(folder: str | Path, dtype: torch.dtype) -> Mapping[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` or of a sharded ``model.safetensors.index.json``, in
    ``dtype``, read from disk as each is looked up (headers checked here)."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index}: invalid safetensors index ({exc})") from exc
        files = [folder / f for f in sorted(set(weight_map.values()))]
    else:
        raise ModelLoadError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    return _SafetensorsState(files, dtype)


def quantize_state_dict(
    state: Mapping[str, torch.Tensor | QuantizedWeight], bits: int, group_size: int = 32
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """Round-to-nearest ``bits``-bit groups for every matrix (projections, embedding, lm_head)
    of a float state dict; quantized entries are dequantized first (re-quantized)."""
    out: dict[str, torch.Tensor | QuantizedWeight] = {}
    for name, t in state.items():
        if name.endswith(("_proj.weight", "embed_tokens.weight", "lm_head.weight")):
            dense = t.dequantize(torch.float32) if isinstance(t, QuantizedWeight) else t
            t = quantize_rtn(dense, bits, group_size)
        out[name] = t
    return out


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model ready to run: weights on the device plus its tokenizer."""

    model: Qwen2ForCausalLM
    tokenizer: Tokenizer
    name: str

    @property
    def config(self) -> Qwen2Config:
        return self.model.config


def auto_dtype(quantization: str | None, device: torch.device) -> torch.dtype:
    """``dtype="auto"``: float32 activations for quantized weights on the CPU (the weights' bytes
    dominate there, and float32 activations keep greedy outputs closest to the float model:
    benches/RESULTS.md), bfloat16 otherwise."""
    return torch.float32 if quantization is not None and device.type == "cpu" else torch.bfloat16


def load_model(
    model: str | Path = "default",
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    backend: str | None = None,
    ops: Ops | None = None,
    deterministic: bool = False,
    quantization: str | None = "auto",
) -> LoadedModel:
    """Load ``model``: ``"default"``, a HF folder, a ``.gguf`` file, or a hub id (huggingface_hub).

    ``quantization``: ``"gguf"`` (the default for a .gguf file) keeps the file's block-quantized
    matrices as they are (:mod:`tritonlm.model.gguf_quant`; the default model is read from its
    GGUF); ``"int8"`` / ``"int4"`` quantize every matrix at load (round to nearest, groups of
    32); ``None`` (the default for a HF folder) holds dense weights in ``dtype``: a GGUF is then
    dequantized, and the default model is read from a float32 folder converted once.
    ``dtype`` is the activation dtype either way: a name of :data:`tritonlm.config.DTYPES` or a
    torch dtype (``"auto"``: see :func:`auto_dtype`).
    ``deterministic``: batch-invariant numerics (see :class:`Qwen2ForCausalLM`).
    """
    # parallel work (unpacking, repacking) on a thread that exits: see tritonlm.threads
    return call_on_fresh_thread(
        lambda: _load_model(model, dtype, device, backend, ops, deterministic, quantization), name="tritonlm-load"
    )


def _load_model(
    model: str | Path,
    dtype: str | torch.dtype,
    device: str | torch.device,
    backend: str | None,
    ops: Ops | None,
    deterministic: bool,
    quantization: str | None,
) -> LoadedModel:
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r}: expected one of {QUANTIZATIONS}")
    device = torch.device(device)
    if ops is None:
        ops = get_ops(resolve_backend(backend, device.type))
    path = _model_path(model, quantization)
    if quantization == "auto":
        quantization = "gguf" if path.is_file() else None
    torch_dtype = auto_dtype(quantization, device) if dtype == "auto" else resolve_dtype(dtype)
    config, state, tokenizer = _read_weights(path, quantization, torch_dtype)
    if quantization in ("int8", "int4"):
        state = quantize_state_dict(state, 8 if quantization == "int8" else 4)
    if not tokenizer.eos_token_ids and config.eos_token_ids:
        tokenizer.eos_token_ids = config.eos_token_ids
    net = Qwen2ForCausalLM(config, state, dtype=torch_dtype, device=device, ops=ops, batch_invariant=deterministic)
    return LoadedModel(model=net, tokenizer=tokenizer, name=str(model))


def _model_path(model: str | Path, quantization: str | None) -> Path:
    """The file or folder ``model`` names: the default model's GGUF (or, for dense weights, its
    converted folder), a hub snapshot for an id like ``org/name`` that is not a local path."""
    name = str(model)
    path = Path(model).expanduser()
    if name == "default":
        return ensure_default_gguf() if quantization in ("auto", "gguf") else ensure_default_model()
    if not path.exists() and "/" in name and not name.startswith((".", "/", "~")):
        return _download_from_hub(name)
    return path


def _read_weights(
    path: Path, quantization: str | None, dtype: torch.dtype
) -> tuple[Qwen2Config, Mapping[str, torch.Tensor | QuantizedWeight], Tokenizer]:
    """Config, weights and tokenizer of a .gguf file or a HF folder (``quantization`` resolved:
    not ``"auto"``). A GGUF's tensors are read lazily; a folder's are loaded in ``dtype`` (float32
    when they are quantized next)."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: expected a .gguf file or a HF model folder")
        src = GGUFFile(path)
        return src.config(), src.lazy_state_dict(keep_quantized=quantization == "gguf"), src.tokenizer()
    if path.is_dir():
        if quantization == "gguf":
            raise ConfigError(f"quantization='gguf' needs a .gguf file, {path} is a folder")
        config = Qwen2Config.from_json_file(path / "config.json")
        state = load_safetensors_folder(path, dtype if quantization is None else torch.float32)
        return config, state, Tokenizer.from_dir(path, vocab_size=config.vocab_size)
    raise ModelLoadError(f"{path}: no such model file or folder")


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelLoadError(
            f"{repo_id}: not a local path, and huggingface_hub is not installed to fetch it "
            "(pip install 'tritonlm[hub]')"
        ) from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as exc:
        raise ModelLoadError(f"{repo_id}: cannot download from the hub ({type(exc).__name__}: {exc})") from exc
