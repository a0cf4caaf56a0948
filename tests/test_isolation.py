"""The suite's caches are its own (see tests/conftest.py): nothing an earlier run left is read."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import pytest

from tritonlm.config import env

# conftest's fresh folder for this session (a new mkdtemp name each run)
SESSION_CACHE_ROOT = env().cache_dir.parent


def _inside(path: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(SESSION_CACHE_ROOT.resolve())


def test_tritonlm_dspy_and_hf_caches_point_into_this_sessions_folder() -> None:
    assert _inside(env().cache_dir)
    assert _inside(os.environ["DSPY_CACHEDIR"]) and _inside(os.environ["HF_HOME"])
    # the fetched model files are the one shared thing, and they are not under the session folder
    assert not _inside(env().models_dir)


def test_dspy_disk_cache_is_in_this_sessions_folder() -> None:
    dspy = pytest.importorskip("dspy")
    assert _inside(dspy.cache.disk_cache.directory)


def test_no_example_database_and_a_fresh_session_folder() -> None:
    assert hypothesis.settings().database is None
    assert SESSION_CACHE_ROOT.name.startswith("tritonlm-test-caches-")
