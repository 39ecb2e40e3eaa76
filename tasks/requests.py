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
                 label: int | None = None, signs: bool = False, feature=None, all_records: bool = False) -> Filed:
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
    request = make_request(kind, params.data, key, subjects=subjects, records=records, files=files, label=label,
                           feature=feature, all_records=all_records)
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


def parse_feature(ws: Workspace, params: Params, region: str, fill: str | None):
    """A feature request's region and fill, checked against the data's images (one-line errors)."""
    from unlearnflow.features import FeatureEdit, check_fits, parse_fill, parse_region

    edit = FeatureEdit(parse_region(region), parse_fill("0" if fill is None else fill))
    check_fits(edit, tuple(_prepared(ws, params, "input_shape")))
    return edit


def _classes(ws: Workspace, params: Params) -> list[str]:
    return list(_prepared(ws, params, "classes"))


def _prepared(ws: Workspace, params: Params, field: str):
    """``classes`` or ``input_shape`` of the data: from the prepared summary, else the dataset."""
    summary = ws.layout.prepared_summary
    if summary.is_file():
        return json.loads(summary.read_text())[field]
    from unlearnflow.datasets import load_dataset

    records = load_dataset(params.data)
    return records.classes if field == "classes" else records.input_shape
