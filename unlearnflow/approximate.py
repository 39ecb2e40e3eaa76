"""The fast path: apply an approximate unlearning method to the affected SISA
constituents at once, without retraining anything.

For shard k, the edit is the shard's erased records (and relabelled records, with
their corrected labels) as its constituent was trained on them; its retain data is
the rest of the shard. Shards without affected records keep their constituent as is.
The result is only as good as the method (the audit says how good); the exact SISA
retrain of the erase flow supersedes it.
"""

from __future__ import annotations

import numpy as np
import torch

from unlearnflow.config import UnlearnConfig
from unlearnflow.ensemble import constituent_bytes, load_constituent
from unlearnflow.partition import ShardManifest
from unlearnflow.training import ModelSpec, set_deterministic, to_input
from unlearnflow.unlearning import Data, Edit, UnlearnResult, create_unlearner


def shard_edits(manifest: ShardManifest, images: np.ndarray, erased: set[str], rectified: dict[str, int]
                ) -> tuple[Edit | None, Edit | None, Data]:
    """(erasure edit, label-correction edit, retain data) of one shard; an edit is None
    when the shard has no such record. Retain data excludes every affected record."""
    ids = manifest.record_ids
    labels = np.asarray(manifest.labels, dtype=np.int64)
    gone = np.array([r in erased for r in ids], dtype=bool)
    relabel = np.array([not gone[i] and r in rectified and rectified[r] != labels[i] for i, r in enumerate(ids)],
                       dtype=bool)
    keep = ~gone & ~relabel
    retain = Data(to_input(images[keep]), torch.as_tensor(labels[keep]))
    erase_edit = Edit(to_input(images[gone]), torch.as_tensor(labels[gone]), train_size=len(ids)) \
        if gone.any() else None
    relabel_edit = None
    if relabel.any():
        y_new = np.array([rectified[r] for r, m in zip(ids, relabel) if m], dtype=np.int64)
        relabel_edit = Edit(to_input(images[relabel]), torch.as_tensor(labels[relabel]),
                            y_new=torch.as_tensor(y_new), train_size=len(ids) - int(gone.sum()))
    return erase_edit, relabel_edit, retain


def approximate_constituent(path, manifest: ShardManifest, images: np.ndarray, erased: set[str],
                            rectified: dict[str, int], cfg: UnlearnConfig, threads: int = 1
                            ) -> tuple[bytes, list[UnlearnResult]] | None:
    """The updated constituent's file bytes and the method's results, or None if the
    shard is unaffected. Erasures are applied first, then label corrections."""
    erase_edit, relabel_edit, retain = shard_edits(manifest, images, erased, rectified)
    if erase_edit is None and relabel_edit is None:
        return None
    set_deterministic(threads)
    model, meta = load_constituent(path)
    method = create_unlearner(cfg.method)
    results = []
    for edit in (erase_edit, relabel_edit):
        if edit is not None:
            model, result = method(model, edit, retain, cfg)
            results.append(result)
    spec = ModelSpec.from_json(meta["spec"])
    return constituent_bytes(spec, model.state_dict(), meta["slice_keys"], manifest.shard), results
