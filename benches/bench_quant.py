"""Quantized weights on the CPU: accuracy, speed against llama.cpp and HF transformers, memory.

    python benches/bench_quant.py [accuracy] [speed] [memory] [--threads 2]

* accuracy: perplexity over the first 2,048 tokens of Python's ``json/decoder.py`` +
  ``json/encoder.py``, the default GGUF as stored (quantized path, bf16 activations) against the
  same GGUF dequantized and run in float32; greedy 32 tokens on 5 chat prompts, same pair.
* speed (one alternating run, the same token-id prompts for every system): single-stream decode
  (98-token prompt, 128 new tokens), 16 concurrent requests (64 new tokens each, aggregate),
  prefill of 512 tokens. Peers: llama.cpp through the ``xllamacpp`` wheel (its own server loop,
  16 parallel slots; that wheel's CPU build has no AVX-512) and HF transformers bf16 (``generate``
  on a left-padded batch). Medians of ``REPEATS``.
* memory: a fresh process loads the default model (quantized) and runs 16 requests; its peak
  RSS (VmHWM) after load and after the run.

pytest runs the gates (``pytest benches/bench_quant.py --benchmark-enable -s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
PROMPT_LEN, DECODE_TOKENS = 98, 128
CONCURRENT, CONCURRENT_TOKENS = 16, 64
PREFILL_TOKENS = 512
CHATS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "What is a KV cache?",
    "Write a SQL query that counts the rows of a table named users.",
    "Explain recursion in one sentence.",
    "Write hello world in Rust.",
]


# ---- prompts --------------------------------------------------------------------------------
def text_ids(tokenizer: Any) -> list[int]:
    """Token ids of Python's json/decoder.py + json/encoder.py (the fixed perplexity text)."""
    import json.decoder

    folder = Path(json.decoder.__file__).parent
    text = (folder / "decoder.py").read_text() + (folder / "encoder.py").read_text()
    return tokenizer.encode(text)


def prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` distinct prompts of exactly ``length`` ids, cut from the fixed text."""
    ids = text_ids(tokenizer)
    return [ids[(i * 37) % (len(ids) - length) :][:length] for i in range(count)]


# ---- accuracy -------------------------------------------------------------------------------
def perplexity(model: Any, ids: list[int], chunk: int = 256) -> float:
    from tests.model.simple import ContiguousSequence

    seq = ContiguousSequence(model, len(ids))
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start : start + chunk]
        logits = seq.step(piece).double()
        targets = torch.tensor(ids[start + 1 : start + 1 + len(piece)])
        logits = logits[: len(targets)]
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return float(torch.exp(torch.tensor(nll / count)))


def accuracy(threads: int, activations: str = "auto") -> dict[str, Any]:
    """Quantized (``dtype=activations``; auto = float32 on the CPU) against the dequantized GGUF in float32."""
    from tests.model.simple import greedy_tokens
    from tritonlm.model.loader import load_model

    torch.set_num_threads(threads)
    quantized = load_model("default", dtype=activations)
    reference = load_model("default", dtype="float32", quantization=None)
    tok = quantized.tokenizer
    ids = text_ids(tok)[:2048]
    ppl_q, ppl_ref = perplexity(quantized.model, ids), perplexity(reference.model, ids)
    same = 0
    rows = []
    for q in CHATS:
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
        a = list(greedy_tokens(quantized.model, prompt, 32))
        b = list(greedy_tokens(reference.model, prompt, 32))
        same += a == b
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        rows.append({"prompt": q, "identical": a == b, "first_difference": first})
    return {
        "activations": str(quantized.model.dtype),
        "ppl_quantized": ppl_q,
        "ppl_float32": ppl_ref,
        "ppl_ratio": ppl_q / ppl_ref,
        "greedy_identical": same,
        "greedy_prompts": len(CHATS),
        "rows": rows,
        "tokens": len(ids),
    }


# ---- speed ----------------------------------------------------------------------------------
class Tritonlm:
    name = "tritonlm"

    def __init__(self, threads: int, **load: Any) -> None:
        from tritonlm.model.loader import load_model
        from tritonlm.runtime.llm import LLM

        os.environ["TRITONLM_NUM_THREADS"] = str(threads)  # read by the engine loop thread
        torch.set_num_threads(threads)
        # no prefix caching: every repetition computes its prompt, as the peers do (cache_prompt off)
        self.llm = LLM.from_loaded(
            load_model("default", **load), kv_cache_bytes=1 << 30, max_model_len=4096, enable_prefix_caching=False
        )

    def _run(self, batch: list[list[int]], new: int) -> tuple[float, list[Any]]:
        from tritonlm.runtime.sampling_params import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
        start = time.perf_counter()
        outs = self.llm.generate(batch, params)
        return time.perf_counter() - start, outs

    def decode(self, prompt: list[int], new: int) -> float:
        _, outs = self._run([prompt], new)
        usage = outs[0].usage
        return usage.decode_tokens_per_s

    def concurrent(self, batch: list[list[int]], new: int) -> float:
        elapsed, outs = self._run(batch, new)
        return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed

    def prefill(self, prompt: list[int]) -> float:
        elapsed, _ = self._run([prompt], 1)
        return elapsed

    def close(self) -> None:
        self.llm.close()


class LlamaCpp:
    name = "llama.cpp (xllamacpp)"

    def __init__(self, threads: int, gguf_path: Path) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path)
        params.n_ctx = 16 * 1024
        params.n_parallel = CONCURRENT
        params.n_batch = 2048
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        self.server = xllamacpp.Server(params)

    def _complete(self, prompt: list[int], new: int) -> dict[str, Any]:
        body = {"prompt": prompt, "n_predict": new, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
        out = self.server.handle_completions(body)
        if "error" in out:
            raise RuntimeError(out)
        return out

    def decode(self, prompt: list[int], new: int) -> float:
        return self._complete(prompt, new)["timings"]["predicted_per_second"]

    def concurrent(self, batch: list[list[int]], new: int) -> float:
        results: list[dict[str, Any]] = [{}] * len(batch)

        def one(i: int) -> None:
            results[i] = self._complete(batch[i], new)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        return sum(r["usage"]["completion_tokens"] for r in results) / elapsed

    def prefill(self, prompt: list[int]) -> float:
        start = time.perf_counter()
        self._complete(prompt, 1)
        return time.perf_counter() - start

    def close(self) -> None:
        del self.server


class HFTransformers:
    name = "HF transformers bf16"

    def __init__(self, threads: int) -> None:
        import transformers

        from tritonlm.model.default import ensure_default_model

        torch.set_num_threads(threads)
        folder = ensure_default_model()
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()

    @torch.inference_mode()
    def _generate(self, batch: list[list[int]], new: int) -> tuple[float, int]:
        width = max(len(p) for p in batch)
        pad = 151643
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=pad,
        )
        return time.perf_counter() - start, (out.shape[1] - width) * len(batch)

    def decode(self, prompt: list[int], new: int) -> float:
        first, _ = self._generate([prompt], 1)
        total, tokens = self._generate([prompt], new)
        return (tokens - 1) / (total - first)

    def concurrent(self, batch: list[list[int]], new: int) -> float:
        elapsed, tokens = self._generate(batch, new)
        return tokens / elapsed

    def prefill(self, prompt: list[int]) -> float:
        elapsed, _ = self._generate([prompt], 1)
        return elapsed

    def close(self) -> None:
        del self.model


# tritonlm-bf16: the dense bfloat16 path of before (quantization=None), for "no slower than today"
SYSTEMS = ("tritonlm", "llama.cpp", "hf", "tritonlm-bf16")


def _system_worker(key: str, threads: int, conn: Any) -> None:
    """One system in its own process (no thread pool of one system spins beside another's),
    answering ``(method, args)`` commands with results until it gets None."""
    from tritonlm.model.default import ensure_default_gguf

    if key == "tritonlm":
        system: Any = Tritonlm(threads)  # the defaults: the GGUF's quantized weights, dtype auto
    elif key == "tritonlm-bf16":
        system = Tritonlm(threads, dtype="bfloat16", quantization=None)
    elif key == "llama.cpp":
        system = LlamaCpp(threads, ensure_default_gguf())
    else:
        system = HFTransformers(threads)
    conn.send("ready")
    while (command := conn.recv()) is not None:
        method, args = command
        conn.send(getattr(system, method)(*args))
    system.close()


def speed(threads: int, systems: tuple[str, ...] = SYSTEMS[:3]) -> dict[str, dict[str, Any]]:
    """Median tokens/s (decode, concurrent) and seconds (prefill) per system, each system in its
    own process, the systems alternating within each repetition."""
    import multiprocessing

    from tritonlm.model.default import ensure_default_gguf
    from tritonlm.model.gguf import GGUFFile

    tok = GGUFFile(ensure_default_gguf()).tokenizer()
    decode_prompt = prompts(tok, 1, PROMPT_LEN)[0]
    batch = prompts(tok, CONCURRENT, PROMPT_LEN)
    long_prompts = prompts(tok, REPEATS + 1, PREFILL_TOKENS)  # a new prompt each time: no cache can help
    ctx = multiprocessing.get_context("spawn")
    workers: dict[str, Any] = {}
    for key in systems:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_system_worker, args=(key, threads, child), daemon=True)
        proc.start()
        workers[key] = (proc, parent)
    for _, conn in workers.values():
        assert conn.recv() == "ready"

    def call(key: str, method: str, *args: Any) -> Any:
        conn = workers[key][1]
        conn.send((method, args))
        return conn.recv()

    samples: dict[str, dict[str, list[float]]] = {k: {"decode": [], "concurrent": [], "prefill": []} for k in workers}
    for key in workers:  # warm-up: every path once
        call(key, "decode", decode_prompt, 8)
        call(key, "prefill", long_prompts[-1])
    for rep in range(REPEATS):
        for key in workers:
            samples[key]["decode"].append(call(key, "decode", decode_prompt, DECODE_TOKENS))
            samples[key]["concurrent"].append(call(key, "concurrent", batch, CONCURRENT_TOKENS))
            samples[key]["prefill"].append(call(key, "prefill", long_prompts[rep]))
    for proc, conn in workers.values():
        conn.send(None)
        proc.join(timeout=60)
    return {key: {m: statistics.median(v) for m, v in s.items()} | {"samples": s} for key, s in samples.items()}


# ---- memory ---------------------------------------------------------------------------------
MEMORY_CHILD = """
import json, sys, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
torch.set_num_threads({threads})
from tritonlm import LLM, SamplingParams
llm = LLM("default", kv_cache_bytes={kv_bytes}, max_model_len=2048)
after_load = (status("VmRSS"), status("VmHWM"))
tok = llm.tokenizer
prompts = [tok.encode("def f{{}}(x):".format(i)) for i in range(16)]
llm.generate(prompts, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
after_run = (status("VmRSS"), status("VmHWM"))
llm.close()
print(json.dumps({{"rss_after_load": after_load[0], "peak_after_load": after_load[1],
                  "rss_after_run": after_run[0], "peak_after_run": after_run[1]}}))
"""


def memory(threads: int, kv_bytes: int = 64 << 20) -> dict[str, int]:
    code = MEMORY_CHILD.format(threads=threads, kv_bytes=kv_bytes)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- report ---------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    lines = []
    if "accuracy" in results:
        a = results["accuracy"]
        lines.append(
            f"accuracy ({a['activations']} activations): perplexity over {a['tokens']} tokens quantized "
            f"{a['ppl_quantized']:.4f} vs float32 "
            f"{a['ppl_float32']:.4f} (ratio {a['ppl_ratio']:.4f}); greedy 32 tokens identical on "
            f"{a['greedy_identical']}/{a['greedy_prompts']} chat prompts {[r['first_difference'] for r in a['rows']]}"
        )
    if "speed" in results:
        s = results["speed"]
        for key, v in s.items():
            lines.append(
                f"speed {key}: decode {v['decode']:.1f} tok/s, {CONCURRENT} concurrent {v['concurrent']:.1f} tok/s, "
                f"prefill {PREFILL_TOKENS} {v['prefill']:.2f} s"
            )
        if "tritonlm" in s and "llama.cpp" in s:
            t, ll = s["tritonlm"], s["llama.cpp"]
            lines.append(
                f"ratios vs llama.cpp: decode {t['decode'] / ll['decode']:.2f}x, concurrent "
                f"{t['concurrent'] / ll['concurrent']:.2f}x, prefill {ll['prefill'] / t['prefill']:.2f}x faster"
            )
        if "tritonlm" in s and "hf" in s:
            lines.append(f"concurrent vs HF bf16: {s['tritonlm']['concurrent'] / s['hf']['concurrent']:.2f}x")
        if "tritonlm" in s and "tritonlm-bf16" in s:
            t, d = s["tritonlm"], s["tritonlm-bf16"]
            lines.append(
                f"quantized vs dense bf16 tritonlm: decode {t['decode'] / d['decode']:.2f}x, concurrent "
                f"{t['concurrent'] / d['concurrent']:.2f}x, prefill {d['prefill'] / t['prefill']:.2f}x faster"
            )
    if "memory" in results:
        m = {k: v / 1e9 for k, v in results["memory"].items()}
        lines.append(
            f"memory: RSS after load {m['rss_after_load']:.2f} GB (peak {m['peak_after_load']:.2f}), after 16 "
            f"requests {m['rss_after_run']:.2f} GB (peak {m['peak_after_run']:.2f})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="*", default=["accuracy", "speed", "memory"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS[:3]))
    args = parser.parse_args()
    results: dict[str, Any] = {"load": os.getloadavg()}
    if "memory" in args.sections:
        results["memory"] = memory(args.threads)
        print(report({"memory": results["memory"]}), flush=True)
    if "accuracy" in args.sections:
        results["accuracy"] = accuracy(args.threads)
        print(report({"accuracy": results["accuracy"]}), flush=True)
        bf16 = accuracy(args.threads, "bfloat16")
        results["accuracy_bf16_activations"] = bf16
        print(report({"accuracy": bf16}), flush=True)
    if "speed" in args.sections:
        results["speed"] = speed(args.threads, tuple(args.systems.split(",")))
        print(report({"speed": results["speed"]}), flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load']}, after {results['load_after']}")
    print(json.dumps(results, default=str))


# ---- gates (pytest) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speed_results(request) -> dict[str, Any]:
    if request.config.getoption("benchmark_disable", False):
        pytest.skip("benchmarks are disabled (run with --benchmark-enable)")
    pytest.importorskip("xllamacpp")
    return speed(2, SYSTEMS)


def test_single_stream_decode_vs_llama_cpp(speed_results) -> None:
    t, ll = speed_results["tritonlm"], speed_results["llama.cpp"]
    assert t["decode"] >= 1.0 * ll["decode"], speed_results


def test_concurrent_vs_llama_cpp_and_hf(speed_results) -> None:
    t = speed_results["tritonlm"]["concurrent"]
    assert t >= 1.5 * speed_results["llama.cpp"]["concurrent"], speed_results
    assert t >= 1.3 * speed_results["hf"]["concurrent"], speed_results


def test_prefill_vs_llama_cpp_and_the_dense_path(speed_results) -> None:
    t = speed_results["tritonlm"]["prefill"]
    assert speed_results["llama.cpp"]["prefill"] >= 2.0 * t, speed_results
    assert t <= speed_results["tritonlm-bf16"]["prefill"], speed_results


def test_peak_rss(request) -> None:
    if request.config.getoption("benchmark_disable", False):
        pytest.skip("benchmarks are disabled (run with --benchmark-enable)")
    assert memory(2)["peak_after_run"] <= 1.3e9


def test_accuracy(request) -> None:
    if request.config.getoption("benchmark_disable", False):
        pytest.skip("benchmarks are disabled (run with --benchmark-enable)")
    a = accuracy(2)
    assert abs(a["ppl_ratio"] - 1) <= 0.01 and a["greedy_identical"] >= 4, a


if __name__ == "__main__":
    main()
