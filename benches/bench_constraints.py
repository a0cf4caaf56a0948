"""Constraint-engine benchmarks on the real Qwen2.5 vocabulary (151,936 logits), with the same
figures for xgrammar, llguidance and outlines-core when they are installed (optional,
bench-only dependencies, imported lazily).

Workload: the ten schemas of ``tests/constraints/support/schemas.py`` and their example
instances, serialized compactly and tokenized with the real tokenizer. Per engine:

* compile time per schema (per-tokenizer precomputation done beforehand, grammar caches
  cleared, so each compile starts from the schema);
* per-token mask time along each example, on a freshly compiled grammar (``cold``: the first
  request with that schema) and again with a second matcher of the same grammar (``warm``:
  later requests); every instance token must be allowed by the mask and accepted.

Run: ``pytest benches/bench_constraints.py --benchmark-enable -s`` (prints a markdown table),
or ``python benches/bench_constraints.py``.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.constraints.support.schemas import SCHEMAS

VOCAB_SIZE = 151936


@dataclass
class EngineResult:
    name: str
    version: str
    compile_s: list[float] = field(default_factory=list)
    cold_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    instances: int = 0
    rejected: list[str] = field(default_factory=list)  # "schema #example" whose tokens were refused

    def row(self) -> str:
        def stats(xs: list[float]) -> str:
            if not xs:
                return "n/a"
            return f"{statistics.median(xs):.3f} / {np.percentile(xs, 99):.3f} / {max(xs):.2f}"

        comp = (
            f"{statistics.median(self.compile_s) * 1000:.1f} / {max(self.compile_s) * 1000:.0f}"
            if self.compile_s
            else "n/a"
        )
        notes = [f"rejected {len(self.rejected)}/{self.instances} valid instances"] if self.rejected else []
        if self.rejected:
            notes.append("(" + ", ".join(self.rejected[:6]) + ("..." if len(self.rejected) > 6 else "") + ")")
        notes += self.errors
        err = " ".join(notes)
        return f"| {self.name} {self.version} | {comp} | {stats(self.cold_ms)} | {stats(self.warm_ms)} | {err} |"


# -- engines ------------------------------------------------------------------------------
class Engine:
    """compile(schema) -> grammar; start(grammar) -> state; mask(state, bitmask);
    accept(state, token) -> bool; allowed(bitmask, token) -> bool."""

    name = ""
    version = ""

    def compile(self, schema: dict) -> Any:
        raise NotImplementedError

    def start(self, grammar: Any) -> Any:
        raise NotImplementedError

    def mask(self, state: Any, bitmask: Any) -> None:
        raise NotImplementedError

    def accept(self, state: Any, token: int) -> bool:
        raise NotImplementedError

    def new_bitmask(self) -> Any:
        return np.zeros((1, (VOCAB_SIZE + 31) // 32), dtype=np.int32)

    def allowed(self, bitmask: Any, token: int) -> bool:
        return bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)


class TritonLM(Engine):
    name = "tritonlm.constraints"

    def __init__(self, tokenizer: Any) -> None:
        from tritonlm.constraints import GrammarCompiler, TokenizerInfo, allocate_token_bitmask

        self.info = TokenizerInfo.from_tokenizer(tokenizer)
        self.compiler = GrammarCompiler(self.info)
        _ = self.info.index  # per-tokenizer precomputation (disk cache)
        self.allocate = allocate_token_bitmask
        self.version = "0.1.0"

    def compile(self, schema: dict) -> Any:
        self.compiler.clear_cache()  # compiled grammars only; token tables stay warm, as before
        return self.compiler.compile_json_schema(schema)

    def start(self, grammar: Any) -> Any:
        return grammar.matcher()

    def mask(self, state: Any, bitmask: Any) -> None:
        state.fill_next_token_bitmask(bitmask, 0)

    def accept(self, state: Any, token: int) -> bool:
        return state.accept_token(token)


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, tokenizer: Any) -> None:
        import importlib.metadata

        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo(
            [b if i not in tokenizer.special_token_ids else b"" for i, b in enumerate(tokenizer.token_bytes)],
            xgr.VocabType.RAW,
            vocab_size=VOCAB_SIZE,
            stop_token_ids=list(tokenizer.eos_token_ids),
        )
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.version = importlib.metadata.version("xgrammar")

    def compile(self, schema: dict) -> Any:
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=False, any_order=True, separators=(",", ":")
        )

    def start(self, grammar: Any) -> Any:
        return self.xgr.GrammarMatcher(grammar)

    def new_bitmask(self) -> Any:
        return self.xgr.allocate_token_bitmask(1, VOCAB_SIZE)

    def mask(self, state: Any, bitmask: Any) -> None:
        state.fill_next_token_bitmask(bitmask, 0)

    def accept(self, state: Any, token: int) -> bool:
        return state.accept_token(token)

    def allowed(self, bitmask: Any, token: int) -> bool:
        return bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, tokenizer: Any) -> None:
        import importlib.metadata

        import llguidance
        import llguidance.numpy as lln

        self.ll = llguidance
        self.lln = lln
        self.tok = llguidance.LLTokenizer(
            tokenizer.backend.to_str(), n_vocab=VOCAB_SIZE, eos_token=tokenizer.eos_token_ids[0]
        )
        self.version = importlib.metadata.version("llguidance")

    def compile(self, schema: dict) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        m = self.ll.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return grammar

    def start(self, grammar: Any) -> Any:
        return self.ll.LLMatcher(self.tok, grammar)

    def new_bitmask(self) -> Any:
        return self.lln.allocate_token_bitmask(1, VOCAB_SIZE)

    def mask(self, state: Any, bitmask: Any) -> None:
        self.lln.fill_next_token_bitmask(state, bitmask, 0)

    def accept(self, state: Any, token: int) -> bool:
        return state.consume_token(token)


class OutlinesCore(Engine):
    name = "outlines-core"

    def __init__(self, tokenizer: Any) -> None:
        import importlib.metadata

        import outlines_core

        self.oc = outlines_core
        vocab: dict[bytes, list[int]] = {}
        for i, b in enumerate(tokenizer.token_bytes):
            if b and i not in tokenizer.special_token_ids:
                vocab.setdefault(b, []).append(i)
        self.eos = tokenizer.eos_token_ids[0]
        self.vocab = outlines_core.Vocabulary(self.eos, vocab)
        self.version = importlib.metadata.version("outlines-core")

    def compile(self, schema: dict) -> Any:
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def start(self, grammar: Any) -> Any:
        return self.oc.Guide(grammar)

    def mask(self, state: Any, bitmask: Any) -> None:
        state.write_mask_into(bitmask.ctypes.data, bitmask.size, 4)

    def accept(self, state: Any, token: int) -> bool:
        if token == self.eos:  # the Guide does not advance over EOS: a finished guide accepts it
            return bool(state.is_finished())
        try:
            state.advance(token, return_tokens=False)
        except Exception:
            return False
        return True


PEERS: dict[str, type[Engine]] = {"xgrammar": XGrammar, "llguidance": LLGuidance, "outlines-core": OutlinesCore}


# -- workload -----------------------------------------------------------------------------
def load_tokenizer() -> Any:
    from tritonlm.model.default import ensure_default_model
    from tritonlm.model.tokenizer import Tokenizer

    return Tokenizer.from_dir(ensure_default_model(), vocab_size=VOCAB_SIZE)


def workload(tokenizer: Any) -> list[tuple[str, dict, list[list[int]]]]:
    out = []
    for case in SCHEMAS:
        texts = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in case.examples]
        out.append((case.name, case.schema, [tokenizer.encode(t) for t in texts]))
    return out


def run_schema(engine: Engine, name: str, schema: dict, token_lists: list[list[int]], eos: int) -> dict:
    """Compile one schema, then time the masks along each instance twice (cold, warm)."""
    out: dict[str, Any] = {"compile_s": None, "cold_ms": [], "warm_ms": [], "rejected": [], "errors": []}
    bitmask = engine.new_bitmask()
    gc.collect()
    t0 = time.perf_counter()
    try:
        grammar = engine.compile(schema)
    except Exception as exc:  # a peer may not support a schema: report it, keep going
        out["errors"].append(f"{name}: compile failed ({type(exc).__name__})")
        return out
    out["compile_s"] = time.perf_counter() - t0
    for first_pass, key in ((True, "cold_ms"), (False, "warm_ms")):
        for k, tokens in enumerate(token_lists):
            state = engine.start(grammar)
            for tok in [*tokens, eos]:
                t1 = time.perf_counter()
                engine.mask(state, bitmask)
                out[key].append((time.perf_counter() - t1) * 1000)
                if not engine.allowed(bitmask, tok) or not engine.accept(state, tok):
                    if first_pass:
                        out["rejected"].append(f"{name}#{k}")
                    break
    return out


def _isolated(engine: Engine, args: tuple, timeout_s: float) -> dict | None:
    """``run_schema`` in a forked child, abandoned after ``timeout_s`` (for engines whose
    compile time can explode); None on timeout."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        send.send(run_schema(engine, *args))

    proc = ctx.Process(target=child)
    proc.start()
    result = recv.recv() if recv.poll(timeout_s) else None
    proc.kill()
    proc.join()
    return result


def run_engine(
    engine: Engine, work: list[tuple[str, dict, list[list[int]]]], eos: int, schema_timeout_s: float | None = None
) -> EngineResult:
    res = EngineResult(engine.name, engine.version)
    for name, schema, token_lists in work:
        if schema_timeout_s is None:
            out = run_schema(engine, name, schema, token_lists, eos)
        else:
            out = _isolated(engine, (name, schema, token_lists, eos), schema_timeout_s)
            if out is None:
                res.errors.append(f"{name}: gave up after {schema_timeout_s:.0f} s")
                res.instances += len(token_lists)
                continue
        res.instances += len(token_lists)
        if out["compile_s"] is not None:
            res.compile_s.append(out["compile_s"])
        res.cold_ms += out["cold_ms"]
        res.warm_ms += out["warm_ms"]
        res.rejected += out["rejected"]
        res.errors += out["errors"]
    return res


# engines whose compile time can explode run each schema in a child process with this limit
SCHEMA_TIMEOUT_S = {"outlines-core": 60.0}


def table(results: list[EngineResult], n_tokens: int) -> str:
    head = [
        f"Workload: {len(SCHEMAS)} schemas, {sum(len(c.examples) for c in SCHEMAS)} instances, "
        f"{n_tokens} mask computations per pass; Qwen2.5 vocabulary ({VOCAB_SIZE} logits).",
        "",
        "| engine | compile ms (median / max) | cold mask ms (median / p99 / max) "
        "| warm mask ms (median / p99 / max) | notes |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + [r.row() for r in results])


# -- pytest-benchmark entry points ------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="module")
def work(tokenizer: Any) -> list[tuple[str, dict, list[list[int]]]]:
    w = workload(tokenizer)
    _ = tokenizer.token_bytes
    gc.freeze()  # long-lived tokenizer/vocabulary objects: keep them out of GC scans (as a server would)
    return w


def _engine(name: str, tokenizer: Any) -> Engine:
    if name == "tritonlm":
        return TritonLM(tokenizer)
    try:
        return PEERS[name](tokenizer)
    except ImportError:
        pytest.skip(f"{name} is not installed")


RESULTS: list[EngineResult] = []


@pytest.mark.parametrize("name", ["tritonlm", "xgrammar", "llguidance", "outlines-core"])
def test_bench_engine(benchmark: Callable, tokenizer: Any, work: list, name: str) -> None:
    engine = _engine(name, tokenizer)
    if name == "tritonlm":  # process-wide tables shared by every grammar (the "any string" DFA...)
        run_engine(engine, work[:1], tokenizer.eos_token_ids[0])
    result = benchmark.pedantic(
        run_engine, args=(engine, work, tokenizer.eos_token_ids[0], SCHEMA_TIMEOUT_S.get(name)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        compile_median_ms=statistics.median(result.compile_s) * 1000 if result.compile_s else None,
        cold_median_ms=statistics.median(result.cold_ms) if result.cold_ms else None,
        cold_p99_ms=float(np.percentile(result.cold_ms, 99)) if result.cold_ms else None,
        warm_median_ms=statistics.median(result.warm_ms) if result.warm_ms else None,
        warm_p99_ms=float(np.percentile(result.warm_ms, 99)) if result.warm_ms else None,
        errors=result.errors,
    )
    RESULTS.append(result)
    n_tokens = sum(len(t) + 1 for _, _, ts in work for t in ts)
    print("\n" + table(RESULTS, n_tokens))
    if name == "tritonlm":
        assert not result.errors and not result.rejected, (result.errors, result.rejected)
        assert statistics.median(result.compile_s) <= 1.0


def main() -> None:
    tok = load_tokenizer()
    work = workload(tok)
    _ = tok.token_bytes
    gc.freeze()  # long-lived tokenizer/vocabulary objects: keep them out of GC scans (as a server would)
    eos = tok.eos_token_ids[0]
    results = []
    names = sys.argv[1:] or ["tritonlm", "xgrammar", "llguidance", "outlines-core"]
    for name in names:
        try:
            engine = TritonLM(tok) if name == "tritonlm" else PEERS[name](tok)
        except ImportError:
            print(f"{name}: not installed")
            continue
        if name == "tritonlm":
            run_engine(engine, work[:1], eos)
        results.append(run_engine(engine, work, eos, SCHEMA_TIMEOUT_S.get(name)))
        print(results[-1].row(), flush=True)
    n_tokens = sum(len(t) + 1 for _, _, ts in work for t in ts)
    print(table(results, n_tokens))


if __name__ == "__main__":
    main()
