"""The shared C++ build (tritonlm.kernels._native): what the library's cache hash covers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tritonlm.kernels import _native

pytestmark = pytest.mark.skipif(shutil.which(_native.COMPILER) is None, reason="no C++ compiler")


def test_local_headers_followed_transitively(tmp_path: Path) -> None:
    (tmp_path / "a.h").write_text('#pragma once\n#include "b.h"\n#include <cstdint>\n')
    (tmp_path / "b.h").write_text("#pragma once\n")
    source = tmp_path / "lib.cpp"
    source.write_text('#include <cmath>\n  # include "a.h"\n#include "missing.h"\n#include "b.h"\n')
    assert _native.local_headers(source) == [tmp_path / "a.h", tmp_path / "b.h"]


def test_the_sources_include_the_shared_header_and_their_parts() -> None:
    parts = {
        "cpu_ops.cpp": ["bf16.h", "cpu_ops_attention.h"],
        "quant_gemm.cpp": [
            "bf16.h",
            "quant_gemm_rows.h",
            "quant_gemm_avx512.h",
            "quant_gemm_avx2.h",
            "quant_gemm_scalar.h",
        ],
    }
    for name, headers in parts.items():
        found = _native.local_headers(_native.CSRC / name)
        assert sorted(found) == sorted(_native.CSRC / h for h in headers), name


def test_an_edited_header_moves_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITONLM_CACHE_DIR", str(tmp_path / "cache"))
    header = tmp_path / "h.h"
    header.write_text("inline int f() { return 1; }\n")
    source = tmp_path / "lib.cpp"
    source.write_text('#include "h.h"\nextern "C" int g() { return f(); }\n')
    before = _native.library_path(source, "lib")
    assert before == _native.library_path(source, "lib")
    header.write_text("inline int f() { return 2; }\n")
    after = _native.library_path(source, "lib")
    assert after != before and after.parent.name.startswith("lib-")
    assert _native.load(source, "lib").g() == 2


def test_compiler_is_part_of_the_key(tmp_path: Path) -> None:
    source = tmp_path / "x.cpp"
    source.write_text('extern "C" int f() { return 1; }\n')
    with pytest.raises(_native.NativeUnavailable, match="no C\\+\\+ compiler: 'tritonlm-no-such-cxx'"):
        _native.load(source, "x", compiler="tritonlm-no-such-cxx")
    assert not _native.available(source, "x", compiler="tritonlm-no-such-cxx")


def test_each_cache_folder_gets_its_own_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "y.cpp"
    source.write_text('extern "C" int f() { return 3; }\n')
    for folder in ("a", "b"):
        monkeypatch.setenv("TRITONLM_CACHE_DIR", str(tmp_path / folder))
        assert _native.load(source, "y").f() == 3
        path = _native.library_path(source, "y")
        assert path.is_relative_to(tmp_path / folder) and path.is_file()
