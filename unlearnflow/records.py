"""Records with identities: the unit that erasure requests name.

A ``RecordSet`` holds images as uint8 ``(N, C, H, W)`` (in memory, or as ``arrays.Rows``
read on demand from files, so a split of any size costs only its ids in memory),
integer labels and, per
record, a ``record_id`` derived from its content and a ``subject_id`` (the person
the record belongs to). Splits, shards and slices are all computed from these
identities, never from positions, so they do not move when other records come
or go.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearnflow.arrays import NpyFile, Rows, chunks_of, write_npy
from unlearnflow.config import DataConfig
from unlearnflow.hashing import sha256_hex, stable_bucket, unit_interval

SPLITS = ("train", "test", "holdout")


@dataclass(frozen=True)
class RecordSet:
    images: np.ndarray | Rows  # (N, C, H, W) uint8; Rows are read only where indexed
    labels: np.ndarray  # (N,) int64
    record_ids: tuple[str, ...]
    subject_ids: tuple[str, ...]
    sources: tuple[str, ...]  # where the record came from (file name, or dataset:index)
    classes: tuple[str, ...]  # class index -> class name
    personal_subjects: bool = False  # True when subject_ids name real people (see pseudonyms.py)

    def __post_init__(self):
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) != n:
            raise ValueError(f"images must be uint8 (N, C, H, W) with N={n}; got {self.images.dtype} {self.images.shape}")
        if not (len(self.record_ids) == len(self.subject_ids) == len(self.sources) == n):
            raise ValueError("record_ids, subject_ids and sources must have one entry per record")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C, H, W)

    def take(self, index) -> "RecordSet":
        index = np.asarray(index, dtype=np.int64)
        return RecordSet(
            images=self.images.take(index) if isinstance(self.images, Rows) else self.images[index],
            labels=self.labels[index],
            record_ids=tuple(self.record_ids[i] for i in index),
            subject_ids=tuple(self.subject_ids[i] for i in index),
            sources=tuple(self.sources[i] for i in index),
            classes=self.classes,
            personal_subjects=self.personal_subjects,
        )

    def with_subjects(self, subject_ids) -> "RecordSet":
        return dataclasses.replace(self, subject_ids=tuple(subject_ids))

    @staticmethod
    def concat(sets: list["RecordSet"]) -> "RecordSet":
        """One record set from several with the same classes, in order."""
        if len({s.classes for s in sets}) != 1:
            raise ValueError("record sets with different classes cannot be concatenated")
        return RecordSet(
            images=(Rows.concat([s.images for s in sets]) if any(isinstance(s.images, Rows) for s in sets)
                    else np.concatenate([s.images for s in sets])),
            labels=np.concatenate([s.labels for s in sets]),
            record_ids=sum((s.record_ids for s in sets), ()),
            subject_ids=sum((s.subject_ids for s in sets), ()),
            sources=sum((s.sources for s in sets), ()),
            classes=sets[0].classes,
            personal_subjects=any(s.personal_subjects for s in sets),
        )


def record_id_for(image: np.ndarray, label: int) -> str:
    """Content-derived identity: the same pixels with the same label get the same id."""
    header = f"{label}:{'x'.join(map(str, image.shape))}:".encode()
    return sha256_hex(header + np.ascontiguousarray(image, dtype=np.uint8).tobytes())[:16]


def assign_record_ids(images: np.ndarray, labels: np.ndarray, sources) -> list[str]:
    """Record ids from content; an exact duplicate is told apart by its source name."""
    ids, seen = [], set()
    pixels = (image for block in chunks_of(images) for image in block)  # Rows: read block by block
    for image, label, source in zip(pixels, labels, sources):
        rid = record_id_for(image, int(label))
        if rid in seen:
            rid = sha256_hex(f"{rid}:{source}".encode())[:16]
        seen.add(rid)
        ids.append(rid)
    return ids


def synthetic_subjects(record_ids, records_per_subject: int) -> list[str]:
    """Subjects for packaged datasets, which have no owners.

    Rule: there are ceil(N / records_per_subject) subjects ``s0000``, ``s0001``, ...;
    a record belongs to subject ``sha256(record_id) mod n_subjects``. Each subject
    therefore owns about ``records_per_subject`` records of mixed classes, and a
    record's subject never depends on which other records exist.
    """
    n_subjects = max(1, -(-len(record_ids) // records_per_subject))
    width = len(str(n_subjects - 1))
    return [f"s{stable_bucket(n_subjects, 'subject', rid):0{width}d}" for rid in record_ids]


def packaged_records(name: str, images: np.ndarray, labels: np.ndarray, classes, records_per_subject: int) -> RecordSet:
    """A RecordSet for a packaged dataset: sources ``name:index``, content ids, synthetic subjects."""
    sources = [f"{name}:{i}" for i in range(len(labels))]
    ids = assign_record_ids(images, labels, sources)
    return RecordSet(
        images=images,
        labels=labels.astype(np.int64),
        record_ids=tuple(ids),
        subject_ids=tuple(synthetic_subjects(ids, records_per_subject)),
        sources=tuple(sources),
        classes=tuple(str(c) for c in classes),
    )


def split_of(subject_id: str, cfg: DataConfig) -> str:
    """train / test / holdout, decided per subject so a person's records stay together."""
    u = unit_interval("split", cfg.split_seed, subject_id)
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.holdout_fraction:
        return "holdout"
    return "train"


def stable_sample(records: RecordSet, n: int, salt: str = "audit") -> RecordSet:
    """At most ``n`` records (all when ``n`` is 0): those whose ids hash lowest, in their
    order. Removing a record changes such a sample by at most that record and one other,
    so consecutive data versions are audited on nearly the same records."""
    if n <= 0 or len(records) <= n:
        return records
    keys = np.array([unit_interval(salt, rid) for rid in records.record_ids])
    return records.take(np.sort(np.argsort(keys, kind="stable")[:n]))


PARTS = 16  # each split is stored in this many files by subject hash: an erasure rewrites one per split


def part_of(subject_id: str) -> int:
    return stable_bucket(PARTS, "part", subject_id)


def split_records(records: RecordSet, cfg: DataConfig) -> dict[str, RecordSet]:
    splits = np.array([split_of(s, cfg) for s in records.subject_ids])
    return {name: records.take(np.flatnonzero(splits == name)) for name in SPLITS}


# ---- storage: images as .npy (deterministic bytes, unlike .npz; streamed), records as CSV ----

CSV_FIELDS = ("record_id", "subject_id", "label", "source")


def table_text(records: RecordSet) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("#classes", *records.classes))
    w.writerow(CSV_FIELDS)
    for rid, sid, label, src in zip(records.record_ids, records.subject_ids, records.labels, records.sources):
        w.writerow((rid, sid, int(label), src))
    return out.getvalue()


def save_records(records: RecordSet, images_path: Path, table_path: Path, force: bool = False) -> bool:
    """Write pixels and table unless they already hold these records (``write_unless_same``)."""
    return write_unless_same(table_text(records), Path(table_path), records.images, Path(images_path), force)


def write_unless_same(text: str, text_path: Path, images, images_path: Path, force: bool = False) -> bool:
    """Write ``images`` (pixels) and ``text`` (what names them: a table or manifest of record
    ids) unless both files already hold them: same text, same pixel shape (a record id names
    its pixels). An unchanged file keeps its mtime, so DVC need not hash it again. The text
    goes last, so a write cut short never leaves a text that vouches for other pixels.
    ``force``: write even so (the pixels of some record changed under the same id). Returns
    whether anything was written."""
    try:
        if not force and text_path.read_text() == text and NpyFile(images_path).shape == tuple(images.shape):
            return False
    except (OSError, ValueError):
        pass
    write_npy(images_path, images.shape, chunks_of(images))
    text_path.write_text(text)
    return True


def save_parts(records: RecordSet, paths, edited: set[str] = frozenset()) -> int:
    """Write ``records`` as ``PARTS`` parts by subject hash; ``paths(p)`` gives part p's
    (pixels, table). A part holding a record of ``edited`` (pixels changed by a feature
    request) is always written. Returns how many parts were (re)written."""
    part = np.array([part_of(s) for s in records.subject_ids], dtype=np.int64)
    written = 0
    for p in range(PARTS):
        members = records.take(np.flatnonzero(part == p))
        written += save_records(members, *paths(p), force=bool(edited) and not edited.isdisjoint(members.record_ids))
    return written


def load_parts(paths) -> RecordSet:
    """The records of all ``PARTS`` parts, part by part (pixels stay on disk)."""
    return RecordSet.concat([load_records(*paths(p)) for p in range(PARTS)])


def load_records(images_path: Path, table_path: Path) -> RecordSet:
    """The records of a saved split; their pixels stay on disk until indexed."""
    images = Rows.of(NpyFile(images_path))
    with open(table_path, newline="") as f:
        rows = list(csv.reader(f))
    classes = tuple(rows[0][1:])
    body = rows[2:]
    return RecordSet(
        images=images,
        labels=np.array([int(r[2]) for r in body], dtype=np.int64),
        record_ids=tuple(r[0] for r in body),
        subject_ids=tuple(r[1] for r in body),
        sources=tuple(r[3] for r in body),
        classes=classes,
    )
