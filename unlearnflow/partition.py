"""SISA partition: each training record goes to one (shard, slice), stably.

A record's place is a hash of its partition key (its subject by default, so a
person's records share one shard and one slice and erasing a person retrains one
shard from one slice on), the partition seed and S or R. It depends on nothing
else, so adding or removing other records never moves it. Hashing spreads every
class evenly over shards in expectation; ``ShardManifest.class_counts`` shows the
realised balance.

A ``ShardManifest`` lists a shard's records slice by slice; it and the pixels in
the same order are the only inputs of that shard's constituent.
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

    def __len__(self) -> int:
        return len(self.record_ids)

    def slice_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each slice in record order (slices are contiguous)."""
        counts = np.bincount(np.asarray(self.slice_of, dtype=np.int64), minlength=self.num_slices)
        ends = np.cumsum(counts)
        return [(int(e - c), int(e)) for c, e in zip(counts, ends)]

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()

    def to_json(self) -> dict:
        return {
            "format": "unlearnflow.shard_manifest/1",
            "shard": self.shard,
            "num_slices": self.num_slices,
            "classes": list(self.classes),
            "records": [
                {"record_id": r, "subject_id": s, "label": y, "slice": k}
                for r, s, y, k in zip(self.record_ids, self.subject_ids, self.labels, self.slice_of)
            ],
        }

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
        )


def partition(records: RecordSet, cfg: PartitionConfig) -> list[tuple[ShardManifest, np.ndarray | Rows]]:
    """Split training records into S shard manifests, each with its images in manifest order."""
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
        )
        out.append((manifest, records.take(members).images))  # Rows stay unread until written
    return out


def write_shard(manifest: ShardManifest, images, manifest_path: Path, images_path: Path) -> bool:
    """Write the shard's files unless they already hold this manifest (record ids name
    their pixels); returns whether anything was written."""
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n"
    return write_unless_same(text, Path(manifest_path), images, Path(images_path))


def read_shard(manifest_path: Path, images_path: Path) -> tuple[ShardManifest, Rows]:
    """The manifest and the shard's pixels, read from disk only where indexed."""
    manifest = ShardManifest.from_json(json.loads(Path(manifest_path).read_text()))
    images = Rows.of(NpyFile(images_path))
    if len(images) != len(manifest):
        raise ValueError(f"{images_path} holds {len(images)} images but {manifest_path} lists {len(manifest)} records")
    return manifest, images
