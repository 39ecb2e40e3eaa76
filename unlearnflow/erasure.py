"""Erasure and rectification on the data side: resolve requests to records, apply
them to a record set, refuse to rebuild erased data, and measure the erased records.

Training-side exactness needs no special code: a constituent's slice checkpoints
are keyed by their records (``training.slice_keys``), so after records leave a
shard, ``train_constituent`` resumes from the newest checkpoint whose slices hold
none of them and retrains the rest; unaffected shards find every key unchanged
and train nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path, PurePosixPath

import numpy as np

from unlearnflow.datasets import load_dataset
from unlearnflow.config import DataConfig
from unlearnflow.errors import UnlearnflowError
from unlearnflow.features import FeatureEdit, edited_images
from unlearnflow.ledger import Request
from unlearnflow.pseudonyms import pseudonym, subject_key
from unlearnflow.records import RecordSet


class ErasedDataError(UnlearnflowError):
    """Rebuilding this data version would bring back records erased under a request."""


def subjects_are_personal(cfg: DataConfig) -> bool:
    """Only an image folder with a subjects CSV names real people (see pseudonyms.py)."""
    return cfg.dataset_name == "imagefolder" and cfg.subjects_csv is not None


def needs_secret_key(cfg: DataConfig) -> bool:
    """Whether the data's pseudonyms need the workspace's secret key: an image folder's file
    names (and, with a subjects CSV, its people) are personal data. Packaged datasets name
    nobody: their pseudonyms use the public ``SYNTHETIC_KEY``, so they reproduce anywhere."""
    return cfg.dataset_name == "imagefolder"


def make_request(kind: str, cfg: DataConfig, secret_key: bytes, subjects=(), records=(), files=(),
                 label: int | None = None, feature: FeatureEdit | None = None, all_records: bool = False) -> Request:
    """A request from raw identifiers; subjects and file names become pseudonyms here."""
    skey = subject_key(subjects_are_personal(cfg), secret_key)
    return Request(kind, tuple(pseudonym(skey, s) for s in subjects), tuple(records),
                   tuple(pseudonym(secret_key, f) for f in files), label, feature, all_records)


def load_pseudonymized(cfg: DataConfig, secret_key: bytes, cache_dir=None) -> RecordSet:
    """The dataset with every subject replaced by its pseudonym (raw ids go no further).
    ``cache_dir``: the workspace's ingest cache (``Layout.ingest_cache``), if any."""
    records = load_dataset(cfg, cache_dir)
    key = subject_key(records.personal_subjects, secret_key)
    of = {s: pseudonym(key, s) for s in set(records.subject_ids)}  # once per subject, not per record
    return records.with_subjects(of[s] for s in records.subject_ids)


def rekeying(cfg: DataConfig, old_key: bytes, new_key: bytes, cache_dir=None) -> dict[str, str]:
    """What a subject-key rotation changes: {pseudonym under ``old_key``: pseudonym under
    ``new_key``} for every subject of the source whose pseudonym is keyed (personal subjects)
    and every file name (path and base name), from the raw identities the source holds."""
    records = load_dataset(cfg, cache_dir)
    names = {n for source in set(records.sources) for n in (source, PurePosixPath(source).name)}
    if records.personal_subjects:
        names |= set(records.subject_ids)
    return {pseudonym(old_key, n): pseudonym(new_key, n) for n in names}


def file_pseudonyms(source: str, secret_key: bytes) -> set[str]:
    """A source matches a --file request by its base name or its path under the image folder."""
    return {pseudonym(secret_key, source), pseudonym(secret_key, PurePosixPath(source).name)}


def resolve(request: Request, records: RecordSet, secret_key: bytes) -> tuple[str, ...]:
    """Record ids that a request names and that exist in ``records`` (sorted)."""
    if request.all_records:
        return tuple(sorted(records.record_ids))
    wanted_subjects, wanted_records, wanted_files = set(request.subjects), set(request.records), set(request.files)
    out = set()
    for rid, subject, source in zip(records.record_ids, records.subject_ids, records.sources):
        if rid in wanted_records or subject in wanted_subjects:
            out.add(rid)
        elif wanted_files and file_pseudonyms(source, secret_key) & wanted_files:
            out.add(rid)
    return tuple(sorted(out))


def apply_requests(records: RecordSet, erased: set[str], rectified: dict[str, int],
                   features: dict[str, list[FeatureEdit]] | None = None) -> RecordSet:
    """Drop erased records, correct rectified labels and fill rectified regions (in filing
    order); ids stay as they were."""
    keep = np.array([rid not in erased for rid in records.record_ids], dtype=bool)
    out = records.take(np.flatnonzero(keep))
    if features:
        out = dataclasses.replace(out, images=edited_images(out.images, out.record_ids, features))
    if rectified:
        labels = out.labels.copy()
        for i, rid in enumerate(out.record_ids):
            if rid in rectified:
                labels[i] = rectified[rid]
        out = RecordSet(out.images, labels, out.record_ids, out.subject_ids, out.sources, out.classes,
                        out.personal_subjects)
    return out


def mislabel(records: RecordSet, index, rng: np.random.Generator) -> RecordSet:
    """The same records with the labels at ``index`` changed to another class at random: the
    wrong labels a rectification request corrects (benchmarks and tests plant them)."""
    k = len(records.classes)
    return apply_requests(records, set(), {records.record_ids[i]: int((records.labels[i] + rng.integers(1, k)) % k)
                                           for i in index})


def check_tombstones(records: RecordSet, tombstones: dict[str, str], known_requests=None) -> None:
    """Fail if this data version predates an erasure or holds a record erased under a request.

    ``tombstones`` (kept outside git) outlive any checkout; a ledger from before an
    erasure lacks its request (``known_requests``), so rebuilding an old version fails
    here even when the erased source files are already gone.
    """
    if known_requests is not None:
        missing = sorted(set(tombstones.values()) - set(known_requests))
        if missing:
            raise ErasedDataError(
                f"this data version predates erasure request(s) {', '.join(missing)}: the data it was built from "
                f"was erased under those requests and is never restored; check out the current version instead"
            )
    hits = [(rid, tombstones[rid]) for rid in records.record_ids if rid in tombstones]
    if hits:
        requests = sorted({req for _, req in hits})
        raise ErasedDataError(
            f"this data version cannot be rebuilt: {len(hits)} of its records were erased under request(s) "
            f"{', '.join(requests)} (e.g. record {hits[0][0]}); erased data is never restored"
        )


def erased_record_metrics(probs_erased: np.ndarray, labels_erased, probs_holdout: np.ndarray, labels_holdout) -> dict:
    """Mean loss and true-class confidence of the erased records beside never-seen holdout records.

    After an exact erasure the erased records should look like holdout data.
    """
    def stats(p, y):
        if len(y) == 0:
            return float("nan"), float("nan")
        conf = np.asarray(p)[np.arange(len(y)), np.asarray(y)]
        return float(np.mean(-np.log(np.clip(conf, 1e-12, 1.0)))), float(np.mean(conf))

    loss_e, conf_e = stats(probs_erased, labels_erased)
    loss_h, conf_h = stats(probs_holdout, labels_holdout)
    return {"erased_records": len(labels_erased), "erased_mean_loss": loss_e, "erased_mean_confidence": conf_e,
            "holdout_mean_loss": loss_h, "holdout_mean_confidence": conf_h}


def read_tombstones(path) -> dict[str, str]:
    """record_id -> request_id of every record ever erased in this workspace."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            ev = json.loads(line)
            out[ev["record_id"]] = ev["request_id"]
    return out


def add_tombstones(path, erased: dict[str, str]) -> None:
    """Append (durably) record_id -> request_id pairs; kept outside git so that no
    checkout of an older version can bring the records back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_tombstones(path)
    with open(path, "a") as f:
        for rid, req in sorted(erased.items()):
            if rid not in known:
                f.write(json.dumps({"record_id": rid, "request_id": req}, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
