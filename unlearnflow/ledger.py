"""The request ledger: an append-only, durable log of erasure and rectification requests.

One JSON object per line in ``ledger/requests.jsonl`` (tracked by git and a DVC
dependency of ``prepare``, so the data version and the requests move together), each
with ``sum``, a checksum of the rest of the line:

    {"event": "filed",    "request": {...}}                     request acknowledged
    {"event": "resolved", "request_id": ..., "records": [...]}  matched to records
    {"event": "unmatched","request_id": ...}                    matched nothing (reported, done)
    {"event": "rekeyed",  "request_id": ..., "request": {...}}  the same request under a rotated subject key

A request is done once an erasure certificate lists it (``certificates.py``); the
ledger itself only changes when requests are filed or resolved, which is exactly
when the data version changes (``prepare`` depends on this file).

A request's ID is the hash of what it asks for, so filing it twice appends
nothing. ``file`` returns only after the complete line is on disk (one write + fsync),
under an exclusive file lock, so an acknowledged request survives a crash right after;
a line torn by a crash before that is set aside by the next writer, never appended onto,
while a damaged line that later state depends on is restored from git or refused (``Ledger``).
Subjects and file names are stored as pseudonyms (``pseudonyms.py``), never raw.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unlearnflow.durable import FileLock, atomic_write, fsync_dir
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.features import FeatureEdit
from unlearnflow.hashing import hash_json

KINDS = ("forget", "rectify")


@dataclass(frozen=True)
class Request:
    kind: str  # forget | rectify
    subjects: tuple[str, ...] = ()  # subject pseudonyms
    records: tuple[str, ...] = ()  # record ids
    files: tuple[str, ...] = ()  # file-name pseudonyms
    label: int | None = None  # rectify: the corrected class index
    feature: FeatureEdit | None = None  # rectify: a region of pixels to fill (features.py)
    all_records: bool = False  # rectify --all-records: every record of the data

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"request kind {self.kind!r} is invalid; valid choices: {', '.join(KINDS)}")
        if not (self.subjects or self.records or self.files or self.all_records):
            raise ConfigError("a request must name at least one subject, record or file")
        if self.kind == "rectify" and self.feature is None and (self.label is None or self.subjects or self.files
                                                                 or self.all_records):
            raise ConfigError("a label correction names records (--record) and one corrected label (--label)")
        if self.kind == "forget" and (self.label is not None or self.feature is not None or self.all_records):
            raise ConfigError("a forget request takes no label, region or --all-records")

    @property
    def request_id(self) -> str:
        return "r" + hash_json(self.to_json())[:16]

    def to_json(self) -> dict:
        out = {"kind": self.kind, "subjects": sorted(set(self.subjects)), "records": sorted(set(self.records)),
               "files": sorted(set(self.files)), "label": self.label}
        if self.feature is not None:  # only when set: the ids of earlier requests stay what they were
            out["feature"] = self.feature.to_json()
        if self.all_records:
            out["all_records"] = True
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Request":
        feature = FeatureEdit.from_json(obj["feature"]) if obj.get("feature") else None
        return cls(obj["kind"], tuple(obj["subjects"]), tuple(obj["records"]), tuple(obj["files"]), obj["label"],
                   feature, bool(obj.get("all_records", False)))


@dataclass
class RequestState:
    request: Request
    filed_at: str
    status: str = "pending"  # pending | resolved | unmatched | rekeyed (filed again under a new subject key)
    records: tuple[str, ...] = ()


@dataclass
class LedgerState:
    requests: dict[str, RequestState] = field(default_factory=dict)
    torn: bytes = b""  # a torn last line (never acknowledged), skipped; the next writer sets it aside

    def pending(self, done: set[str]) -> list[RequestState]:
        """Requests no certificate lists yet (``done``) and not found to match nothing:
        the next erasure's batch."""
        return [r for rid, r in self.requests.items() if rid not in done and r.status in ("pending", "resolved")]

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
            if r.request.kind == "rectify" and r.status == "resolved" and r.request.label is not None:
                out.update({rid: r.request.label for rid in r.records})
        return out

    def rectified_features(self) -> dict[str, list[FeatureEdit]]:
        """The feature edits of resolved rectify requests, per record, in filing order."""
        out: dict[str, list[FeatureEdit]] = {}
        for r in self.requests.values():
            if r.request.kind == "rectify" and r.status == "resolved" and r.request.feature is not None:
                for rid in r.records:
                    out.setdefault(rid, []).append(r.request.feature)
        return out


class LedgerError(UnlearnflowError):
    """The ledger holds a line that is not a complete, intact event (other than a torn tail)."""


class LedgerDamaged(LedgerError):
    """A damaged line that later durable state depends on, which git's committed copy cannot restore."""


class Ledger:
    """``ledger/requests.jsonl``: each line one event with a checksum (``sum``).

    A crash during an append can leave a torn last line (no newline, or bytes that are not
    an intact event). Readers skip it and say so (``LedgerState.torn``); the next writer sets
    it aside in ``aside_dir`` (never appends onto it) before appending.

    A torn write was never acknowledged; a line that later durable state depends on was, and
    damage to it is damage, not a tear. Two callables let the ledger tell them apart without
    knowing git or certificates: ``committed()`` returns the ledger as git last committed it
    (None: no copy), and ``depends(state)`` says what durable state relies on events that
    ``state`` (the intact lines) lacks: a certificate that lists a request the ledger does not
    show resolved, a journal step recorded as done (None: nothing). The writer repairs a
    damaged line from the committed copy when that copy holds it intact, and otherwise
    refuses (``LedgerDamaged``): an acknowledged event is never set aside."""

    def __init__(self, path: str | Path, aside_dir: str | Path | None = None,
                 committed: Callable[[], bytes | None] | None = None,
                 depends: Callable[[LedgerState], str | None] | None = None):
        self.path = Path(path)
        self.aside_dir = Path(aside_dir) if aside_dir else self.path.parent
        self.committed = committed or (lambda: None)
        self.depends = depends or (lambda state: None)
        self.set_aside: Path | None = None  # where the last write set a torn tail aside, if it did
        self.restored: tuple[int, ...] = ()  # line numbers the last write restored from the committed copy

    def ensure(self) -> None:
        """Create the (empty) ledger file and make its directory entry durable."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            fsync_dir(self.path.parent)

    def read(self) -> LedgerState:
        if not self.path.exists():
            return LedgerState()
        events, torn = self._parse(self.path.read_bytes())
        return _state(events, torn)

    def disagreement(self) -> str | None:
        """An event durable state relies on but the ledger lacks (a damaged line, say), or None."""
        missing = self.depends(self.read())
        return f"the ledger and the lineage disagree: {missing}" if missing else None

    def problems(self) -> list[str]:
        """What a reader should say about the ledger (``status``, ``verify``): a disagreement with
        the lineage, else a torn last line."""
        missing = self.disagreement()
        if missing:
            return [missing]
        return ["the ledger ends in a torn line (a command stopped while filing); the next filing sets it aside"] \
            if self.read().torn else []

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
                                  f"restore the file from git (`git checkout -- {self._rel}`; the next writing "
                                  f"command does it by itself when git's copy holds that line intact) or repair it")
            events.append(ev)
        if tail.strip():
            ev = _intact(tail)
            if ev is not None:  # the whole event was written, only its newline is missing
                events.append(ev)
                return events, b""
            return events, tail
        return events, b""

    @property
    def _rel(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    def repair(self) -> None:
        """``_repair`` under the ledger's lock (what every writing command does first)."""
        with self._locked():
            self._repair()

    def _repair(self) -> None:
        """Before appending: leave only intact lines. A damaged line git's committed
        copy holds intact is restored from it (``restored``); a torn last line nothing depends on
        is set aside (``set_aside``); any other damage raises ``LedgerDamaged``, changing nothing.
        A complete last event that only lacks its newline gets it."""
        self.set_aside, self.restored = None, ()
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        numbered = [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
        lines = [line for _, line in numbered]
        bad = [i for i, line in enumerate(lines) if _intact(line) is None]
        if not bad:
            if data and not data.endswith(b"\n"):
                atomic_write(self.path, data + b"\n")
            return
        fixed, unresolved = _restore(lines, bad, self.committed())
        if unresolved == [len(lines) - 1] and len(fixed) == len(lines):  # the last line, beyond git's copy
            tail = lines[-1]
            missing = self.depends(_state([_intact(line) for line in fixed[:-1]], b""))
            if missing:
                raise self._damaged(numbered[-1][0], tail, missing)
            self.set_aside = self._put_aside(tail + (b"\n" if data.endswith(b"\n") else b""))
            fixed, unresolved = fixed[:-1], []
        if unresolved:
            i = unresolved[0]
            raise self._damaged(numbered[i][0], lines[i], "it is not the last line, so no write was cut short there")
        atomic_write(self.path, b"".join(line + b"\n" for line in fixed))
        self.restored = tuple(i + 1 for i in range(len(fixed)) if i >= len(lines) or fixed[i] != lines[i])

    def _damaged(self, n: int, line: bytes, why: str) -> LedgerDamaged:
        found = re.search(rb'"request_id": "(r[0-9a-f]+)"', line)
        request = f" (request {found.group(1).decode()})" if found else ""
        return LedgerDamaged(
            f"{self._rel} line {n}{request} is damaged, and {why}: it was acknowledged, so it is not set aside as a "
            f"torn write, and git's committed copy does not hold it intact. Nothing was filed or changed. Restore it: "
            f"`git checkout -- {self._rel}` brings back the committed copy (without lines filed since the last "
            f"commit), or repair that line from a backup")

    def _put_aside(self, torn: bytes) -> Path:
        self.aside_dir.mkdir(parents=True, exist_ok=True)
        aside = self.aside_dir / f"{self.path.name}.torn-{hash_json(torn.decode('utf-8', 'replace'))[:12]}"
        with open(aside, "wb") as f:
            f.write(torn)
            f.flush()
            os.fsync(f.fileno())
        return aside

    def file(self, request: Request, filed_at: str, check: Callable[[], None] | None = None) -> tuple[str, bool]:
        """Append a request unless it is already there; returns (request_id, newly_filed).
        Returns only once the complete line is on disk. ``check`` runs under the ledger's lock
        before anything is written (it raises to refuse the filing)."""
        rid = request.request_id
        with self._locked():
            if check is not None:
                check()
            self._repair()
            if rid in self.read().requests:
                return rid, False
            self._append({"event": "filed", "request_id": rid, "filed_at": filed_at, "request": request.to_json()})
        return rid, True

    def record(self, events: list[dict]) -> None:
        """Append resolution events (from the erase flow)."""
        with self._locked():
            self._repair()
            for ev in events:
                self._append(ev)

    def rekey(self, pseudonyms: dict[str, str], done: set[str]) -> dict[str, str]:
        """A subject-key rotation: every pending request (not in ``done``) that names subjects or
        files is filed again under the new key's pseudonyms (``pseudonyms``: old -> new; one it
        lacks stays as it is: it names no subject or file of the source) as a ``rekeyed`` event.
        Idempotent; returns {old request id: new request id} of every request re-keyed so far."""
        out = {}
        with self._locked():
            self._repair()
            for rid, r in list(self.read().requests.items()):
                if rid in done or r.status not in ("pending", "rekeyed"):
                    continue
                q = r.request
                new = dataclasses.replace(q, subjects=tuple(pseudonyms.get(s, s) for s in q.subjects),
                                          files=tuple(pseudonyms.get(f, f) for f in q.files))
                if new.request_id == rid:  # records only: nothing keyed
                    continue
                if r.status == "pending":
                    self._append({"event": "rekeyed", "request_id": rid, "request": new.to_json()})
                out[rid] = new.request_id
        return out

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
        return FileLock(self.path.with_suffix(".lock"))


def _restore(lines: list[bytes], bad: list[int], committed: bytes | None) -> tuple[list[bytes], list[int]]:
    """``lines`` with each damaged one (indices ``bad``) taken from git's committed copy where that
    copy holds it intact, plus lines the copy has beyond the end (lost since). Returns (lines,
    indices still damaged). A copy that disagrees with an intact line is not this ledger's: unused."""
    theirs = [line for line in (committed or b"").split(b"\n") if line.strip()]
    if any(i < len(theirs) and i not in bad and theirs[i] != line for i, line in enumerate(lines)):
        theirs = []
    fixed, unresolved = list(lines), []
    for i in bad:
        if i < len(theirs) and _intact(theirs[i]) is not None:
            fixed[i] = theirs[i]
        else:
            unresolved.append(i)
    return fixed + [line for line in theirs[len(lines):] if _intact(line) is not None], unresolved


def _state(events: list[dict], torn: bytes) -> LedgerState:
    state = LedgerState(torn=torn)
    for ev in events:
        _apply(state, ev)
    return state


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
    elif kind == "rekeyed":  # the subject key was rotated: the request lives on under the new pseudonyms
        r.status = "rekeyed"
        new = Request.from_json(ev["request"])
        state.requests.setdefault(new.request_id, RequestState(new, r.filed_at))
