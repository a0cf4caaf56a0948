"""The official JSON-Schema-Test-Suite through the constraint engine (see
``support/suite.py``): every case that compiles must be exactly right."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from tests.constraints.support.suite import run_suite

# The cases that do not compile, pinned (file / case description): a case that stops compiling is
# a regression, one that starts compiling is progress; either way this list changes with it.
# Regenerate with: PIN_SUITE=1 pytest -m slow tests/constraints/test_constraints_suite.py
PINNED = Path(__file__).parent / "support" / "suite_not_compiled.json"


def _check_pinned(key: str, cases: list[str]) -> None:
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    if os.environ.get("PIN_SUITE") == "1":
        pinned[key] = sorted(cases)
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    expected = set(pinned.get(key, ()))
    assert expected, f"no pinned list for {key} in {PINNED}"
    got = set(cases)
    assert got == expected, {
        "no longer compile (regression)": sorted(got - expected),
        "now compile (update the pin)": sorted(expected - got),
    }


def _report(title: str, counts) -> str:
    lines = [
        f"{title}: {counts.cases} cases, {counts.compiled} compiled, {counts.not_compiled} not compiled, "
        f"{counts.skipped} skipped; {counts.instances} instances, {counts.passed} passed, "
        f"{len(counts.failures)} failed",
        f"  not compiled by keyword: {dict(sorted(counts.not_compiled_reasons.items()))}",
        f"  skipped: {counts.skip_reasons}",
    ]
    return "\n".join(lines + [f"  FAIL {f}" for f in counts.failures[:40]])


@pytest.mark.slow
def test_suite_json_dumps_default(qwen_tokenizer) -> None:
    """``json.dumps(instance)`` as is: ", " / ": " separators and \\uXXXX escapes, so the
    grammar runs with flexible whitespace and every string escape allowed."""
    counts = run_suite(
        qwen_tokenizer, qwen_tokenizer.encode, whitespace="flexible", escapes="any", dumps=json.dumps, check_mask=False
    )
    warnings.warn(_report("json.dumps default", counts), stacklevel=1)  # shown in the summary
    assert not counts.failures, _report("json.dumps default", counts)
    _check_pinned("json.dumps default", counts.not_compiled_cases)


@pytest.mark.slow
def test_suite_compact_canonical_with_masks(qwen_tokenizer) -> None:
    """Default grammar options (compact, canonical escapes) against the matching
    serialization; each token is also checked against the bitmask."""
    counts = run_suite(
        qwen_tokenizer,
        qwen_tokenizer.encode,
        whitespace="compact",
        escapes="canonical",
        dumps=lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
        check_mask=True,
    )
    warnings.warn(_report("compact canonical + masks", counts), stacklevel=1)
    assert not counts.failures, _report("compact canonical", counts)
    _check_pinned("compact canonical", counts.not_compiled_cases)
