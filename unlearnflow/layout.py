"""Where each artifact lives in a workspace. ``dvc.yaml`` uses the same paths
(``tests/test_layout.py`` checks that the two agree).

    ledger/requests.jsonl                           (git)      erasure / rectification requests
    data/prepared/<split>/part-<p>.{npy,csv}       prepare    records of split train|test|holdout in PARTS
                                                           parts by subject hash (+ summary.json)
    data/shards/shard_<k>.{json,npy}                partition  manifest + pixels per shard
    models/shards/shard_<k>.pt                      train@<k>  one constituent per shard
    models/ensemble.json                            aggregate  constituents' md5s + aggregation rule
    metrics/eval.json                               evaluate   per-shard and ensemble accuracy
    checkpoints/<key>.pt                            (not DVC)  slice checkpoints, by content key
    lineage/certificates/<n>-<erasure>.json         (git)      hash-chained erasure certificates
    lineage/audits/<erasure>.png                    (git)      each erasure's confidence histogram
    lineage/approximations/<n>-<id>.json            (git)      one record per fast-path (approximate) version
    .unlearnflow/                                   (ignored)  subject and signing keys, tombstones of erased
                                                               records, the journal, the workspace lock
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).resolve())

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def prepared_summary(self) -> Path:
        return self.prepared / "summary.json"

    def split_dir(self, split: str) -> Path:
        return self.prepared / split

    def split_part(self, split: str, part: int) -> tuple[Path, Path]:
        """(pixels, table) of one part of a split (``records.PARTS`` parts by subject hash)."""
        return self.split_dir(split) / f"part-{part:02d}.npy", self.split_dir(split) / f"part-{part:02d}.csv"

    @property
    def shards_dir(self) -> Path:
        return self.root / "data" / "shards"

    def shard_manifest(self, shard: int) -> Path:
        return self.shards_dir / f"shard_{shard}.json"

    def shard_images(self, shard: int) -> Path:
        return self.shards_dir / f"shard_{shard}.npy"

    @property
    def models_dir(self) -> Path:
        return self.root / "models" / "shards"

    def model(self, shard: int) -> Path:
        return self.models_dir / f"shard_{shard}.pt"

    @property
    def ensemble(self) -> Path:
        return self.root / "models" / "ensemble.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    @property
    def ledger(self) -> Path:
        return self.root / "ledger" / "requests.jsonl"

    @property
    def certificates(self) -> Path:
        return self.root / "lineage" / "certificates"

    @property
    def approximations(self) -> Path:
        """One JSON record per fast-path (approximate) version: NNNN-<approximation id>.json."""
        return self.root / "lineage" / "approximations"

    @property
    def audits(self) -> Path:
        """The confidence histogram of each erasure's audit: <erasure id>.png."""
        return self.root / "lineage" / "audits"

    @property
    def git_tracked(self) -> list[Path]:
        """What git versions beside dvc.lock: the ledger and every lineage record."""
        return [self.ledger, self.certificates, self.audits, self.approximations]

    @property
    def private(self) -> Path:
        """Workspace state that must never enter git: the subject key, tombstones."""
        return self.root / ".unlearnflow"

    @property
    def outputs_cache(self) -> Path:
        """Constituent outputs on the splits (``scoring.OutputCache``), kept for audits."""
        return self.private / "outputs"

    @property
    def model_cache(self) -> Path:
        """Local copies of registered versions' model files when MLflow stores them elsewhere
        (a tracking server): one folder per version, deleted when the version is purged."""
        return self.private / "model-cache"

    @property
    def ingest_cache(self) -> Path:
        """What dataset adapters derived from the source (imagefolder: decoded pixels, ids)."""
        return self.private / "ingest"

    @property
    def tombstones(self) -> Path:
        return self.private / "tombstones.jsonl"

    @property
    def signing_key(self) -> Path:
        return self.private / "signing.key"

    @property
    def journal(self) -> Path:
        """The erasure (or fast path) in progress, if any: what an interrupted one had done."""
        return self.private / "journal.json"
