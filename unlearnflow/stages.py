"""The pipeline's stages, each one core computation with its file I/O.

    prepare -> partition -> train@k (one per shard) -> aggregate -> evaluate

``dvc repro`` runs them through ``unlearnflow stage NAME`` and the Prefect flow
through ``tasks/pipeline.py``; both call these functions, so both execute the
same code. Each takes only its own config section and a ``Layout`` and returns
a small JSON-able summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unlearnflow import __version__
from unlearnflow.aggregators import AGGREGATORS, aggregate
from unlearnflow.config import AggregateConfig, DataConfig, PartitionConfig, TrainConfig
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.devices import resolve
from unlearnflow.errors import ConfigError
from unlearnflow.erasure import apply_requests, check_tombstones, load_pseudonymized
from unlearnflow.ensemble import Ensemble, constituent_bytes
from unlearnflow.hashing import md5_file
from unlearnflow.layout import Layout
from unlearnflow.ledger import LedgerState
from unlearnflow.partition import partition, read_shard, write_shard
from unlearnflow.pseudonyms import key_id, subject_key
from unlearnflow.records import PARTS, SPLITS, load_parts, save_parts, split_records
from unlearnflow.scoring import OutputCache
from unlearnflow.training import Callbacks, ModelSpec, train_constituent

ENSEMBLE_FORMAT = "unlearnflow.ensemble/1"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def prepare(cfg: DataConfig, layout: Layout, secret_key: bytes, ledger: LedgerState | None = None,
            tombstones: dict[str, str] | None = None) -> dict:
    """Load the dataset with subject pseudonyms, apply the ledger (erasures, rectified
    labels), refuse erased records, split by subject and write each split."""
    ledger = ledger or LedgerState()
    source = load_pseudonymized(cfg, secret_key, layout.ingest_cache)
    erased, rectified, features = ledger.erased_records(), ledger.rectified_labels(), ledger.rectified_features()
    records = apply_requests(source, erased, rectified, features)
    check_tombstones(records, tombstones or {}, known_requests=ledger.requests)
    splits = split_records(records, cfg)
    contents = feature_contents(records, features)
    expected = {layout.prepared_summary} | {f for name in SPLITS for p in range(PARTS)
                                           for f in layout.split_part(name, p)}
    if contents:
        write_json(layout.prepared_contents, contents)
        expected.add(layout.prepared_contents)
    remove_others(layout.prepared, expected)  # e.g. the files of an older layout
    written = sum(save_parts(splits[name], lambda p, name=name: layout.split_part(name, p), set(features))
                  for name in SPLITS)
    summary = {
        "dataset": cfg.dataset,
        "records": len(records),
        "erased_records": len(source) - len(records),
        "rectified_records": sum(rid in rectified for rid in records.record_ids),
        **({"feature_rectified_records": n} if (n := sum(rid in features for rid in records.record_ids)) else {}),
        "subjects": len(set(records.subject_ids)),
        "subject_key": "secret" if records.personal_subjects else "public (synthetic subjects)",
        "subject_key_id": key_id(subject_key(records.personal_subjects, secret_key)),
        "input_shape": list(records.input_shape),
        "classes": list(records.classes),
        **{f"{name}_records": len(splits[name]) for name in SPLITS},
    }
    write_json(layout.prepared_summary, summary)
    return {**summary, "parts_written": written}  # not in summary.json: it would differ between runs


def feature_contents(records, features: dict) -> dict[str, str]:
    """{record id: SHA-256 of its pixels} for the records feature requests changed."""
    from unlearnflow.features import content_hash

    at = [i for i, rid in enumerate(records.record_ids) if rid in features]
    pixels = np.asarray(records.images[at]) if at else ()
    return {records.record_ids[i]: content_hash(p) for i, p in zip(at, pixels)}


def read_contents(layout: Layout) -> dict[str, str]:
    path = layout.prepared_contents
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_others(folder: Path, keep: set[Path]) -> None:
    """Delete every file under ``folder`` that is not in ``keep`` (and then-empty folders)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def load_split(layout: Layout, split: str):
    """The records of one split (train | test | holdout), their pixels left on disk."""
    return load_parts(lambda p: layout.split_part(split, p))


def partition_stage(cfg: PartitionConfig, layout: Layout) -> dict:
    """Write one manifest + pixel file per shard from the training split; a shard whose
    manifest is unchanged keeps its files (and mtimes: DVC does not hash them again)."""
    train = load_split(layout, "train")
    shards = partition(train, cfg, read_contents(layout))
    remove_others(layout.shards_dir, {f for k in cfg.shards for f in (layout.shard_manifest(k), layout.shard_images(k))})
    summary = {"shards": cfg.num_shards, "slices": cfg.slices, "records": len(train), "per_shard": [],
               "shards_written": []}
    for manifest, images in shards:
        if write_shard(manifest, images, layout.shard_manifest(manifest.shard), layout.shard_images(manifest.shard)):
            summary["shards_written"].append(manifest.shard)
        summary["per_shard"].append(
            {
                "shard": manifest.shard,
                "records": len(manifest),
                "slice_sizes": [b - a for a, b in manifest.slice_bounds()],
                "class_counts": manifest.class_counts(len(train.classes)),
            }
        )
    return summary


def train_stage(cfg: TrainConfig, layout: Layout, shard: int, callbacks: Callbacks | None = None) -> dict:
    """Train (or resume) shard ``shard``'s constituent and write its model file."""
    manifest, images = read_shard(layout.shard_manifest(shard), layout.shard_images(shard))
    spec = ModelSpec(cfg.model, tuple(int(d) for d in images.shape[1:]), len(manifest.classes))
    result = train_constituent(manifest, images, spec, cfg, CheckpointStore(layout.checkpoints), callbacks)
    out = layout.model(shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(constituent_bytes(spec, result.state_dict, result.slice_keys, shard))
    return {
        "shard": shard,
        "records": len(manifest),
        "slice_keys": result.slice_keys,
        "resumed_from": result.resumed_from,
        "trained_stages": result.trained_stages,
        "seconds": round(result.seconds, 3),
        "device": result.device,
        "manifest_md5": md5_file(layout.shard_manifest(shard)),
        "images_md5": md5_file(layout.shard_images(shard)),
        "model_md5": md5_file(out),
        "dp_epsilon": _dp_epsilon(manifest, cfg),
    }


def _dp_epsilon(manifest, cfg: TrainConfig) -> float | None:
    """The constituent's epsilon at ``train.dp.delta`` (None without ``train.dp``)."""
    if cfg.dp is None:
        return None
    from unlearnflow.dp import constituent_epsilon

    return round(constituent_epsilon(manifest, cfg), 4)


def aggregate_stage(cfg: AggregateConfig, partition_cfg: PartitionConfig, layout: Layout) -> dict:
    """Describe the ensemble: which constituent files (by md5) and which rule."""
    constituents = []
    for shard in partition_cfg.shards:
        path = layout.model(shard)
        if not path.is_file():
            raise FileNotFoundError(f"constituent of shard {shard} is missing: {path} (run the train stage first)")
        constituents.append({"shard": shard, "path": layout.rel(path), "md5": md5_file(path)})
    manifest0 = json.loads(layout.shard_manifest(partition_cfg.shards[0]).read_text())
    ensemble = {
        "format": ENSEMBLE_FORMAT,
        "method": cfg.method,
        "classes": manifest0["classes"],
        "constituents": constituents,
        "unlearnflow_version": __version__,
    }
    AGGREGATORS.get(cfg.method)  # unknown method: fail before writing anything
    write_json(layout.ensemble, ensemble)
    return ensemble


def load_ensemble(layout: Layout) -> Ensemble:
    spec = json.loads(layout.ensemble.read_text())
    for c in spec["constituents"]:
        actual = md5_file(layout.root / c["path"])
        if actual != c["md5"]:
            raise ValueError(f"{c['path']} has md5 {actual}, but {layout.rel(layout.ensemble)} expects {c['md5']}")
    return Ensemble.from_files([layout.root / c["path"] for c in spec["constituents"]], spec["method"], spec["classes"])


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean()) if len(labels) else float("nan")


def evaluate_stage(layout: Layout, device: str = "auto", workers: int = 1) -> dict:
    """Test accuracy of every constituent and of the ensemble under each aggregation rule.
    Outputs go through the workspace's output cache: an erasure scores only what it retrained,
    batch by batch on ``workers`` threads."""
    ensemble = load_ensemble(layout)  # checks the constituents' md5s
    paths = [str(layout.root / c["path"]) for c in json.loads(layout.ensemble.read_text())["constituents"]]
    test = load_split(layout, "test")
    if not len(test):
        raise ConfigError("the test split is empty: data.test_fraction drew none of this dataset's subjects "
                          "(splits are drawn per subject, from their pseudonyms); raise data.test_fraction")
    probs = np.stack(OutputCache(layout.outputs_cache, resolve(device)).probabilities(paths, test, workers=workers))  # (S, N, K)

    by_method = {m: accuracy(aggregate(probs, m).argmax(1), test.labels) for m in AGGREGATORS.names()}
    metrics = {
        "test_records": len(test),
        "ensemble_accuracy": by_method[ensemble.method],
        "aggregation": ensemble.method,
        "accuracy_by_aggregation": by_method,
        "shard_accuracy": {str(s): accuracy(p.argmax(1), test.labels) for s, p in enumerate(probs)},
    }
    write_json(layout.metrics, metrics)
    return metrics
