"""SISA partition: each training record goes to one (shard, slice), stably.

A record's place is a hash of its partition key (its subject by default, so a
person's records share one shard and one slice and erasing a person retrains one
shard from one slice on), the partition seed and S or R. It depends on nothing
else, so adding or removing other records never moves it. Hashing spreads every
class evenly over shards in expectation; ``ShardManifest.class_counts`` shows the
realised balance.

A ``ShardManifest`` lists a shard's records slice by slice; it and the pixels in
the same order are the only inputs of that shard's constituent.

Overlapping slices (``partition.overlap`` = o in (0, 0.5], for small datasets): stage k
then trains on one window, slice k plus the records of slice k-1 that are *shared*
forward, chosen by a hash of the key with probability o/(1-o); o = 0.5 shares all of
slice k-1, so windows of size s overlap by s/2. A record is first seen in its own slice,
which is where retraining starts when it is erased, as with disjoint slices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearnflow.arrays import NpyFile, Rows
from unlearnflow.config import PartitionConfig
from unlearnflow.errors import ConfigError
from unlearnflow.hashing import stable_bucket
from unlearnflow.records import RecordSet, write_unless_same


def shared_forward(key: str, cfg: PartitionConfig) -> bool:
    """Does this record's slice k also put it in window k+1 (``partition.overlap`` > 0)?"""
    if not cfg.overlap:
        return False
    share = cfg.overlap / (1 - cfg.overlap)  # of slice k-1, in units of a slice: window = (1 + share) slices
    return stable_bucket(10**9, "overlap", cfg.seed, key) < share * 10**9


def place(key: str, cfg: PartitionConfig) -> tuple[int, int]:
    """(shard, slice) of a record whose partition key is ``key``."""
    return (
        stable_bucket(cfg.num_shards, "shard", cfg.seed, key),
        stable_bucket(cfg.slices, "slice", cfg.seed, key),
    )


@dataclass(frozen=True)
class ShardManifest:
    shard: int
    num_slices: int
    record_ids: tuple[str, ...]  # ordered by (slice, record_id)
    labels: tuple[int, ...]
    subject_ids: tuple[str, ...]
    slice_of: tuple[int, ...]  # slice index of each record
    classes: tuple[str, ...]  # class index -> name, for the whole dataset
    overlap: float = 0.0  # partition.overlap; 0 = disjoint slices, trained cumulatively
    shared: tuple[bool, ...] = ()  # overlap > 0: is each record also in the next slice's window?
    contents: tuple[str | None, ...] = ()  # SHA-256 of each record's pixels where a feature request changed them

    def content_of(self) -> dict[str, str]:
        """{record id: its pixels' SHA-256} of the records a feature request changed."""
        return {r: c for r, c in zip(self.record_ids, self.contents) if c}

    def __len__(self) -> int:
        return len(self.record_ids)

    def stage_rows(self, k: int) -> np.ndarray:
        """Row numbers stage k trains on: slices 0..k, or with overlap its window (slice k and
        the shared records of slice k-1), in manifest order."""
        bounds = self.slice_bounds()
        if not self.overlap:
            return np.arange(bounds[k][1])
        a, b = bounds[k - 1] if k else (0, 0)
        previous = [i for i in range(a, b) if self.shared[i]]
        return np.asarray(previous + list(range(*bounds[k])), dtype=np.int64)

    def slice_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each slice in record order (slices are contiguous)."""
        counts = np.bincount(np.asarray(self.slice_of, dtype=np.int64), minlength=self.num_slices)
        ends = np.cumsum(counts)
        return [(int(e - c), int(e)) for c, e in zip(counts, ends)]

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()

    def to_json(self) -> dict:
        records = [{"record_id": r, "subject_id": s, "label": y, "slice": k}
                   for r, s, y, k in zip(self.record_ids, self.subject_ids, self.labels, self.slice_of)]
        for record, content in zip(records, self.contents):  # record ids no longer name these pixels alone
            if content:
                record["content"] = content
        if not self.overlap:  # the format of disjoint slices is unchanged (same bytes, same DVC md5s)
            return {"format": "unlearnflow.shard_manifest/1", "shard": self.shard, "num_slices": self.num_slices,
                    "classes": list(self.classes), "records": records}
        for record, shared in zip(records, self.shared):
            record["shared_forward"] = shared
        return {"format": "unlearnflow.shard_manifest/1", "shard": self.shard, "num_slices": self.num_slices,
                "overlap": self.overlap, "classes": list(self.classes), "records": records}

    @classmethod
    def from_json(cls, obj: dict) -> "ShardManifest":
        recs = obj["records"]
        return cls(
            shard=int(obj["shard"]),
            num_slices=int(obj["num_slices"]),
            record_ids=tuple(r["record_id"] for r in recs),
            labels=tuple(int(r["label"]) for r in recs),
            subject_ids=tuple(r["subject_id"] for r in recs),
            slice_of=tuple(int(r["slice"]) for r in recs),
            classes=tuple(obj["classes"]),
            overlap=float(obj.get("overlap", 0.0)),
            shared=tuple(bool(r["shared_forward"]) for r in recs) if obj.get("overlap") else (),
            contents=tuple(r.get("content") for r in recs) if any("content" in r for r in recs) else (),
        )


def partition(records: RecordSet, cfg: PartitionConfig,
              contents: dict[str, str] | None = None) -> list[tuple[ShardManifest, np.ndarray | Rows]]:
    """Split training records into S shard manifests, each with its images in manifest order.
    ``contents``: the pixel hashes of records a feature request changed (kept in the manifests)."""
    keys = records.subject_ids if cfg.key == "subject" else records.record_ids
    n_keys = len(set(keys))
    if cfg.num_shards > n_keys:
        raise ConfigError(
            f"partition.shards asks for S={cfg.num_shards} shards but the training split has only "
            f"{n_keys} {cfg.key}s ({len(records)} records); use at most {n_keys} shards"
        )
    places = [place(k, cfg) for k in keys]
    out = []
    for shard in range(cfg.num_shards):
        members = [i for i, (s, _) in enumerate(places) if s == shard]
        members.sort(key=lambda i: (places[i][1], records.record_ids[i]))
        if not members:
            raise ConfigError(
                f"shard {shard} received no records (S={cfg.num_shards} for {n_keys} {cfg.key}s); use fewer shards"
            )
        manifest = ShardManifest(
            shard=shard,
            num_slices=cfg.slices,
            record_ids=tuple(records.record_ids[i] for i in members),
            labels=tuple(int(records.labels[i]) for i in members),
            subject_ids=tuple(records.subject_ids[i] for i in members),
            slice_of=tuple(places[i][1] for i in members),
            classes=records.classes,
            overlap=cfg.overlap,
            shared=tuple(shared_forward(keys[i], cfg) for i in members) if cfg.overlap else (),
            contents=(tuple(contents.get(records.record_ids[i]) for i in members)
                      if contents and any(records.record_ids[i] in contents for i in members) else ()),
        )
        out.append((manifest, records.take(members).images))  # Rows stay unread until written
    return out


def write_shard(manifest: ShardManifest, images, manifest_path: Path, images_path: Path) -> bool:
    """Write the shard's files unless they already hold this manifest (record ids, with the
    content hashes of feature-edited records, name their pixels); returns whether anything was
    written."""
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n"
    return write_unless_same(text, Path(manifest_path), images, Path(images_path))


def read_shard(manifest_path: Path, images_path: Path) -> tuple[ShardManifest, Rows]:
    """The manifest and the shard's pixels, read from disk only where indexed."""
    manifest = ShardManifest.from_json(json.loads(Path(manifest_path).read_text()))
    images = Rows.of(NpyFile(images_path))
    if len(images) != len(manifest):
        raise ValueError(f"{images_path} holds {len(images)} images but {manifest_path} lists {len(manifest)} records")
    return manifest, images
