"""Public entry points: compile a JSON schema / regex / choice against a tokenizer, and match
token by token."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from tritonlm.errors import SchemaError

from . import automata as am
from .grammar import GrammarCore, num_words
from .nodes import Layout, LeafNode, ObjectNode, RootNode
from .regex import regex_nfa
from .schema import SchemaCompiler
from .tokenizer_info import TokenizerInfo

_GRAMMAR_CACHE: OrderedDict[tuple, Grammar] = OrderedDict()
_GRAMMAR_CACHE_SIZE = 64
_MAX_FORCED_BYTES = 512


def allocate_token_bitmask(batch: int, vocab_size: int) -> np.ndarray:
    """A ``[batch, ceil(vocab_size / 32)]`` int32 array, all tokens allowed."""
    return np.full((batch, num_words(vocab_size)), -1, dtype=np.int32)


class Grammar:
    """A compiled constraint. Cheap to share; each generation gets its own ``matcher()``.
    Matchers of one grammar share its memoised states and masks (not thread-safe)."""

    def __init__(self, core: GrammarCore, root_alt: int, description: str, allow_empty: bool = False) -> None:
        self.core = core
        self.info = core.info
        self.description = description
        core.finalize()
        if not core.alt_nonempty(root_alt):
            raise SchemaError(f"{description}: no value can satisfy it")
        for node in list(core.nodes):  # key automata for the first key of every object
            if isinstance(node, ObjectNode):
                node.key_leaf_for_seen(0)
        self.root_nid = core.add_node(RootNode(root_alt, allow_empty))
        self.initial_state = core.initial_state(self.root_nid)
        self._eos = np.array(self.info.eos_token_ids, dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    def matcher(self) -> Matcher:
        return Matcher(self)

    def __repr__(self) -> str:
        return f"Grammar({self.description})"


class Matcher:
    """Token-level matching state for one sequence.

    ``fill_next_token_bitmask`` allows exactly the tokens after which the output can still
    be completed; EOS ids are allowed exactly when the output is complete. ``accept_token``
    advances (returns False, changing nothing, for a disallowed token); ``rollback(n)``
    undoes the last ``n`` accepted tokens (EOS included).
    """

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self._core = grammar.core
        self._info = grammar.info
        self._eos = frozenset(grammar.info.eos_token_ids)
        self._history: list[int] = [grammar.initial_state]
        self._terminated = False

    @property
    def state(self) -> int:
        return self._history[-1]

    def reset(self) -> None:
        self._history = [self.grammar.initial_state]
        self._terminated = False

    def is_terminated(self) -> bool:
        """True once EOS was accepted."""
        return self._terminated

    def can_terminate(self) -> bool:
        """True when the output so far is complete (EOS would be accepted)."""
        return not self._terminated and self._core.can_end(self.state)

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._eos:
            if not self._core.can_end(self.state):
                return False
            self._terminated = True
            self._history.append(self.state)
            return True
        if not 0 <= token_id < self._info.vocab_size:
            return False
        data = self._info.grammar_bytes(token_id)
        if not data:
            return False
        sid = self._core.step_bytes(self.state, data)
        if sid < 0:
            return False
        self._history.append(sid)
        return True

    def accept_bytes(self, data: bytes) -> bool:
        """Advance over raw text (one history entry); False and no change if not allowed."""
        if self._terminated or not data:
            return not data
        sid = self._core.step_bytes(self.state, data)
        if sid < 0:
            return False
        self._history.append(sid)
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > len(self._history) - 1:
            raise ValueError(f"cannot roll back {num_tokens} tokens ({len(self._history) - 1} accepted)")
        for _ in range(num_tokens):
            self._history.pop()
            self._terminated = False

    def next_token_mask(self) -> np.ndarray:
        """Packed uint32 mask of allowed tokens (EOS included when complete)."""
        if self._terminated:
            return np.zeros(num_words(self._info.vocab_size), dtype=np.uint32)
        m = self._core.token_mask(self.state)
        if self._core.can_end(self.state):
            m = m.copy()
            eos = self.grammar._eos
            np.bitwise_or.at(m, eos >> 5, (np.uint32(1) << (eos & 31).astype(np.uint32)))
        return m

    def fill_next_token_bitmask(self, bitmask: np.ndarray, row: int = 0) -> None:
        """Write row ``row`` of an int32 ``[batch, ceil(vocab/32)]`` bitmask: bit j of word w
        set = token 32*w + j allowed."""
        bitmask[row, :] = self.next_token_mask().view(np.int32)

    def allowed_token_ids(self) -> np.ndarray:
        m = self.next_token_mask()
        bits = np.unpackbits(m.view(np.uint8), bitorder="little")[: self._info.vocab_size]
        return np.nonzero(bits)[0]

    def find_forced_bytes(self) -> bytes:
        """The bytes every completion must continue with (stops where a choice or the end is
        possible)."""
        if self._terminated:
            return b""
        out = bytearray()
        sid = self.state
        core = self._core
        while len(out) < _MAX_FORCED_BYTES and not core.can_end(sid):
            only = -1
            for b in range(256):
                if core.step(sid, b) >= 0:
                    if only >= 0:
                        only = -2
                        break
                    only = b
            if only < 0:
                break
            out.append(only)
            sid = core.step(sid, only)
        return bytes(out)

    def find_forced_tokens(self) -> list[int]:
        """Token ids spelling the forced bytes (greedy longest match); accepting them in order
        is always allowed. Empty when the next byte is not forced."""
        return self._spell(self.find_forced_bytes())

    def find_completion_tokens(self) -> list[int] | None:
        """Token ids that complete the output from here (EOS not included), few but not
        always the fewest; ``[]`` when it can end now, None when no completion was found.
        Accepting them in order is always allowed. Used to close an output before its token
        budget runs out."""
        if self._terminated:
            return []
        data = self._core.completion(self.state)
        if data is None:
            return None
        tokens = self._spell(data)
        if sum(len(self._info.grammar_bytes(t)) for t in tokens) != len(data):
            return None
        return tokens

    def _spell(self, data: bytes) -> list[int]:
        """Greedy longest-match token ids spelling ``data`` (stops early if a byte has no token)."""
        idx = self._info.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
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


def _cached(key: tuple, build) -> Grammar:
    g = _GRAMMAR_CACHE.get(key)
    if g is None:
        g = build()
        _GRAMMAR_CACHE[key] = g
        if len(_GRAMMAR_CACHE) > _GRAMMAR_CACHE_SIZE:
            _GRAMMAR_CACHE.popitem(last=False)
    else:
        _GRAMMAR_CACHE.move_to_end(key)
    return g


def _schema_dict(schema: Any) -> Any:
    if isinstance(schema, (str, bytes)):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"schema is not valid JSON: {exc}") from exc
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    if isinstance(schema, (dict, bool)):
        return schema
    raise SchemaError(
        f"schema must be a dict, a bool, a JSON string or a pydantic model class, got {type(schema).__name__}"
    )


def compile_json_schema(
    schema: Any,
    tokenizer: Any,
    *,
    whitespace: str = "compact",
    indent: int = 2,
    lenient: bool = False,
    escapes: str = "canonical",
) -> Grammar:
    """Compile a JSON schema (dict, JSON text, or pydantic model class).

    ``whitespace``: ``"compact"`` (no whitespace, the default), ``"flexible"`` (any JSON
    whitespace between tokens, e.g. ``json.dumps`` default output) or ``"pretty"`` (exactly
    ``json.dumps(value, indent=indent)`` layout). ``lenient=True`` ignores keywords unknown to
    JSON Schema and unknown formats (known but unsupported keywords still raise).
    ``escapes``: ``"canonical"`` (the default) allows one spelling per character inside
    strings: raw UTF-8, ``\\"``, ``\\\\`` and escapes for control characters only, as
    ``json.dumps(..., ensure_ascii=False)`` writes; ``"any"`` also allows ``\\uXXXX`` for every
    character (surrogate pairs included) and ``\\/``, as ``json.dumps`` writes by default.
    """
    info = TokenizerInfo.from_tokenizer(tokenizer)
    doc = _schema_dict(schema)
    layout = Layout(whitespace, indent)
    key = ("json", json.dumps(doc, sort_keys=True, default=str), info.fingerprint, whitespace, indent, lenient, escapes)

    def build() -> Grammar:
        core = GrammarCore(info, layout)
        root = SchemaCompiler(core, doc, lenient=lenient, escapes=escapes).compile(doc, "")
        return Grammar(core, root, "JSON schema")

    return _cached(key, build)


def compile_regex(pattern: str, tokenizer: Any) -> Grammar:
    """Raw text fully matching ``pattern`` (the regex subset of ``regex.py``)."""
    info = TokenizerInfo.from_tokenizer(tokenizer)

    def build() -> Grammar:
        core = GrammarCore(info, Layout("compact"))
        dfa = am.determinize(regex_nfa(pattern, "", search=False))
        leaf = LeafNode(am.string_byte_dfa(dfa, json_string=False))
        alt = core.node_alt(leaf)
        return Grammar(core, alt, f"regex {pattern!r}", allow_empty=leaf.labels[leaf.dfa.start] >= 0)

    return _cached(("regex", pattern, info.fingerprint), build)


def compile_choice(choices: list[str], tokenizer: Any) -> Grammar:
    """Raw text equal to one of ``choices``."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise SchemaError("choice: expected a non-empty list of non-empty strings")
    info = TokenizerInfo.from_tokenizer(tokenizer)

    def build() -> Grammar:
        core = GrammarCore(info, Layout("compact"))
        alt = core.node_alt(LeafNode(am.bytes_dfa([c.encode("utf-8") for c in choices])))
        return Grammar(core, alt, f"choice among {len(choices)} strings")

    return _cached(("choice", tuple(choices), info.fingerprint), build)
