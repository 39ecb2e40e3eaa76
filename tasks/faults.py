"""Fault injection for crash-safety tests and benchmarks.

``UNLEARNFLOW_CRASH_AT=<step>`` (a step name of an erasure or fast-path journal, e.g.
``certified``) makes the process kill itself with SIGKILL right after that step is
recorded: no ``finally`` block, no clean-up, exactly what a kill -9 or a power cut
leaves behind. Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os
import signal


def crash_point(step: str) -> None:
    if os.environ.get("UNLEARNFLOW_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
