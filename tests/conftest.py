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


@pytest.fixture(scope="session")
def default_model(default_model_dir: Path):
    """The default model in bfloat16 (LoadedModel)."""
    from tritonlm.model.loader import load_model

    return load_model(str(default_model_dir), dtype="bfloat16", backend="torch")


@pytest.fixture(scope="session")
def default_model_f32(default_model_dir: Path):
    """The default model in float32 (LoadedModel)."""
    from tritonlm.model.loader import load_model

    return load_model(str(default_model_dir), dtype="float32", backend="torch")
