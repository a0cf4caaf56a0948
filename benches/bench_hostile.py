"""Hostile inputs against the OpenAI server: the stall each one imposes on a streaming request.

Issue 16. For each probe, a server (a tiny random Qwen2 model with the real Qwen2.5 tokenizer,
exactly as ``tests/server/support.py``'s ``tiny_llm``; ``build_app(llm, "tiny")`` under
uvicorn on a free loopback port) runs in a SUBPROCESS of this script, so its RSS can be read
from ``/proc/<pid>/status`` and a wedged server can be killed. While a background streaming
chat request runs (``max_tokens=900``, ``ignore_eos``, temperature 1; re-issued back to back so
that the stream lasts as long as the probe), one hostile request is fired and we record:

* the hostile request's HTTP status and the seconds to its answer (``--timeout`` per probe,
  default 60 s; past it: "no answer in 60 s" and the client disconnects);
* the stream's longest gap between two SSE chunks in the probe window (from the hostile
  request's start to its answer or timeout, at least 2 s; a stall still open at the window's end
  counts up to the end). The stream is re-issued when one request ends, so the gap at such a
  boundary (the next request's time to first token) is part of every window; ``baseline``
  (no hostile request, a 10 s window) shows what a window holds with no probe;
* the server's RSS (VmRSS) before and after the probe;
* whether a normal small request afterwards (non-streaming chat, ``max_tokens=8``) succeeds,
  and its latency. If it fails or times out (``--normal-timeout``, default 30 s) the server is
  wedged: it is killed and a fresh one started for the next probe. The server is also replaced
  when the hostile request did not answer (its work may still be running and would load the
  next probe), when it died, or when requests are still running 10 s after the probe.

Probes (``--probes`` takes a comma-separated subset, in this order by default):

  baseline            no hostile request
  pattern_nested      json_schema {"type":"string","pattern":"^(a{1,1000}){1,1000}$"}
  minlength_pattern   json_schema {"type":"string","minLength":100000,"pattern":"^[a-z]+$"}
  enum_5000_objects   json_schema {"enum": [5000 distinct small objects]}
  object_500_props    json_schema: an object with 500 properties (mixed scalar types)
  object_2000_props   the same with 2000 properties
  regex_ab16          json_schema {"type":"string","pattern":"(a|b)*a(a|b){16}"}
  nested_300          json_schema: {"type":"array","items": ...} nested 300 deep
  prompt_50mb_completions  a 50 MB text prompt to /v1/completions
  prompt_50mb_chat    a 50 MB user message to /v1/chat/completions
  n64_starvation      a chat request with n=64, max_tokens=900 (ignore_eos); 1 s later a NEW small
                      streaming request, whose time to first token is reported in the notes
  abandoned_n4x8      8 non-streaming n=4 requests (max_tokens=900, ignore_eos) whose client
                      disconnects after 1 s; /metrics (requests running, KV blocks used) before,
                      1 s and 5 s after the disconnect (the counts include the background stream)
  three_schemas       three large distinct schemas (objects of 150 properties) in a row: RSS
                      after each

The schema probes send a non-streaming chat request with ``max_tokens=16`` and
``response_format={"type":"json_schema","json_schema":{"name":"x","schema":...}}``.

Usage (from the checkout whose ``tritonlm`` is measured, or any other with ``--repo-root``)::

    .venv/bin/python benches/bench_hostile.py [--repo-root DIR] [--probes a,b,...]
        [--timeout 60] [--normal-timeout 30] [--engine-options '{"max_num_seqs": 64}']
        [--json OUT.json] [--log-dir DIR]

``--repo-root`` is the tree whose ``tritonlm`` the server imports (default: this script's
checkout; e.g. a ``git worktree`` of an older revision). ``--engine-options`` is a JSON object
of ``EngineConfig`` fields passed to ``LLM.from_loaded``; when not given, none are passed (the
engine's defaults). Output: a markdown table on stdout, and with ``--json`` every measurement
as JSON; the load average (``/proc/loadavg``) is recorded at the start and end of the run and of
every probe. The server's own output goes to ``--log-dir`` (default: a temporary directory).

Internal: ``--serve PORT`` runs the server itself (the parent starts it this way).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODEL_NAME = "tiny"
STREAM_MAX_TOKENS = 900
HOSTILE_MAX_TOKENS = 16
MIN_WINDOW_S = 2.0
BASELINE_WINDOW_S = 10.0
WARMUP_STREAM_S = 3.0
STARTUP_TIMEOUT_S = 240.0


# ---- the server (child process) ------------------------------------------------------------


def serve(port: int, repo_root: str, engine_options: dict[str, Any]) -> None:
    """Run the tiny server on 127.0.0.1:port, importing ``tritonlm`` from ``repo_root``."""
    sys.path.insert(0, repo_root)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py does
    import uvicorn

    import tritonlm
    from tritonlm.model.config import Qwen2Config
    from tritonlm.model.default import ensure_default_model
    from tritonlm.model.qwen2 import Qwen2ForCausalLM
    from tritonlm.model.tokenizer import Tokenizer
    from tritonlm.runtime.llm import LLM
    from tritonlm.server.app import build_app

    print(f"tritonlm from {tritonlm.__file__}", flush=True)
    # tests/conftest.py's qwen_tokenizer and tests/server/support.py's TINY_QWEN / tiny_llm
    tokenizer = Tokenizer.from_dir(ensure_default_model(), vocab_size=151936)
    tiny_qwen = Qwen2Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        eos_token_id=151645,
    )
    model = Qwen2ForCausalLM.random(tiny_qwen, seed=0)
    llm = LLM.from_loaded((model, tokenizer), **engine_options)
    print(f"max_model_len={llm.max_model_len} engine_options={engine_options}", flush=True)
    uvicorn.run(build_app(llm, MODEL_NAME), host="127.0.0.1", port=port, log_level="warning")


# ---- helpers -------------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **extra}


def schema_body(schema: Any) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return chat_body("Answer in JSON.", max_tokens=HOSTILE_MAX_TOKENS, response_format=fmt)


class ServerProcess:
    """``python bench_hostile.py --serve PORT`` as a child; killable, RSS readable."""

    def __init__(self, repo_root: str, engine_options: dict[str, Any], log_dir: Path) -> None:
        self.repo_root = repo_root
        self.engine_options = engine_options
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> float:
        import httpx

        self.port = free_port()
        self.starts += 1
        self.log_path = self.log_dir / f"server-{self.starts}-{self.port}.log"
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            str(self.port),
            "--repo-root",
            self.repo_root,
            "--engine-options",
            json.dumps(self.engine_options),
        ]
        t0 = time.monotonic()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.repo_root)
        log.close()
        while time.monotonic() - t0 < STARTUP_TIMEOUT_S:
            if not self.alive():
                raise RuntimeError(f"the server exited on start; see {self.log_path}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the server did not start in {STARTUP_TIMEOUT_S} s; see {self.log_path}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class Streamer(threading.Thread):
    """Streaming chat requests back to back over a raw socket; the arrival time of every SSE event.

    A raw socket with a short receive timeout, so the reader never blocks past a stop request
    and never reconnects during a stall (a stalled stream stays one waiting request).
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.times: list[float] = []
        self.requests = 0
        self.errors: list[str] = []
        self._halt = threading.Event()
        body = chat_body(
            "Write a very long story about a lighthouse keeper.",
            max_tokens=STREAM_MAX_TOKENS,
            temperature=1.0,
            ignore_eos=True,
            stream=True,
        )
        payload = json.dumps(body).encode()
        self._request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
        ) + payload

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._one()
            except OSError as exc:
                self.errors.append(repr(exc))
                self._halt.wait(0.5)

    def _one(self) -> None:
        self.requests += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(self._request)
            s.settimeout(0.2)
            buf = bytearray()
            headers_done = False
            while not self._halt.is_set():
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                now = time.monotonic()
                buf += data
                if not headers_done:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    status = bytes(buf[: buf.find(b"\r\n")]).decode(errors="replace")
                    if " 200 " not in status + " ":
                        self.errors.append(f"stream request: {status}")
                        self._halt.wait(0.5)
                        return
                    headers_done = True
                    del buf[: end + 4]
                pos = 0
                while True:
                    i = buf.find(b"data: ", pos)
                    if i < 0:
                        break
                    j = buf.find(b"\n\n", i)
                    if j < 0:
                        break
                    if buf.startswith(b"data: [DONE]", i):
                        return
                    self.times.append(now)
                    pos = j + 2
                del buf[:pos]

    def longest_gap(self, t0: float, t1: float) -> tuple[float, int]:
        """The longest gap between events in [t0, t1] (open stalls count to the ends); the events in it."""
        times = list(self.times)
        before = [t for t in times if t < t0]
        inside = [t for t in times if t0 <= t <= t1]
        points = [before[-1] if before else t0, *inside, t1]
        return max(b - a for a, b in itertools.pairwise(points)), len(inside)


# ---- probes --------------------------------------------------------------------------------


def object_schema(n: int, prefix: str) -> dict[str, Any]:
    types = ["string", "integer", "boolean", "number"]
    return {"type": "object", "properties": {f"{prefix}_{i}": {"type": types[i % 4]} for i in range(n)}}


def nested_array_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def big_text(megabytes: int) -> str:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "lighthouse", "keeper", "storm", "harbour", "the", "of", "and"]
    block = " ".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(120_000))[: 1 << 20]
    return (block * megabytes)[: megabytes << 20]


SCHEMA_PROBES: dict[str, Any] = {
    "pattern_nested": lambda: {"type": "string", "pattern": "^(a{1,1000}){1,1000}$"},
    "minlength_pattern": lambda: {"type": "string", "minLength": 100000, "pattern": "^[a-z]+$"},
    "enum_5000_objects": lambda: {"enum": [{"id": i, "tag": f"t{i}"} for i in range(5000)]},
    "object_500_props": lambda: object_schema(500, "field"),
    "object_2000_props": lambda: object_schema(2000, "field"),
    "regex_ab16": lambda: {"type": "string", "pattern": "(a|b)*a(a|b){16}"},
    "nested_300": lambda: nested_array_schema(300),
}

ALL_PROBES = [
    "baseline",
    *SCHEMA_PROBES,
    "prompt_50mb_completions",
    "prompt_50mb_chat",
    "n64_starvation",
    "abandoned_n4x8",
    "three_schemas",
]


class Bench:
    def __init__(self, server: ServerProcess, timeout: float, normal_timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.normal_timeout = normal_timeout

    # one POST with a body prepared beforehand (no JSON encoding inside the window)
    def post(self, path: str, payload: bytes, timeout: float) -> tuple[int | None, float, str]:
        import httpx

        t0 = time.monotonic()
        try:
            r = httpx.post(
                self.server.base + path,
                content=payload,
                headers={"content-type": "application/json"},
                timeout=httpx.Timeout(timeout, connect=10),
            )
        except httpx.TimeoutException:
            return None, time.monotonic() - t0, f"no answer in {timeout:g} s"
        except httpx.HTTPError as exc:
            return None, time.monotonic() - t0, f"transport error: {exc!r}"[:200]
        detail = ""
        if r.status_code != 200:
            try:
                detail = str(r.json().get("error", {}).get("message", ""))[:160]
            except ValueError:
                detail = r.text[:160]
        return r.status_code, time.monotonic() - t0, detail

    def metrics(self) -> dict[str, float] | str:
        import httpx

        try:
            return parse_metrics(httpx.get(self.server.base + "/metrics", timeout=10).text)
        except httpx.HTTPError as exc:
            return f"/metrics failed: {exc!r}"

    def normal_request(self) -> dict[str, Any]:
        payload = json.dumps(chat_body("Say hi.", max_tokens=8)).encode()
        status, seconds, detail = self.post("/v1/chat/completions", payload, self.normal_timeout)
        return {"ok": status == 200, "status": status, "seconds": round(seconds, 3), "detail": detail}

    def busy(self) -> float:
        m = self.metrics()
        if isinstance(m, str):
            return float("inf")
        return m.get("tritonlm_requests_running", 0) + m.get("tritonlm_requests_waiting", 0)

    # ---- one probe -------------------------------------------------------------------------
    def run_probe(self, name: str) -> dict[str, Any]:
        res: dict[str, Any] = {"probe": name, "loadavg_start": loadavg(), "notes": []}
        if not self.server.alive():
            res["notes"].append(f"server (re)started in {self.server.start():.1f} s")
            self.normal_request()  # warm-up
        pid = self.server.pid
        prepared = self.prepare(name)
        streamer = Streamer(self.server.port)
        streamer.start()
        time.sleep(WARMUP_STREAM_S)
        res["rss_before_mb"] = rss_mb(pid)
        t0 = time.monotonic()
        t1, pending = t0, True
        try:
            t1, pending = self.fire(name, prepared, res, t0)
            t_end = max(t1, t0 + MIN_WINDOW_S)
            while time.monotonic() < t_end:
                time.sleep(0.05)
            gap, events = streamer.longest_gap(t0, t_end)
            res["window_s"] = round(t_end - t0, 3)
            res["stream_longest_gap_s"] = round(gap, 3)
            res["stream_events_in_window"] = events
            res["rss_after_mb"] = rss_mb(pid)
            alive = self.server.alive()
            # the stream keeps running through the normal request: a stall that outlasts the
            # window (a timed-out hostile request) shows in the gap up to the normal answer
            res["normal_after"] = self.normal_request() if alive else {"ok": False, "detail": "server died"}
            t_normal = time.monotonic()
            gap_through, _ = streamer.longest_gap(t0, t_normal)
            res["stream_longest_gap_through_normal_s"] = round(gap_through, 3)
            if gap_through > gap + 0.5:
                res["notes"].append(f"stream gap through the normal request: {gap_through:.1f} s")
        finally:
            streamer.stop()
        res["stream_requests"] = streamer.requests
        if streamer.errors:
            res["stream_errors"] = streamer.errors[:5]
        restart = None
        if not alive:
            restart = f"server died (exit {self.server.proc.returncode if self.server.proc else '?'})"
        elif not res["normal_after"]["ok"]:
            restart = "wedged: the normal request failed"
        elif pending:
            restart = "the hostile request was still pending"
        else:
            deadline = time.monotonic() + 10
            while (left := self.busy()) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            if left > 0:
                restart = f"{left:g} requests still running/waiting 10 s after the probe"
        if restart:
            res["notes"].append(f"server killed and restarted for the next probe ({restart})")
            res["server_restarted"] = restart
            self.server.kill()
        res["loadavg_end"] = loadavg()
        return res

    def prepare(self, name: str) -> Any:
        if name in SCHEMA_PROBES:
            return json.dumps(schema_body(SCHEMA_PROBES[name]())).encode()
        if name == "prompt_50mb_completions":
            return json.dumps({"model": MODEL_NAME, "prompt": big_text(50), "max_tokens": HOSTILE_MAX_TOKENS}).encode()
        if name == "prompt_50mb_chat":
            return json.dumps(chat_body(big_text(50), max_tokens=HOSTILE_MAX_TOKENS)).encode()
        if name == "three_schemas":
            return [json.dumps(schema_body(object_schema(150, f"s{k}"))).encode() for k in range(3)]
        return None

    def fire(self, name: str, prepared: Any, res: dict[str, Any], t0: float) -> tuple[float, bool]:
        """Send the hostile request(s); (end of the window, whether the hostile work may still run)."""
        if name == "baseline":
            time.sleep(BASELINE_WINDOW_S)
            res["status"] = "-"
            return time.monotonic(), False
        if name in SCHEMA_PROBES or name.startswith("prompt_50mb"):
            path = "/v1/completions" if name == "prompt_50mb_completions" else "/v1/chat/completions"
            status, seconds, detail = self.post(path, prepared, self.timeout)
            res["status"], res["seconds"] = status, round(seconds, 3)
            if detail:
                res["notes"].append(detail)
            return time.monotonic(), status is None
        if name == "three_schemas":
            statuses, secs, rss = [], [], []
            pending = False
            for payload in prepared:
                status, seconds, detail = self.post("/v1/chat/completions", payload, self.timeout)
                statuses.append(status)
                secs.append(round(seconds, 3))
                rss.append(rss_mb(self.server.pid))
                pending = pending or status is None
                if detail:
                    res["notes"].append(detail)
            res["status"], res["seconds"] = statuses, secs
            res["rss_after_each_mb"] = rss
            res["notes"].append("RSS after each: " + ", ".join(f"{r:.0f}" if r else "?" for r in rss) + " MB")
            return time.monotonic(), pending
        if name == "n64_starvation":
            return self.fire_n64(res, t0)
        if name == "abandoned_n4x8":
            return self.fire_abandoned(res)
        raise ValueError(f"unknown probe {name!r}")

    def fire_n64(self, res: dict[str, Any], t0: float) -> tuple[float, bool]:
        body = chat_body("Tell me a story.", n=64, max_tokens=900, ignore_eos=True)
        payload = json.dumps(body).encode()
        answer: dict[str, Any] = {}

        def big() -> None:
            answer["result"] = self.post("/v1/chat/completions", payload, self.timeout)

        thread = threading.Thread(target=big, daemon=True)
        thread.start()
        time.sleep(1.0)
        res["new_stream"] = self.new_stream_ttft(t0)
        nsr = res["new_stream"]
        res["notes"].append(
            f"new small stream 1 s after: status {nsr['status']}, first token {nsr['ttft_s']} s"
            + (f" ({nsr['detail']})" if nsr.get("detail") else "")
        )
        thread.join(timeout=self.timeout + 30)
        status, seconds, detail = answer.get("result", (None, self.timeout, "no answer"))
        res["status"], res["seconds"] = status, round(seconds, 3)
        if detail:
            res["notes"].append(detail)
        return time.monotonic(), status is None

    def new_stream_ttft(self, t_origin: float) -> dict[str, Any]:
        import httpx

        body = chat_body("Say hi.", max_tokens=16, stream=True)
        t0 = time.monotonic()
        left = max(1.0, self.timeout - (t0 - t_origin))
        try:
            with httpx.stream(
                "POST", self.server.base + "/v1/chat/completions", json=body, timeout=httpx.Timeout(left, connect=10)
            ) as r:
                if r.status_code != 200:
                    return {"status": r.status_code, "ttft_s": None, "detail": r.read().decode()[:160]}
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        return {"status": 200, "ttft_s": round(time.monotonic() - t0, 3)}
                return {"status": 200, "ttft_s": None, "detail": "no event"}
        except httpx.TimeoutException:
            return {"status": None, "ttft_s": None, "detail": f"no first token in {left:.0f} s"}
        except httpx.HTTPError as exc:
            return {"status": None, "ttft_s": None, "detail": repr(exc)[:160]}

    def fire_abandoned(self, res: dict[str, Any]) -> tuple[float, bool]:
        body = chat_body("Tell me a story.", n=4, max_tokens=900, ignore_eos=True)
        payload = json.dumps(body).encode()
        res["metrics_before"] = self.metrics_subset()
        outcomes: list[str] = []

        def abandon() -> None:
            status, _seconds, _detail = self.post("/v1/chat/completions", payload, 1.0)
            outcomes.append(str(status) if status is not None else "disconnected")

        threads = [threading.Thread(target=abandon, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        t_disc = time.monotonic()
        res["status"] = f"{outcomes.count('disconnected')}/8 disconnected"
        res["seconds"] = None
        time.sleep(max(0.0, t_disc + 1 - time.monotonic()))
        res["metrics_1s"] = self.metrics_subset()
        time.sleep(max(0.0, t_disc + 5 - time.monotonic()))
        res["metrics_5s"] = self.metrics_subset()
        for label in ("metrics_before", "metrics_1s", "metrics_5s"):
            res["notes"].append(f"{label.split('_')[1]}: {res[label]}")
        return time.monotonic(), False

    def metrics_subset(self) -> str:
        m = self.metrics()
        if isinstance(m, str):
            return m
        return "running {:g}, waiting {:g}, KV blocks used {:g}".format(
            m.get("tritonlm_requests_running", float("nan")),
            m.get("tritonlm_requests_waiting", float("nan")),
            m.get("tritonlm_kv_blocks_used", float("nan")),
        )


# ---- report --------------------------------------------------------------------------------


def fmt_seconds(res: dict[str, Any], timeout: float) -> str:
    s = res.get("seconds")
    if isinstance(s, list):
        return ", ".join("-" if x is None else f"{x:.2f}" for x in s)
    if s is None:
        return "-"
    status = res.get("status")
    if status is None:
        return f"no answer in {timeout:g} s"
    return f"{s:.2f}"


def table(results: list[dict[str, Any]], timeout: float) -> str:
    lines = [
        "| probe | hostile status | s to answer | stream longest gap (s) | RSS before -> after (MB) "
        "| normal request after | load avg start -> end | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        status = r.get("status")
        if isinstance(status, list):
            status_s = ", ".join("none" if x is None else str(x) for x in status)
        else:
            status_s = "none" if status is None else str(status)
        b, a = r.get("rss_before_mb"), r.get("rss_after_mb")
        rss = f"{b:.0f} -> {a:.0f}" if b is not None and a is not None else f"{b} -> {a}"
        n = r.get("normal_after", {})
        normal = f"ok ({n['seconds']:.2f} s)" if n.get("ok") else f"failed ({n.get('status')}; {n.get('detail', '')})"
        load = f"{r['loadavg_start'].split()[0]} -> {r['loadavg_end'].split()[0]}"
        notes = "; ".join(str(x).replace("|", "/") for x in r.get("notes", []))
        lines.append(
            f"| {r['probe']} | {status_s} | {fmt_seconds(r, timeout)} | {r['stream_longest_gap_s']:.2f} "
            f"| {rss} | {normal} | {load} | {notes} |"
        )
    return "\n".join(lines)


def git_revision(repo_root: str) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", repo_root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo_root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo-root", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--engine-options", default=None, help="JSON object of EngineConfig fields")
    p.add_argument("--probes", default=",".join(ALL_PROBES), help="comma-separated; default: all")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per hostile request")
    p.add_argument("--normal-timeout", type=float, default=30.0, help="seconds for the normal request after")
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--log-dir", default=None, help="the servers' output (default: a temporary directory)")
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    engine_options = json.loads(args.engine_options) if args.engine_options else {}
    if not isinstance(engine_options, dict):
        p.error("--engine-options must be a JSON object")
    repo_root = str(Path(args.repo_root).resolve())
    if args.serve is not None:
        serve(args.serve, repo_root, engine_options)
        return 0
    probes = [x.strip() for x in args.probes.split(",") if x.strip()]
    unknown = [x for x in probes if x not in ALL_PROBES]
    if unknown:
        p.error(f"unknown probes {unknown}; known: {', '.join(ALL_PROBES)}")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-hostile-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    run: dict[str, Any] = {
        "repo_root": repo_root,
        "revision": git_revision(repo_root),
        "engine_options": engine_options,
        "timeout_s": args.timeout,
        "normal_timeout_s": args.normal_timeout,
        "stream": {"max_tokens": STREAM_MAX_TOKENS, "ignore_eos": True, "temperature": 1.0},
        "loadavg_start": loadavg(),
        "cpus": os.cpu_count(),
        "log_dir": str(log_dir),
        "probes": [],
    }
    print(f"# bench_hostile: {repo_root} @ {run['revision']}, engine options {engine_options}", file=sys.stderr)
    print(f"# load average at start: {run['loadavg_start']}; server logs in {log_dir}", file=sys.stderr)
    server = ServerProcess(repo_root, engine_options, log_dir)
    bench = Bench(server, args.timeout, args.normal_timeout)
    try:
        for name in probes:
            print(f"# probe {name} (load {loadavg()}) ...", file=sys.stderr, flush=True)
            try:
                res = bench.run_probe(name)
            except Exception as exc:  # a harness failure on one probe: record it and go on
                res = {"probe": name, "error": repr(exc), "loadavg_end": loadavg()}
                server.kill()
            run["probes"].append(res)
            print(f"#   -> {json.dumps(res, default=str)}", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(run, indent=2, default=str))
    finally:
        server.kill()
    run["loadavg_end"] = loadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=2, default=str))
    ok = [r for r in run["probes"] if "error" not in r]
    print(
        f"Revision {run['revision']} ({repo_root}); engine options {engine_options or 'defaults'}; "
        f"per-probe timeout {args.timeout:g} s; load average start {run['loadavg_start']}, end {run['loadavg_end']}.\n"
    )
    print(table(ok, args.timeout))
    for r in run["probes"]:
        if "error" in r:
            print(f"\nprobe {r['probe']}: harness error {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
