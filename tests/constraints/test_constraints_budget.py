"""Compile and mask budgets (issue 16): a hostile schema or regex fails fast with an error
naming its construct, cancellation stops a compile, failures are remembered, the grammar cache
is bounded by bytes, compiles run concurrently with mask filling, and the on-disk caches never
unpickle anything."""

from __future__ import annotations

import gc
import json
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tritonlm.constraints import (
    MAX_NESTING,
    CompileBudget,
    CompileLimits,
    GrammarCompiler,
    TokenizerInfo,
    allocate_token_bitmask,
)
from tritonlm.constraints import automata as am
from tritonlm.constraints import bytedfa as bd
from tritonlm.constraints.leaf_tables import LeafTables, table_arrays
from tritonlm.constraints.tokenizer_info import VocabIndex
from tritonlm.errors import CompileCancelled, ConfigError, SchemaBudgetError, SchemaError

SMALL = CompileLimits(max_seconds=0.3)
SLACK_S = 1.5  # a compile over a 0.3 s budget must have stopped by then


@pytest.fixture(scope="module")
def qwen_info(qwen_tokenizer) -> TokenizerInfo:
    info = TokenizerInfo.from_tokenizer(qwen_tokenizer)
    _ = info.index
    return info


@pytest.fixture(scope="module")
def compiler(qwen_info: TokenizerInfo) -> GrammarCompiler:
    return GrammarCompiler(qwen_info)


class ByteTok:
    """Single bytes plus a few merged tokens, then an EOS (for the disk-cache tests)."""

    def __init__(self, merged: list[bytes]) -> None:
        self.token_bytes = [bytes([i]) for i in range(256)] + merged + [b"<eos>"]
        self.eos_token_ids = (len(self.token_bytes) - 1,)
        self.vocab_size = len(self.token_bytes)


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def ref_chain(n: int) -> dict:
    defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def properties(n: int, required: bool = False) -> dict:
    schema: dict = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)}}
    if required:
        schema["required"] = list(schema["properties"])
    return schema


HOSTILE = {
    "nested counted repeats": ({"type": "string", "pattern": "^(a{1,1000}){1,1000}$"}, "the pattern at /pattern"),
    "minLength 100000 with a pattern": (
        {"type": "string", "minLength": 100000, "pattern": "^[a-z]+$"},
        "(pattern, minLength)",
    ),
    "enum of 5000 objects": ({"enum": [{"id": i, "name": f"n{i}"} for i in range(5000)]}, "/enum"),
    "2000 properties": (properties(2000, required=True), "the object at /"),
    "exponential DFA 16": ({"type": "string", "pattern": "(a|b)*a(a|b){16}"}, "the pattern at /pattern"),
    "exponential DFA 24": ({"type": "string", "pattern": "(a|b)*a(a|b){24}"}, "the pattern at /pattern"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schema_fails_within_its_budget_naming_the_construct(compiler, name: str) -> None:
    schema, construct = HOSTILE[name]
    start = time.monotonic()
    with pytest.raises(SchemaBudgetError) as err:
        compiler.compile_json_schema(schema, budget=CompileBudget(SMALL))
    assert time.monotonic() - start < SLACK_S
    assert construct in str(err.value) and "budget" in str(err.value)
    assert "maxLength" not in str(err.value)


def test_exponential_regex_fails_fast_naming_the_regex(compiler) -> None:
    start = time.monotonic()
    with pytest.raises(SchemaBudgetError, match="the regex pattern"):
        compiler.compile_regex("(a|b)*a(a|b){24}", budget=CompileBudget(SMALL))
    assert time.monotonic() - start < SLACK_S


def test_counted_repeats_are_charged_before_they_are_expanded(compiler) -> None:
    start = time.monotonic()
    with pytest.raises(SchemaBudgetError, match="size budget"):
        compiler.compile_json_schema({"type": "string", "pattern": "^(a{1,1000}){1,1000}$"})  # default limits
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("schema", [nested(300), ref_chain(300)], ids=["nested 300", "$ref chain 300"])
def test_deep_nesting_is_a_schema_error(compiler, schema: dict) -> None:
    start = time.monotonic()
    with pytest.raises(SchemaError, match="nested too deep at /") as err:
        compiler.compile_json_schema(schema)
    assert not isinstance(err.value, SchemaBudgetError)
    assert time.monotonic() - start < SLACK_S
    with pytest.raises(SchemaError, match="nested too deep"):
        compiler.compile_json_schema(json.dumps(schema))
    with pytest.raises(SchemaError, match="nested too deep"):
        compiler.compile_regex("(" * 300 + "a" + ")" * 300)


def test_nesting_up_to_a_few_dozen_levels_compiles(compiler) -> None:
    grammar = compiler.compile_json_schema(nested(40))
    matcher = grammar.matcher()
    assert matcher.accept_bytes(b"[" * 40 + b'"x"' + b"]" * 40)
    assert matcher.can_terminate()
    assert MAX_NESTING >= 100


def test_500_properties_compile_quickly(compiler) -> None:
    start = time.monotonic()
    grammar = compiler.compile_json_schema({**properties(500), "additionalProperties": False})
    assert time.monotonic() - start < 5.0
    matcher = grammar.matcher()
    assert matcher.accept_bytes(b'{"p499":"x","p7":"y"}') and matcher.can_terminate()
    assert not grammar.matcher().accept_bytes(b'{"p500":')


def test_over_budget_compiles_are_remembered_and_cancelled_ones_are_not(qwen_info) -> None:
    compiler = GrammarCompiler(qwen_info)
    schema = {"type": "string", "pattern": "(a|b)*a(a|b){20}"}
    start = time.monotonic()
    with pytest.raises(SchemaBudgetError) as first:
        compiler.compile_json_schema(schema, budget=CompileBudget(SMALL))
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    with pytest.raises(SchemaBudgetError) as again:
        compiler.compile_json_schema(schema, budget=CompileBudget(SMALL))
    assert time.monotonic() - start < 0.05
    assert str(again.value) == str(first.value)
    assert compiler.cache_sizes()["failures"] == 1
    compiler.clear_cache()
    assert compiler.cache_sizes()["failures"] == 0
    with pytest.raises(CompileCancelled):
        compiler.compile_json_schema(schema, budget=CompileBudget(SMALL, cancelled=lambda: True))
    assert compiler.cache_sizes()["failures"] == 0


def test_cancelled_from_another_thread_stops_the_compile(qwen_info) -> None:
    compiler = GrammarCompiler(qwen_info)
    schema = properties(1000)
    flag = threading.Event()
    timer = threading.Timer(0.1, flag.set)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(CompileCancelled):
            compiler.compile_json_schema(schema, budget=CompileBudget(cancelled=flag.is_set))
    finally:
        timer.cancel()
    assert time.monotonic() - start < 0.6
    assert compiler.cache_sizes()["failures"] == 0 and compiler.cache_sizes()["grammars"] == 0
    grammar = compiler.compile_json_schema(schema)  # the same schema, not cancelled
    assert grammar.matcher().accept_bytes(b'{"p999":"z"}')


def test_budget_checks_cancellation_time_and_size() -> None:
    budget = CompileBudget(CompileLimits(max_seconds=0.05, max_size=10))
    budget.charge("the pattern at /pattern", 10)
    with pytest.raises(SchemaBudgetError, match=r"the pattern at /pattern needs more than 10 size units"):
        budget.charge("the pattern at /pattern", 1)
    time.sleep(0.06)
    expected = r"took more than 0.05 s \(compile time budget\) while compiling the enum at /enum"
    with pytest.raises(SchemaBudgetError, match=expected):
        budget.check("the enum at /enum")
    with pytest.raises(CompileCancelled):
        CompileBudget(cancelled=lambda: True).check("x")
    for bad in ({"max_seconds": 0}, {"max_seconds": float("nan")}, {"max_size": 0}, {"max_mask_seconds": -1.0}):
        with pytest.raises(ConfigError):
            CompileLimits(**bad)  # type: ignore[arg-type]


def test_start_mask_is_computed_by_the_compile_and_later_masks_have_a_time_budget(qwen_info) -> None:
    compiler = GrammarCompiler(qwen_info, limits=CompileLimits(max_mask_seconds=1e-9))
    grammar = compiler.compile_json_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert grammar.initial_state in grammar.core.masks.set_masks
    bitmask = allocate_token_bitmask(1, qwen_info.vocab_size)
    matcher = grammar.matcher()
    matcher.fill_next_token_bitmask(bitmask)  # the start state's mask: a lookup
    assert matcher.accept_bytes(b'{"n":1')
    with pytest.raises(SchemaBudgetError, match="mask time budget"):
        matcher.fill_next_token_bitmask(bitmask)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _long_string(first: str) -> dict:
    # a byte DFA of about 4000 states: ~14 MB of tables
    return {"type": "string", "pattern": f"^{first}[a-z]{{1,1000}}[0-9]{{1,1000}}[A-Z]{{1,1000}}[g-p]{{1,1000}}$"}


def test_grammar_cache_is_bounded_by_bytes(qwen_info) -> None:
    budget_bytes = 24 << 20
    compiler = GrammarCompiler(qwen_info, cache_bytes=budget_bytes)
    compiler.compile_json_schema({"type": "string", "pattern": "^x{1,3}$"})  # warm-up
    gc.collect()
    before = _rss_bytes()
    sizes = []
    for first in "abc":
        grammar = compiler.compile_json_schema(_long_string(first))
        sizes.append(grammar.nbytes)
        assert compiler.cache_sizes()["grammar_bytes"] <= budget_bytes
        del grammar
    assert all(10 << 20 < s < budget_bytes for s in sizes)  # each fits alone, two do not
    assert compiler.cache_sizes()["grammars"] == 1
    gc.collect()
    grown = _rss_bytes() - before
    # the acceptance line: three large schemas in a row grow RSS by less than the cache's budget
    assert grown < budget_bytes, (grown >> 20, [s >> 20 for s in sizes])
    # a grammar larger than the whole cache is returned but not kept
    tiny = GrammarCompiler(qwen_info, cache_bytes=1 << 20)
    grammar = tiny.compile_json_schema(_long_string("d"))
    assert grammar.nbytes > 1 << 20 and tiny.cache_sizes()["grammars"] == 0


def test_compiles_run_concurrently_with_mask_filling(qwen_info) -> None:
    compiler = GrammarCompiler(qwen_info)
    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}, "tags": {"type": "array"}},
        "required": ["name"],
    }
    text = b'{"name":"Ada Lovelace","age":36,"tags":["math",1,{"x":null}]}'
    reference = GrammarCompiler(qwen_info).compile_json_schema(person)
    expected = _masks_along(reference, text)
    shared = compiler.compile_json_schema(person)
    errors: list[BaseException] = []
    results: list[list[np.ndarray]] = []

    def fill() -> None:
        try:
            for _ in range(3):
                results.append(_masks_along(shared, text))
        except BaseException as exc:
            errors.append(exc)

    def compile_some(k: int) -> None:
        try:
            for i in range(3):
                compiler.compile_json_schema({**properties(30 + 10 * i + k), "additionalProperties": False})
                compiler.compile_regex(f"[a-z]{{{k + 1},{20 + i}}}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fill)] + [threading.Thread(target=compile_some, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 3
    for masks in results:
        assert all(np.array_equal(a, b) for a, b in zip(masks, expected, strict=True))


def _masks_along(grammar, text: bytes) -> list[np.ndarray]:
    matcher = grammar.matcher()
    out = [matcher.next_token_mask().copy()]
    for i in range(0, len(text), 3):
        assert matcher.accept_bytes(text[i : i + 3])
        out.append(matcher.next_token_mask().copy())
    return out


# -- disk caches ---------------------------------------------------------------------------
class Planted:
    """Unpickling this creates ``marker`` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _planted_bytes(marker: Path, tmp_path: Path) -> bytes:
    payload = pickle.dumps(Planted(marker))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Planted(probe)))  # the payload is live: unpickling it runs code
    assert probe.exists()
    return payload


@pytest.fixture()
def leaf_setup() -> tuple[TokenizerInfo, bd.ByteDFA, int]:
    info = TokenizerInfo.from_tokenizer(ByteTok([b'"a', b"ab", b'b"', b'"', b'c",']))
    dfa = bd.string_byte_dfa(am.any_string_dfa())
    dfa.persistent = True
    return info, dfa, dfa.rows[dfa.start][0x22]  # the state inside the string


def _same_table(a, b) -> bool:
    return np.array_equal(a[0], b[0]) and [(lab, sfx, ids.tolist()) for lab, sfx, ids in a[1]] == [
        (lab, sfx, ids.tolist()) for lab, sfx, ids in b[1]
    ]


def _corruptions(path: Path, good: bytes, tmp_path: Path, marker: Path) -> dict[str, bytes]:
    arrays = dict(np.load(path, allow_pickle=False))
    out = {"planted pickle": _planted_bytes(marker, tmp_path), "truncated": good[: len(good) // 2], "empty": b""}
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    out["flipped byte"] = bytes(flipped)
    for name, change in (
        ("wrong dtype", lambda a: {**a, "inside": a["inside"].astype(np.int64)}),
        ("wrong shape", lambda a: {**a, "inside": a["inside"][:-1]}),
        ("extra array", lambda a: {**a, "extra": np.zeros(3)}),
    ):
        f = tmp_path / f"{name}.npz"
        np.savez(f, **change(arrays))
        out[name] = f.read_bytes()
    return out


def test_leaf_table_disk_cache_never_unpickles_and_rebuilds_bad_files(leaf_setup, tmp_path: Path) -> None:
    info, dfa, q = leaf_setup
    fresh = LeafTables(info).dfa_table(dfa, q)
    path = LeafTables(info).table_path(dfa, q)
    assert path.suffix == ".npz" and path.exists()
    good = path.read_bytes()
    marker = tmp_path / "marker"
    for name, data in _corruptions(path, good, tmp_path, marker).items():
        path.write_bytes(data)
        table = LeafTables(info).dfa_table(dfa, q)
        assert not marker.exists(), name
        assert _same_table(table, fresh), name
        assert path.read_bytes() != data, name  # rewritten
        assert _same_table(LeafTables(info).dfa_table(dfa, q), fresh), name  # and read back
    # a table in the right format but made with another checksum is rebuilt too
    arrays = table_arrays(fresh)
    arrays["inside"] = arrays["inside"] ^ np.uint32(1)
    np.savez(path, **arrays)
    assert _same_table(LeafTables(info).dfa_table(dfa, q), fresh)


def test_vocab_index_disk_cache_never_unpickles_and_rebuilds_bad_files(tmp_path: Path) -> None:
    info = TokenizerInfo.from_tokenizer(ByteTok([b"xy", b"xyz", b"q"]))
    path = VocabIndex.cache_path(info)
    expected = VocabIndex.load_or_build(info).arrays
    assert path.exists()
    good = path.read_bytes()
    marker = tmp_path / "marker"
    bad = {"planted pickle": _planted_bytes(marker, tmp_path), "truncated": good[:100]}
    arrays = dict(np.load(path, allow_pickle=False))
    np.savez(tmp_path / "dtype.npz", **{**arrays, "tok_ids": arrays["tok_ids"].astype(np.int64)})
    bad["wrong dtype"] = (tmp_path / "dtype.npz").read_bytes()
    np.savez(tmp_path / "shape.npz", **{**arrays, "child_node": arrays["child_node"][:-1]})
    bad["wrong shape"] = (tmp_path / "shape.npz").read_bytes()
    for name, data in bad.items():
        path.write_bytes(data)
        index = VocabIndex.load_or_build(info)
        assert not marker.exists(), name
        assert all(np.array_equal(index.arrays[k], v) for k, v in expected.items()), name
        assert path.read_bytes() != data, name
