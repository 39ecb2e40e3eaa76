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
    lineage/keys.json                               (git)      the subject key's fingerprint, the signing public key
    lineage/log/                                    (git)      the erasure log (``tlog.py``): leaves, signed checkpoints
    .unlearnflow/                                   (ignored)  subject and signing keys, tombstones of erased
                                                               records, the journal, the workspace lock
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _at(*parts: str, doc: str | None = None) -> property:
    """A fixed path below the workspace root, as a read-only property of ``Layout``."""
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class Layout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).resolve())

    # the pipeline's outputs (DVC)
    prepared = _at("data", "prepared")
    prepared_summary = _at("data", "prepared", "summary.json")
    prepared_contents = _at("data", "prepared", "contents.json")  # pixel hashes of feature-edited records
    shards_dir = _at("data", "shards")
    models_dir = _at("models", "shards")
    ensemble = _at("models", "ensemble.json")
    metrics = _at("metrics", "eval.json")
    checkpoints = _at("checkpoints")  # slice checkpoints by content key (not DVC)

    # what git versions beside dvc.lock
    ledger = _at("ledger", "requests.jsonl")
    certificates = _at("lineage", "certificates")
    approximations = _at("lineage", "approximations",
                         doc="One JSON record per fast-path (approximate) version: NNNN-<approximation id>.json.")
    audits = _at("lineage", "audits", doc="The confidence histogram of each erasure's audit: <erasure id>.png.")
    erasure_log = _at("lineage", "log", doc="The erasure log: a Merkle tree of every request carried out, with "
                                            "its signed checkpoints (``tlog.ErasureLog``).")
    erasure_log_tree = _at(".unlearnflow", "log-tree", doc="The erasure log's tree by level (``tlog.TreeStore``): "
                                                           "a cache, rebuilt from lineage/log/leaves.txt.")
    keys = _at("lineage", "keys.json", doc="What identifies the workspace's keys without revealing them (``keys.py``).")

    # workspace state that must never enter git
    private = _at(".unlearnflow", doc="Workspace state that must never enter git: keys, tombstones, caches.")
    outputs_cache = _at(".unlearnflow", "outputs",
                        doc="Constituent outputs on the splits (``scoring.OutputCache``), kept for audits.")
    model_cache = _at(".unlearnflow", "model-cache",
                      doc="Local copies of registered versions' model files when MLflow stores them elsewhere "
                          "(a tracking server): one folder per version, deleted when the version is purged.")
    ingest_cache = _at(".unlearnflow", "ingest",
                       doc="What dataset adapters derived from the source (imagefolder: decoded pixels, ids).")
    tombstones = _at(".unlearnflow", "tombstones.jsonl")
    subject_key = _at(".unlearnflow", "subject.key")
    signing_key = _at(".unlearnflow", "signing.key")
    workspace_lock = _at(".unlearnflow", "lock", doc="One writer at a time (``durable.WorkspaceLock``).")
    journal = _at(".unlearnflow", "journal.json",
                  doc="The erasure (or fast path) in progress, if any: what an interrupted one had done.")

    @property
    def git_tracked(self) -> list[Path]:
        """What git versions beside dvc.lock: the ledger and every lineage record."""
        return [self.ledger, self.keys, self.certificates, self.audits, self.approximations, self.erasure_log]

    def split_dir(self, split: str) -> Path:
        return self.prepared / split

    def split_part(self, split: str, part: int) -> tuple[Path, Path]:
        """(pixels, table) of one part of a split (``records.PARTS`` parts by subject hash)."""
        return self.split_dir(split) / f"part-{part:02d}.npy", self.split_dir(split) / f"part-{part:02d}.csv"

    def shard_manifest(self, shard: int) -> Path:
        return self.shards_dir / f"shard_{shard}.json"

    def shard_images(self, shard: int) -> Path:
        return self.shards_dir / f"shard_{shard}.npy"

    def model(self, shard: int) -> Path:
        return self.models_dir / f"shard_{shard}.pt"

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()
