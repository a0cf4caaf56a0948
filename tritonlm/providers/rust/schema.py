"""The Rust generator's contract with the model: :class:`RustFunctionSpec` (the task) and
:data:`RUST_GENERATION_SCHEMA` (the JSON answer: imports, lifetimes, generic parameters with
trait bounds, variables with mutability, error handling, helper functions, implementation body).

The schema's regex patterns use the constraint engine's subset, so a constrained generation
can only produce bodies whose brackets pair up and that define no nested ``fn``, and no field
that reaches the source as code can name a macro that reads a file or the environment at
compile time (:data:`FORBIDDEN_IDENTIFIERS`) or write an attribute (:func:`safe_code_pattern`,
:func:`balanced_code_pattern`): what the grammar lets through passes
:func:`~tritonlm.providers.rust.sandbox.check_source`, which guards every rustc run anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tritonlm.errors import ConfigError
from tritonlm.providers.rust.sandbox import FORBIDDEN_IDENTIFIERS, source_problems

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"

_TYPE_PARAM = r"^[A-Z][A-Za-z0-9]*$"  # CamelCase: a type parameter never shadows a type like u32

_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_W = "A-Za-z0-9_"
# what may follow a `#` besides a word character or another `#`: characters that cannot
# continue it into an attribute (`#[`, `#!`, nor with whitespace or a comment in between)
_AFTER_HASH = frozenset("\"'(){}<>=+-*&|^%,.:;?@~$]\\")
_BRACKETS = frozenset("{}()")
# the escapes a Rust string may hold (a lone `\` would make `\"` ambiguous)
_STRING_ESCAPE = r"\\(?:[nrt0'\"\\\n]|x[0-7][0-9a-fA-F]|u\{[0-9a-fA-F]{1,6}\})"


def _class(chars: frozenset[str], *, negate: bool = False) -> str:
    """A character class of the ASCII characters ``chars`` (or of every other character)."""
    codes = sorted(ord(c) for c in chars)
    runs: list[tuple[int, int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    parts = [re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in runs]
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _trie(words: tuple[str, ...], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Children by character; "" marks a forbidden word, "*" a forbidden prefix."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    for prefix in prefixes:
        node = root
        for char in prefix[:-1]:
            node = node.setdefault(char, {})
        node[prefix[-1]] = {"*": {}}
    return root


def _leaving(node: dict[str, Any], first: bool) -> str | None:
    """Paths of the trie that end in a character no forbidden word continues with."""
    if "*" in node:
        return None
    children = sorted(c for c in node if len(c) == 1)
    others = _WORD_CHARS - set(children) - (set("0123456789") if first else set())
    alts = [_class(frozenset(others))] if others else []
    alts += [re.escape(c) + tail for c in children if (tail := _leaving(node[c], False)) is not None]
    return "(?:" + "|".join(alts) + ")" if alts else None


def _inside(node: dict[str, Any], top: bool) -> str | None:
    """The allowed words that end inside the trie (prefixes of forbidden words)."""
    if "*" in node:
        return None
    ends_here = not top and "" not in node
    children = sorted(c for c in node if len(c) == 1)
    alts = [re.escape(c) + tail for c in children if (tail := _inside(node[c], False)) is not None]
    if not alts:
        return "" if ends_here else None
    group = "(?:" + "|".join(alts) + ")"
    return group + "?" if ends_here else group


def word_excluding(words: tuple[str, ...], prefixes: tuple[str, ...] = (), *, identifier: bool = False) -> str:
    """A regex for a non-empty run of ASCII word characters (``[A-Za-z0-9_]+``) that is none of
    ``words`` and starts with none of ``prefixes`` (no digit first with ``identifier``).

    Written so that the engine's subset construction stays small (about two states per trie
    node): a word either leaves the trie of the forbidden words (then one shared loop takes
    the rest) or ends inside it."""
    trie = _trie(words, prefixes)
    leaving, inside = _leaving(trie, identifier), _inside(trie, True)
    word = f"{leaving}[{_W}]*" if leaving else None
    alts = [a for a in (word, inside) if a]
    return "(?:" + "|".join(alts) + ")"


def _escape_tails(forbidden: tuple[str, ...]) -> tuple[str, ...]:
    # in a string, `\n` + `aked_asm` is the word `naked_asm` to a view that ignores strings
    return tuple(w[1:] for w in forbidden if len(w) > 1 and w[0] in "nrt0")


def _units(forbidden: tuple[str, ...], *, forbid_fn: bool, in_string: bool) -> tuple[str, str, str]:
    """(word chunk, characters no ``#`` may precede, what a ``#`` run may precede) of code, or of
    a string literal's content.

    A chunk is a word, optionally after ``#`` (``r#type``, ``"#1"``). Between two chunks
    there is always a unit: one character that is not a word character, a ``#`` run before a
    character that cannot start an attribute, or (in a string) an escape; so every word is a
    whole word. Quotes (and in code brackets) are the caller's."""
    special = set('#"\\') if in_string else set('#"') | _BRACKETS
    ok = frozenset(chr(c) for c in range(128)) - _WORD_CHARS - special
    if in_string:
        word = word_excluding(forbidden + _escape_tails(forbidden))
        after_hash = f"{_class(ok & _AFTER_HASH)}|{_STRING_ESCAPE}"
    else:
        word = word_excluding(forbidden, ("fn",) if forbid_fn else ())
        after_hash = _class(ok & _AFTER_HASH)
    no_hash_before = _class(frozenset(_WORD_CHARS | special | (ok & _AFTER_HASH)), negate=True)
    return rf"(?:r#|#+)?{word}", no_hash_before, after_hash


def safe_code_pattern(forbidden: tuple[str, ...] = FORBIDDEN_IDENTIFIERS) -> str:
    """A whole-text regex (``^...$``) for code that contains none of ``forbidden`` as a whole
    word (every maximal ``[A-Za-z0-9_]`` run counts) and no attribute: a ``#`` is followed by
    another ``#``, one of a few token characters (``#?``, ``"#;``), the end, or a word that
    starts a run (``r#type``, ``#1``; not ``x#y``). It ignores strings and comments on
    purpose: where this simple view and rustc's lexer disagree (a ``"`` in a comment, ``'"'``,
    ``r"\\"``), a forbidden word still cannot hide. Non-ASCII characters count as separators,
    so a run only grows shorter."""
    word = word_excluding(forbidden)
    ok = _class(frozenset(_AFTER_HASH))
    bad = _class(frozenset(_WORD_CHARS | {"#"} | _AFTER_HASH), negate=True)
    return rf"^(?:(?:(?:r#|#+)?{word})?(?:{bad}|#*{ok}))*(?:(?:r#|#+)?{word})?#*$"


def balanced_code_pattern(depth: int, *, forbid_fn: bool, forbidden: tuple[str, ...] = FORBIDDEN_IDENTIFIERS) -> str:
    """A regex (our constraint engine's subset) for Rust code whose ``{ }`` and ``( )`` pair up,
    nested at most ``depth`` deep, brackets inside ``"..."`` string literals not counted, with
    the guarantees of :func:`safe_code_pattern` on the whole text, strings included (no
    ``forbidden`` word, no attribute). With ``forbid_fn`` no identifier outside strings starts
    with ``fn`` (so no ``fn`` item, nor the ``fnname`` a small model writes to get round that).

    Brackets are counted, not typed: a ``)`` may close a ``{`` (rustc says so). Typing them
    would multiply the automaton by ``2**depth``, with a copy of the word checks in each.
    Char literals such as ``'{'`` and raw strings are not recognised (a bracket in one counts);
    comments are code."""
    chunk_s, bad_s, ok_s = _units(forbidden, forbid_fn=False, in_string=True)
    string = rf'"(?:(?:{chunk_s})?(?:{bad_s}|#*(?:{ok_s})))*(?:{chunk_s})?#*"'
    chunk, bad, ok = _units(forbidden, forbid_fn=forbid_fn, in_string=False)
    level = rf"(?:(?:{chunk})?(?:{bad}|#*(?:{ok}|{string})))*(?:{chunk})?#*"
    for _ in range(depth):
        level = rf"(?:(?:{chunk})?(?:{bad}|#*(?:{ok}|{string}|[{{(]{level}[}})])))*(?:{chunk})?#*"
    return level


def _helper_pattern(depth: int, forbidden: tuple[str, ...] = FORBIDDEN_IDENTIFIERS) -> str:
    """A whole private ``fn`` item: the signature (no string, no brace, no ``forbidden`` word)
    and a body as :func:`balanced_code_pattern`."""
    word = word_excluding(forbidden)
    signature = rf'[<(](?:(?:{word})?[^A-Za-z0-9_#{{}}"])*(?:{word})?'
    name = word_excluding(forbidden, identifier=True)
    return (
        rf"^(?:pub(?:\([a-z]+\))? )?fn {name}{signature}\{{"
        + balanced_code_pattern(depth, forbid_fn=False, forbidden=forbidden)
        + r"\}\s*$"
    )


# statements: brackets balanced, no nested `fn` items (helpers have their own field), and the
# last character closes an expression or a statement (not inside an open call or block)
_BODY_PATTERNS = ("^" + balanced_code_pattern(5, forbid_fn=True) + "$", r"[^\s(\[{,=]\s*$")
_HELPER_PATTERN = _helper_pattern(4)
_SAFE = safe_code_pattern()


def _safe(*patterns: str) -> dict[str, Any]:
    """``patterns`` and :data:`_SAFE` together (the engine intersects an allOf's patterns)."""
    return {"allOf": [{"pattern": p} for p in (*patterns, _SAFE)]}


# No `!`, `#`, `"`, `;` or brace: a bound can call no macro, write no attribute, rename nothing.
_TRAIT_BOUND = r"^[A-Za-z_?'][A-Za-z0-9_:<>, ()'&=+-]*$"

# Array and string bounds keep a small model from looping inside one field (and keep a
# constrained generation inside max_tokens); they are far above what a function needs.
# Every string that reaches the source as code is under _SAFE or a pattern built like it; the
# error handling's texts become rustdoc only (render.py defuses them). A maxLength on top of
# the safe pattern multiplies its automaton by the length, so the code fields longer than an
# identifier go without one (as the body does): max_tokens bounds them.
RUST_GENERATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "imports": {
            "type": "array",
            "description": "use paths without 'use' and ';', e.g. std::collections::HashMap",
            "items": {"type": "string", **_safe(r"^[A-Za-z_][A-Za-z0-9_:{}, *]*$")},
            "maxItems": 6,
        },
        "lifetimes": {
            "type": "array",
            "description": "lifetime parameters of the function, e.g. 'a",
            "items": {"type": "string", **_safe(r"^'[a-z][a-z0-9_]*$"), "maxLength": 12},
            "maxItems": 3,
        },
        "generic_params": {
            "type": "array",
            "description": "type parameters of the function with their trait bounds",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": _TYPE_PARAM, "maxLength": 20},
                    "trait_bounds": {
                        "type": "array",
                        "items": {"type": "string", "pattern": _TRAIT_BOUND, "maxLength": 60},
                        "maxItems": 5,
                    },
                },
                "required": ["name", "trait_bounds"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
        "variables": {
            "type": "array",
            "description": "local variables declared before the body, in order",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", **_safe(_IDENT), "maxLength": 40},
                    "type": {"type": "string", **_safe()},
                    "mutable": {"type": "boolean"},
                    "initial_value": {"type": "string", **_safe()},
                },
                "required": ["name", "type", "mutable", "initial_value"],
                "additionalProperties": False,
            },
            "maxItems": 6,
        },
        "error_handling": {
            "type": "object",
            "properties": {
                "strategy": {"enum": ["none", "result", "option", "panic"]},
                "error_type": {"type": "string", "maxLength": 100},
                "description": {"type": "string", "maxLength": 300},
            },
            "required": ["strategy", "error_type", "description"],
            "additionalProperties": False,
        },
        "helper_functions": {
            "type": "array",
            "description": "complete private Rust functions the body calls",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": _IDENT, "maxLength": 40},
                    "code": {"type": "string", "pattern": _HELPER_PATTERN},
                },
                "required": ["name", "code"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
        "implementation_body": {
            "type": "string",
            "description": "the statements of the function body after the variables, ending with the result",
            # No maxLength (with the patterns it makes the grammar much slower to compile):
            # max_tokens bounds the body, and the engine closes the document within it.
            "allOf": [{"pattern": pattern} for pattern in _BODY_PATTERNS],
        },
    },
    "required": [
        "imports",
        "lifetimes",
        "generic_params",
        "variables",
        "error_handling",
        "helper_functions",
        "implementation_body",
    ],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class RustFunctionSpec:
    """What to generate: ``pub fn name(parameters) -> return_type`` doing ``description``.

    ``parameters`` are (name, Rust type) pairs; types may use the lifetimes and type
    parameters the generator declares (say which in ``description``). ``return_type=None`` is
    ``()``. ``examples`` are short behaviour examples for the prompt.
    """

    name: str
    description: str
    parameters: tuple[tuple[str, str], ...] = ()
    return_type: str | None = None
    examples: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(tuple(p) for p in self.parameters))
        object.__setattr__(self, "examples", tuple(self.examples))
        if not re.match(_IDENT, self.name):
            raise ConfigError(f"RustFunctionSpec.name={self.name!r}: not a Rust identifier")
        if not self.description.strip():
            raise ConfigError("RustFunctionSpec.description must not be empty")
        for param in self.parameters:
            if len(param) != 2 or not re.match(_IDENT, param[0]) or not param[1].strip():
                raise ConfigError(f"RustFunctionSpec.parameters: bad (name, type) pair {param!r}")
        # the signature is code in every source (the description becomes defused rustdoc)
        code = [self.name, *(part for param in self.parameters for part in param), self.return_type or ""]
        problems = [problem for part in code for problem in source_problems(part)]
        if problems:
            raise ConfigError(f"RustFunctionSpec: the signature would be refused by the source check: {problems[0]}")

    @property
    def signature_params(self) -> str:
        return ", ".join(f"{name}: {ty}" for name, ty in self.parameters)


__all__ = [
    "FORBIDDEN_IDENTIFIERS",
    "RUST_GENERATION_SCHEMA",
    "RustFunctionSpec",
    "balanced_code_pattern",
    "safe_code_pattern",
    "word_excluding",
]
