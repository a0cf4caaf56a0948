"""A compiled grammar and the token-level matcher a generation drives.

``GrammarMatcher`` is the seam the runtime drives (one matcher per sequence, on one thread
at a time); ``Matcher`` implements it over a ``Grammar``. Masks are packed as in ``bitmask``:
bit j of word w set = token 32*w + j allowed; EOS ids are allowed exactly when the output is
complete. Matchers of one grammar share its memoised states and masks; they may run on
different threads (the grammar's core locks what it computes). A mask not computed before
takes at most the grammar's mask time budget (``SchemaBudgetError`` beyond it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tritonlm.errors import SchemaError

from .bitmask import num_words
from .budget import Budget
from .grammar import GrammarCore
from .nodes import ObjectNode, RootNode

_MAX_FORCED_BYTES = 512


class GrammarMatcher(Protocol):
    """What the runtime calls on a constraint's matcher."""

    def fill_next_token_bitmask(self, bitmask: np.ndarray, row: int = 0) -> None: ...

    def accept_token(self, token_id: int) -> bool: ...

    def is_terminated(self) -> bool: ...

    def can_terminate(self) -> bool: ...

    def rollback(self, num_tokens: int) -> None: ...

    def reset(self) -> None: ...

    def find_forced_tokens(self) -> list[int]: ...

    def find_completion_tokens(self) -> list[int] | None: ...


class CompiledGrammar(Protocol):
    """What the runtime calls on a compiled constraint."""

    def matcher(self) -> GrammarMatcher: ...


class Grammar:
    """A compiled constraint. Cheap to share; each generation gets its own ``matcher()``.
    Matchers of one grammar share its memoised states and masks (thread-safe).

    Built under ``budget`` (finalizing the core and the first key automata); ``prepare``
    computes the start state's mask under a budget too. ``nbytes`` estimates the memory it
    holds now (it grows, within bounds, as masks are memoised)."""

    def __init__(
        self,
        core: GrammarCore,
        root_alt: int,
        description: str,
        allow_empty: bool = False,
        *,
        budget: Budget | None = None,
    ) -> None:
        self.core = core
        self.info = core.info
        self.description = description
        core.masks.what = f"the {description}"
        core.finalize(budget)
        if not core.alt_nonempty(root_alt):
            raise SchemaError(f"{description}: no value can satisfy it")
        for node in list(core.nodes):  # key automata for the first key of every object
            if isinstance(node, ObjectNode):
                node.key_leaf_for_seen(0)
        self.root_nid = core.add_node(RootNode(root_alt, allow_empty))
        self.initial_state = core.initial_state(self.root_nid)
        self.eos_ids = np.array(self.info.eos_token_ids, dtype=np.int64)

    def prepare(self, budget: Budget) -> None:
        """Compute the start state's token mask (and whether it can end) under ``budget``, so
        that the first mask of a generation is a lookup."""
        self.core.token_mask(self.initial_state, budget)
        self.core.can_end(self.initial_state)

    @property
    def nbytes(self) -> int:
        return self.core.nbytes + self.eos_ids.nbytes + 500

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
            eos = self.grammar.eos_ids
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
        return self._info.index.spell(data)
