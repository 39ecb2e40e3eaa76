"""Seconds per step, in order: the waterfall of one command or flow run.

    clock = Clock()
    ...; clock.mark("resolve")      # the step that just ended
    clock.steps()                   # {"resolve": 0.41, ...}

A command's clock can start when its process started (``Clock.since_process_start``), so the
first step ("python": the interpreter and the command's module) is counted too.
"""

from __future__ import annotations

import os
import time


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Clock:
    """``mark(step)`` when a step ends; ``steps()`` gives each step's seconds in order."""

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.started_at = time.time() - (time.perf_counter() - self.start)  # wall clock of the start
        self.marks: list[tuple[str, float]] = [("start", self.start)]

    @classmethod
    def since_process_start(cls) -> "Clock":
        age = process_age()
        return cls(None if age is None else time.perf_counter() - age)

    def mark(self, step: str) -> None:
        """End ``step`` now. A step marked twice (a loop) adds up."""
        self.marks.append((step, time.perf_counter()))

    def since_start(self) -> float:
        return round(time.perf_counter() - self.start, 2)

    def since(self, step: str) -> float:
        """Seconds since ``step`` was (last) marked."""
        return time.perf_counter() - dict(self.marks)[step]

    def steps(self, first: int = 1) -> dict[str, float]:
        """Each step's seconds, in order, from the ``first`` mark on (``len(marks)`` taken when
        a part began: that part's steps only)."""
        out: dict[str, float] = {}
        for i in range(max(1, first), len(self.marks)):
            step = self.marks[i][0]
            out[step] = round(out.get(step, 0.0) + self.marks[i][1] - self.marks[i - 1][1], 3)
        return out
