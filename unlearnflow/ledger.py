"""The request ledger: an append-only, durable log of erasure and rectification requests.

One JSON object per line in ``ledger/requests.jsonl`` (tracked by git and a DVC
dependency of ``prepare``, so the data version and the requests move together):

    {"event": "filed",    "request": {...}}                     request acknowledged
    {"event": "resolved", "request_id": ..., "records": [...]}  matched to records
    {"event": "unmatched","request_id": ...}                    matched nothing (reported, kept)

A request is done once an erasure certificate lists it (``certificates.py``); the
ledger itself only changes when requests are filed or resolved, which is exactly
when the data version changes (``prepare`` depends on this file).

A request's ID is the hash of what it asks for, so filing it twice appends
nothing. ``append`` returns only after the line is on disk (flush + fsync), under
an exclusive file lock, so an acknowledged request survives a crash right after.
Subjects and file names are stored as pseudonyms (``pseudonyms.py``), never raw.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from unlearnflow.errors import ConfigError
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

    def pending(self, done: set[str]) -> list[RequestState]:
        """Requests no certificate lists yet (``done``): the next erasure's batch."""
        return [r for rid, r in self.requests.items() if rid not in done]

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


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def ensure(self) -> None:
        """Create the (empty) ledger file and make its directory entry durable."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            _fsync_dir(self.path.parent)

    def read(self) -> LedgerState:
        state = LedgerState()
        if not self.path.exists():
            return state
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as e:
                if n == len(self.path.read_text().splitlines()):
                    break  # a torn last line from a crash mid-write was never acknowledged
                raise ValueError(f"{self.path}:{n} is not valid JSON: {e}") from e
            _apply(state, ev)
        return state

    def file(self, request: Request, filed_at: str) -> tuple[str, bool]:
        """Append a request unless it is already there; returns (request_id, newly_filed)."""
        rid = request.request_id
        with self._locked():
            if rid in self.read().requests:
                return rid, False
            self._append({"event": "filed", "request_id": rid, "filed_at": filed_at, "request": request.to_json()})
        return rid, True

    def record(self, events: list[dict]) -> None:
        """Append resolution events (from the erase flow)."""
        with self._locked():
            for ev in events:
                self._append(ev)

    def _append(self, event: dict) -> None:
        self.ensure()
        with open(self.path, "a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLock(self.path.with_suffix(".lock"))


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
