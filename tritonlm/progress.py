"""Progress of the slow first-use steps, on standard error only.

A step that can take more than a second the first time it runs on a machine (assembling and
checking the default model, converting it, compiling a native library, building the tokenizer
index for constraints) runs inside :func:`step`, so a person at a prompt can tell work from a
hang. Standard output is never written: ``tritonlm generate ... > out.txt`` still holds only the
answer.

How it shows is ``TRITONLM_PROGRESS`` (read in :mod:`tritonlm.config`):

* ``auto`` (default): ``bar`` when standard error is a terminal, else ``lines``;
* ``bar``: a tqdm bar for a step of known size (bytes done / total, rate), one line for others;
* ``lines``: one line per step, its start written first and ``done in N s`` added when it ends
  (a log file shows one line a step; a person watching a pipe sees the step begin);
* ``off``: nothing. ``TRITONLM_QUIET=1`` (``--quiet`` on the command line) means ``off``.

A step reports where it stands through the callable it yields: ``advance(n)`` adds ``n`` units.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from tritonlm.config import env

MiB = 1 << 20


def mode(stream: TextIO | None = None) -> str:
    """The display mode in force for ``stream`` (default: standard error): bar, lines or off."""
    e = env()
    if e.quiet or e.progress == "off":
        return "off"
    if e.progress != "auto":
        return e.progress
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "lines"


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    """(columns, rows) of the terminal, 80 x 24 where it reports none: a terminal of size
    0 x 0, as a fresh pseudo-terminal is, makes tqdm draw nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        columns, rows = 0, 0
    return (columns if columns > 0 else 80, rows if rows > 0 else 24)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _size(n: float) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n:.0f} B"


def _ending(seconds: float, done: int, total: int | None) -> str:
    if total is None:
        return f"done in {seconds:.1f} s"
    rate = done / seconds if seconds > 0 else 0.0
    return f"done in {seconds:.1f} s ({_size(done)}, {rate / MiB:.0f} MiB/s)"


@contextlib.contextmanager
def step(what: str, *, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Show ``what`` while the block runs; ``total``: its size in bytes, when known.

    Yields ``advance(n)``; a step that raises ends its line with ``failed after N s`` and the
    exception goes on unchanged."""
    shown = mode()
    if shown == "off":
        yield lambda n: None
        return
    out = sys.stderr
    start = time.perf_counter()
    done = 0
    if shown == "bar" and total is not None:
        from tqdm import tqdm

        columns, rows = _terminal_size(out)
        with tqdm(
            total=total,
            desc=_fit(f"tritonlm: {what}", max(columns - 50, 20)),  # room for the bar, bytes, rate, times
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=out,
            leave=True,
            ncols=columns,
            nrows=rows,
        ) as bar:

            def advance_bar(n: int) -> None:
                nonlocal done
                done += n
                bar.update(n)

            yield advance_bar
        return

    def advance(n: int) -> None:
        nonlocal done
        done += n

    size = f" ({_size(total)})" if total is not None else ""
    out.write(f"tritonlm: {what}{size} ... ")
    out.flush()
    try:
        yield advance
    except BaseException:
        out.write(f"failed after {time.perf_counter() - start:.1f} s\n")
        out.flush()
        raise
    out.write(_ending(time.perf_counter() - start, done, total) + "\n")
    out.flush()


__all__ = ["mode", "step"]
