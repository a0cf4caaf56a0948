"""The Rust generator's sandbox (issue 16, item 7): the generation grammar refuses the macros
that read files or the environment and attributes, token by token; a source check refuses them
before any rustc run whatever produced the source; rustc runs under resource limits, with an
environment of its own, in a private directory; and no text of another file reaches a prompt.

rustc itself is faked by small Python scripts where a test needs to see what rustc saw or to
control what it prints; the limits are also tested on the real rustc where it is installed."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.providers.support.fakes import ScriptedProvider
from tritonlm.constraints import Grammar, GrammarCompiler, allocate_token_bitmask
from tritonlm.errors import ConfigError
from tritonlm.providers import ProviderAdapter
from tritonlm.providers.rust import (
    EXAMPLE_GENERATION,
    EXAMPLE_SPEC,
    FORBIDDEN_IDENTIFIERS,
    RUST_GENERATION_SCHEMA,
    RustcLimits,
    RustFunctionSpec,
    RustGenerator,
    UnsafeSourceError,
    check_source,
    compile_rust_lib,
    render_rust_source,
    source_problems,
)
from tritonlm.providers.rust import schema as rust_schema

HAS_RUSTC = shutil.which("rustc") is not None
needs_rustc = pytest.mark.skipif(not HAS_RUSTC, reason="rustc not installed")
SECRET = "root:x:0:0:SECRET-TEXT-OF-ANOTHER-FILE"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fake_rustc(tmp_path: Path, body: str, name: str = "fake-rustc") -> str:
    """An executable Python script standing in for rustc (it refuses ``--print sysroot``, so
    it is run as given)."""
    path = tmp_path / name
    path.write_text(
        f"#!{sys.executable}\nimport json, os, resource, sys\nif '--print' in sys.argv:\n    sys.exit(1)\n{body}\n"
    )
    path.chmod(0o755)
    return str(path)


# ---- 1. the generation grammar, token by token ---------------------------------------------------
class ByteTokenizer:
    """Single bytes, some merged tokens (so that a token can straddle the point where a
    forbidden macro or attribute becomes certain), then an EOS; encodes greedily."""

    MERGED = (
        b"include",
        b"_str",
        b"include_str!(",
        b'!("',
        b"#[",
        b"#![",
        b"env",
        b"env!",
        b"_var",
        b"let ",
        b'{"',
        b'":"',
        b'","',
        b'":[',
        b"r#",
        b"\\n",
    )

    def __init__(self) -> None:
        self.token_bytes = [bytes([i]) for i in range(256)] + list(self.MERGED) + [b"<eos>"]
        self.eos_token_ids = (len(self.token_bytes) - 1,)
        self.special_token_ids = frozenset(self.eos_token_ids)
        self.vocab_size = len(self.token_bytes)
        self._longest = sorted(self.MERGED, key=len, reverse=True)

    def encode(self, text: str) -> list[int]:
        data, ids, k = text.encode(), [], 0
        while k < len(data):
            merged = next((m for m in self._longest if data.startswith(m, k)), None)
            ids.append(256 + self.MERGED.index(merged) if merged else data[k])
            k += len(merged) if merged else 1
        return ids


ORDINARY_BODY = (
    "let included = items.len();\n"
    "let env_var = included > 0;\n"
    'let r#type = "#1: \\"quoted\\"\\n";\n'
    "if env_var && !r#type.is_empty() {\n"
    "    match position {\n"
    "        Some(i) => Ok(&items[i]),\n"
    '        None => Err(format!("{:?} not found", target)),\n'
    "    }\n"
    "} else {\n"
    '    Err(format!("{:?} not found", target))\n'
    "}"
)

# (fields of EXAMPLE_GENERATION to replace, the text around the point of refusal, its offset there)
FORBIDDEN_CASES: list[tuple[dict[str, Any], str, int]] = [
    ({"implementation_body": 'let s = include_str!("/etc/passwd");\ns.len()'}, "include_str!", 11),
    ({"implementation_body": 'include!("/tmp/x.rs")'}, "include!", 7),
    ({"implementation_body": 'include_bytes!("/dev/zero").len()'}, "include_bytes!", 13),
    ({"implementation_body": 'env!("HOME").len()'}, "env!", 3),
    ({"implementation_body": 'option_env!("HOME").is_some()'}, "option_env!", 10),
    ({"implementation_body": '#[path = "x"]\nmod m;\nm::f()'}, "#[", 1),
    ({"implementation_body": "#![allow(unused)]\n1"}, "#!", 1),
    ({"implementation_body": "# [cfg(all())]\n1"}, "# ", 1),
    # a `"` rustc reads as a char literal does not hide the macro in a "string"
    ({"implementation_body": """let q = '"'; let s = include_str!("/etc/passwd"); '"'"""}, "include_str!", 11),
    (
        {"helper_functions": [{"name": "h", "code": 'fn h() -> &\'static str { include_str!("/etc/passwd") }'}]},
        "include_str!",
        11,
    ),
    (
        {"variables": [{"name": "s", "type": "&str", "mutable": False, "initial_value": 'include_str!("/e")'}]},
        "include_str!",
        11,
    ),
    (
        {
            "variables": [
                {"name": "s", "type": '[u8; include_bytes!("/e").len()]', "mutable": False, "initial_value": "0"}
            ]
        },
        "include_bytes!",
        13,
    ),
    ({"imports": ["std::include_str as inc"]}, "include_str as", 11),  # a renamed macro
]


def _assert_refused_at(grammar: Grammar, encode: Any, vocab: list[bytes], eos: int, fields: dict, marker: str, k: int):
    text = compact({**EXAMPLE_GENERATION, **fields})
    refuse_at = len(text[: text.index(marker) + k].encode())
    matcher, offset = grammar.matcher(), 0
    bitmask = allocate_token_bitmask(1, len(vocab))
    for token in encode(text):
        matcher.fill_next_token_bitmask(bitmask, 0)
        allowed = bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)
        end = offset + len(vocab[token])
        if end <= refuse_at:  # wholly before the point of refusal
            assert allowed and matcher.accept_token(token), (marker, text[: offset + 1])
            offset = end
            continue
        assert not allowed and not matcher.accept_token(token), (marker, fields)
        return
    raise AssertionError(f"never reached the point of refusal of {marker!r}")


def _assert_accepted(grammar: Grammar, encode: Any, eos: int, generation: dict) -> None:
    matcher = grammar.matcher()
    for token in encode(compact(generation)):
        assert matcher.accept_token(token)
    assert matcher.accept_token(eos) and matcher.is_terminated()


@pytest.fixture(scope="module")
def byte_grammar() -> tuple[Grammar, ByteTokenizer]:
    tok = ByteTokenizer()
    return GrammarCompiler(tok).compile_json_schema(RUST_GENERATION_SCHEMA), tok


@pytest.mark.parametrize(("fields", "marker", "k"), FORBIDDEN_CASES, ids=[c[1] for c in FORBIDDEN_CASES])
def test_grammar_refuses_file_and_env_macros_and_attributes_at_the_point_they_appear(byte_grammar, fields, marker, k):
    grammar, tok = byte_grammar
    _assert_refused_at(grammar, tok.encode, tok.token_bytes, tok.eos_token_ids[0], fields, marker, k)


def test_grammar_accepts_ordinary_code_with_similar_words(byte_grammar) -> None:
    grammar, tok = byte_grammar
    generation = {
        **EXAMPLE_GENERATION,
        "implementation_body": ORDINARY_BODY,
        "variables": [{"name": "env_var", "type": "Option<usize>", "mutable": False, "initial_value": "None"}],
        "imports": ["std::fmt::Debug", "std::collections::{HashMap, HashSet}"],
    }
    _assert_accepted(grammar, tok.encode, tok.eos_token_ids[0], EXAMPLE_GENERATION)
    _assert_accepted(grammar, tok.encode, tok.eos_token_ids[0], generation)
    check_source(render_rust_source(EXAMPLE_SPEC, generation))


@pytest.mark.slow
def test_grammar_refuses_forbidden_macros_on_the_default_tokenizer() -> None:
    """The same on the real Qwen2.5 vocabulary (a compile of the whole schema on it)."""
    from tritonlm.constraints import TokenizerInfo
    from tritonlm.errors import ModelLoadError
    from tritonlm.model.default import ensure_default_gguf
    from tritonlm.model.gguf import GGUFFile

    try:
        gguf = ensure_default_gguf()
    except ModelLoadError as exc:
        pytest.skip(f"default model not available: {exc}")
    tokenizer = GGUFFile(gguf).tokenizer()
    info = TokenizerInfo.from_tokenizer(tokenizer)
    grammar = GrammarCompiler(info).compile_json_schema(RUST_GENERATION_SCHEMA)
    eos = info.eos_token_ids[0]
    for fields, marker, k in FORBIDDEN_CASES:
        _assert_refused_at(grammar, tokenizer.encode, info.vocab, eos, fields, marker, k)
    _assert_accepted(grammar, tokenizer.encode, eos, {**EXAMPLE_GENERATION, "implementation_body": ORDINARY_BODY})


def test_what_the_code_patterns_accept_passes_the_source_check() -> None:
    """The grammar never lets through what the source check would refuse (random texts over
    the pieces that matter, checked on the engine's own automata)."""
    from tritonlm.constraints.automata import determinize
    from tritonlm.constraints.regex import regex_nfa
    from tritonlm.constraints.schema_base import char_dfa_accepts

    dfas = [determinize(regex_nfa(p)) for p in (rust_schema._BODY_PATTERNS[0], rust_schema._SAFE)]
    pieces = [*FORBIDDEN_IDENTIFIERS, "fn", "r", "x", "1", "aked_asm", "n", "#", "[", "!", "/", " ", "\n"]
    pieces += ["\\", "\\n", '"', "'", "{", "}", "(", ")", ";", "é", "\u200e"]
    rng, accepted = random.Random(7), 0
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        for dfa in dfas:
            if char_dfa_accepts(dfa, text):
                accepted += 1
                assert source_problems(text) == (), text
    assert accepted > 500


# ---- 2. the source check ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        'pub fn f() -> &\'static str { include_str!("/etc/passwd") }',
        'pub fn f() -> usize { include_bytes!("/dev/zero").len() }',
        'include!("/tmp/x.rs");',
        'pub fn f() -> &\'static str { env!("HOME") }',
        'pub fn f() -> Option<&\'static str> { option_env!("HOME") }',
        "use std::include_str as inc;",
        'pub fn f() -> &\'static str { r#include_str!("/etc/passwd") }',
        '#[path = "/etc/passwd"]\nmod m;',
        "#![feature(concat_idents)]",
        '# [path = "x"] mod m;',
        '#\u200e[path = "x"] mod m;',
        '#/* */[path = "x"] mod m;',
        "// a comment: include_str is refused here too\npub fn f() {}",
    ],
)
def test_source_check_refuses_macros_and_attributes_anywhere(source: str) -> None:
    assert source_problems(source)
    with pytest.raises(UnsafeSourceError, match="refused to compile"):
        check_source(source)


def test_source_check_lets_ordinary_code_and_the_renderers_own_attribute_through() -> None:
    check_source(render_rust_source(EXAMPLE_SPEC, {**EXAMPLE_GENERATION, "implementation_body": ORDINARY_BODY}))
    check_source('#[must_use]\npub fn f(included: u8) -> String { format!("#{} {}", included, r#"a"#) }')


def test_prose_is_defused_in_rustdoc_and_spec_code_is_checked() -> None:
    generation = {
        **EXAMPLE_GENERATION,
        "error_handling": {"strategy": "result", "error_type": "String", "description": "Errors include #[x] env"},
    }
    spec = RustFunctionSpec(name="f", description="Lines that include the word #\nand env", return_type="u8")
    source = render_rust_source(spec, generation)
    check_source(source)
    assert "Errors include" in source.replace("\u200b", "") and "#[x]" in source.replace("\u200b", "")
    for bad in ({"name": "env"}, {"return_type": '[u8; include_bytes!("/e").len()]'}):
        with pytest.raises(ConfigError, match="source check"):
            RustFunctionSpec(**{"name": "f", "description": "d", **bad})


def test_a_source_that_bypassed_the_grammar_never_reaches_rustc(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "rustc-ran"
    rustc = fake_rustc(tmp_path, f"open({str(marker)!r}, 'w').close()")
    with pytest.raises(UnsafeSourceError):
        run(compile_rust_lib('pub fn f() -> &\'static str { include_str!("/etc/passwd") }', rustc=rustc))
    assert not marker.exists()

    # a provider whose answers are not validated at all (the grammar and both schema checks
    # bypassed): the generator still refuses to compile, and says why in the next prompt
    import tritonlm.providers.rust.generator as generator_module

    class UncheckedAdapter(ProviderAdapter):
        async def __call__(self, prompt: str, schema: Any = None, **kw: Any) -> Any:
            return await self.provider.generate_structured(prompt, schema or {}, **kw)

    monkeypatch.setattr(generator_module, "schema_problems", lambda *_: [])
    bypassed = {**EXAMPLE_GENERATION, "implementation_body": 'let s = include_str!("/etc/passwd");\nErr(s.into())'}
    provider = ScriptedProvider(objects=[bypassed], repeat_last=True)
    result = run(RustGenerator(UncheckedAdapter(provider), max_attempts=2, rustc=rustc).generate(EXAMPLE_SPEC))
    assert not result.compiled and not marker.exists()
    first = result.attempts[0]
    assert first.compile is None and first.source is None and "include_str" in (first.generated_source or "")
    assert "refused to compile" in (first.error or "") and "refused to compile" in provider.calls[1].prompt


# ---- 3. limits, environment, private directory -----------------------------------------------------
def test_rustc_limits_are_validated() -> None:
    for bad in ({"cpu_seconds": 0}, {"memory_bytes": 1 << 20}, {"file_size_bytes": -1}, {"max_processes": 0}):
        with pytest.raises(ConfigError, match="RustcLimits"):
            RustcLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limits"):
        RustGenerator(ProviderAdapter(ScriptedProvider()), limits={"cpu_seconds": 1})  # type: ignore[arg-type]
    assert RustcLimits(max_processes=None).rlimits()[-1][0] == resource.RLIMIT_CORE


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_rustc_runs_with_its_own_environment_limits_and_private_directory(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    rustc = fake_rustc(
        tmp_path,
        "names = ('CPU', 'AS', 'FSIZE', 'NPROC', 'CORE')\n"
        "limits = {n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in names}\n"
        "cwd = os.getcwd()\n"
        # what exec gave it: Python itself may add LC_CTYPE to os.environ (PEP 538)
        "env = dict(v.split('=', 1) for v in open('/proc/self/environ').read().split(chr(0)) if v)\n"
        f"json.dump({{'env': env, 'cwd': cwd, 'mode': os.stat(cwd).st_mode & 0o777,"
        f" 'files': sorted(os.listdir(cwd)), 'argv': sys.argv[1:], 'limits': limits}}, open({str(report)!r}, 'w'))",
    )
    limits = RustcLimits(cpu_seconds=7, memory_bytes=900 << 20, file_size_bytes=3 << 20, max_processes=555)
    result = run(compile_rust_lib("pub fn f() -> u8 { 1 }", rustc=rustc, limits=limits))
    assert result.ok
    seen = json.loads(report.read_text())
    private = seen["cwd"]
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR"}, seen["env"]
    assert seen["env"]["HOME"] == private and seen["env"]["TMPDIR"] == f"{private}/tmp"
    assert seen["mode"] == 0o700 and seen["files"] == ["lib.rs", "tmp"] and "lib.rs" in seen["argv"]
    assert seen["limits"] == {
        "CPU": [7, 8],
        "AS": [900 << 20] * 2,
        "FSIZE": [3 << 20] * 2,
        "NPROC": [555] * 2,
        "CORE": [0, 0],
    }
    assert not Path(private).exists()  # removed afterwards


def test_the_cpu_limit_stops_rustc_before_the_timeout(tmp_path: Path) -> None:
    rustc = fake_rustc(tmp_path, "while True:\n    pass")
    start = time.monotonic()
    result = run(compile_rust_lib("pub fn f() {}", rustc=rustc, limits=RustcLimits(cpu_seconds=1), timeout_s=60))
    assert time.monotonic() - start < 30
    assert not result.ok and not result.timed_out and result.limit == "cpu"
    assert "limit of 1 s of CPU time" in result.stderr


@needs_rustc
def test_the_memory_limit_stops_a_memory_hungry_compile_quickly() -> None:
    limits = RustcLimits(memory_bytes=1536 << 20)
    assert run(compile_rust_lib("pub fn f() -> u8 { 1 }", limits=limits)).ok  # rustc itself fits
    hungry = "pub fn f() -> u8 {\n    const A: [u8; 1 << 33] = [7; 1 << 33];\n    A[5]\n}\n"
    start = time.monotonic()
    result = run(compile_rust_lib(hungry, limits=limits, timeout_s=120))
    assert time.monotonic() - start < 60
    assert not result.ok and not result.timed_out and result.limit == "memory", result.stderr
    assert "limit of 1536 MiB of memory" in result.stderr


@needs_rustc
def test_the_file_size_limit_stops_rustc_writing_a_large_library() -> None:
    big = "pub static DATA: [u8; 8_000_000] = [7; 8_000_000];\n"
    result = run(compile_rust_lib(big, limits=RustcLimits(file_size_bytes=1 << 20), timeout_s=120))
    assert not result.ok and result.limit == "file_size", result.stderr
    assert "limit of files of 1 MiB" in result.stderr


# ---- 4. only diagnostics about the generated file reach a prompt ------------------------------------
def _diagnostic(message: str, file_name: str, text: str, children: list | None = None) -> dict:
    span = {"file_name": file_name, "line_start": 3, "column_start": 5, "is_primary": True, "text": [{"text": text}]}
    rendered = f"error: {message}\n --> {file_name}:3:5\n  |\n3 | {text}\n"
    for child in children or []:
        rendered += (
            f"note: {child['message']}\n --> {child['spans'][0]['file_name']}\n{child['spans'][0]['text'][0]['text']}\n"
        )
    return {
        "message": message,
        "level": "error",
        "code": {"code": "E0308"},
        "spans": [span],
        "children": children or [],
        "rendered": rendered,
    }


def test_diagnostics_quoting_other_files_never_reach_the_prompt(tmp_path: Path) -> None:
    note = {
        "message": "defined here",
        "level": "note",
        "spans": [_diagnostic("x", "/etc/passwd", SECRET)["spans"][0]],
        "children": [],
    }
    lines = [
        json.dumps(_diagnostic("expected item", "/etc/passwd", SECRET)),
        json.dumps(_diagnostic("mismatched types", "lib.rs", "    best", [note])),
        SECRET,  # not a diagnostic at all
    ]
    rustc = fake_rustc(tmp_path, f"sys.stderr.write({chr(10).join(lines)!r} + '\\n')\nsys.exit(1)")
    provider = ScriptedProvider(objects=[EXAMPLE_GENERATION], repeat_last=True)
    result = run(RustGenerator(ProviderAdapter(provider), max_attempts=2, rustc=rustc).generate(EXAMPLE_SPEC))
    first = result.attempts[0].compile
    assert first is not None and not first.ok
    retry_prompt = provider.calls[1].prompt
    for text in (first.stderr, retry_prompt):
        assert SECRET not in text and "/etc/passwd" not in text
    assert "mismatched types" in retry_prompt and "E0308" in retry_prompt and "    best" in retry_prompt
    assert "a diagnostic about another file" in retry_prompt
    assert result.attempts[0].error_count == 2
