"""Shared test set-up.

TRITON_INTERPRET=1 is set here, before anything imports triton, so the Triton kernels run
through the interpreter on the CPU. Tests that compile for a GPU target do so in a subprocess
with the variable removed.

The suite reads and writes no state an earlier run left: before anything is imported, every
cache (tritonlm's derived data, DSPy's disk cache, Hugging Face's home) is pointed at a fresh
directory of this session, removed at exit; Hypothesis keeps no example database and pytest no
cache. Only the fetched model files stay shared (``TRITONLM_MODELS_DIR``): they are verified by
size and sha256 before use.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from tritonlm.config import Environment

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITONLM_MODELS_DIR", str(Environment.read().models_dir))
SESSION_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="tritonlm-test-caches-"))
atexit.register(shutil.rmtree, SESSION_CACHE_ROOT, ignore_errors=True)
os.environ["TRITONLM_CACHE_DIR"] = str(SESSION_CACHE_ROOT / "tritonlm")
os.environ["DSPY_CACHEDIR"] = str(SESSION_CACHE_ROOT / "dspy")
os.environ["HF_HOME"] = str(SESSION_CACHE_ROOT / "huggingface")

import hypothesis  # noqa: E402
import pytest  # noqa: E402

from tests.memreport import fix_mmap_threshold, return_free_memory  # noqa: E402

fix_mmap_threshold()

pytest_plugins = ["tests.memreport"]

hypothesis.settings.register_profile("isolated", database=None)
hypothesis.settings.load_profile("isolated")


def pytest_report_header() -> list[str]:
    e = Environment.read()
    return [f"tritonlm caches: {e.cache_dir} (fresh); models (shared, sha256-checked): {e.models_dir}"]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted default model folder (assembled and converted on first use)."""
    from tritonlm.model.default import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    from tritonlm.model.default import ensure_default_gguf

    return ensure_default_gguf()


@pytest.fixture(scope="session")
def qwen_tokenizer(default_model_dir: Path):
    """The real Qwen2.5 tokenizer (151,936-wide vocabulary)."""
    from tritonlm.model.tokenizer import Tokenizer

    return Tokenizer.from_dir(default_model_dir, vocab_size=151936)


# ---- the real models: one load per session each, released after their last test --------------------
# name -> (how it is loaded, its phase in the run order). The suite runs the tests of each phase
# together (shipped, then float32, then bfloat16; tests on no real model first), so at most one
# real model of ours is resident at a time; the pool lets go of a model as soon as the last test
# that uses it has finished (module fixtures built on it torn down), so the next one loads into
# freed memory.
REAL_MODELS: dict[str, int] = {"shipped_model": 1, "default_model_f32": 2, "default_model": 3}


def _load_real_model(name: str, default_model_dir: Path | None):
    from tritonlm.model.loader import load_model

    if name == "shipped_model":  # as LLM("default") ships: the GGUF's quantized weights, dtype auto
        return load_model("default")
    dtype = "float32" if name == "default_model_f32" else "bfloat16"
    return load_model(str(default_model_dir), dtype=dtype, backend="torch")


def _phase(item: pytest.Item) -> int:
    names = set(getattr(item, "fixturenames", ()))
    return max((phase for name, phase in REAL_MODELS.items() if name in names), default=0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_phase)  # stable: within a phase the collected order holds


class ModelPool:
    """The real models, loaded on first use and dropped after the last collected test that uses
    each (what holds them past that point is a module fixture, torn down with its module)."""

    def __init__(self) -> None:
        self.models: dict[str, object] = {}
        self.last_user: dict[str, str] = {}
        self.still_alive: list[str] = []

    def plan(self, items: list[pytest.Item]) -> None:
        for item in items:
            for name in REAL_MODELS:
                if name in getattr(item, "fixturenames", ()):
                    self.last_user[name] = item.nodeid

    def get(self, name: str, default_model_dir: Path | None):
        if name not in self.models:
            self.models[name] = _load_real_model(name, default_model_dir)
        return self.models[name]

    def finished(self, item: pytest.Item) -> None:
        released = [n for n, last in self.last_user.items() if last == item.nodeid and n in self.models]
        refs = {}
        for name in released:
            refs[name] = weakref.ref(self.models.pop(name).model)
        if released:
            return_free_memory()
        for name, ref in refs.items():
            if ref() is not None:  # something past its last test still holds it
                self.still_alive.append(f"{name} (released after {item.nodeid})")


MODEL_POOL_KEY = pytest.StashKey[ModelPool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    pool = ModelPool()
    pool.plan(session.items)
    session.config.stash[MODEL_POOL_KEY] = pool


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    # after the whole protocol: the item's fixtures (and its module's, when the module ends here)
    # are torn down and pytest has dropped the item's references to their values
    yield
    pool = item.config.stash.get(MODEL_POOL_KEY, None)
    if pool is not None:
        pool.finished(item)
    if nextitem is None or nextitem.module is not getattr(item, "module", None):
        return_free_memory()  # a module's fixtures are gone: give their pages back


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    pool = config.stash.get(MODEL_POOL_KEY, None)
    if pool is not None and pool.still_alive:
        terminalreporter.write_line(
            "real models still referenced after their last test (memory not freed): " + ", ".join(pool.still_alive)
        )


def _pooled(request: pytest.FixtureRequest, name: str):
    pool = request.config.stash[MODEL_POOL_KEY]
    folder = None if name == "shipped_model" else request.getfixturevalue("default_model_dir")
    return pool.get(name, folder)


@pytest.fixture(scope="module")
def shipped_model(request: pytest.FixtureRequest):
    """The default model as ``LLM("default")`` loads it: the GGUF's quantized weights on the CPU
    kernel, float32 activations (LoadedModel)."""
    return _pooled(request, "shipped_model")


@pytest.fixture(scope="module")
def default_model(request: pytest.FixtureRequest):
    """The default model dense in bfloat16, from the converted float32 folder (LoadedModel)."""
    return _pooled(request, "default_model")


@pytest.fixture(scope="module")
def default_model_f32(request: pytest.FixtureRequest):
    """The default model dense in float32 (LoadedModel)."""
    return _pooled(request, "default_model_f32")
