"""Fault injection for crash-safety tests and benchmarks.

``UNLEARNFLOW_CRASH_AT=<step>`` (a step name of an erasure or fast-path journal, e.g.
``certified``) makes the process kill itself with SIGKILL right after that step is
recorded: no ``finally`` block, no clean-up, exactly what a kill -9 or a power cut
leaves behind. ``UNLEARNFLOW_FAIL_AT=<point>`` makes the task at that point raise an
``InjectedFault`` instead: an error inside a flow, as a user would meet one.
``UNLEARNFLOW_PAUSE_AT=<step>:<seconds>`` makes an erasure wait that long after the step is
recorded: a run that is still working when a test files another request. Unset (always,
outside tests), all three do nothing.
"""

from __future__ import annotations

import os
import signal
import time

from unlearnflow.errors import UnlearnflowError


class InjectedFault(UnlearnflowError):
    """Raised where ``UNLEARNFLOW_FAIL_AT`` says (tests only)."""


def crash_point(step: str) -> None:
    if os.environ.get("UNLEARNFLOW_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(step: str) -> None:
    where, _, seconds = os.environ.get("UNLEARNFLOW_PAUSE_AT", "").partition(":")
    if where == step:
        time.sleep(float(seconds or 0))


def fail_point(where: str) -> None:
    if os.environ.get("UNLEARNFLOW_FAIL_AT") == where:
        raise InjectedFault(f"injected fault at {where} (UNLEARNFLOW_FAIL_AT); the next command that writes "
                            f"finishes the interrupted erasure")
