"""A regular-expression subset (ECMA-262 flavoured, as JSON Schema specifies) compiled to a
character NFA.

Supported: literals; ``.`` (any character but line terminators); classes ``[...]`` / ``[^...]``
with ranges; escapes ``\\d \\D \\w \\W \\s \\S \\t \\n \\r \\v \\f \\0 \\xHH \\uHHHH`` and escaped
punctuation; groups ``(...)``, ``(?:...)`` and named groups ``(?<name>...)``; alternation
``|``; quantifiers ``* + ? {n} {n,} {n,m}`` (lazy forms mean the same language); ``^`` as
the first and ``$`` as the last character of the whole pattern.

Not supported (``SchemaError``): backreferences, lookaround, word boundaries, anchors
elsewhere, flags, Unicode property escapes. Classes are ASCII-only as in ECMA without the
``u`` flag (``\\d`` is ``[0-9]``); ``\\s`` is the whitespace both ECMA and Python agree on,
and ``\\S`` excludes every character either considers whitespace.

``search`` semantics: an unanchored side is padded with "any characters", as
``re.search`` / ECMA ``test`` do.
"""

from __future__ import annotations

from tritonlm.errors import SchemaError

from .automata import CharNFA
from .budget import MAX_NESTING, Budget, CompileBudget
from .charclass import ANY_CHAR, CharClass, cc_char, cc_negate, cc_normalize

MAX_REPEAT = 1000
_QUANTIFIERS: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}

DIGIT = cc_normalize([(0x30, 0x39)])
WORD = cc_normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE_COMMON = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
]
SPACE = cc_normalize(_SPACE_COMMON)
NOT_SPACE = cc_negate(cc_normalize([*_SPACE_COMMON, (0x1C, 0x1F), (0x85, 0x85), (0xFEFF, 0xFEFF)]))
DOT = cc_negate(cc_normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))

_CLASS_ESCAPES = {"d": DIGIT, "D": cc_negate(DIGIT), "w": WORD, "W": cc_negate(WORD), "s": SPACE, "S": NOT_SPACE}
_CHAR_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "v": 0x0B, "f": 0x0C, "0": 0x00}

# An AST: ("cls", CharClass) | ("cat", [nodes]) | ("alt", [nodes]) | ("rep", node, min, max|None)
Node = tuple


class _Parser:
    def __init__(self, pattern: str, pointer: str) -> None:
        self.p = pattern
        self.i = 0
        self.pointer = pointer
        self.depth = 0  # open groups

    def error(self, what: str) -> SchemaError:
        return SchemaError(f"pattern at {self.pointer or '/'}: {what} in {self.p!r} (offset {self.i})")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def parse(self) -> tuple[Node, bool, bool]:
        anchored_start = anchored_end = False
        if self.p.startswith("^"):
            anchored_start = True
            self.i = 1
        end = len(self.p)
        if self.p.endswith("$") and not _escaped_at(self.p, len(self.p) - 1) and len(self.p) > self.i:
            anchored_end = True
            end -= 1
        self.end = end
        node = self.alt()
        if self.i != self.end:
            raise self.error("unbalanced ')'")
        return node, anchored_start, anchored_end

    def alt(self) -> Node:
        branches = [self.cat()]
        while self.i < self.end and self.p[self.i] == "|":
            self.i += 1
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def cat(self) -> Node:
        items = []
        while self.i < self.end and self.p[self.i] not in "|)":
            items.append(self.repeat())
        return ("cat", items)

    def repeat(self) -> Node:
        atom = self.atom()
        lo: int
        hi: int | None
        while self.i < self.end:
            c = self.p[self.i]
            if c in "*+?":
                self.i += 1
                lo, hi = _QUANTIFIERS[c]
            elif c == "{" and (quant := self._brace_quant()) is not None:
                lo, hi = quant
                self.i = self._brace_end
            else:
                break
            if self.i < self.end and self.p[self.i] == "?":
                self.i += 1
            if (hi is not None and hi > MAX_REPEAT) or lo > MAX_REPEAT:
                raise self.error(f"repetition bound above {MAX_REPEAT}")
            atom = ("rep", atom, lo, hi)
        return atom

    def _brace_quant(self) -> tuple[int, int | None] | None:
        j = self.p.find("}", self.i)
        if j < 0 or j >= self.end:
            return None
        body = self.p[self.i + 1 : j]
        parts = body.split(",")
        hi: int | None
        try:
            if len(parts) == 1:
                lo = hi = int(parts[0])
            elif len(parts) == 2:
                lo = int(parts[0])
                hi = int(parts[1]) if parts[1] else None
            else:
                return None
        except ValueError:
            return None
        if hi is not None and hi < lo:
            raise self.error("quantifier {n,m} with m < n")
        self._brace_end = j + 1
        return lo, hi

    def atom(self) -> Node:
        c = self.p[self.i]
        if c == "(":
            self.i += 1
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif (
                self.p.startswith("?<", self.i)
                and not self.p.startswith("?<=", self.i)
                and not self.p.startswith("?<!", self.i)
            ):
                j = self.p.find(">", self.i)
                if j < 0:
                    raise self.error("bad group name")
                self.i = j + 1
            elif self.peek() == "?":
                raise self.error("lookaround or inline flags are not supported")
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(f"groups nested too deep (more than {MAX_NESTING} levels)")
            node = self.alt()
            self.depth -= 1
            if self.i >= self.end or self.p[self.i] != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return ("cls", self.char_class())
        if c == ".":
            self.i += 1
            return ("cls", DOT)
        if c == "\\":
            return ("cls", self.escape(in_class=False))
        if c in "^$":
            raise self.error(f"anchor {c!r} not at the start/end of the pattern")
        if c in "*+?":
            raise self.error("nothing to repeat")
        if c == "{" and self._brace_quant():
            raise self.error("nothing to repeat")
        self.i += 1
        return ("cls", cc_char(ord(c)))

    def escape(self, in_class: bool) -> CharClass:
        self.i += 1
        if self.i >= len(self.p):
            raise self.error("trailing backslash")
        c = self.p[self.i]
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c in _CHAR_ESCAPES:
            return cc_char(_CHAR_ESCAPES[c])
        if c == "b" and in_class:
            return cc_char(0x08)
        if c in "xu":
            n = 2 if c == "x" else 4
            digits = self.p[self.i : self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"bad \\{c} escape")
            self.i += n
            return cc_normalize([(int(digits, 16), int(digits, 16))])
        if c.isalnum():
            raise self.error(f"unsupported escape \\{c}")
        return cc_char(ord(c))

    def char_class(self) -> CharClass:
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        items: list[tuple[int, int]] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.error("missing ']'")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            if c == "]":  # ECMA: "[]" is the empty class
                self.i += 1
                break
            first = False
            lo_cls = self.class_atom()
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi_cls = self.class_atom()
                if len(lo_cls) != 1 or lo_cls[0][0] != lo_cls[0][1] or len(hi_cls) != 1 or hi_cls[0][0] != hi_cls[0][1]:
                    raise self.error("class range with a class escape")
                if hi_cls[0][0] < lo_cls[0][0]:
                    raise self.error("class range out of order")
                items.append((lo_cls[0][0], hi_cls[0][0]))
            else:
                items.extend(lo_cls)
        cls = cc_normalize(items)
        return cc_negate(cls) if negate else cls

    def class_atom(self) -> CharClass:
        c = self.p[self.i]
        if c == "\\":
            return self.escape(in_class=True)
        self.i += 1
        return cc_char(ord(c))


def _escaped_at(p: str, k: int) -> bool:
    n = 0
    j = k - 1
    while j >= 0 and p[j] == "\\":
        n += 1
        j -= 1
    return n % 2 == 1


def expanded_size(node: Node) -> int:
    """The number of NFA states ``_build`` makes for ``node`` (counted repeats expanded)."""
    kind = node[0]
    if kind == "cls":
        return 1
    if kind == "cat":
        return sum(expanded_size(item) for item in node[1])
    if kind == "alt":
        return 1 + sum(1 + expanded_size(branch) for branch in node[1])
    _, inner, lo, hi = node
    size = expanded_size(inner)
    return lo * size + 1 + (size if hi is None else (hi - lo) * size)


def _build(nfa: CharNFA, node: Node, start: int, budget: Budget, construct: str) -> int:
    """Thompson construction: returns the end state of ``node`` begun at ``start``."""
    kind = node[0]
    if kind == "cls":
        budget.tick(construct)
        end = nfa.new_state()
        if node[1]:
            nfa.edges[start].append((node[1], end))
        return end
    if kind == "cat":
        cur = start
        for item in node[1]:
            cur = _build(nfa, item, cur, budget, construct)
        return cur
    if kind == "alt":
        end = nfa.new_state()
        for branch in node[1]:
            s = nfa.new_state()
            nfa.eps[start].append(s)
            nfa.eps[_build(nfa, branch, s, budget, construct)].append(end)
        return end
    if kind == "rep":
        _, inner, lo, hi = node
        cur = start
        for _ in range(lo):
            cur = _build(nfa, inner, cur, budget, construct)
        if hi is None:
            loop = nfa.new_state()
            nfa.eps[cur].append(loop)
            back = _build(nfa, inner, loop, budget, construct)
            nfa.eps[back].append(loop)
            return loop
        end = nfa.new_state()
        nfa.eps[cur].append(end)
        for _ in range(hi - lo):
            cur = _build(nfa, inner, cur, budget, construct)
            nfa.eps[cur].append(end)
        return end
    raise AssertionError(kind)


def regex_nfa(
    pattern: str, pointer: str = "", *, search: bool = True, budget: Budget | None = None, construct: str = ""
) -> CharNFA:
    """NFA for the strings ``pattern`` matches (``search``: anywhere, else: fully). Its
    expanded size is charged to ``budget`` before it is built; ``construct`` names it in
    budget errors (default: "the pattern at <pointer>")."""
    node, a_start, a_end = _Parser(pattern, pointer).parse()
    if search:
        if not a_start:
            node = ("cat", [("rep", ("cls", ANY_CHAR), 0, None), node])
        if not a_end:
            node = ("cat", [node, ("rep", ("cls", ANY_CHAR), 0, None)])
    budget = budget if budget is not None else CompileBudget.unlimited()
    construct = construct or f"the pattern at {pointer or '/'}"
    budget.charge(construct, expanded_size(node))
    nfa = CharNFA()
    nfa.start = nfa.new_state()
    nfa.accept[_build(nfa, node, nfa.start, budget, construct)] = True
    return nfa
