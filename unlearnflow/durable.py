"""Writes that survive a crash: whole files replaced atomically, a journal of steps,
and one writer per workspace.

    atomic_write(path, data)   temp file + fsync + rename + fsync of the directory
    Journal(path)              what an interrupted multi-step operation had done
    WorkspaceLock(path, ...)   an exclusive lock held by one process at a time
    FileLock(path)             a plain blocking flock around one short read-modify-write

The lock is an ``flock`` on a file: the kernel drops it when its process dies (kill -9
included), so a lock left by a dead process never needs breaking by hand; the file
names the holder (pid, host, command, start) so a waiting command can say whom it
waits for. It is re-entrant within one process (a command that recovers an interrupted
erasure runs the erase flow while holding it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from unlearnflow.errors import UnlearnflowError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader sees the old or the new bytes, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class FileLock:
    """An exclusive ``flock`` on ``path`` for the length of a ``with`` block (blocking; the
    kernel drops it if the process dies). ``mode`` is the file's permissions when created."""

    def __init__(self, path: Path, mode: int = 0o644):
        self.path, self.mode = path, mode

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, self.mode)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Journal:
    """One JSON document describing an operation in progress; absent when none is.

    ``begin`` writes it before the first side effect, ``update`` after each step (so it
    always names the last step that completed), ``finish`` removes it after the last."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError:  # cannot happen with atomic_write; say so if it does
            raise UnlearnflowError(f"{self.path} is damaged; it records an interrupted operation. Move it away and "
                                   f"run `unlearnflow erase` to start the batch again") from None

    def begin(self, state: dict) -> dict:
        state = {**state, "steps": []}
        atomic_write(self.path, json.dumps(state, indent=1, sort_keys=True).encode())
        return state

    def update(self, state: dict, step: str | None = None, **values) -> dict:
        state = {**state, **values, "steps": state["steps"] + ([step] if step and step not in state["steps"] else [])}
        atomic_write(self.path, json.dumps(state, indent=1, sort_keys=True).encode())
        return state

    def finish(self) -> None:
        try:
            self.path.unlink()
            fsync_dir(self.path.parent)
        except FileNotFoundError:
            pass


class WorkspaceBusy(UnlearnflowError):
    """Another process is writing to this workspace and the caller chose not to wait."""


_held: dict[str, int] = {}
_held_fds: dict[str, int] = {}
_held_guard = threading.Lock()


class WorkspaceLock:
    """Exclusive lock on ``path`` for ``command``. ``wait=False`` raises WorkspaceBusy when
    another process holds it; otherwise ``notify(message)`` is called once and the lock is
    awaited (``timeout`` seconds at most, None = forever)."""

    def __init__(self, path: str | Path, command: str, wait: bool = True, notify=None, timeout: float | None = None):
        self.path = Path(path)
        self.command, self.wait, self.notify, self.timeout = command, wait, notify, timeout

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def _await_holder_note(self, seconds: float = 1.0) -> None:
        """The holder writes who it is just after it takes the lock: give it a moment, so that
        the message names it instead of "another process"."""
        deadline = time.monotonic() + seconds
        while not self.holder() and time.monotonic() < deadline:
            time.sleep(0.05)

    def describe(self) -> str:
        h = self.holder()
        if not h:
            return "another process"
        return f"`{h.get('command', '?')}` (pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')})"

    def __enter__(self):
        key = str(self.path.resolve())
        with _held_guard:
            if key in _held:
                _held[key] += 1
                return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._await_holder_note()
            if not self.wait:
                os.close(fd)
                raise WorkspaceBusy(f"the workspace is busy: {self.describe()} is writing to it; "
                                    f"run again when it has finished (or without --no-wait to wait for it)") from None
            if self.notify:
                self.notify(f"waiting for {self.describe()} to finish writing to this workspace …")
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        os.close(fd)
                        raise WorkspaceBusy(f"gave up after {self.timeout:.0f}s waiting for {self.describe()}") from None
                    time.sleep(0.2)
        owner = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        with _held_guard:
            _held[key] = 1
            _held_fds[key] = fd
        return self

    def __exit__(self, *exc):
        key = str(self.path.resolve())
        with _held_guard:
            _held[key] -= 1
            if _held[key]:
                return
            del _held[key]
            fd = _held_fds.pop(key)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
