"""Runs ``tritonlm.server`` with uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.runtime.llm import LLM

TINY_QWEN = Qwen2Config(
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


def tiny_llm(tokenizer, **engine_options) -> LLM:
    """An LLM over a tiny random model with the real Qwen2.5 tokenizer (random text, real machinery)."""
    model = Qwen2ForCausalLM.random(TINY_QWEN, seed=0)
    return LLM.from_loaded((model, tokenizer), **engine_options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingServer:
    """What a running test server saw: request bodies (JSON) and Authorization headers."""

    def __init__(self, llm: LLM, model_name: str) -> None:
        self.llm = llm
        self.model_name = model_name
        self.base_url = ""  # http://127.0.0.1:PORT/v1 once running
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []


@contextmanager
def recording_server(llm: LLM, model_name: str) -> Iterator[RecordingServer]:
    """``tritonlm.server`` on loopback, recording each POST body and Authorization header."""
    import json

    from starlette.requests import Request

    record = RecordingServer(llm, model_name)

    def install(app) -> None:
        @app.middleware("http")
        async def _record(request: Request, call_next):
            if request.method == "POST":
                body = await request.body()
                try:
                    record.requests.append(json.loads(body))
                except ValueError:
                    record.requests.append({"_raw": body.decode(errors="replace")})
                record.authorizations.append(request.headers.get("authorization"))
            return await call_next(request)

    with running_server(llm, model_name, configure=install) as url:
        record.base_url = url + "/v1"
        yield record


@contextmanager
def running_server(llm: LLM, model_name: str, configure=None) -> Iterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT``) while the server runs."""
    from tritonlm.server import build_app

    app = build_app(llm, model_name)
    if configure is not None:
        configure(app)
    with running_app(app) as url:
        yield url


@contextmanager
def running_app(app) -> Iterator[str]:
    """Like :func:`running_server`, for an app already built (``build_app`` with options)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


SERVE_CHILD = """
import json, os, sys
os.environ.setdefault("TRITON_INTERPRET", "1")
import uvicorn
from tests.server.support import TINY_QWEN
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.model.tokenizer import Tokenizer
from tritonlm.runtime.config import RequestLimits
from tritonlm.runtime.llm import LLM
from tritonlm.server import build_app

port, tokenizer_dir, model_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
options = json.loads(sys.argv[4])
limits = options.pop("limits", None)
if limits is not None:
    options["limits"] = RequestLimits(**limits)
tokenizer = Tokenizer.from_dir(tokenizer_dir, vocab_size=151936)
llm = LLM.from_loaded((Qwen2ForCausalLM.random(TINY_QWEN, seed=0), tokenizer), **options)
uvicorn.run(build_app(llm, model_name), host="127.0.0.1", port=port, log_level="warning")
"""


@contextmanager
def tiny_server_process(tokenizer_dir, model_name: str, **engine_options) -> Iterator[str]:
    """:func:`tiny_llm` behind the server in a child process of its own, as a deployed server
    runs: its timing is not the test process's, whose GIL it would otherwise share with every
    thread the suite has running. ``limits``: RequestLimits fields as a dict. Yields the base URL."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", SERVE_CHILD, str(port), str(tokenizer_dir), model_name, json.dumps(engine_options)]
    proc = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the test server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start in 120 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
