"""What the constraint engine needs to know about a tokenizer, and the per-tokenizer index
(token trie and length-sorted byte columns) it precomputes once and caches on disk.

``TokenizerLike`` is the seam: any object with ``token_bytes``, ``eos_token_ids`` and
``vocab_size`` (optionally ``special_token_ids``). ``TokenizerInfo.from_tokenizer`` returns
the same ``TokenizerInfo`` for the same live tokenizer object (held weakly, by identity, in
one registry here; nothing is written onto the tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tritonlm.errors import SchemaError

_INDEX_VERSION = 2
_INDEX_FORMAT = "tritonlm-vocab-index"
_INDEX_ARRAYS = {  # name -> dtype of the arrays of an index file, in checksum order
    "child_start": np.dtype(np.int32),
    "child_byte": np.dtype(np.uint8),
    "child_node": np.dtype(np.int32),
    "tok_start": np.dtype(np.int32),
    "tok_ids": np.dtype(np.int32),
    "order": np.dtype(np.int32),
    "lengths": np.dtype(np.int32),
    "col_flat": np.dtype(np.uint8),
    "col_off": np.dtype(np.int64),
}


def _gpt2_unicode_to_bytes() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenizerLike(Protocol):
    """The tokenizer the constraints read (``special_token_ids`` is read when present)."""

    @property
    def token_bytes(self) -> Sequence[bytes]: ...

    @property
    def eos_token_ids(self) -> Iterable[int]: ...

    @property
    def vocab_size(self) -> int: ...


@dataclass
class TokenizerInfo:
    """``vocab[i]`` is the raw bytes token ``i`` decodes to (``b""`` for ids with no text);
    ``vocab_size`` is the logits width (may exceed ``len`` of the real vocabulary);
    ``special_token_ids`` are never allowed inside grammar output."""

    vocab: list[bytes] = field(repr=False)
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    special_token_ids: frozenset[int] = field(default=frozenset(), repr=False)
    _index: VocabIndex | None = field(default=None, repr=False, compare=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vocab_size < len(self.vocab):
            raise SchemaError(f"vocab_size={self.vocab_size} is smaller than the vocabulary ({len(self.vocab)})")
        if len(self.vocab) < self.vocab_size:
            self.vocab = list(self.vocab) + [b""] * (self.vocab_size - len(self.vocab))
        for e in self.eos_token_ids:
            if not 0 <= e < self.vocab_size:
                raise SchemaError(f"eos token id {e} outside the vocabulary")
        self.special_token_ids = frozenset(self.special_token_ids) | frozenset(self.eos_token_ids)
        h = hashlib.sha256()
        h.update(f"v{_INDEX_VERSION}:{self.vocab_size}:{sorted(self.special_token_ids)}:".encode())
        for t in self.vocab:
            h.update(len(t).to_bytes(4, "little"))
            h.update(t)
        self.fingerprint = h.hexdigest()[:32]

    @staticmethod
    def from_tokenizer(obj: TokenizerInfo | TokenizerLike) -> TokenizerInfo:
        """Accepts a TokenizerInfo, or any ``TokenizerLike`` (the same live object gives the
        same TokenizerInfo)."""
        if isinstance(obj, TokenizerInfo):
            return obj
        cached = _INFOS.get(obj)
        if cached is not None:
            return cached
        info = TokenizerInfo._read(obj)
        _INFOS.put(obj, info)
        return info

    @staticmethod
    def _read(obj: TokenizerLike) -> TokenizerInfo:
        try:
            vocab = list(obj.token_bytes)
            eos = tuple(int(i) for i in obj.eos_token_ids)
            size = int(obj.vocab_size)
        except AttributeError as exc:
            raise TypeError(
                "tokenizer must be a TokenizerInfo or have token_bytes, eos_token_ids and vocab_size"
            ) from exc
        specials = frozenset(int(i) for i in (getattr(obj, "special_token_ids", None) or ()))
        return TokenizerInfo(vocab, eos, size, specials)

    @staticmethod
    def from_gguf(path: str | os.PathLike[str]) -> TokenizerInfo:
        """Read the byte-level BPE vocabulary of a GGUF file (CONTROL tokens are special)."""
        import gguf

        reader = gguf.GGUFReader(str(path))

        def field_values(name: str) -> list[Any]:
            f = reader.fields[name]
            return [f.parts[i] for i in f.data]

        tokens = [bytes(p).decode("utf-8") for p in field_values("tokenizer.ggml.tokens")]
        types = [int(p[0]) for p in field_values("tokenizer.ggml.token_type")]
        table = _gpt2_unicode_to_bytes()
        vocab: list[bytes] = []
        specials = set()
        for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)):
            if kind == 3:
                specials.add(i)
                vocab.append(tok.encode("utf-8"))
            elif kind == 4:
                vocab.append(tok.encode("utf-8"))
            else:
                try:
                    vocab.append(bytes(table[c] for c in tok))
                except KeyError:
                    vocab.append(tok.encode("utf-8"))
        eos = []
        if "tokenizer.ggml.eos_token_id" in reader.fields:
            eos.append(int(field_values("tokenizer.ggml.eos_token_id")[0][0]))
        for text in ("<|im_end|>", "<|endoftext|>"):
            if text in tokens and tokens.index(text) in specials:
                eos.append(tokens.index(text))
        return TokenizerInfo(vocab, tuple(dict.fromkeys(eos)), len(vocab), frozenset(specials))

    @property
    def index(self) -> VocabIndex:
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = VocabIndex.load_or_build(self)
        return self._index

    def grammar_bytes(self, token_id: int) -> bytes:
        """The bytes a token contributes to grammar text (``b""`` for special/empty ids)."""
        return b"" if token_id in self.special_token_ids else self.vocab[token_id]


class VocabIndex:
    """Token trie in CSR form plus byte columns of the tokens sorted by length (descending).

    Trie node 0 is the root; children of node ``n`` are entries ``child_start[n] ..
    child_start[n+1]`` of ``child_byte`` / ``child_node``; tokens whose bytes end at ``n`` are
    ``tok_ids[tok_start[n] .. tok_start[n+1]]``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.child_start: list[int] = arrays["child_start"].tolist()
        self.child_byte: list[int] = arrays["child_byte"].tolist()
        self.child_node: list[int] = arrays["child_node"].tolist()
        self.tok_start: list[int] = arrays["tok_start"].tolist()
        self.tok_ids: list[int] = arrays["tok_ids"].tolist()
        self.order = arrays["order"]  # token ids by descending length
        self.lengths = arrays["lengths"]
        col_flat = arrays["col_flat"]
        col_off = arrays["col_off"]
        self.cols = [col_flat[col_off[p] : col_off[p + 1]] for p in range(len(col_off) - 1)]
        # number of tokens starting with each byte (a cost estimate for trie walks)
        self.first_byte_counts: list[int] = (
            np.bincount(self.cols[0], minlength=256).tolist() if self.cols else [0] * 256
        )
        self.arrays = arrays

    def find(self, data: bytes) -> int | None:
        """The trie node spelling ``data`` (None if no token starts with it)."""
        cs, cb, cn = self.child_start, self.child_byte, self.child_node
        n = 0
        for b in data:
            for k in range(cs[n], cs[n + 1]):
                if cb[k] == b:
                    n = cn[k]
                    break
            else:
                return None
        return n

    def subtree_tokens(self, n: int) -> list[int]:
        """Every token whose bytes start with what trie node ``n`` spells."""
        cs, cn, ts, ti = self.child_start, self.child_node, self.tok_start, self.tok_ids
        out: list[int] = []
        todo = [n]
        while todo:
            m = todo.pop()
            out.extend(ti[ts[m] : ts[m + 1]])
            todo.extend(cn[cs[m] : cs[m + 1]])
        return out

    def spell(self, data: bytes) -> list[int]:
        """Greedy longest-match token ids spelling ``data`` (stops early if a byte has no token)."""
        cs, cb, cn, ts, ti = self.child_start, self.child_byte, self.child_node, self.tok_start, self.tok_ids
        tokens: list[int] = []
        i = 0
        while i < len(data):
            n = 0
            best = (-1, i)
            j = i
            while j < len(data):
                lo, hi = cs[n], cs[n + 1]
                nxt = -1
                for k in range(lo, hi):
                    if cb[k] == data[j]:
                        nxt = cn[k]
                        break
                if nxt < 0:
                    break
                n = nxt
                j += 1
                if ts[n] != ts[n + 1]:
                    best = (ti[ts[n]], j)
            if best[0] < 0:
                break
            tokens.append(best[0])
            i = best[1]
        return tokens

    @staticmethod
    def build(vocab: Sequence[bytes], specials: frozenset[int], vocab_size: int) -> dict[str, np.ndarray]:
        ids = [i for i, t in enumerate(vocab) if t and i not in specials]
        # trie
        children: list[dict[int, int]] = [{}]
        ends: list[list[int]] = [[]]
        for i in ids:
            n = 0
            for b in vocab[i]:
                nxt = children[n].get(b)
                if nxt is None:
                    nxt = len(children)
                    children[n][b] = nxt
                    children.append({})
                    ends.append([])
                n = nxt
            ends[n].append(i)
        child_start = [0]
        child_byte: list[int] = []
        child_node: list[int] = []
        tok_start = [0]
        tok_ids: list[int] = []
        for n in range(len(children)):
            for b in sorted(children[n]):
                child_byte.append(b)
                child_node.append(children[n][b])
            child_start.append(len(child_byte))
            tok_ids.extend(ends[n])
            tok_start.append(len(tok_ids))
        order = sorted(ids, key=lambda i: -len(vocab[i]))
        lengths = np.array([len(vocab[i]) for i in order], dtype=np.int32)
        maxlen = int(lengths[0]) if len(lengths) else 0
        cols = []
        for p in range(maxlen):
            n_active = int(np.searchsorted(-lengths, -p, side="left"))  # tokens with len > p
            cols.append(np.frombuffer(b"".join(vocab[i][p : p + 1] for i in order[:n_active]), dtype=np.uint8))
        col_off = np.cumsum([0] + [len(c) for c in cols]).astype(np.int64)
        return {
            "child_start": np.array(child_start, dtype=np.int32),
            "child_byte": np.array(child_byte, dtype=np.uint8),
            "child_node": np.array(child_node, dtype=np.int32),
            "tok_start": np.array(tok_start, dtype=np.int32),
            "tok_ids": np.array(tok_ids, dtype=np.int32),
            "order": np.array(order, dtype=np.int32),
            "lengths": lengths,
            "col_flat": np.concatenate(cols) if cols else np.zeros(0, np.uint8),
            "col_off": col_off,
        }

    @staticmethod
    def cache_path(info: TokenizerInfo) -> Path:
        from tritonlm.config import env

        return env().cache_dir / "constraints" / f"vocab-{info.fingerprint}.npz"

    @classmethod
    def load_or_build(cls, info: TokenizerInfo) -> VocabIndex:
        """The index from the disk cache when the file there is exactly a valid index of this
        format version (plain arrays read with ``allow_pickle=False``, shapes, dtypes, ranges
        and a sha256 checked), else built and written atomically."""
        path = cls.cache_path(info)
        arrays = load_index_arrays(path, info.vocab_size) if path.exists() else None
        if arrays is not None:
            return cls(arrays, info.vocab_size)
        from tritonlm import progress

        with progress.step(f"building the constraint index of a {info.vocab_size}-token vocabulary"):
            arrays = cls.build(info.vocab, info.special_token_ids, info.vocab_size)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays, meta=_index_meta(arrays, info.vocab_size))  # type: ignore[arg-type]
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass
        return cls(arrays, info.vocab_size)


def _index_checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in _INDEX_ARRAYS:
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _index_meta(arrays: dict[str, np.ndarray], vocab_size: int) -> np.ndarray:
    meta = {"format": _INDEX_FORMAT, "version": _INDEX_VERSION, "vocab_size": vocab_size}
    meta["sha256"] = _index_checksum(arrays)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def load_index_arrays(path: Path, vocab_size: int) -> dict[str, np.ndarray] | None:
    """The arrays of a valid index file at ``path``, or None (never unpickles anything)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile) or set(data.files) != {*_INDEX_ARRAYS, "meta"}:
                return None
            arrays = {name: data[name] for name in data.files}
        return arrays if _index_valid(arrays, vocab_size) else None
    except Exception:  # anything malformed in an untrusted file means "rebuild it"
        return None


def _index_valid(arrays: dict[str, np.ndarray], vocab_size: int) -> bool:
    meta_arr = arrays.pop("meta")
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        return False
    meta = json.loads(meta_arr.tobytes().decode())
    if not isinstance(meta, dict) or meta.get("format") != _INDEX_FORMAT or meta.get("version") != _INDEX_VERSION:
        return False
    if meta.get("vocab_size") != vocab_size:
        return False
    if any(arrays[n].dtype != dt or arrays[n].ndim != 1 for n, dt in _INDEX_ARRAYS.items()):
        return False
    if meta.get("sha256") != _index_checksum(arrays):
        return False
    cs, cn, ts = arrays["child_start"], arrays["child_node"], arrays["tok_start"]
    n_nodes = len(cs) - 1
    ok = n_nodes >= 1 and len(ts) == n_nodes + 1
    ok = ok and len(arrays["child_byte"]) == len(cn) == int(cs[-1]) and int(ts[-1]) == len(arrays["tok_ids"])
    ok = ok and len(arrays["order"]) == len(arrays["lengths"]) and int(arrays["col_off"][-1]) == len(arrays["col_flat"])
    if not ok:
        return False
    for off in (cs, ts, arrays["col_off"]):
        if off[0] != 0 or (np.diff(off) < 0).any():
            return False
    for ids in (arrays["tok_ids"], arrays["order"]):
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            return False
    return not (cn.size and (cn.min() < 1 or cn.max() >= n_nodes))


class _InfoRegistry:
    """TokenizerInfo per live tokenizer object, by identity; an entry goes with its object."""

    def __init__(self) -> None:
        self._infos: dict[int, tuple[weakref.ref[Any], TokenizerInfo]] = {}
        self._lock = threading.Lock()

    def get(self, obj: object) -> TokenizerInfo | None:
        hit = self._infos.get(id(obj))
        return hit[1] if hit is not None and hit[0]() is obj else None

    def put(self, obj: object, info: TokenizerInfo) -> None:
        key = id(obj)
        try:
            ref = weakref.ref(obj, lambda dead: self._drop(key, dead))
        except TypeError:  # not weakly referenceable: not remembered
            return
        with self._lock:
            self._infos[key] = (ref, info)

    def _drop(self, key: int, dead: weakref.ref[Any]) -> None:
        with self._lock:
            hit = self._infos.get(key)
            if hit is not None and hit[0] is dead:
                del self._infos[key]


_INFOS = _InfoRegistry()
