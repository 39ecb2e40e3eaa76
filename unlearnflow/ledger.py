"""The request ledger: an append-only, durable log of erasure and rectification requests.

One JSON object per line in ``ledger/requests.jsonl`` (tracked by git and a DVC
dependency of ``prepare``, so the data version and the requests move together), each
with ``sum``, a checksum of the rest of the line:

    {"event": "filed",    "request": {...}}                     request acknowledged
    {"event": "resolved", "request_id": ..., "records": [...]}  matched to records
    {"event": "unmatched","request_id": ...}                    matched nothing (reported, done)

A request is done once an erasure certificate lists it (``certificates.py``); the
ledger itself only changes when requests are filed or resolved, which is exactly
when the data version changes (``prepare`` depends on this file).

A request's ID is the hash of what it asks for, so filing it twice appends
nothing. ``file`` returns only after the complete line is on disk (one write + fsync),
under an exclusive file lock, so an acknowledged request survives a crash right after;
a line torn by a crash before that is set aside by the next writer, never appended onto.
Subjects and file names are stored as pseudonyms (``pseudonyms.py``), never raw.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from unlearnflow.durable import atomic_write, fsync_dir
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.hashing import hash_json

KINDS = ("forget", "rectify")


@dataclass(frozen=True)
class Request:
    kind: str  # forget | rectify
    subjects: tuple[str, ...] = ()  # subject pseudonyms
    records: tuple[str, ...] = ()  # record ids
    files: tuple[str, ...] = ()  # file-name pseudonyms
    label: int | None = None  # rectify: the corrected class index

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"request kind {self.kind!r} is invalid; valid choices: {', '.join(KINDS)}")
        if not (self.subjects or self.records or self.files):
            raise ConfigError("a request must name at least one subject, record or file")
        if self.kind == "rectify" and (self.label is None or self.subjects or self.files):
            raise ConfigError("a rectify request names records (--record) and one corrected label (--label)")
        if self.kind == "forget" and self.label is not None:
            raise ConfigError("a forget request takes no label")

    @property
    def request_id(self) -> str:
        return "r" + hash_json(self.to_json())[:16]

    def to_json(self) -> dict:
        return {"kind": self.kind, "subjects": sorted(set(self.subjects)), "records": sorted(set(self.records)),
                "files": sorted(set(self.files)), "label": self.label}

    @classmethod
    def from_json(cls, obj: dict) -> "Request":
        return cls(obj["kind"], tuple(obj["subjects"]), tuple(obj["records"]), tuple(obj["files"]), obj["label"])


@dataclass
class RequestState:
    request: Request
    filed_at: str
    status: str = "pending"  # pending | resolved | unmatched
    records: tuple[str, ...] = ()


@dataclass
class LedgerState:
    requests: dict[str, RequestState] = field(default_factory=dict)
    torn: bytes = b""  # a torn last line (never acknowledged), skipped; the next writer sets it aside

    def pending(self, done: set[str]) -> list[RequestState]:
        """Requests no certificate lists yet (``done``) and not found to match nothing:
        the next erasure's batch."""
        return [r for rid, r in self.requests.items() if rid not in done and r.status != "unmatched"]

    def unmatched(self) -> list[RequestState]:
        return [r for r in self.requests.values() if r.status == "unmatched"]

    def erased_records(self) -> set[str]:
        """Records of resolved forget requests: excluded from every data version from now on."""
        return {rid for r in self.requests.values() if r.request.kind == "forget"
                and r.status == "resolved" for rid in r.records}

    def rectified_labels(self) -> dict[str, int]:
        """Corrected labels of resolved rectify requests (in filing order; a later one wins)."""
        out = {}
        for r in self.requests.values():
            if r.request.kind == "rectify" and r.status == "resolved":
                out.update({rid: r.request.label for rid in r.records})
        return out


class LedgerError(UnlearnflowError):
    """The ledger holds a line that is not a complete, intact event (other than a torn tail)."""


class Ledger:
    """``ledger/requests.jsonl``: each line one event with a checksum (``sum``).

    A crash during an append can leave a torn last line (no newline, or bytes that are not
    an intact event). Readers skip it and say so (``LedgerState.torn``); the next writer sets
    it aside in ``aside_dir`` (never appends onto it) before appending. A damaged line
    anywhere else is an error: nothing is guessed."""

    def __init__(self, path: str | Path, aside_dir: str | Path | None = None):
        self.path = Path(path)
        self.aside_dir = Path(aside_dir) if aside_dir else self.path.parent
        self.set_aside: Path | None = None  # where the last write set a torn tail aside, if it did

    def ensure(self) -> None:
        """Create the (empty) ledger file and make its directory entry durable."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            fsync_dir(self.path.parent)

    def read(self) -> LedgerState:
        state = LedgerState()
        if not self.path.exists():
            return state
        events, state.torn = self._parse(self.path.read_bytes())
        for ev in events:
            _apply(state, ev)
        return state

    def _parse(self, data: bytes) -> tuple[list[dict], bytes]:
        """(intact events, torn tail bytes or b"")."""
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" unless the last append was cut short
        events = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            ev = _intact(line)
            if ev is None:
                if n == len(lines) and not tail:
                    # a complete-looking but damaged last line: torn too (a crash rewrote a page)
                    return events, line + b"\n"
                raise LedgerError(f"{self.path}:{n} is not an intact ledger event (damaged by hand or by the disk?); "
                                  f"restore the file from git (`git checkout -- {self.path.name}`) or repair that line")
            events.append(ev)
        if tail.strip():
            ev = _intact(tail)
            if ev is not None:  # the whole event was written, only its newline is missing
                events.append(ev)
                return events, b""
            return events, tail
        return events, b""

    def repair(self) -> Path | None:
        """Under the lock: set a torn tail aside (returns where), leaving only intact lines.
        A complete last event that only lacks its newline gets it."""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        events, torn = self._parse(data)
        if not torn and (not data or data.endswith(b"\n")):
            return None
        aside = None
        if torn:
            self.aside_dir.mkdir(parents=True, exist_ok=True)
            aside = self.aside_dir / f"{self.path.name}.torn-{hash_json(torn.decode('utf-8', 'replace'))[:12]}"
            with open(aside, "wb") as f:
                f.write(torn)
                f.flush()
                os.fsync(f.fileno())
        good = data[: len(data) - len(torn)] if torn else data
        if good and not good.endswith(b"\n"):
            good += b"\n"
        atomic_write(self.path, good)
        return aside

    def file(self, request: Request, filed_at: str) -> tuple[str, bool]:
        """Append a request unless it is already there; returns (request_id, newly_filed).
        Returns only once the complete line is on disk."""
        rid = request.request_id
        with self._locked():
            self.set_aside = self.repair()
            if rid in self.read().requests:
                return rid, False
            self._append({"event": "filed", "request_id": rid, "filed_at": filed_at, "request": request.to_json()})
        return rid, True

    def record(self, events: list[dict]) -> None:
        """Append resolution events (from the erase flow)."""
        with self._locked():
            self.set_aside = self.repair()
            for ev in events:
                self._append(ev)

    def _append(self, event: dict) -> None:
        self.ensure()
        line = json.dumps({**event, "sum": _checksum(event)}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLock(self.path.with_suffix(".lock"))


def _checksum(event: dict) -> str:
    return hash_json({k: v for k, v in event.items() if k != "sum"})[:16]


def _intact(line: bytes) -> dict | None:
    """The event on one line, or None if the line is not a complete event whose checksum holds.
    Lines written before checksums existed (no ``sum``) are accepted as they are."""
    try:
        ev = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(ev, dict) or "event" not in ev or "request_id" not in ev:
        return None
    if "sum" in ev and ev["sum"] != _checksum(ev):
        return None
    return ev


def _apply(state: LedgerState, ev: dict) -> None:
    kind, rid = ev["event"], ev["request_id"]
    if kind == "filed":
        state.requests.setdefault(rid, RequestState(Request.from_json(ev["request"]), ev["filed_at"]))
        return
    r = state.requests[rid]
    if kind == "resolved":
        r.status, r.records = "resolved", tuple(ev["records"])
    elif kind == "unmatched":
        r.status = "unmatched"


class _FileLock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
