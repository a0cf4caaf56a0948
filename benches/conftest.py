"""Shared fixtures of the benches: the default model and its HF twin, loaded once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "0")

import pytest


@pytest.fixture(scope="session")
def default_model_dir():
    from tritonlm.model.default import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_model_bf16(default_model_dir):
    from tritonlm.model.loader import load_model

    return load_model(str(default_model_dir), dtype="bfloat16", backend="torch")
