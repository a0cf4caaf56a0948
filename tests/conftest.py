"""Shared test set-up.

TRITON_INTERPRET=1 is set here, before anything imports triton, so the Triton kernels run
through the interpreter on the CPU. Tests that compile for a GPU target do so in a subprocess
with the variable removed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest


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
