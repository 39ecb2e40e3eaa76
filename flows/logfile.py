"""Where Prefect's own log lines go when a command runs without ``--verbose``: a file of the
command's, not the terminal, whose report and one-line errors are ours.

Prefect sends its records (a task run that failed, with its traceback; a flow run that
finished in state Failed) to the handler its logging config calls ``console``. ``route()``
makes that handler this module's ``ToFile`` through Prefect's documented environment
override (``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS``) before Prefect is imported, so the
temporary Prefect server and task-runner processes, which inherit the environment, write to
the same file. The file is made only when something is written; the CLI names it in its
error line (``logged()``) and removes it after a command that succeeded (``discard()``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

ENV = "UNLEARNFLOW_LOG_FILE"


def route() -> Path:
    """Send Prefect's console records of this process and its children to a new file."""
    os.environ[ENV] = str(_new_path())
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"] = f"{__name__}.ToFile"
    return Path(os.environ[ENV])


def _new_path() -> Path:
    return Path(tempfile.gettempdir()) / f"unlearnflow-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def logged() -> Path | None:
    """This command's log file, if anything was written to it."""
    path = os.environ.get(ENV)
    return Path(path) if path and Path(path).is_file() and Path(path).stat().st_size else None


def discard() -> None:
    path = logged()
    if path is not None:
        path.unlink(missing_ok=True)


def append(text: str) -> Path:
    """Add ``text`` (a traceback) to this command's log file; returns the file."""
    path = Path(os.environ.setdefault(ENV, str(_new_path())))
    with open(path, "a") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


class ToFile(logging.Handler):
    """A logging handler that appends to the command's log file (made on the first record).
    Accepts, and ignores, the console handler's options in Prefect's config (stream, styles)."""

    def __init__(self, *_, **__):
        super().__init__()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append(self.format(record))
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)
