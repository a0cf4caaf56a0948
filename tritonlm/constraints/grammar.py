"""The compiled grammar: nodes, alternatives, and the byte-level state machine over them.

``GrammarCore`` owns the node list and the *alternatives* (an alternative is a set of nodes
any of which may match a value: ``anyOf``, type lists, enums). Matching state is an interned
set of stacks (see ``nodes``); ``step`` moves a state over one byte (memoised per (state,
byte)); ``can_end`` says whether the text so far is complete. Token masks come from the
core's ``MaskBuilder`` (``masks``) over the compiler's shared ``LeafTables``, completions
from its ``CompletionSearch``. Building (``add_node``, ``new_alt``) ends with ``finalize``;
after it only ``add_late_alt`` may add nodes (object key leaves, built lazily).

Thread safety: after ``finalize`` the core is shared by every matcher of its grammar, which
may run on different threads (masks on one, accepting tokens on another). Lookups of memoised
results read plain dicts without a lock; everything that computes and stores (new states,
steps, masks, completions, late key leaves) holds ``lock`` (re-entrant), so one grammar's
memos are filled by one thread at a time. ``nbytes`` is an estimate of the memory the core
holds, kept up to date as memos grow.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

import numpy as np

from .budget import Budget, CompileBudget
from .completion import CompletionSearch
from .leaf_tables import LeafTables
from .masks import MaskBuilder
from .nodes import STAY, CountedStringNode, KeyLeafNode, Layout, LeafNode, Node, ObjectNode, Stack
from .tokenizer_info import TokenizerInfo

_STATE_BYTES = 600  # an interned state: a frozenset of stacks, their frames and locals, its dict entries
_MEMO_ENTRY_BYTES = 100  # one step / end memo entry
_NODE_BYTES = 300
DEFAULT_MEMO_BYTES = 32 << 20  # a grammar's mask memos (see ``masks``)


class GrammarCore:
    """The nodes and alternatives of one grammar, and its byte-level state machine.

    ``masks`` (a ``MaskBuilder``) gives token masks and ``completions`` (a
    ``CompletionSearch``) completion suffixes; both read this core's states.
    """

    def __init__(
        self,
        info: TokenizerInfo,
        layout: Layout,
        tables: LeafTables,
        *,
        max_memo_bytes: int = DEFAULT_MEMO_BYTES,
        mask_seconds: float = math.inf,
    ) -> None:
        self.info = info
        self.layout = layout
        self.tables = tables
        self.nodes: list[Node] = []
        self.alt_members: list[list[tuple[str, int]]] = []  # ("n", node id) or ("a", alternative id)
        self.alts: list[tuple[int, ...]] = []
        self.finalized = False
        # matching state: interned stack sets and memoised steps over them
        self.sets: list[frozenset[Stack]] = []
        self.set_ids: dict[frozenset[Stack], int] = {}
        self.step_memo: dict[int, int] = {}  # sid << 8 | byte -> sid (-1: rejected)
        self.end_memo: dict[int, bool] = {}
        self.lock = threading.RLock()
        self.masks = MaskBuilder(self, tables, max_memo_bytes, mask_seconds)
        self.completions = CompletionSearch(self)
        self._static_bytes = 0
        self._counted_ids: set[int] = set()  # ids of the DFAs and key products already in _static_bytes

    # -- building -------------------------------------------------------------------------
    def add_node(self, node: Node) -> int:
        node.core = self
        self.nodes.append(node)
        return len(self.nodes) - 1

    def new_alt(self, members: Iterable[tuple[str, int]] = ()) -> int:
        self.alt_members.append(list(members))
        return len(self.alt_members) - 1

    def node_alt(self, node: Node) -> int:
        return self.new_alt([("n", self.add_node(node))])

    def finalize(self, budget: Budget | None = None) -> None:
        """Flatten alternatives, compute which nodes can match anything (least fixpoint),
        and drop the ones that cannot."""
        budget = budget if budget is not None else CompileBudget.unlimited()
        what = "the alternatives of the grammar"
        flat: list[tuple[int, ...]] = []
        for aid in range(len(self.alt_members)):
            seen_alts = {aid}
            nodes: dict[int, None] = {}  # ordered set
            todo = [aid]
            while todo:
                a = todo.pop()
                members = self.alt_members[a]
                budget.tick(what, 1 + len(members))
                for kind, x in members:
                    if kind == "n":
                        nodes[x] = None
                    elif x not in seen_alts:
                        seen_alts.add(x)
                        todo.append(x)
            flat.append(tuple(nodes))
        sat: set[int] = set()

        def sat_alt(a: int) -> bool:
            return any(n in sat for n in flat[a])

        changed = True
        while changed:
            changed = False
            for nid, node in enumerate(self.nodes):
                budget.tick(what)
                if nid not in sat and node.satisfiable(sat_alt):
                    sat.add(nid)
                    changed = True
        self.alts = [tuple(n for n in members if n in sat) for members in flat]
        self.finalized = True
        for node in self.nodes:
            self._static_bytes += self._node_bytes(node)
        self._static_bytes += 64 * sum(len(m) for m in self.alt_members) + 120 * len(self.alt_members)

    def add_late_alt(self, node: Node) -> int:
        """A node created while matching (object key leaves): its own alternative."""
        with self.lock:
            nid = self.add_node(node)
            self.alt_members.append([("n", nid)])
            self.alts.append((nid,) if node.satisfiable(lambda a: bool(self.alts[a])) else ())
            self._static_bytes += self._node_bytes(node) + 250
            return len(self.alts) - 1

    def _node_bytes(self, node: Node) -> int:
        """Memory of ``node`` not yet counted (DFAs and key products shared by several nodes
        count once per grammar)."""
        size = _NODE_BYTES
        parts: list[object] = []
        if isinstance(node, (LeafNode, CountedStringNode)):
            parts.append(node.dfa)
        if isinstance(node, KeyLeafNode):
            size += 64 * len(node.components) + 300
        if isinstance(node, ObjectNode):
            parts.append(node.keys)
            parts.extend(node.keys.component_dfas)
        for part in parts:
            if id(part) not in self._counted_ids:
                self._counted_ids.add(id(part))
                size += part.nbytes  # type: ignore[attr-defined]
        return size

    @property
    def nbytes(self) -> int:
        """An estimate of the memory this grammar holds now: its automata and nodes, its
        interned states and step memos, and its mask and completion memos."""
        return (
            self._static_bytes
            + _STATE_BYTES * len(self.sets)
            + _MEMO_ENTRY_BYTES * (len(self.step_memo) + len(self.end_memo))
            + self.masks.memo_bytes
            + self.completions.nbytes
        )

    def alt_nonempty(self, aid: int) -> bool:
        return bool(self.alts[aid])

    # -- bytes --------------------------------------------------------------------------
    def advance(self, stack: Stack, b: int, out: list[Stack]) -> None:
        (nid, local), rest = stack
        node = self.nodes[nid]
        for act in node.step(local, b):
            if act[0] == STAY:
                out.append(((nid, act[1]), rest))
            else:
                _, aid, waiting, depth = act
                parent = ((nid, waiting), rest)
                for cid in self.alts[aid]:
                    for cl in self.nodes[cid].start(depth):
                        self.advance(((cid, cl), parent), b, out)
        if rest is not None:
            lab = node.result(local)
            if lab is not None:
                self.advance(self.popped(rest, lab), b, out)

    def popped(self, rest: Stack, label: int) -> Stack:
        (pid, plocal), prest = rest
        return ((pid, self.nodes[pid].resume(plocal, label)), prest)

    def intern(self, stacks: frozenset[Stack]) -> int:
        sid = self.set_ids.get(stacks)
        if sid is None:
            with self.lock:
                sid = self.set_ids.get(stacks)
                if sid is None:
                    sid = len(self.sets)
                    self.sets.append(stacks)
                    self.set_ids[stacks] = sid
        return sid

    def initial_state(self, root_nid: int) -> int:
        return self.intern(frozenset([((root_nid, self.nodes[root_nid].start(0)[0]), None)]))

    def step(self, sid: int, b: int) -> int:
        key = sid << 8 | b
        t = self.step_memo.get(key)
        if t is not None:
            return t
        with self.lock:
            out: list[Stack] = []
            for stack in self.sets[sid]:
                self.advance(stack, b, out)
            t = self.intern(frozenset(out)) if out else -1
            self.step_memo[key] = t
        return t

    def step_bytes(self, sid: int, data: bytes) -> int:
        for b in data:
            sid = self.step(sid, b)
            if sid < 0:
                return -1
        return sid

    def stack_can_end(self, stack: Stack) -> bool:
        while True:
            (nid, local), rest = stack
            lab = self.nodes[nid].result(local)
            if lab is None:
                return False
            if rest is None:
                return True
            stack = self.popped(rest, lab)

    def can_end(self, sid: int) -> bool:
        r = self.end_memo.get(sid)
        if r is None:
            with self.lock:
                r = any(self.stack_can_end(s) for s in self.sets[sid])
                self.end_memo[sid] = r
        return r

    # -- tokens and completions -------------------------------------------------------------
    def token_mask(self, sid: int, budget: Budget | None = None) -> np.ndarray:
        """Packed uint32 mask of the (non-EOS) tokens allowed from state ``sid``; computing a
        new one runs under ``budget`` (default: the mask time budget)."""
        m = self.masks.set_masks.get(sid)
        if m is not None:
            return m
        with self.lock:
            return self.masks.token_mask(sid, budget)

    def completion(self, sid: int) -> bytes | None:
        """A short byte string taking state ``sid`` to a state that can end (b"" if it can end
        already); None if none is found (see ``completion``)."""
        with self.lock:
            return self.completions.search(sid)
