"""Build and load the project's C++ sources (``tritonlm/kernels/csrc/*.cpp``) as ctypes libraries.

``load(source, name)`` compiles ``source`` on first use and returns the shared library as a
:class:`ctypes.CDLL`; the caller declares the C signatures. This is the one build path of the
package (:mod:`tritonlm.kernels.cpu_ops` and :mod:`tritonlm.kernels.cpu_quant` both load through
it), parameterized by source, library name, flags and compiler:

* ``g++ -O3 -march=native -fopenmp -fPIC -std=c++17 -ffp-contract=off`` (``-ffp-contract=off``:
  no fused multiply-adds the source does not write, so the results are the same bits whatever
  the compiler's version or the target's ISA);
* into ``env().cache_dir / "kernels" / <name>-<hash> / <name>.so``, the hash covering the source
  and the local headers it includes (``#include "..."``, e.g. ``csrc/bf16.h``), the flags, the
  compiler's predefined macros for those flags (its version and, for ``-march=native``, the ISA
  extensions of this CPU) and the link line, so an edited source or header, another compiler or
  another CPU builds a fresh library beside the old ones;
* under a file lock in that folder (concurrent threads or processes build once), the library
  moved into place atomically (temp file + rename), so a reader never sees half a file;
* OpenMP linked against torch's own ``torch/lib/libgomp.so.1`` when torch ships one, so the
  library and torch share one OpenMP runtime and thread pool.

Module state (all of it): ``_LOADED``, one entry per (source, name, flags, compiler, cache folder)
holding the loaded library or the exception that stopped it, so a missing compiler or a failing
build is probed once per process; ``_WARNED``, the libraries whose fallback was logged, so it is
logged once; ``_LOCK`` guarding both; and a cache of the compiler's predefined macros per flags.
Importing this module compiles nothing and never raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from tritonlm import progress
from tritonlm.config import env
from tritonlm.errors import TritonLMError

logger = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"
COMPILER = "g++"
COMPILE_FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-std=c++17", "-ffp-contract=off")
BUILD_TIMEOUT_S = 600


class NativeUnavailable(TritonLMError, RuntimeError):
    """A C++ source could not be built or loaded on this machine (no compiler, a failed build ...)."""


# ---- build -----------------------------------------------------------------------------------------
def torch_gomp() -> Path | None:
    """torch's bundled OpenMP runtime, which the libraries link against (None when torch has none)."""
    path = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    return path if path.is_file() else None


def link_args(obj: Path, out: Path, compiler: str | None = None) -> list[str]:
    """The link command of one object file into a shared library."""
    cxx = compiler or COMPILER
    gomp = torch_gomp()
    if gomp is None:
        return [cxx, "-shared", "-fopenmp", str(obj), "-o", str(out)]
    return [cxx, "-shared", str(obj), str(gomp), f"-Wl,-rpath,{gomp.parent}", "-o", str(out)]


def compiler_fingerprint(flags: Sequence[str] = COMPILE_FLAGS, compiler: str | None = None) -> str:
    """The compiler's predefined macros under ``flags``: its version and, for ``-march=native``,
    the ISA extensions of this CPU. Raises NativeUnavailable when there is no working compiler.
    ``compiler``: the executable's name (default :data:`COMPILER`), looked up on PATH."""
    cxx = compiler or COMPILER
    path = shutil.which(cxx)
    if path is None:
        raise NativeUnavailable(f"no C++ compiler: {cxx!r} is not on PATH")
    return _macros(path, tuple(flags))


@functools.cache
def _macros(compiler: str, flags: tuple[str, ...]) -> str:
    try:
        proc = subprocess.run(
            [compiler, *flags, "-E", "-dM", "-x", "c++", os.devnull],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"{compiler} failed to run: {exc}") from exc
    if proc.returncode != 0:
        raise NativeUnavailable(f"{compiler} rejected the flags {' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
    return "\n".join(sorted(proc.stdout.splitlines()))


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def local_headers(source: Path | str) -> list[Path]:
    """The headers ``source`` includes with ``#include "..."`` that exist next to it, and theirs,
    in first-seen order (what the compiler reads besides the source and the system headers)."""
    seen: list[Path] = []
    pending = [Path(source)]
    while pending:
        text = pending.pop().read_bytes()
        for match in _LOCAL_INCLUDE.finditer(text):
            header = Path(source).parent / match.group(1).decode()
            if header.is_file() and header not in seen:
                seen.append(header)
                pending.append(header)
    return seen


def library_path(
    source: Path | str, name: str, flags: Sequence[str] = COMPILE_FLAGS, compiler: str | None = None
) -> Path:
    """Where ``source`` built with ``flags`` lives: ``env().cache_dir / "kernels" / <name>-<hash> / <name>.so``.

    Reads the source and its local headers and asks the compiler for its macros (raises
    NativeUnavailable without one)."""
    flags = tuple(flags)
    source = Path(source)
    digest = hashlib.sha256()
    parts = [source.read_bytes()]
    parts += [header.name.encode() + b"\0" + header.read_bytes() for header in local_headers(source)]
    parts += [
        "\0".join(flags).encode(),
        compiler_fingerprint(flags, compiler).encode(),
        " ".join(link_args(Path("o"), Path("so"), compiler)).encode(),
    ]
    for part in parts:
        digest.update(part)
        digest.update(b"\0\1\0")
    return env().cache_dir / "kernels" / f"{name}-{digest.hexdigest()[:24]}" / f"{name}.so"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"{' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise NativeUnavailable(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()[-4000:]}")


def build(source: Path | str, name: str, flags: Sequence[str] = COMPILE_FLAGS, compiler: str | None = None) -> Path:
    """Compile ``source`` with ``flags`` unless the cache has it; the path of the shared library.

    Concurrent builders (threads or processes) serialise on a lock file next to the library;
    the library appears under its final name only once complete (temp file + rename), and a
    failed build leaves only the lock file. Raises NativeUnavailable.
    """
    source = Path(source)
    lib = library_path(source, name, flags, compiler)
    if lib.is_file():
        return lib
    folder = lib.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NativeUnavailable(f"cannot create the kernel cache folder {folder}: {exc}") from exc
    with _file_lock(folder / ".lock"):
        if lib.is_file():
            return lib
        reason = "no build of it for this source, compiler and CPU yet"
        with (
            progress.step(f"compiling {source.name} ({reason}; cached in {folder.parent})"),
            tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp,
        ):
            obj, out = Path(tmp) / f"{name}.o", Path(tmp) / lib.name
            _run([compiler or COMPILER, *flags, "-c", str(source), "-o", str(obj)])
            _run(link_args(obj, out, compiler))
            os.replace(out, lib)
    return lib


# ---- loading ---------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, tuple[str, ...], str, str], ctypes.CDLL | NativeUnavailable] = {}
_WARNED: set[str] = set()  # the libraries whose fallback was logged (log_fallback)


def load(
    source: Path | str, name: str, flags: Sequence[str] = COMPILE_FLAGS, compiler: str | None = None
) -> ctypes.CDLL:
    """``source`` as a loaded library (built on first use); raises NativeUnavailable.

    One library per (source, name, flags, compiler, cache folder) and process: later calls return
    the same CDLL object, and a failure (no compiler, a failed build or load) is remembered and raised
    again without a new probe. A source edited while the process runs is not rebuilt before a
    restart.
    """
    key = (str(Path(source).resolve()), name, tuple(flags), compiler or COMPILER, str(env().cache_dir))
    with _LOCK:
        entry = _LOADED.get(key)
        if entry is None:
            try:
                entry = ctypes.CDLL(str(build(source, name, flags, compiler)))
            except NativeUnavailable as exc:
                entry = exc
            except Exception as exc:  # an unreadable source, an unusable cache_dir, a bad library ...
                entry = NativeUnavailable(f"building or loading {name} from {source} failed: {exc}")
            _LOADED[key] = entry
    if isinstance(entry, NativeUnavailable):
        raise entry
    return entry


def log_fallback(name: str, fallback: str, exc: BaseException) -> None:
    """Log, once per ``name`` and process, at WARNING, that ``name`` is not used and what runs
    instead: ``"<fallback>: <why>"`` (e.g. the compiler's error)."""
    with _LOCK:
        if name in _WARNED:
            return
        _WARNED.add(name)
    logger.warning("%s: %s", fallback, exc)


def available(source: Path | str, name: str, flags: Sequence[str] = COMPILE_FLAGS, compiler: str | None = None) -> bool:
    """True when ``source`` builds (or is cached) and loads on this machine; never raises."""
    try:
        load(source, name, flags, compiler)
    except Exception:
        return False
    return True


__all__ = [
    "COMPILER",
    "COMPILE_FLAGS",
    "CSRC",
    "NativeUnavailable",
    "available",
    "build",
    "compiler_fingerprint",
    "library_path",
    "link_args",
    "load",
    "local_headers",
    "log_fallback",
    "torch_gomp",
]
