"""The waterfall of the running command: where its seconds went, step by step.

One clock per command (``start`` in the CLI's ``main``, counted from the process's start;
the served process starts one per run). The guard marks the steps before a flow (lock,
ledger and keys, Prefect API, recovery), the erase flow its own steps on the same clock, so
``forget --json`` (``waterfall``) and the erase run's MLflow metrics (``seconds_<step>``)
show every step from the interpreter's start to the certificate.
"""

from __future__ import annotations

from unlearnflow.timing import Clock

_current: Clock | None = None


def start(from_process_start: bool = False) -> Clock:
    global _current
    _current = Clock.since_process_start() if from_process_start else Clock()
    return _current


def current() -> Clock:
    """The command's clock (a new one if none was started: a flow called from Python)."""
    return _current or start()


def mark(step: str) -> None:
    current().mark(step)


def begin(step: str) -> int:
    """Mark ``step`` and return where the steps after it begin (``Clock.steps(first=…)``)."""
    clock = current()
    clock.mark(step)
    return len(clock.marks)
