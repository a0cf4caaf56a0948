"""GGUF files as Qwen2 weights: HF-named tensors, config and tokenizer, and conversion to a HF folder.

:class:`GGUFFile` reads a GGUF (v2/v3) through :mod:`tritonlm.model.gguf_reader` (the byte
format) and :mod:`tritonlm.model.gguf_quant` (block-quantized matrices kept as they are);
:func:`convert_gguf` writes the HF-layout folder HF ``transformers`` loads. Every failure to read
the file is a :class:`~tritonlm.errors.ModelLoadError` that names it.

Imports point one way (nothing here knows how a model is loaded or where the default one lives)::

    loader ──> default ──> gguf ──> gguf_reader, gguf_quant
       └───────────────────^
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonlm.errors import ConfigError, ModelLoadError
from tritonlm.kernels.dtypes import TORCH_DTYPES
from tritonlm.kernels.qweight import QuantizedWeight
from tritonlm.model.config import Qwen2Config
from tritonlm.model.gguf_quant import DECODERS, decode_blocks
from tritonlm.model.gguf_reader import GGUFFormatError, GGUFReader, TensorInfo
from tritonlm.model.tokenizer import Tokenizer

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
# Tensor types whose dequantization this module supports (the default model uses the first five).
SUPPORTED_GGUF_TYPES = ("F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K", "F16", "BF16", "Q4_0", "Q5_K", "Q8_K", "Q4_1", "Q5_1")

Tensor = torch.Tensor | QuantizedWeight


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

    def tensor(self, name: str, dtype: torch.dtype = torch.float32, *, keep_quantized: bool = False) -> Tensor:
        """One tensor under its GGUF name: dequantized to ``dtype``, or with ``keep_quantized`` a
        block-quantized matrix as :class:`QuantizedWeight` (no float copy). Q/K rows of ``llama``
        exports are un-permuted."""
        tensor: Tensor | None = self.quantized(name) if keep_quantized else None
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
    ) -> Iterator[tuple[str, Tensor]]:
        """HF-named tensors one at a time (keeps peak memory low); see :meth:`tensor`."""
        for name in self.tensors:
            hf_name = gguf_to_hf_name(name)
            if hf_name is not None:
                yield hf_name, self.tensor(name, dtype, keep_quantized=keep_quantized)

    def lazy_state_dict(self, *, keep_quantized: bool) -> Mapping[str, Tensor]:
        """HF-named tensors read from the file when looked up (float32 or quantized), so a model
        built from it never holds a second copy of its weights."""
        return _LazyState(self, keep_quantized)


class _LazyState(Mapping[str, Tensor]):
    def __init__(self, src: GGUFFile, keep_quantized: bool) -> None:
        self._src = src
        self._keep = keep_quantized
        self._names = {hf: name for name in src.tensors if (hf := gguf_to_hf_name(name)) is not None}

    def __getitem__(self, hf_name: str) -> Tensor:
        return self._src.tensor(self._names[hf_name], keep_quantized=self._keep)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _map_rows(tensor: Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Tensor:
    """``fn`` (a reordering of rows) applied to a tensor, or to every row-major part of a quantized one."""
    if isinstance(tensor, torch.Tensor):
        return fn(tensor)
    offsets = None if tensor.offsets is None else fn(tensor.offsets)
    return QuantizedWeight(fn(tensor.qweight), fn(tensor.scales), offsets, tensor.bits, tensor.group_size)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(tensors: Iterable[tuple[str, torch.Tensor]], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` (consumed one at a time) as a safetensors file, holding one tensor at a
    time: each tensor's bytes go to a scratch file beside ``path`` as it comes, then the header
    (which must lead the file and names every tensor's offsets) and those bytes form ``path``."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    scratch = path.with_name(path.name + ".data")
    try:
        with open(scratch, "wb") as data:
            for name, tensor in tensors:
                if tensor.dtype not in _SAFETENSORS_DTYPES:
                    raise ConfigError(f"{name}: dtype {tensor.dtype} cannot be written to safetensors here")
                raw = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
                data.write(memoryview(raw))
                header[name] = {
                    "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
                    "shape": list(tensor.shape),
                    "data_offsets": [offset, offset + raw.nbytes],
                }
                offset += raw.nbytes
                del raw, tensor
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        with open(path, "wb") as out, open(scratch, "rb") as data:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            shutil.copyfileobj(data, out, 1 << 24)
    finally:
        scratch.unlink(missing_ok=True)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Write a HF-layout folder (config.json, model.safetensors, tokenizer files) from a GGUF.

    HF ``transformers`` loads the result with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    The folder appears atomically: it is written to a temporary sibling, then renamed.
    """
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {tuple(TORCH_DTYPES)}")
    src = GGUFFile(gguf_path)
    config = src.config()
    tokenizer = src.tokenizer()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # one tensor in memory at a time (a dict of them all and save_file's buffer were two full copies)
        write_safetensors(src.state_dict(TORCH_DTYPES[dtype]), tmp / "model.safetensors", {"format": "pt"})
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


__all__ = [
    "SUPPORTED_GGUF_TYPES",
    "GGUFFile",
    "convert_gguf",
    "gguf_to_hf_name",
    "permute_qk",
    "unpermute_qk",
]
