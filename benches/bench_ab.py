"""Two revisions of tritonlm side by side: decode and constrained-decode tokens/s, alternating.

    python benches/bench_ab.py BEFORE AFTER [--rounds 3] [--threads 2]

BEFORE and AFTER are git revisions (or ``WORKTREE`` for the working tree). Each is checked out
into a temporary worktree; every measurement runs in a fresh child process whose ``tritonlm``
comes from that checkout (PYTHONPATH), and the two revisions alternate round by round so drifting
machine load hits both alike. The child uses only the public API (``LLM``, ``SamplingParams``,
``RequestOutput.usage``), so any two revisions since the usage timings existed can be compared.

Measured per round, on the default model with its default settings (greedy):
* ``decode``: one stream, 128 new tokens with ``ignore_eos``; tokens after the first over the
  time after the first token.
* ``batch16``: 16 streams of 64 new tokens in one ``generate``; completion tokens over wall time.
* ``constrained``: one stream under each of four JSON schemas (max 256 tokens); the same rate as
  ``decode``, median over the schemas.

Prints a markdown table of medians and the AFTER/BEFORE ratios, with the load average before and
after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {
            "function_name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,30}$"},
            "arguments": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
            "returns": {"enum": ["int", "str", "bool", "None"]},
        },
        "required": ["function_name", "arguments", "returns"],
    },
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "tags": {"type": "array", "items": {"enum": ["python", "rust", "go", "java"]}, "maxItems": 3},
            "score": {"type": "number"},
            "done": {"type": "boolean"},
        },
        "required": ["title", "tags", "score", "done"],
    },
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
        },
        "minItems": 2,
        "maxItems": 6,
    },
]

CHILD = r"""
import json, sys, time
from tritonlm import LLM, SamplingParams

schemas = json.loads(sys.argv[1])
llm = LLM(model="default")
chat = [{"role": "user", "content": "Write a Python function that parses a CSV line, then describe it as JSON."}]

def rate(out):
    u = out.usage
    return (u.completion_tokens - 1) / (u.total_time_s - (u.time_to_first_token_s or 0.0))

llm.generate([chat], SamplingParams(max_tokens=8, temperature=0))  # warm-up: kernels, packs
decode = rate(llm.generate([chat], SamplingParams(max_tokens=128, temperature=0, ignore_eos=True))[0])
prompts = [[{"role": "user", "content": f"Write function number {i} of a CSV toolkit in Python."}] for i in range(16)]
start = time.perf_counter()
outs = llm.generate(prompts, SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
batch16 = sum(o.usage.completion_tokens for o in outs) / (time.perf_counter() - start)
constrained = []
for schema in schemas:
    out = llm.generate([chat], SamplingParams(max_tokens=256, temperature=0, json_schema=schema))[0]
    json.loads(out.outputs[0].text)
    constrained.append(rate(out))
constrained.sort()
print(json.dumps({"decode": decode, "batch16": batch16, "constrained": constrained[len(constrained) // 2]}))
llm.close()
"""


def checkout(rev: str, scratch: Path) -> Path:
    if rev == "WORKTREE":
        return ROOT
    dest = scratch / rev.replace("/", "_")
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(dest), rev], cwd=ROOT, check=True, capture_output=True
    )
    return dest


def measure(tree: Path, threads: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), TRITONLM_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(SCHEMAS)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: child failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tritonlm-ab-") as tmp:
        trees = {rev: checkout(rev, Path(tmp)) for rev in (args.before, args.after)}
        results: dict[str, list[dict[str, float]]] = {rev: [] for rev in trees}
        try:
            for _ in range(args.rounds):
                for rev, tree in trees.items():
                    results[rev].append(measure(tree, args.threads))
                    print(rev, json.dumps(results[rev][-1]), flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    load_after = os.getloadavg()
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {args.rounds} rounds, "
        f"{args.threads} threads\n"
    )
    print(f"| metric (tok/s, median) | {args.before} | {args.after} | ratio |\n|---|---|---|---|")
    for key in ("decode", "batch16", "constrained"):
        before = statistics.median(r[key] for r in results[args.before])
        after = statistics.median(r[key] for r in results[args.after])
        print(f"| {key} | {before:.1f} | {after:.1f} | {after / before:.3f} |")


if __name__ == "__main__":
    main()
