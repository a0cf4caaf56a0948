"""DSPy on tritonlm, on the default model (bfloat16, this CPU).

    pytest benches/bench_dspy.py -s          # the gate: Predict.batch(16) >= 3x 16 sequential calls
    python benches/bench_dspy.py             # writes benches/RESULTS-dspy.md

The report: parse-failure rates of ConstrainedJSONAdapter and DSPy's stock ChatAdapter and
JSONAdapter on the same 60 calls (20 Predict, 20 ChainOfThought, 20 typed-signature calls),
the batch/sequential ratio, a two-tool ReAct task, BootstrapFewShot's prefix-cache hits.
"""

from __future__ import annotations

import ast
import json
import operator
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.utils.exceptions import AdapterParseError

from tritonlm import dspy_adapter
from tritonlm.runtime.llm import LLM

MAX_TOKENS = 160
# Bounds free-text strings so that every constrained output fits MAX_TOKENS.
MAX_STRING_LENGTH = 200
GATE_RATIO = 3.0
GATE_REQUESTS = 16


class Address(pydantic.BaseModel):
    city: str
    country: str


class Profile(dspy.Signature):
    """Extract a profile from the text."""

    text: str = dspy.InputField()
    age: int = dspy.OutputField(desc="age in years")
    is_student: bool = dspy.OutputField()
    sentiment: Literal["positive", "neutral", "negative"] = dspy.OutputField()
    hobbies: list[str] = dspy.OutputField()
    address: Address = dspy.OutputField()


PEOPLE = [
    ("Ana", 21, "Lisbon", "Portugal", "surfing and chess", "loves her classes"),
    ("Ben", 34, "Leeds", "UK", "running", "is tired of his job"),
    ("Chen", 19, "Shanghai", "China", "piano and go", "is excited about university"),
    ("Dara", 45, "Dublin", "Ireland", "gardening", "feels fine"),
    ("Eli", 28, "Haifa", "Israel", "climbing and cooking", "is happy"),
]


def workload() -> list[tuple[str, dspy.Module, dict[str, Any]]]:
    """60 calls: 20 Predict, 20 ChainOfThought, 20 typed."""
    calls: list[tuple[str, dspy.Module, dict[str, Any]]] = []
    predict = dspy.Predict("question -> answer")
    cot = dspy.ChainOfThought("question -> answer: int")
    typed = dspy.Predict(Profile)
    capitals = ["France", "Japan", "Italy", "Canada", "Egypt", "Peru", "Kenya", "Norway", "Chile", "India"]
    for i in range(20):
        country = capitals[i % len(capitals)]
        question = f"What is the capital of {country}?" if i < 10 else f"Name one famous food from {country}."
        calls.append(("Predict", predict, {"question": question}))
    for i in range(20):
        a, b = 3 + i, 7 + 2 * i
        calls.append(("ChainOfThought", cot, {"question": f"Tom has {a} apples and buys {b} more. How many now?"}))
    for i in range(20):
        name, age, city, country, hobbies, mood = PEOPLE[i % len(PEOPLE)]
        student = "a student" if i % 2 == 0 else "not a student"
        text = (
            f"{name} is {age + i // 5} years old, lives in {city}, {country}, is {student}, "
            f"enjoys {hobbies} and {mood}."
        )
        calls.append(("typed", typed, {"text": text}))
    return calls


def load_llm() -> LLM:
    from tritonlm.model.loader import load_model

    # dense bfloat16 weights, the configuration its RESULTS rows name ("default" alone is the GGUF's quantized weights)
    return LLM.from_loaded(load_model("default", dtype="bfloat16", backend="torch", quantization=None), max_num_seqs=64)


def run_calls(lm: dspy.LM, adapter: dspy.Adapter, calls: list[Any], threads: int = 60) -> dict[str, Any]:
    """Run every call concurrently; count parse failures (AdapterParseError) and other errors."""

    def one(call: tuple[str, dspy.Module, dict[str, Any]]) -> tuple[str, str]:
        kind, module, inputs = call
        with dspy.context(lm=lm, adapter=adapter):
            try:
                module(**inputs)
                return kind, "ok"
            except AdapterParseError:
                return kind, "parse"
            except Exception as exc:  # counted and reported, not hidden
                return kind, f"error:{type(exc).__name__}"

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(one, calls))
    elapsed = time.perf_counter() - start
    by_kind: dict[str, list[str]] = {}
    for kind, outcome in outcomes:
        by_kind.setdefault(kind, []).append(outcome)
    return {"outcomes": outcomes, "by_kind": by_kind, "seconds": elapsed}


def batch_vs_sequential(lm: dspy.LM, adapter: dspy.Adapter, n: int = GATE_REQUESTS) -> dict[str, float]:
    predict = dspy.Predict("question -> answer")
    examples = [
        dspy.Example(question=f"Give one word that rhymes with {w}.").with_inputs("question")
        for w in [
            "cat",
            "dog",
            "sun",
            "tree",
            "blue",
            "rain",
            "star",
            "bell",
            "cake",
            "fish",
            "ring",
            "moon",
            "hat",
            "light",
            "sea",
            "car",
        ][:n]
    ]
    with dspy.context(lm=lm, adapter=adapter):
        start = time.perf_counter()
        for example in examples:
            predict(**example.inputs())
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        predict.batch(examples, num_threads=n, max_errors=0)
        batched = time.perf_counter() - start
    return {"sequential_s": sequential, "batch_s": batched, "ratio": sequential / batched}


_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    result = value(ast.parse(expression, mode="eval").body)
    return str(int(result) if float(result).is_integer() else result)


PRICES = {"widget": 12, "gadget": 30, "gizmo": 7}


def lookup_price(item: str) -> str:
    """Look up the unit price in dollars of an item (widget, gadget or gizmo)."""
    price = PRICES.get(item.strip().lower())
    return f"{item} costs {price} dollars" if price is not None else f"unknown item {item!r}"


REACT_QUESTIONS: tuple[tuple[int, str], ...] = ((7, "widget"), (5, "gadget"), (3, "gizmo"), (4, "widget"))


def react_question(count: int, item: str) -> str:
    return f"How many dollars do {count} {item}s cost? Look up the {item} price, then use the calculator."


def react_task(lm: dspy.LM, adapter: dspy.Adapter) -> list[dict[str, Any]]:
    """The two-tool task for each of REACT_QUESTIONS, run as one ``batch`` (concurrent requests)."""
    react = dspy_adapter.ReAct("question -> answer: int", tools=[calculator, lookup_price], max_iters=6)
    examples = [dspy.Example(question=react_question(n, item)).with_inputs("question") for n, item in REACT_QUESTIONS]
    with dspy.context(lm=lm, adapter=adapter):
        preds = react.batch(examples, num_threads=len(examples), max_errors=0)
    results = []
    for (count, item), pred in zip(REACT_QUESTIONS, preds, strict=True):
        trajectory = pred.trajectory
        steps = sorted((k for k in trajectory if k.startswith("tool_name_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        calls = [(trajectory[k], trajectory[k.replace("tool_name_", "tool_args_")]) for k in steps]
        results.append(
            {
                "question": f"{count} {item}s",
                "answer": pred.answer,
                "expected": count * PRICES[item],
                "calls": calls,
                "all_valid": all(name in ("calculator", "lookup_price", "finish") for name, _ in calls),
            }
        )
    return results


def bootstrap_prefix_cache(lm: dspy.LM, adapter: dspy.Adapter, llm: LLM) -> dict[str, Any]:
    trainset = [
        dspy.Example(question=f"What is {i} plus {i}?", answer=str(2 * i)).with_inputs("question") for i in range(10)
    ]
    program = dspy.Predict("question -> answer")

    def metric(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> bool:
        return example.answer in str(pred.answer)

    optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=3, max_labeled_demos=3)
    with dspy.context(lm=lm, adapter=adapter):
        compiled = optimizer.compile(program, trainset=trainset)
        block_manager = llm.engine.block_manager
        compiled(question="What is 20 plus 20?")
        before = block_manager.num_cache_hit_blocks
        compiled(question="What is 31 plus 31?")
        hits = block_manager.num_cache_hit_blocks - before
    return {
        "demos": len(compiled.demos),
        "cache_hit_blocks_second_call": hits,
        "block_size": llm.engine.config.block_size,
    }


def parse_report(name: str, result: dict[str, Any]) -> str:
    outcomes = [o for _, o in result["outcomes"]]
    parse = sum(o == "parse" for o in outcomes)
    errors = [o for o in outcomes if o.startswith("error")]
    kinds = ", ".join(
        f"{kind} {sum(o != 'ok' for o in results)}/{len(results)}" for kind, results in result["by_kind"].items()
    )
    return (
        f"| {name} | {parse}/{len(outcomes)} ({100 * parse / len(outcomes):.1f}%) | {len(errors)}"
        f"{' (' + ', '.join(sorted(set(errors))) + ')' if errors else ''} | {kinds} | {result['seconds']:.0f} |"
    )


@pytest.fixture(scope="module")
def bench_lm() -> Any:
    llm = load_llm()
    yield dspy_adapter.lm(llm, cache=False, max_tokens=48), llm
    llm.close()


def test_batch_gate(bench_lm: Any) -> None:
    lm, _ = bench_lm
    result = batch_vs_sequential(lm, dspy_adapter.ConstrainedJSONAdapter(max_string_length=MAX_STRING_LENGTH))
    print(result)
    assert result["ratio"] >= GATE_RATIO, result


def main(sections: list[str]) -> None:
    """Runs the named sections (all by default: parse gate react bootstrap); a run of some of
    them keeps the other sections' text from the previous report."""
    out = Path(__file__).with_name("RESULTS-dspy.md")
    previous = _sections(out.read_text()) if out.exists() else {}
    llm = load_llm()
    lm = dspy_adapter.lm(llm, cache=False, max_tokens=MAX_TOKENS)
    ours = dspy_adapter.ConstrainedJSONAdapter(max_string_length=MAX_STRING_LENGTH)
    report = dict(previous)

    def write() -> None:
        out.write_text("\n".join(report[name] for name in SECTIONS if name in report) + "\n")

    if "parse" in sections:
        calls = workload()
        lines = [
            "# DSPy on tritonlm (default model, bfloat16, this CPU)",
            "",
            f"Written by `python benches/bench_dspy.py`. LM: `tritonlm.dspy_adapter.lm`, temperature 0, "
            f"max_tokens {MAX_TOKENS}, DSPy cache off. {len(calls)} calls: 20 `Predict('question -> answer')`, "
            "20 `ChainOfThought('question -> answer: int')`, 20 typed (`int`, `bool`, `Literal`, `list[str]`, "
            "a nested pydantic model), all sent concurrently.",
            "",
            "## Parse failures",
            "",
            "| adapter | AdapterParseError | other errors | failures by call kind | seconds |",
            "|---|---|---|---|---|",
        ]
        adapters: list[tuple[str, dspy.Adapter]] = [
            (f"ConstrainedJSONAdapter (max_string_length={MAX_STRING_LENGTH})", ours),
            ("stock ChatAdapter (JSONAdapter fallback off)", dspy.ChatAdapter(use_json_adapter_fallback=False)),
            ("stock JSONAdapter", dspy.JSONAdapter()),
        ]
        for name, adapter in adapters:
            print(f"running {name} ...", flush=True)
            lines.append(parse_report(name, run_calls(lm, adapter, calls)))
            print(lines[-1], flush=True)
        lines += [
            "",
            "The stock ChatAdapter runs with `use_json_adapter_fallback=False`: its default retries a failed "
            "parse with JSONAdapter, which here is constrained and would hide the ChatAdapter's own failures. "
            "The stock JSONAdapter also decodes under a grammar here: the LM advertises "
            "`supports_response_schema`, so it sends its pydantic structured-output schema.",
        ]
        report["parse"] = "\n".join(lines)
        write()
    if "gate" in sections:
        gate = batch_vs_sequential(dspy_adapter.lm(llm, cache=False, max_tokens=48), ours)
        report["gate"] = (
            f"\n## Batching gate\n\n`Predict.batch` over {GATE_REQUESTS} examples: {gate['batch_s']:.1f} s; "
            f"{GATE_REQUESTS} sequential calls: {gate['sequential_s']:.1f} s; ratio **{gate['ratio']:.2f}x** "
            f"(gate >= {GATE_RATIO}x; max_tokens 48)."
        )
        print(report["gate"], flush=True)
        write()
    if "react" in sections:
        rows = [
            "\n## ReAct (calculator + price lookup)\n",
            f"`dspy_adapter.ReAct('question -> answer: int', tools=[calculator, lookup_price], max_iters=6)` on "
            f"{len(REACT_QUESTIONS)} questions run as one `batch`:\n",
            "| question | tool calls | every step valid | both tools + finish | answer (expected) |",
            "|---|---|---|---|---|",
        ]
        results = react_task(lm, ours)
        for r in results:
            names = [name for name, _ in r["calls"]]
            both = {"calculator", "lookup_price"} <= set(names) and names[-1:] == ["finish"]
            calls = ", ".join(f"{name}({json.dumps(args)})" for name, args in r["calls"])
            rows.append(f"| {r['question']} | {calls} | {r['all_valid']} | {both} | {r['answer']} ({r['expected']}) |")
        right = sum(r["answer"] == r["expected"] for r in results)
        rows.append(
            f"\nRight answers: **{right}/{len(results)}** ({right / len(results):.0%}); a measured rate of the "
            "model, not a pass/fail gate (the suite asserts valid steps, both tools and finish)."
        )
        report["react"] = "\n".join(rows)
        print(report["react"], flush=True)
        write()
    if "bootstrap" in sections:
        boot = bootstrap_prefix_cache(lm, ours, llm)
        report["bootstrap"] = (
            f"\n## BootstrapFewShot and the prefix cache\n\nCompiled on 10 training examples: {boot['demos']} "
            f"demos. The compiled program's second call reused {boot['cache_hit_blocks_second_call']} cached KV "
            f"blocks of {boot['block_size']} tokens (`llm.engine.block_manager.num_cache_hit_blocks`)."
        )
        print(report["bootstrap"], flush=True)
        write()
    llm.close()


SECTIONS = ("parse", "gate", "react", "bootstrap")
_HEADINGS = {"## Batching gate": "gate", "## ReAct": "react", "## BootstrapFewShot": "bootstrap"}


def _sections(text: str) -> dict[str, str]:
    """Split a previous report into its sections (the inverse of ``write`` in ``main``)."""
    found: dict[str, list[str]] = {"parse": []}
    current = "parse"
    for line in text.rstrip("\n").split("\n"):
        heading = next((name for prefix, name in _HEADINGS.items() if line.startswith(prefix)), None)
        if heading is not None:
            if found[current] and found[current][-1] == "":
                found[current].pop()
            current = heading
            found[current] = [""]
        found[current].append(line)
    return {name: "\n".join(lines) for name, lines in found.items() if lines}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:] or list(SECTIONS))
