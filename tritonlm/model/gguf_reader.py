"""A lean GGUF (v2/v3) reader: metadata as Python values, tensor bytes read on demand.

gguf-py's ``GGUFReader`` keeps a numpy view per metadata array element (every token and merge
of a 152k vocabulary) and maps the whole file: for the default model that is ~10 s and ~0.5 GB
of resident memory before a weight is read. This reader decodes the metadata once into plain
lists and reads tensor bytes with ``os.pread``, so nothing stays mapped.

Layout (little-endian): ``"GGUF"``, version u32, tensor count u64, key/value count u64, the
key/value pairs, the tensor infos (name, n_dims u32, dims u64 fastest-first, type u32, offset
u64), padding to ``general.alignment`` (32), then the tensor data at those offsets.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
# value type -> struct format of a scalar
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # fastest-first, as GGUF lists them
    type_id: int
    offset: int  # absolute, in the file
    n_bytes: int

    @property
    def num_rows(self) -> int:
        """Rows of the PyTorch-layout tensor (all dims but the fastest, multiplied)."""
        rows = 1
        for d in self.shape[1:]:
            rows *= d
        return rows


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise GGUFFormatError(f"metadata ends early (needs byte {self.pos + n}, has {len(self.data)})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _NUMPY:
                size = np.dtype(_NUMPY[item_type]).itemsize
                return np.frombuffer(self.take(size * count), dtype=_NUMPY[item_type]).tolist()
            return [self.value(item_type) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {vtype}")


def _tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    elems = 1
    for d in shape:
        elems *= d
    if elems % block:
        raise GGUFFormatError(f"{elems} values are not whole blocks of {block}")
    return elems // block * size


class GGUFReader:
    """Metadata and tensor infos of a GGUF file; tensor bytes on demand (:meth:`read_rows`)."""

    def __init__(self, path: str | Path, *, header_chunk: int = 1 << 24) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(min(size, header_chunk))
            cursor = _Cursor(head)
            while True:
                try:
                    self._parse(cursor)
                    break
                except GGUFFormatError:
                    if len(cursor.data) >= size:  # the whole file did not hold the metadata
                        raise
                    cursor = _Cursor(head + f.read(len(cursor.data)))  # double what is read
                    head = cursor.data
        for t in self.tensors.values():
            if t.offset + t.n_bytes > size:
                end = t.offset + t.n_bytes
                raise GGUFFormatError(f"truncated: tensor {t.name} ends at byte {end}, the file has {size}")

    def _parse(self, c: _Cursor) -> None:
        if c.take(4) != _MAGIC:
            raise GGUFFormatError("not a GGUF file (bad magic)")
        self.version = c.scalar("<I")
        if self.version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string()
            self.metadata[key] = c.value(c.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = tuple(c.scalar("<Q") for _ in range(c.scalar("<I")))
            infos.append((name, dims, c.scalar("<I"), c.scalar("<Q")))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = -(-c.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            try:
                n_bytes = _tensor_nbytes(type_id, dims)
            except (ValueError, KeyError) as exc:
                raise GGUFFormatError(f"tensor {name}: type {type_id} with shape {dims}: {exc}") from exc
            self.tensors[name] = TensorInfo(name, dims, type_id, data_start + offset, n_bytes)

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of a tensor's raw bytes, uint8 ``[rows, bytes_per_row]``."""
        t = self.tensors[name]
        rows = t.num_rows
        stop = rows if stop is None else min(stop, rows)
        row_bytes = t.n_bytes // rows
        out = np.empty((max(stop - start, 0), row_bytes), dtype=np.uint8)
        if out.size == 0:
            return out
        fd = os.open(self.path, os.O_RDONLY)
        try:
            view, pos, want = memoryview(out).cast("B"), t.offset + start * row_bytes, out.nbytes
            done = 0
            while done < want:
                n = os.preadv(fd, [view[done:]], pos + done)
                if n <= 0:
                    raise GGUFFormatError(f"tensor {name}: file ends early")
                done += n
        finally:
            os.close(fd)
        return out


__all__ = ["GGUFFormatError", "GGUFReader", "TensorInfo"]
