"""Run the official JSON-Schema-Test-Suite (draft 2020-12) through the constraint engine.

The suite ships inside the ``jsonschema`` sdist on PyPI; :func:`suite_dir` downloads that sdist
once (``pip download``) and unpacks ``json/tests/draft2020-12`` into the tritonlm cache.

Each instance is serialized, tokenized with the real tokenizer and fed token by token; a
valid instance must be accepted through EOS, an invalid one must be rejected somewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonlm.constraints import compile_json_schema
from tritonlm.errors import SchemaError

# the jsonschema release whose sdist carries the suite (pinned, so the cases do not drift)
SUITE_SDIST = "jsonschema==4.26.0"
SUITE_MEMBER = "json/tests/draft2020-12/"


def suite_dir() -> Path:
    """The folder of draft 2020-12 test files, fetched from PyPI into the cache on first use."""
    from tritonlm.config import env

    dest = env().cache_dir / "jsonschema-test-suite" / SUITE_SDIST.replace("==", "-")
    if (dest / "type.json").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp, SUITE_SDIST],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (sdist,) = Path(tmp).glob("jsonschema-*.tar.gz")
        staging = Path(tmp) / "suite"
        staging.mkdir()
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                _, _, inner = member.name.partition("/")
                if member.isfile() and inner.startswith(SUITE_MEMBER) and inner.count("/") == 3:
                    (staging / Path(inner).name).write_bytes(tar.extractfile(member).read())
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    return dest


# Keyword files the engine covers (and a few it partly covers, to count what compiles).
FILES = [
    "additionalProperties",
    "allOf",
    "anchor",
    "anyOf",
    "boolean_schema",
    "const",
    "default",
    "defs",
    "enum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "format",
    "infinite-loop-detection",
    "items",
    "maxItems",
    "maxLength",
    "maximum",
    "minItems",
    "minLength",
    "minimum",
    "not",
    "oneOf",
    "pattern",
    "patternProperties",
    "prefixItems",
    "properties",
    "ref",
    "required",
    "type",
    "uniqueItems",
]

# (file, case description) -> reason. Only semantics a grammar cannot or deliberately does not
# reproduce belong here.
SKIP: dict[tuple[str, str], str] = {
    ("format", "*"): "the suite treats 'format' as an annotation (any string is valid); the engine asserts "
    "formats, as structured output needs",
}


@dataclass
class SuiteCounts:
    cases: int = 0
    compiled: int = 0
    not_compiled: int = 0
    skipped: int = 0
    instances: int = 0
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    not_compiled_reasons: dict[str, int] = field(default_factory=dict)
    not_compiled_cases: list[str] = field(default_factory=list)  # "file / case description"
    skip_reasons: dict[str, int] = field(default_factory=dict)


def feed(matcher: Any, token_ids: list[int], eos: int, check_mask: bool, vocab_size: int) -> bool:
    """True when the tokens and then EOS are all accepted (and, with ``check_mask``, each one
    was also allowed by the bitmask)."""
    bitmask = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)
    for t in [*token_ids, eos]:
        if check_mask:
            matcher.fill_next_token_bitmask(bitmask, 0)
            in_mask = bool((int(bitmask[0, t >> 5]) >> (t & 31)) & 1)
        if not matcher.accept_token(t):
            if check_mask and in_mask:
                raise AssertionError(f"token {t} allowed by the mask but rejected by accept_token")
            return False
        if check_mask and not in_mask:
            raise AssertionError(f"token {t} accepted but not allowed by the mask")
    return matcher.is_terminated()


def run_suite(
    tokenizer: Any,
    encode: Callable[[str], list[int]],
    *,
    whitespace: str,
    escapes: str,
    dumps: Callable[[Any], str],
    check_mask: bool,
) -> SuiteCounts:
    counts = SuiteCounts()
    eos = tokenizer.eos_token_ids[0]
    for name in FILES:
        for case in json.loads((suite_dir() / f"{name}.json").read_text()):
            counts.cases += 1
            desc = case["description"]
            reason = SKIP.get((name, desc)) or SKIP.get((name, "*"))
            if reason:
                counts.skipped += 1
                counts.skip_reasons[reason] = counts.skip_reasons.get(reason, 0) + 1
                continue
            try:
                grammar = compile_json_schema(case["schema"], tokenizer, whitespace=whitespace, escapes=escapes)
            except SchemaError as exc:
                counts.not_compiled += 1
                key = str(exc).split(" at ")[0]
                counts.not_compiled_reasons[key] = counts.not_compiled_reasons.get(key, 0) + 1
                counts.not_compiled_cases.append(f"{name} / {desc}")
                continue
            counts.compiled += 1
            for test in case["tests"]:
                counts.instances += 1
                text = dumps(test["data"])
                got = feed(grammar.matcher(), encode(text), eos, check_mask, tokenizer.vocab_size)
                if got == test["valid"]:
                    counts.passed += 1
                else:
                    counts.failures.append(
                        f"{name} / {desc} / {test['description']}: {text!r} expected valid={test['valid']}, got {got}"
                    )
    return counts
