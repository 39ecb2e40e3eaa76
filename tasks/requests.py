"""Filing a request (forget or rectify) in the workspace's ledger: what ``forget``,
``rectify`` and ``demo`` do before any flow runs. Subjects and file names are stored only
as keyed pseudonyms (``unlearnflow.erasure.make_request``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasks.workspace import Workspace
from unlearnflow.config import Params
from unlearnflow.errors import ConfigError
from unlearnflow.ledger import Ledger, Request


@dataclass(frozen=True)
class Filed:
    request: Request  # as stored: subjects and file names as pseudonyms
    request_id: str
    new: bool  # False: the same request was already on file (filing is idempotent)
    matched: int | None  # records of the current data version it names (None: not prepared yet)
    ledger: Ledger  # what filing repaired first: ``restored`` lines, a torn tail ``set_aside``


def file_request(ws: Workspace, params: Params, kind: str, subjects=(), records=(), files=(),
                 label: int | None = None, signs: bool = False) -> Filed:
    """File one request. A missing or wrong subject key (and with ``signs``, the erasure that
    follows will sign a certificate, a missing or wrong signing key) is refused first."""
    from tasks.erasure import now
    from unlearnflow.erasure import make_request

    for flag, values in (("subject", subjects), ("record", records), ("file", files)):
        for value in values:
            if not value.strip():
                raise ConfigError(f"--{flag} {value!r} is empty; name a {flag}")
    ws.refuse_during_rotation()  # (and again under the ledger's lock, below)
    key = ws.secret_key(params.data)
    if signs:
        ws.signing_key()
    request = make_request(kind, params.data, key, subjects=subjects, records=records, files=files, label=label)
    ledger = ws.ledger()
    request_id, new = ledger.file(request, now(), check=ws.refuse_during_rotation)  # under the ledger's lock
    return Filed(request, request_id, new, records_matching(ws, request, key) if new else None, ledger)


def records_matching(ws: Workspace, request, key: bytes) -> int | None:
    """How many records of the current data version a request names (None: not prepared yet)."""
    from unlearnflow.erasure import resolve
    from unlearnflow.records import SPLITS, RecordSet
    from unlearnflow.stages import load_split

    if not all(ws.layout.split_dir(s).is_dir() for s in SPLITS):
        return None
    records = RecordSet.concat([load_split(ws.layout, s) for s in SPLITS])
    return len(resolve(request, records, key))


def parse_label(ws: Workspace, params: Params, text: str) -> int:
    """A corrected label given as a class name or an index; a one-line error naming the classes."""
    classes = _classes(ws, params)
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise ConfigError(f"--label {text!r} is not a class; valid choices: {', '.join(classes)} "
                      f"(or an index 0..{len(classes) - 1})")


def _classes(ws: Workspace, params: Params) -> list[str]:
    summary = ws.layout.prepared_summary
    if summary.is_file():
        return json.loads(summary.read_text())["classes"]
    from unlearnflow.datasets import load_dataset

    return list(load_dataset(params.data).classes)
