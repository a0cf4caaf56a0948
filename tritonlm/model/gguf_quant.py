"""GGUF quantized blocks -> :class:`~tritonlm.kernels.qweight.QuantizedWeight`, without float copies.

Each decoder reads a tensor's raw blocks (uint8 ``[rows, blocks_per_row * block_bytes]``) with
numpy and returns the integer values, per-group scales and offsets that reproduce llama.cpp's
dequantization exactly (``w = q * scale + offset`` with the scale products exact in float32):

=========  ===========================  =====  =====  =======================================
type       per block                    bits   group  w
=========  ===========================  =====  =====  =======================================
Q8_0       32 x int8, f16 d             8      32     d * q
Q5_0       32 x 5-bit, f16 d            8      32     d * (q - 16)
Q5_1       32 x 5-bit, f16 d, m         8      32     d * q + m
Q4_0       32 x 4-bit, f16 d            4      32     d * q - 8 d
Q4_1       32 x 4-bit, f16 d, m         4      32     d * q + m
Q4_K       256: 8 x 32 4-bit, 6-bit     4      32     (d sc_j) q - (dmin m_j)
           sub-scales/mins, f16 d, dmin
Q5_K       as Q4_K with a 5th bit       8      32     (d sc_j) q - (dmin m_j)
Q6_K       256: 16 x 16 6-bit, int8     8      16     (d sc_j) (q - 32)
           sub-scales, f16 d
=========  ===========================  =====  =====  =======================================

5- and 6-bit values are held in int8 (exact); nothing is re-quantized. Layouts follow
ggml's block structs (ggml-common.h).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tritonlm.kernels.qweight import QuantizedWeight, pack_int4

QK = 32  # elements per block of the simple types
QK_K = 256  # elements per super-block of the k-quants

# type name -> (elements per block, bytes per block)
BLOCK_LAYOUT: dict[str, tuple[int, int]] = {
    "Q8_0": (QK, 34),
    "Q5_0": (QK, 22),
    "Q5_1": (QK, 24),
    "Q4_0": (QK, 18),
    "Q4_1": (QK, 20),
    "Q4_K": (QK_K, 144),
    "Q5_K": (QK_K, 176),
    "Q6_K": (QK_K, 210),
}


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian f16 fields ``[..., 2]`` uint8 -> float32 ``[...]``."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _split_nibbles(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return qs & 0x0F, qs >> 4


# Each decoder: blocks uint8 [R, nb, block_bytes] -> (q int16 [R, nb * block_elems], scale, offset|None, bits, group)
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]


def _q8_0(b: np.ndarray) -> Decoded:
    d = _f16(b[..., 0:2])
    q = b[..., 2:34].view(np.int8).astype(np.int16)
    return q.reshape(b.shape[0], -1), d, None, 8, QK


def _low_high_32(qs: np.ndarray, high_bits: np.ndarray | None) -> np.ndarray:
    """Simple types: byte j holds element j (low nibble) and element j + 16 (high nibble);
    ``high_bits`` (uint32 per block) holds bit 4 of element j at bit j."""
    lo, hi = _split_nibbles(qs)
    q = np.concatenate([lo, hi], axis=-1).astype(np.int16)  # [R, nb, 32]
    if high_bits is not None:
        bits = (high_bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1
        q |= bits.astype(np.int16) << 4
    return q


def _qh(b: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(b[..., start : start + 4]).view("<u4")[..., 0]


def _q5_0(b: np.ndarray) -> Decoded:
    d = _f16(b[..., 0:2])
    q = _low_high_32(b[..., 6:22], _qh(b, 2)) - 16
    return q.reshape(b.shape[0], -1), d, None, 8, QK


def _q5_1(b: np.ndarray) -> Decoded:
    d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    q = _low_high_32(b[..., 8:24], _qh(b, 4))
    return q.reshape(b.shape[0], -1), d, m, 8, QK


def _q4_0(b: np.ndarray) -> Decoded:
    d = _f16(b[..., 0:2])
    q = _low_high_32(b[..., 2:18], None)
    return q.reshape(b.shape[0], -1), d, -8.0 * d, 4, QK


def _q4_1(b: np.ndarray) -> Decoded:
    d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    q = _low_high_32(b[..., 4:20], None)
    return q.reshape(b.shape[0], -1), d, m, 4, QK


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit sub-block scales and mins of Q4_K/Q5_K from their 12 packed bytes ``[..., 12]``."""
    s = scales.astype(np.int16)
    sc = np.empty((*s.shape[:-1], 8), dtype=np.int16)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: each 64-element chunk is 32 bytes, low nibbles first then high -> [..., 256]."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 32)
    lo, hi = _split_nibbles(chunks)
    return np.concatenate([lo, hi], axis=-1).reshape(*qs.shape[:-1], QK_K).astype(np.int16)


def _k_group_params(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _k_scales(b[..., 4:16])
    scale = d[..., None] * sc.astype(np.float32)  # exact: 11-bit mantissa x 6-bit integer
    offset = -(dmin[..., None] * mn.astype(np.float32))
    return scale.reshape(b.shape[0], -1), offset.reshape(b.shape[0], -1)


def _q4_k(b: np.ndarray) -> Decoded:
    scale, offset = _k_group_params(b)
    q = _k_nibbles(b[..., 16:144])
    return q.reshape(b.shape[0], -1), scale, offset, 4, QK


def _q5_k(b: np.ndarray) -> Decoded:
    scale, offset = _k_group_params(b)
    q = _k_nibbles(b[..., 48:176])
    qh = b[..., 16:48].astype(np.int16)  # bit 2c of byte l: element 64c + l; bit 2c + 1: element 64c + 32 + l
    shifts = np.arange(8, dtype=np.int16)
    high = ((qh[..., None, :] >> shifts[:, None]) & 1).reshape(*qh.shape[:-1], QK_K)
    q |= high << 4
    return q.reshape(b.shape[0], -1), scale, offset, 8, QK


def _q6_k(b: np.ndarray) -> Decoded:
    ql = b[..., 0:128].astype(np.int16).reshape(*b.shape[:-1], 2, 64)  # two halves of 128 elements
    qh = b[..., 128:192].astype(np.int16).reshape(*b.shape[:-1], 2, 32)
    sc = b[..., 192:208].view(np.int8).astype(np.float32)  # [R, nb, 16]
    d = _f16(b[..., 208:210])
    # within a half: element l (0..31) from ql[l] low, 32 + l from ql[32 + l] low,
    # 64 + l from ql[l] high, 96 + l from ql[32 + l] high; qh[l] bits 0-1, 2-3, 4-5, 6-7 add bits 4-5
    low = np.concatenate([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-1)
    high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)
    q = (low | (high << 4)) - 32
    scale = d[..., None] * sc  # exact: 11-bit mantissa x 8-bit integer
    return q.reshape(b.shape[0], -1), scale.reshape(b.shape[0], -1), None, 8, 16


DECODERS: dict[str, Callable[[np.ndarray], Decoded]] = {
    "Q8_0": _q8_0,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def decode_blocks(
    type_name: str,
    read_rows: Callable[[int, int], np.ndarray],
    shape: tuple[int, int],
    *,
    rows_per_chunk: int = 4096,
) -> QuantizedWeight:
    """A quantized GGUF matrix ``[N, K]`` (PyTorch layout) as a QuantizedWeight with exactly its
    values. ``read_rows(start, stop)`` returns the raw bytes of rows ``start:stop`` (uint8
    ``[rows, K / block_elems * block_bytes]``); rows are read and decoded ``rows_per_chunk`` at
    a time, so temporaries stay small."""
    if type_name not in DECODERS:
        raise KeyError(type_name)
    n, k = shape
    elems, nbytes = BLOCK_LAYOUT[type_name]
    if k % elems:
        raise ValueError(f"{type_name}: rows of {k} values are not whole blocks of {elems}")
    decode = DECODERS[type_name]
    qweight = scales = offsets = None
    bits = group = 0
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        blocks = np.asarray(read_rows(start, stop), dtype=np.uint8).reshape(stop - start, k // elems, nbytes)
        q, scale, offset, bits, group = decode(blocks)
        if qweight is None:
            qweight = torch.empty((n, k) if bits == 8 else (n, k // 2), dtype=torch.int8 if bits == 8 else torch.uint8)
            scales = torch.empty(n, k // group, dtype=torch.float32)
            offsets = None if offset is None else torch.empty(n, k // group, dtype=torch.float32)
        q = torch.from_numpy(q)
        qweight[start:stop] = q.to(torch.int8) if bits == 8 else pack_int4(q)
        scales[start:stop] = torch.from_numpy(np.ascontiguousarray(scale).reshape(stop - start, k // group))
        if offsets is not None:
            full = np.broadcast_to(offset, scale.shape).copy()
            offsets[start:stop] = torch.from_numpy(full).reshape(stop - start, -1)
    return QuantizedWeight(qweight, scales, offsets, bits, group)


__all__ = ["BLOCK_LAYOUT", "DECODERS", "decode_blocks"]
