"""First-use work shows progress on stderr only, and a native build that fails is logged once.

Issue 26: assembling and checking the default model, compiling the native libraries and building
the constraint index each show a step on stderr (a tqdm bar on a terminal, one line each off a
terminal, nothing with ``TRITONLM_QUIET=1`` / ``--quiet``); a fallback to the torch reference is
one WARNING naming it and why, and the outputs stay right.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tritonlm import progress
from tritonlm.errors import ModelLoadError
from tritonlm.kernels import _native
from tritonlm.model.default import assemble, verify

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def progress_mode(monkeypatch: pytest.MonkeyPatch):
    def set_mode(value: str | None, quiet: bool = False) -> None:
        if value is None:
            monkeypatch.delenv("TRITONLM_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("TRITONLM_PROGRESS", value)
        monkeypatch.setenv("TRITONLM_QUIET", "1" if quiet else "0")

    return set_mode


def _parts(tmp_path: Path, sizes: list[int]) -> tuple[list[Path], bytes]:
    data = os.urandom(sum(sizes))
    parts, at = [], 0
    for i, n in enumerate(sizes):
        p = tmp_path / f"part{i}"
        p.write_bytes(data[at : at + n])
        parts.append(p)
        at += n
    return parts, data


def test_lines_mode_writes_one_line_a_step_to_stderr_only(progress_mode, capsys) -> None:
    progress_mode("lines")
    with progress.step("doing a thing", total=3 << 20) as advance:
        advance(1 << 20)
        advance(2 << 20)
    with progress.step("an unsized thing"):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert re.fullmatch(r"tritonlm: doing a thing \(3 MiB\) \.\.\. done in \d+\.\d s \(3 MiB, \d+ MiB/s\)", lines[0])
    assert re.fullmatch(r"tritonlm: an unsized thing \.\.\. done in \d+\.\d s", lines[1])


def test_a_failed_step_says_so_and_reraises(progress_mode, capsys) -> None:
    progress_mode("lines")
    with pytest.raises(KeyError), progress.step("breaking"):
        raise KeyError("x")
    assert re.fullmatch(r"tritonlm: breaking \.\.\. failed after \d+\.\d s\n", capsys.readouterr().err)


def test_bar_mode_draws_a_tqdm_bar_with_the_total(progress_mode, capsys) -> None:
    progress_mode("bar")
    with progress.step("copying", total=4 << 20) as advance:
        for _ in range(4):
            advance(1 << 20)
    out, err = capsys.readouterr()
    assert out == ""
    assert "tritonlm: copying" in err and "100%" in err and "4.00M/4.00M" in err


def test_a_bar_shows_on_a_terminal_that_reports_no_size() -> None:
    """A fresh pseudo-terminal is 0 x 0; tqdm left to itself would draw nothing there."""
    master, slave = pty.openpty()
    code = (
        "from tritonlm import progress\n"
        "with progress.step('assembling and checking a-long-file-name.gguf from 6 pieces', total=3 << 20) as a:\n"
        "    a(3 << 20)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITONLM_PROGRESS", "TRITONLM_QUIET")}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], stderr=slave, stdout=subprocess.PIPE, env=env, cwd=REPO, timeout=120
        )
        os.close(slave)
        slave = -1
        err = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            err += data
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0 and proc.stdout == b""
    text = err.decode()
    assert "tritonlm: assembling" in text and "100%|" in text and "3.00M/3.00M" in text, text


@pytest.mark.parametrize("how", ["quiet", "off"])
def test_quiet_or_off_shows_nothing(progress_mode, capsys, how: str) -> None:
    progress_mode("bar" if how == "quiet" else "off", quiet=how == "quiet")
    assert progress.mode() == "off"
    with progress.step("silent", total=10) as advance:
        advance(10)
    assert capsys.readouterr() == ("", "")


def test_auto_follows_whether_stderr_is_a_terminal(progress_mode) -> None:
    progress_mode(None)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress.mode(tty) == "bar"
    finally:
        os.close(master)
        os.close(slave)
    with open(os.devnull, "w") as not_tty:
        assert progress.mode(not_tty) == "lines"


def test_an_unknown_progress_mode_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonlm.config import env
    from tritonlm.errors import ConfigError

    monkeypatch.setenv("TRITONLM_PROGRESS", "fancy")
    with pytest.raises(ConfigError, match="TRITONLM_PROGRESS"):
        env()


def test_assembly_and_check_report_bytes_and_rate(progress_mode, capsys, tmp_path: Path) -> None:
    import hashlib

    progress_mode("lines")
    parts, data = _parts(tmp_path, [3 << 20, 1 << 20, 12345])
    digest = hashlib.sha256(data).hexdigest()
    dest = assemble(parts, tmp_path / "out" / "model.gguf", size=len(data), sha256=digest)
    assert dest.read_bytes() == data
    verify(dest, size=len(data), sha256=digest)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("tritonlm: assembling and checking model.gguf from 3 pieces (4 MiB) ... done in ")
    assert lines[0].endswith(" MiB/s)") and "(4 MiB, " in lines[0]
    assert lines[1].startswith("tritonlm: checking model.gguf (4 MiB) ... done in ")
    with pytest.raises(ModelLoadError, match="sha256"):
        assemble(parts, tmp_path / "bad.gguf", size=len(data), sha256="0" * 64)
    assert "failed after" not in capsys.readouterr().err  # the copy itself ended; the check refused it


def test_a_native_build_says_what_it_compiles_and_a_cached_one_is_silent(
    progress_mode, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress_mode("lines")
    monkeypatch.setenv("TRITONLM_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "tiny_lib.cpp"
    source.write_text('extern "C" int tiny_answer() { return 42; }\n')
    flags = ("-O1", "-fPIC", "-std=c++17")
    lib = _native.build(source, "tiny_lib", flags)
    assert lib.is_file()
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"tritonlm: compiling tiny_lib\.cpp \(no build of it for this source, compiler and CPU yet; cached in .*\) "
        r"\.\.\. done in \d+\.\d s\n",
        err,
    ), err
    assert _native.build(source, "tiny_lib", flags) == lib
    assert capsys.readouterr().err == ""


FALLBACK_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
import torch
from tests.model.gguf_support import write_tiny_gguf
from tests.model.test_quantized_model import MIXED
from tests.model.simple import ContiguousSequence
from tritonlm.kernels import cpu_ops, cpu_quant
from tritonlm.model.loader import load_model

path = sys.argv[1]
write_tiny_gguf(path, qtypes=MIXED, seed=11)
quantized = load_model(path, dtype="float32", backend="torch")
dense = load_model(path, dtype="float32", backend="torch", quantization=None)
assert not isinstance(quantized.model.layers[0].qkv_weight, cpu_quant.CpuQuantWeight)
assert cpu_ops.library() is None and not cpu_quant.available()
ids = [5, 260, 17, 99, 3, 298, 41]
got = ContiguousSequence(quantized.model, 16).step(ids)
ref = ContiguousSequence(dense.model, 16).step(ids)
torch.testing.assert_close(got, ref, rtol=0, atol=0)
print("outputs equal")
"""


def test_a_broken_native_build_is_one_warning_per_fallback_and_outputs_stay_right(tmp_path: Path) -> None:
    """No C++ compiler on PATH: both native libraries fail to build; each fallback is logged once
    at WARNING with the reason, and the quantized model gives exactly its dequantized twin's logits
    (the torch reference)."""
    bin_dir = tmp_path / "bin"  # python only: no g++
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "TRITONLM_CACHE_DIR": str(tmp_path / "cache"),
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, str(tmp_path / "tiny.gguf")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "outputs equal"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING ")]
    quant = [w for w in warnings if "quantized matmul falls back to the torch reference" in w]
    ops = [w for w in warnings if "fall back to the torch reference" in w and "decode attention" in w]
    assert len(quant) == 1 and len(ops) == 1 and len(warnings) == 2, proc.stderr
    for line in warnings:
        assert line.startswith("WARNING tritonlm.kernels._native ") and "no C++ compiler: 'g++' is not on PATH" in line
    assert not (tmp_path / "cache" / "kernels").exists() or not list((tmp_path / "cache" / "kernels").rglob("*.so"))


def _generate_on_a_terminal(tmp_path: Path, *extra: str) -> tuple[str, str]:
    """``tritonlm generate`` from empty models and cache folders, stderr on a pseudo-terminal
    (read as it comes, so a bar never blocks the child), stdout on a pipe."""
    import threading

    env = {
        **os.environ,
        "TRITONLM_MODELS_DIR": str(tmp_path / "models"),
        "TRITONLM_CACHE_DIR": str(tmp_path / "cache"),
    }
    for key in ("TRITONLM_PROGRESS", "TRITONLM_QUIET"):
        env.pop(key, None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    cmd = [sys.executable, "-m", "tritonlm", "generate", "Say hello.", "--max-tokens", "8", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    try:
        stdout, _ = proc.communicate(timeout=900)
    finally:
        reader.join(timeout=30)
        os.close(master)
    stderr = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, stderr
    return stdout.decode(), stderr


@pytest.mark.slow
def test_generate_shows_first_use_progress_on_the_terminal_and_only_the_answer_on_stdout(tmp_path: Path) -> None:
    out, err = _generate_on_a_terminal(tmp_path / "loud")
    assert "tritonlm: assembling and checking qwen2.5-coder-0.5b-instruct-q4_k_m.gguf from 6 pieces" in err
    assert re.search(r"100%\|[^\n]*\| 469M/469M", err), err  # the bar's end: bytes done / total
    for source in ("quant_gemm.cpp", "cpu_ops.cpp"):
        assert re.search(rf"tritonlm: compiling {re.escape(source)} \(.*\) \.\.\. done in \d+\.\d s", err), err
    assert out.strip() and "tritonlm" not in out and "%|" not in out and "compiling" not in out

    quiet_out, quiet_err = _generate_on_a_terminal(tmp_path / "quiet", "--quiet")
    assert quiet_out == out  # greedy: the same answer, and nothing else
    assert "tritonlm: assembling" not in quiet_err and "tritonlm: compiling" not in quiet_err
    assert "%|" not in quiet_err and "prompt tokens" in quiet_err
