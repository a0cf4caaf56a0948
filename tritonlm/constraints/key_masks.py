"""Token masks of object-key leaves, through the "any string" component's shared table.

A key leaf is a product of component DFAs (see ``nodes.KeyLeafNode``). Where the any-string
component is alive and usable, its per-tokenizer table already holds every token that stays
inside the key and every token that closes it; only the tokens spelling the rest of a named
key (the same bytes every time, with canonical escapes) get another label: they are taken
out of the shared exits and checked under their own label. Elsewhere (``key_mask`` returns
None) the product DFA is masked as a whole like any leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .bitmask import ids_to_mask
from .budget import Budget
from .bytedfa import ByteDFA
from .leaf_tables import ExitGroups
from .nodes import ANY_KEY, KeyLeafNode, Stack

if TYPE_CHECKING:
    from .masks import MaskBuilder


class _Specials(NamedTuple):
    any_dfa: ByteDFA
    q_any: int  # the any-string component's state
    any_label: int  # the product label when only the any-string component accepts
    special_mask: np.ndarray | None  # tokens spelling the rest of a named key
    drop_mask: np.ndarray | None  # of those, the ones ending exactly at a rejected key's end
    special_exits: ExitGroups  # the others, grouped under the named key's label


class KeyMasks:
    """Key-leaf masks of one grammar (memoised per key leaf and product state)."""

    def __init__(self, masks: MaskBuilder) -> None:
        self.masks = masks
        self.info = masks.info
        self._specials: dict[tuple[int, int], _Specials | None] = {}

    def clear(self) -> None:
        self._specials.clear()

    def key_mask(self, node: KeyLeafNode, q: int, rest: Stack, budget: Budget, what: str) -> np.ndarray | None:
        """Mask for key product state ``q`` under context ``rest``; None where the
        decomposition does not apply (the product DFA is then used directly)."""
        spec = self._key_specials(node, q, budget, what)
        if spec is None:
            return None
        masks, size = self.masks, self.info.vocab_size
        inside, exits = masks.tables.dfa_table(spec.any_dfa, spec.q_any, budget, what)
        m = inside & ~spec.drop_mask if spec.drop_mask is not None else inside.copy()
        if spec.any_label >= 0:
            ok = masks.viable_exit_ids(rest, exits, budget, what, label_override=spec.any_label)
            if ok:
                viable = ids_to_mask(np.concatenate(ok), size)
                m |= viable & ~spec.special_mask if spec.special_mask is not None else viable
        ok = masks.viable_exit_ids(rest, spec.special_exits, budget, what)
        if ok:
            m |= ids_to_mask(np.concatenate(ok), size)
        return m

    def _key_specials(self, node: KeyLeafNode, q: int, budget: Budget, what: str) -> _Specials | None:
        key = (id(node), q)
        if key in self._specials:
            return self._specials[key]
        states = node.comp_states[q]
        any_c = node.comp_tags.index(ANY_KEY) if ANY_KEY in node.comp_tags else -1
        result = None
        if (
            any_c >= 0
            and any_c in states
            and node.useful[any_c]
            and node.labels[q] < 0
            and node.components[any_c].labels[states[any_c]] < 0
        ):
            result = self._build_specials(node, states, any_c, budget, what)
        cost = 200
        if result is not None:
            cost += sum(m.nbytes for m in (result.special_mask, result.drop_mask) if m is not None)
            cost += sum(150 + len(sfx) + ids.nbytes for _, sfx, ids in result.special_exits)
        self.masks.remember(cost)
        self._specials[key] = result
        return result

    def _build_specials(
        self, node: KeyLeafNode, states: dict[int, int], any_c: int, budget: Budget, what: str
    ) -> _Specials | None:
        any_label = node.combine(frozenset([ANY_KEY]))
        vocab, index = self.info.vocab, self.info.index
        special: dict[int, tuple[int, int]] = {}  # token -> (label, length of the key part)
        for c, qc in states.items():
            budget.tick(what)
            if c == any_c or node.comp_tags[c][0] != "lit":
                continue
            rest = node.components[c].unique_completion(qc)
            if rest is None:
                return None
            label = node.combine(frozenset([ANY_KEY, node.comp_tags[c]]))
            trie_node = index.find(rest)
            if trie_node is not None:
                for tid in index.subtree_tokens(trie_node):
                    special[tid] = (label, len(rest))
        drop = [t for t, (lab, n) in special.items() if lab < 0 and len(vocab[t]) == n]
        groups: dict[tuple[int, bytes], list[int]] = {}
        for t, (lab, n) in special.items():
            if lab >= 0 and len(vocab[t]) > n:
                groups.setdefault((lab, vocab[t][n:]), []).append(t)
        special_exits = [(lab, suffix, np.array(ids, dtype=np.int64)) for (lab, suffix), ids in groups.items()]
        size = self.info.vocab_size
        special_mask = ids_to_mask(list(special), size) if special else None
        drop_mask = ids_to_mask(drop, size) if drop else None
        return _Specials(node.components[any_c], states[any_c], any_label, special_mask, drop_mask, special_exits)
