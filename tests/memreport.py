"""A pytest plugin that reports where the suite's memory goes.

For every test it records the process's resident set size (RSS) before and after the test's
whole protocol (set-up, call, tear-down, so session fixtures count where they are first built)
and the growth of the peak RSS (``ru_maxrss``) it caused. The terminal summary lists the tests
and the modules that raised the peak most and that left the most memory behind, and the
suite's peak, so a regression is visible in any log (CI prints it on every run).

``--memory-report N`` sets how many rows each table has (default 5; 0 turns the report off).
"""

from __future__ import annotations

import ctypes
import gc
import resource
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass

import psutil
import pytest

MB = 1 << 20


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def fix_mmap_threshold(nbytes: int = 4 << 20) -> None:
    """Serve every allocation of ``nbytes`` or more (a tensor of a real model: weights, packs,
    activations of a prefill) from its own mapping, returned to the system when freed. glibc
    otherwise raises this threshold up to 32 MiB as large blocks are freed, after which freed
    tensors stay in the heap, resident, and the suite's peak grows model by model."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes)
    except (OSError, AttributeError):  # not glibc
        pass


def return_free_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the system (glibc
    ``malloc_trim``): freed tensors below glibc's mmap threshold, which rises as large blocks
    are freed, otherwise stay resident and add to the peak when the next model loads."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass(frozen=True)
class TestMemory:
    nodeid: str
    rss_before: int
    rss_after: int
    peak_growth: int  # how far this test raised the process's peak RSS

    @property
    def module(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def retained(self) -> int:
        return self.rss_after - self.rss_before


class MemoryReport:
    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.process = psutil.Process()
        self.records: list[TestMemory] = []
        self.start_rss = self.process.memory_info().rss

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        before, peak_before = self.process.memory_info().rss, _peak_bytes()
        yield
        after, peak_after = self.process.memory_info().rss, _peak_bytes()
        self.records.append(TestMemory(item.nodeid, before, after, peak_after - peak_before))

    def table(self, title: str, rows: list[tuple[str, int, str]]) -> list[str]:
        lines = [title]
        lines += [f"  {value / MB:8.0f} MB  {name}{extra}" for name, value, extra in rows]
        return lines

    def lines(self) -> list[str]:
        if not self.records:
            return []
        n = self.rows
        by_peak = sorted(self.records, key=lambda r: r.peak_growth, reverse=True)[:n]
        by_retained = sorted(self.records, key=lambda r: r.retained, reverse=True)[:n]
        module_peak: dict[str, int] = defaultdict(int)
        module_retained: dict[str, int] = defaultdict(int)
        for r in self.records:
            module_peak[r.module] += r.peak_growth
            module_retained[r.module] += r.retained
        out = [
            f"peak RSS of the suite's process: {_peak_bytes() / MB:.0f} MB "
            f"(RSS at start {self.start_rss / MB:.0f} MB, at end {self.process.memory_info().rss / MB:.0f} MB)"
        ]
        out += self.table(
            f"the {n} tests that raised the peak most:",
            [
                (r.nodeid, r.peak_growth, f" (RSS {r.rss_before / MB:.0f} -> {r.rss_after / MB:.0f} MB)")
                for r in by_peak
            ],
        )
        out += self.table(
            f"the {n} tests that left the most resident memory behind:",
            [(r.nodeid, r.retained, "") for r in by_retained],
        )
        out += self.table(
            f"the {n} modules that raised the peak most:",
            [(m, v, "") for m, v in sorted(module_peak.items(), key=lambda kv: kv[1], reverse=True)[:n]],
        )
        out += self.table(
            f"the {n} modules that left the most resident memory behind:",
            [(m, v, "") for m, v in sorted(module_retained.items(), key=lambda kv: kv[1], reverse=True)[:n]],
        )
        return out

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = self.lines()
        if lines:
            terminalreporter.section("memory")
            for line in lines:
                terminalreporter.write_line(line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--memory-report",
        type=int,
        default=5,
        metavar="N",
        help="rows of the per-test and per-module RSS report at the end (0: off)",
    )


def pytest_configure(config: pytest.Config) -> None:
    rows = config.getoption("--memory-report")
    if rows > 0 and not hasattr(config, "workerinput"):
        config.pluginmanager.register(MemoryReport(rows), "tritonlm-memory-report")
