"""Load Qwen2 weights and tokenizer from a HF folder, a GGUF file, a hub id, or the default model.

Every failure to read a file is a :class:`ModelLoadError` that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonlm.config import QUANTIZATIONS  # "auto": "gguf" for a .gguf file, None for a HF folder
from tritonlm.errors import ConfigError, ModelLoadError
from tritonlm.kernels import Ops, get_ops
from tritonlm.kernels.qweight import QuantizedWeight, quantize_rtn
from tritonlm.model.config import Qwen2Config
from tritonlm.model.gguf_quant import DECODERS, decode_blocks
from tritonlm.model.gguf_reader import GGUFFormatError, GGUFReader, TensorInfo
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.model.tokenizer import Tokenizer

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# GGUF tensor name (after "blk.{i}.") -> HF name (after "model.layers.{i}.")
_GGUF_LAYER_NAMES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Tensor types whose dequantization this loader supports (the default model uses the first five).
SUPPORTED_GGUF_TYPES = ("F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K", "F16", "BF16", "Q4_0", "Q5_K", "Q8_K", "Q4_1", "Q5_1")


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None if unknown."""
    if name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_qk(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation for interleaved-RoPE ("llama") exports.

    llama.cpp's converter reorders each head's rows from rotate-half order
    ``[r0..r(d/2-1), i0..i(d/2-1)]`` to interleaved ``[r0, i0, r1, i1, ...]``. Qwen2 GGUFs use
    NeoX (rotate-half) RoPE and are *not* permuted; this is applied only to ``llama`` exports.
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def permute_qk(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The permutation llama.cpp applies (inverse of :func:`unpermute_qk`)."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------
class GGUFFile:
    """A parsed GGUF file: metadata as Python values, tensors read from the file when asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such GGUF file")
        try:
            self._reader = GGUFReader(self.path)
        except (GGUFFormatError, OSError, UnicodeDecodeError, struct.error) as exc:
            message = str(exc) if str(exc).startswith("truncated") else f"not a readable GGUF file ({exc})"
            raise ModelLoadError(f"{self.path}: {message}") from exc
        self.metadata: dict[str, Any] = self._reader.metadata
        self.tensors: dict[str, TensorInfo] = self._reader.tensors

    def config(self) -> Qwen2Config:
        embed = self.tensors.get("token_embd.weight")
        if embed is None:
            raise ModelLoadError(f"{self.path}: no token_embd.weight tensor")
        vocab = int(embed.shape[-1])  # fastest-first: [hidden, vocab]
        try:
            return Qwen2Config.from_gguf_metadata(
                self.metadata, vocab_size=vocab, has_output="output.weight" in self.tensors
            )
        except ConfigError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from exc

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_gguf_metadata(self.metadata)

    def _type_name(self, name: str) -> str:
        import gguf

        return gguf.GGMLQuantizationType(self.tensors[name].type_id).name

    def dequantize(self, name: str) -> np.ndarray:
        """One tensor as float32 numpy in PyTorch layout (``[out, in]`` for matrices)."""
        import gguf

        t = self.tensors[name]
        type_name = self._type_name(name)
        if type_name not in SUPPORTED_GGUF_TYPES:
            raise ModelLoadError(f"{self.path}: tensor {name} has unsupported type {type_name}")
        try:
            raw = self._reader.read_rows(name)
            if type_name == "F32":
                arr = raw.view(np.float32)
            elif type_name == "F16":
                arr = raw.view(np.float16).astype(np.float32)
            else:
                arr = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: cannot dequantize {name} ({type(exc).__name__}: {exc})") from exc
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        return arr.reshape(shape)

    def quantized(self, name: str) -> QuantizedWeight | None:
        """A quantized matrix exactly as stored (see :mod:`tritonlm.model.gguf_quant`), or None
        when the tensor is not a matrix of a block-quantized type."""
        t = self.tensors[name]
        type_name = self._type_name(name)
        if type_name not in DECODERS or len(t.shape) != 2:
            return None
        shape = (int(t.shape[1]), int(t.shape[0]))  # GGUF lists dims fastest-first
        try:
            return decode_blocks(type_name, lambda a, b: self._reader.read_rows(name, a, b), shape)
        except (ValueError, KeyError, OSError) as exc:
            raise ModelLoadError(f"{self.path}: cannot read {type_name} tensor {name} ({exc})") from exc

    def tensor(
        self, name: str, dtype: torch.dtype = torch.float32, *, keep_quantized: bool = False
    ) -> torch.Tensor | QuantizedWeight:
        """One tensor under its GGUF name: dequantized to ``dtype``, or with ``keep_quantized`` a
        block-quantized matrix as :class:`QuantizedWeight` (no float copy). Q/K rows of ``llama``
        exports are un-permuted."""
        tensor: torch.Tensor | QuantizedWeight | None = self.quantized(name) if keep_quantized else None
        if tensor is None:
            tensor = torch.from_numpy(np.ascontiguousarray(self.dequantize(name))).to(dtype)
        if self.metadata.get("general.architecture") == "llama":
            config = self.config()
            if name.endswith(("attn_q.weight", "attn_q.bias")):
                tensor = _map_rows(tensor, lambda t: unpermute_qk(t, config.num_attention_heads))
            elif name.endswith(("attn_k.weight", "attn_k.bias")):
                tensor = _map_rows(tensor, lambda t: unpermute_qk(t, config.num_key_value_heads))
        return tensor

    def state_dict(
        self, dtype: torch.dtype = torch.float32, *, keep_quantized: bool = False
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        """HF-named tensors one at a time (keeps peak memory low); see :meth:`tensor`."""
        for name in self.tensors:
            hf_name = gguf_to_hf_name(name)
            if hf_name is not None:
                yield hf_name, self.tensor(name, dtype, keep_quantized=keep_quantized)

    def lazy_state_dict(self, *, keep_quantized: bool) -> Mapping[str, torch.Tensor | QuantizedWeight]:
        """HF-named tensors read from the file when looked up (float32 or quantized), so a model
        built from it never holds a second copy of its weights."""
        return _LazyState(self, keep_quantized)


class _LazyState(Mapping):
    def __init__(self, src: GGUFFile, keep_quantized: bool) -> None:
        self._src = src
        self._keep = keep_quantized
        self._names = {hf: name for name in src.tensors if (hf := gguf_to_hf_name(name)) is not None}

    def __getitem__(self, hf_name: str) -> torch.Tensor | QuantizedWeight:
        return self._src.tensor(self._names[hf_name], keep_quantized=self._keep)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _map_rows(tensor: torch.Tensor | QuantizedWeight, fn: Any) -> torch.Tensor | QuantizedWeight:
    """``fn`` (a reordering of rows) applied to a tensor, or to every row-major part of a quantized one."""
    if isinstance(tensor, torch.Tensor):
        return fn(tensor)
    offsets = None if tensor.offsets is None else fn(tensor.offsets)
    return QuantizedWeight(fn(tensor.qweight), fn(tensor.scales), offsets, tensor.bits, tensor.group_size)


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


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Write a HF-layout folder (config.json, model.safetensors, tokenizer files) from a GGUF.

    HF ``transformers`` loads the result with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    The folder appears atomically: it is written to a temporary sibling, then renamed.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {tuple(DTYPES)}")
    src = GGUFFile(gguf_path)
    config = src.config()
    tokenizer = src.tokenizer()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors = dict(src.state_dict(DTYPES[dtype]))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(torch_dtype=dtype), indent=2))
        generation = {"bos_token_id": config.bos_token_id, "eos_token_id": list(tokenizer.eos_token_ids)}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tokenizer.save(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# HF folders
# ---------------------------------------------------------------------------------------------
def load_safetensors_folder(folder: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of a sharded ``model.safetensors.index.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"{f}: weight shard missing")
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{f}: cannot read safetensors ({exc})") from exc
        for name, t in tensors.items():
            out[name] = t if t.dtype == dtype else t.to(dtype)
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


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype={dtype}: expected one of {tuple(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {tuple(DTYPES)}")
    return DTYPES[dtype]


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
    ``dtype`` is the activation dtype either way (``"auto"``: see :func:`auto_dtype`).
    ``deterministic``: batch-invariant numerics (see :class:`Qwen2ForCausalLM`).
    """
    from tritonlm.threads import call_on_fresh_thread

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
    from tritonlm.config import resolve_backend

    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r}: expected one of {QUANTIZATIONS}")
    device = torch.device(device)
    if ops is None:
        ops = get_ops(resolve_backend(backend, device.type))
    name = str(model)
    path = Path(model).expanduser()
    if name == "default":
        from tritonlm.model.default import ensure_default_gguf, ensure_default_model

        path = ensure_default_gguf() if quantization in ("auto", "gguf") else ensure_default_model()
    elif not path.exists() and "/" in name and not name.startswith((".", "/", "~")):
        path = _download_from_hub(name)
    if quantization == "auto":
        quantization = "gguf" if path.is_file() else None
    torch_dtype = auto_dtype(quantization, device) if dtype == "auto" else resolve_dtype(dtype)
    state: Mapping[str, torch.Tensor | QuantizedWeight]
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: expected a .gguf file or a HF model folder")
        src = GGUFFile(path)
        config = src.config()
        state = src.lazy_state_dict(keep_quantized=quantization == "gguf")
        tokenizer = src.tokenizer()
    elif path.is_dir():
        if quantization == "gguf":
            raise ConfigError(f"quantization='gguf' needs a .gguf file, {path} is a folder")
        config = Qwen2Config.from_json_file(path / "config.json")
        state = load_safetensors_folder(path, torch_dtype if quantization is None else torch.float32)
        tokenizer = Tokenizer.from_dir(path, vocab_size=config.vocab_size)
    else:
        raise ModelLoadError(f"{path}: no such model file or folder")
    if quantization in ("int8", "int4"):
        state = quantize_state_dict(state, 8 if quantization == "int8" else 4)
    if not tokenizer.eos_token_ids and config.eos_token_ids:
        tokenizer.eos_token_ids = config.eos_token_ids
    net = Qwen2ForCausalLM(config, state, dtype=torch_dtype, device=device, ops=ops, batch_invariant=deterministic)
    return LoadedModel(model=net, tokenizer=tokenizer, name=name)


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
