"""Weight-only quantized matrices: the one layout every quantized linear op reads.

A :class:`QuantizedWeight` holds an ``[N, K]`` matrix (PyTorch ``Linear`` layout: N outputs,
K inputs) as small integers with a float32 scale, and optionally a float32 offset, per group
of ``group_size`` consecutive inputs of one row::

    w[n, k] = q[n, k] * scales[n, k // G] + offsets[n, k // G]      (offsets 0 when None)

Storage of ``q`` (``qweight``):

* ``bits == 8``: int8 ``[N, K]``, signed values;
* ``bits == 4``: uint8 ``[N, K // 2]``, two values 0..15 per byte: input ``2j`` in the low
  nibble, input ``2j + 1`` in the high nibble.

``group_size`` is a power of two >= 16 dividing K. Backends may repack this layout once at load
(see ``Ops.pack_quant_weight``); this module is the contract they convert from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tritonlm.errors import ConfigError


@dataclass(frozen=True)
class QuantizedWeight:
    qweight: torch.Tensor  # int8 [N, K] (bits 8) or uint8 [N, K // 2] (bits 4)
    scales: torch.Tensor  # float32 [N, K // group_size]
    offsets: torch.Tensor | None  # float32 [N, K // group_size], or None for zero offsets
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"QuantizedWeight: bits={self.bits}, expected 4 or 8")
        g = self.group_size
        if g < 16 or g & (g - 1):
            raise ConfigError(f"QuantizedWeight: group_size={g}, expected a power of two >= 16")
        want = torch.int8 if self.bits == 8 else torch.uint8
        if self.qweight.dtype != want or self.qweight.dim() != 2:
            raise ConfigError(f"QuantizedWeight: {self.bits}-bit qweight must be a 2-D {want} tensor")
        n, k = self.shape
        if k % g:
            raise ConfigError(f"QuantizedWeight: K={k} is not a multiple of group_size={g}")
        for name, t in (("scales", self.scales), ("offsets", self.offsets)):
            if t is None:
                continue
            if t.dtype != torch.float32 or tuple(t.shape) != (n, k // g):
                raise ConfigError(
                    f"QuantizedWeight: {name} must be float32 [{n}, {k // g}], got {t.dtype} {tuple(t.shape)}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        n, stored = self.qweight.shape
        return int(n), int(stored * (2 if self.bits == 4 else 1))

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def nbytes(self) -> int:
        total = self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * 4
        return total + (0 if self.offsets is None else self.offsets.numel() * 4)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(move(self.qweight), move(self.scales), move(self.offsets), self.bits, self.group_size)

    def int_values(self) -> torch.Tensor:
        """``q`` as int16 ``[N, K]`` (4-bit values unpacked)."""
        if self.bits == 8:
            return self.qweight.to(torch.int16)
        low = (self.qweight & 0x0F).to(torch.int16)
        high = (self.qweight >> 4).to(torch.int16)
        return torch.stack([low, high], dim=-1).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``w`` (or its rows ``rows``) as ``dtype``, computed in float32 then rounded once."""
        q, s, o = self.qweight, self.scales, self.offsets
        if rows is not None:
            q, s = q.index_select(0, rows), s.index_select(0, rows)
            o = None if o is None else o.index_select(0, rows)
        part = QuantizedWeight(q, s, o, self.bits, self.group_size) if rows is not None else self
        n, k = part.shape
        g = self.group_size
        w = part.int_values().to(torch.float32).reshape(n, k // g, g) * s.unsqueeze(-1)
        if o is not None:
            w = w + o.unsqueeze(-1)
        return w.reshape(n, k).to(dtype)


def promote(weight: QuantizedWeight, *, bits: int, group_size: int, with_offsets: bool) -> QuantizedWeight:
    """The same values in a wider layout, losslessly: 4-bit values held as int8, groups split
    into smaller groups with the same scale, zero offsets made explicit."""
    if (bits, group_size, with_offsets) == (weight.bits, weight.group_size, weight.offsets is not None):
        return weight
    if bits < weight.bits or group_size > weight.group_size or weight.group_size % group_size:
        raise ConfigError(
            f"cannot hold {weight.bits}-bit groups of {weight.group_size} as {bits}-bit groups of {group_size}"
        )
    if weight.offsets is not None and not with_offsets:
        raise ConfigError("cannot drop non-zero offsets")
    qweight = weight.qweight if bits == weight.bits else weight.int_values().to(torch.int8)
    repeat = weight.group_size // group_size
    scales = weight.scales.repeat_interleave(repeat, dim=1)
    offsets = weight.offsets
    if with_offsets:
        offsets = torch.zeros_like(scales) if offsets is None else offsets.repeat_interleave(repeat, dim=1)
    return QuantizedWeight(qweight, scales.contiguous(), offsets, bits, group_size)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack matrices with the same K along N (fused q/k/v, gate/up), promoting every part to the
    widest layout among them (:func:`promote`), so the result holds exactly their values."""
    bits = max(p.bits for p in parts)
    group = min(p.group_size for p in parts)
    with_offsets = any(p.offsets is not None for p in parts)
    same = [promote(p, bits=bits, group_size=group, with_offsets=with_offsets) for p in parts]
    offsets = torch.cat([p.offsets for p in same]) if with_offsets else None
    return QuantizedWeight(
        torch.cat([p.qweight for p in same]).contiguous(),
        torch.cat([p.scales for p in same]).contiguous(),
        offsets if offsets is None else offsets.contiguous(),
        bits,
        group,
    )


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K // 2]`` from integer values 0..15 ``[N, K]`` (even k low nibble)."""
    v = values.to(torch.uint8)
    return (v[:, 0::2] | (v[:, 1::2] << 4)).contiguous()


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = 32) -> QuantizedWeight:
    """Round-to-nearest quantization of a float ``[N, K]`` matrix with per-group scales.

    8 bits: symmetric, ``q = round(w / s)`` in -127..127 with ``s = max|w| / 127``.
    4 bits: asymmetric, ``q = round((w - min) / s)`` in 0..15 with ``s = (max - min) / 15`` and
    offset ``min``, so each group's extremes are exact.
    """
    if bits not in (4, 8):
        raise ConfigError(f"quantize_rtn: bits={bits}, expected 4 or 8")
    n, k = weight.shape
    if k % group_size:
        raise ConfigError(f"quantize_rtn: K={k} is not a multiple of group_size={group_size}")
    w = weight.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    if bits == 8:
        scale = w.abs().amax(-1) / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8).reshape(n, k)
        return QuantizedWeight(q.contiguous(), scale.contiguous(), None, 8, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = (hi - lo) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((w - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15).reshape(n, k)
    return QuantizedWeight(pack_int4(q), scale.contiguous(), lo.contiguous(), 4, group_size)


__all__ = ["QuantizedWeight", "concat_rows", "pack_int4", "promote", "quantize_rtn"]
