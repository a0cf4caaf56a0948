"""Where parallel work runs: one OpenMP team per process, on the thread that runs the engine.

libgomp (torch's OpenMP, and the CPU kernel's) keeps a team of worker threads for every thread
that ever ran a parallel region, for as long as that thread lives. With two such threads on a
machine with few cores, more OpenMP threads exist than cores, libgomp stops spinning between
regions, and every parallel region of the engine waits for its workers to wake (measured on
2 cores: a 12 us matmul took 60 us, decode ran 40% slower). So loading a model and building an
engine run on a short-lived thread (its team goes when it exits), and the engine loop thread is
the only long-lived thread with a team.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def call_on_fresh_thread(fn: Callable[[], T], *, name: str = "tritonlm-setup") -> T:
    """``fn()`` run on a new thread that exits when it returns; its result or exception is passed on."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised on the calling thread
            error.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


__all__ = ["call_on_fresh_thread"]
