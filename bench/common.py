"""What the benchmark sections share: timing, the table printer and memory readings.

The live server and the HTTP client come from ``testkit`` (testkit.server, testkit.client).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


def median_seconds(action: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls of ``action``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds_after(prepare: Callable[[], T], action: Callable[[T], object], runs: int) -> float:
    """Median wall time of ``runs`` calls of ``action(prepare())``, each timed without its ``prepare``.

    For a measurement that needs something new before every run (a change to
    read back, a record never written before), made outside the timed region.
    """
    times = []
    for _ in range(runs):
        prepared = prepare()
        start = time.perf_counter()
        action(prepared)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Table:
    """A titled table of strings, printed with aligned columns."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
        out = [f"## {self.title}", "", line(self.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(row) for row in self.rows]
        out += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(out)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_mb(nbytes: float) -> str:
    if nbytes < 1048576:
        return f"{nbytes / 1024:.0f} KB"
    return f"{nbytes / 1048576:.1f} MB" if nbytes < 10 * 1048576 else f"{nbytes / 1048576:.0f} MB"


def reset_peaks(pids: list[int]) -> None:
    """Reset the peak resident memory (Linux VmHWM) of these processes to their current size."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def peak_rss(pids: list[int]) -> int:
    """The largest peak resident memory (VmHWM) among these processes, in bytes."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return peak


class PeakSampler:
    """Polls the workers' RSS while requests run, for systems without VmHWM."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in self.processes:
                try:
                    self.peak = max(self.peak, process.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
