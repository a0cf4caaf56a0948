"""Object-key automata: which keys an object may write next, and what each one means.

An object's keys are matched by one product automaton of component DFAs run side by side:
one per named key (``("lit", i)``), one per ``patternProperties`` pattern (``("p", j)``) and,
when other keys are allowed, one for any string (``ANY_KEY``). The product is built once per
object; per set of already-seen named keys (a bitmask), ``ObjectKeys.leaf_for_seen`` labels
it (``KeyLabels``: which value alternative a key leads to, or rejection) and adds the
labelled leaf to the grammar as a late alternative. Leaves are built lazily, at most once per
seen-set; outcome lists only grow (a label, once given, keeps its meaning).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import bytedfa as bd
from .automata import CharDFA
from .budget import Budget, CompileBudget
from .nodes import ANY_KEY, KeyLeafNode, KeyTag, Node

Outcome = tuple[int, int]  # (named index or -1, value alternative)


class KeyGrammar(Protocol):
    """The grammar the key leaves are added to (a ``GrammarCore``)."""

    def alt_nonempty(self, aid: int) -> bool: ...

    def add_late_alt(self, node: Node) -> int: ...


class KeyDfas(Protocol):
    """Where the byte DFAs of keys come from (shared across grammars by the compiler)."""

    escapes: str

    def literal_key(self, name: str, budget: Budget, construct: str) -> bd.ByteDFA: ...

    def any_key(self, budget: Budget) -> bd.ByteDFA: ...


class KeyLabels:
    """The labels of one seen-set: ``combine(tags)`` maps the tags of the components that
    accept together to a label (an index into ``outcomes``), or -1 for a rejected key."""

    def __init__(self, keys: ObjectKeys, seen: int) -> None:
        self.keys = keys
        self.seen = seen
        self.outcomes: list[Outcome] = []
        self._label_of: dict[Outcome, int] = {}

    def usable(self, i: int) -> bool:
        """May named key ``i`` be written (not seen yet, and its value is satisfiable)?"""
        return not (self.seen >> i & 1) and self.keys.grammar.alt_nonempty(self.keys.named_alts[i])

    def combine(self, tags: frozenset[KeyTag]) -> int:
        outcome = self._outcome(tags)
        if outcome is None:
            return -1
        if outcome not in self._label_of:
            self._label_of[outcome] = len(self.outcomes)
            self.outcomes.append(outcome)
        return self._label_of[outcome]

    def _outcome(self, tags: frozenset[KeyTag]) -> Outcome | None:
        keys = self.keys
        lits = [t[1] for t in tags if t[0] == "lit"]
        if lits:
            return (lits[0], keys.named_alts[lits[0]]) if self.usable(lits[0]) else None
        pats = sum(1 << t[1] for t in tags if t[0] == "p")
        if pats:
            alt = keys.pattern_combo_alts[pats]
        elif ANY_KEY in tags and keys.additional_alt is not None:
            alt = keys.additional_alt
        else:
            return None
        return (-1, alt) if keys.grammar.alt_nonempty(alt) else None


class KeyProduct:
    """The product of the key component DFAs (shared by every seen-set of one object, and by
    the objects of one compile with the same components)."""

    def __init__(self, components: list[bd.ByteDFA], tags: list[KeyTag], budget: Budget, construct: str) -> None:
        self.components = components
        self.tags = tags
        self.table, self.comp_states = bd.product_table(components, budget, construct)
        # accepting[p]: the components accepting in product state p
        self.accepting: list[tuple[int, ...]] = [
            tuple(c for c, q in live.items() if components[c].labels[q] >= 0) for live in self.comp_states
        ]
        self.nbytes = (
            self.table.nbytes
            + sum(200 + 100 * len(live) for live in self.comp_states)
            + sum(72 + 8 * len(a) for a in self.accepting)
        )


class ObjectKeys:
    """The keys of one object schema.

    ``named[i]`` (declared properties, then required names) has value alternative
    ``named_alts[i]``; ``patterns[j]`` is (character DFA, source) of a pattern property, and
    ``pattern_combo_alts[mask]`` the value alternative of a key matching exactly the patterns
    in ``mask``; ``additional_alt`` is the value alternative of other keys (None: forbidden).
    """

    def __init__(
        self,
        grammar: KeyGrammar,
        dfas: KeyDfas,
        named: list[str],
        required_mask: int,
        named_alts: list[int],
        patterns: list[tuple[CharDFA, str]],
        pattern_combo_alts: dict[int, int],
        additional_alt: int | None,
        *,
        budget: Budget | None = None,
        construct: str = "an object",
        products: dict[tuple[object, ...], KeyProduct] | None = None,
    ) -> None:
        self.grammar = grammar
        self.dfas = dfas
        self.named = named
        self.required_mask = required_mask
        self.named_alts = named_alts
        self.patterns = patterns
        self.pattern_combo_alts = pattern_combo_alts
        self.additional_alt = additional_alt
        self._leaves: dict[int, tuple[int | None, list[Outcome]]] = {}
        budget = budget if budget is not None else CompileBudget.unlimited()
        self._product = self._build_product(budget, construct, products) if self._any_keys else None

    @property
    def _any_keys(self) -> bool:
        return bool(self.named) or self.additional_alt is not None or bool(self.patterns)

    def leaf_for_seen(self, seen: int) -> tuple[int | None, list[Outcome]]:
        """(alternative of the key leaf, or None when no key may follow; outcome per label)."""
        hit = self._leaves.get(seen)
        if hit is None:
            hit = self._leaves[seen] = self._build_leaf(seen)
        return hit

    @property
    def component_dfas(self) -> list[bd.ByteDFA]:
        return self._product.components if self._product is not None else []

    @property
    def nbytes(self) -> int:
        """Memory of the key product, its component DFAs aside (see ``component_dfas``)."""
        return 500 + 100 * len(self.named) + (self._product.nbytes if self._product is not None else 0)

    def _build_product(
        self, budget: Budget, construct: str, products: dict[tuple[object, ...], KeyProduct] | None
    ) -> KeyProduct:
        comps: list[bd.ByteDFA] = []
        tags: list[KeyTag] = []
        for i, name in enumerate(self.named):
            budget.charge(construct, 1)
            comps.append(self.dfas.literal_key(name, budget, construct))
            tags.append(("lit", i))
        for j, (pdfa, src) in enumerate(self.patterns):
            comps.append(
                bd.string_byte_dfa(
                    pdfa, escapes=self.dfas.escapes, budget=budget, construct=f"the key pattern {src!r} of {construct}"
                )
            )
            tags.append(("p", j))
        if self.additional_alt is not None or self.patterns:
            comps.append(self.dfas.any_key(budget))
            tags.append(ANY_KEY)
        key = (tuple(c.key for c in comps), tuple(tags))
        hit = products.get(key) if products is not None else None
        if hit is None:
            hit = KeyProduct(comps, tags, budget, construct)
            if products is not None:
                products[key] = hit
        return hit

    def _build_leaf(self, seen: int) -> tuple[int | None, list[Outcome]]:
        product = self._product
        if product is None:
            return None, []
        labels = KeyLabels(self, seen)
        tags = product.tags
        row_labels = np.array(
            [labels.combine(frozenset(tags[c] for c in acc)) if acc else -1 for acc in product.accepting],
            dtype=np.int32,
        )
        dfa = bd.relabel(product.table, row_labels)
        if not labels.outcomes or dfa.labels == [-1] * dfa.size or not (dfa.table[dfa.start] >= 0).any():
            return None, labels.outcomes
        leaf = KeyLeafNode(
            dfa, product.comp_states, product.components, tags, self._useful(labels), labels, not self.patterns
        )
        return self.grammar.add_late_alt(leaf), labels.outcomes

    def _useful(self, labels: KeyLabels) -> list[bool]:
        """Per component: can it still lead to an accepted key?"""
        useful = []
        for t in self._product.tags if self._product is not None else []:
            if t[0] == "lit":
                useful.append(labels.usable(t[1]))
            elif t == ANY_KEY:
                useful.append(self.additional_alt is not None and self.grammar.alt_nonempty(self.additional_alt))
            else:
                useful.append(True)
        return useful
