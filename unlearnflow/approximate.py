"""The fast path: apply an approximate unlearning method to the affected SISA
constituents at once, without retraining anything.

For shard k, the edit is the shard's erased records (and relabelled records, with
their corrected labels; feature-edited records, with their filled pixels) as its
constituent was trained on them; its retain data is
the rest of the shard. Shards without affected records keep their constituent as is.
The result is only as good as the method (the audit says how good); the exact SISA
retrain of the erase flow supersedes it.
"""

from __future__ import annotations

import numpy as np
import torch

from unlearnflow.config import UnlearnConfig
from unlearnflow.ensemble import constituent_bytes, load_constituent
from unlearnflow.features import edited_images
from unlearnflow.partition import ShardManifest
from unlearnflow.devices import resolve, set_deterministic
from unlearnflow.training import ModelSpec, to_input
from unlearnflow.unlearning import Data, Edit, UnlearnResult, create_unlearner


def shard_edits(manifest: ShardManifest, images, erased: set[str], rectified: dict[str, int],
                device: torch.device = torch.device("cpu"), earlier_erased: set[str] = frozenset(),
                earlier_rectified: dict[str, int] | None = None, features: dict[str, list] | None = None,
                earlier_features: dict[str, list] | None = None
                ) -> tuple[Edit | None, Edit | None, Edit | None, Data]:
    """(erasure edit, label-correction edit, feature edit, retain data) of one shard, on
    ``device``; an edit is None when the shard has no such record. A feature edit
    (``features``: {record: [FeatureEdit, ...]}) takes each record from its pixels as trained
    on to its filled ones (and to its corrected label, if one is filed with it). Retain data
    excludes every affected record, and what the model already forgot (``earlier_erased``: an
    earlier fast path's erasures, still in the shard until the exact erasure); records an
    earlier fast path relabelled or filled (``earlier_rectified``, ``earlier_features``) are
    in it as corrected."""
    ids = manifest.record_ids
    labels = np.array(manifest.labels, dtype=np.int64)  # a copy: corrected in place below
    for i, r in enumerate(ids):
        if earlier_rectified and r in earlier_rectified:
            labels[i] = earlier_rectified[r]
    features = features or {}
    if earlier_features:
        images = edited_images(images, ids, earlier_features)
    gone = np.array([r in erased for r in ids], dtype=bool)
    forgotten = np.array([r in earlier_erased for r in ids], dtype=bool)
    filled = np.array([not gone[i] and r in features for i, r in enumerate(ids)], dtype=bool)
    relabel = np.array([not gone[i] and not filled[i] and r in rectified and rectified[r] != labels[i]
                        for i, r in enumerate(ids)], dtype=bool)
    keep = ~gone & ~relabel & ~forgotten & ~filled

    def x(mask, source=images):
        return to_input(source[np.flatnonzero(mask)]).to(device)

    def y(values):
        return torch.as_tensor(values).to(device)

    retain = Data(x(keep), y(labels[keep]))
    size = len(ids) - int(forgotten.sum())  # what the model was (in effect) trained on
    erase_edit = Edit(x(gone), y(labels[gone]), train_size=size) if gone.any() else None
    relabel_edit = feature_edit = None
    if relabel.any():
        y_new = np.array([rectified[r] for r, m in zip(ids, relabel) if m], dtype=np.int64)
        relabel_edit = Edit(x(relabel), y(labels[relabel]), y_new=y(y_new), train_size=size - int(gone.sum()))
    if filled.any():
        new_images = edited_images(images, ids, {r: features[r] for r in np.asarray(ids)[filled]})
        y_new = np.array([rectified.get(r, labels[i]) for i, r in enumerate(ids) if filled[i]], dtype=np.int64)
        feature_edit = Edit(x(filled), y(labels[filled]), x_new=x(filled, new_images),
                            y_new=y(y_new) if (y_new != labels[filled]).any() else None,
                            train_size=size - int(gone.sum()))
    return erase_edit, relabel_edit, feature_edit, retain


def approximate_constituent(path, manifest: ShardManifest, images, erased: set[str],
                            rectified: dict[str, int], cfg: UnlearnConfig, threads: int = 1, device: str = "cpu",
                            earlier_erased: set[str] = frozenset(), earlier_rectified: dict[str, int] | None = None,
                            features: dict[str, list] | None = None, earlier_features: dict[str, list] | None = None
                            ) -> tuple[bytes, list[UnlearnResult]] | None:
    """The updated constituent's file bytes and the method's results, or None if the
    shard is unaffected. Erasures are applied first, then label corrections, then feature
    edits; on ``device`` (``train.device``). ``earlier_*``, ``features``: see ``shard_edits``."""
    device = resolve(device)
    *edits, retain = shard_edits(manifest, images, erased, rectified, device, earlier_erased, earlier_rectified,
                                 features, earlier_features)
    if all(edit is None for edit in edits):
        return None
    set_deterministic(threads, device)
    model, meta = load_constituent(path)
    model.to(device)
    method = create_unlearner(cfg.method)
    results = []
    for edit in edits:
        if edit is not None:
            model, result = method(model, edit, retain, cfg)
            results.append(result)
    spec = ModelSpec.from_json(meta["spec"])
    weights = {k: v.cpu() for k, v in model.state_dict().items()} if device.type != "cpu" else model.state_dict()
    return constituent_bytes(spec, weights, meta["slice_keys"], manifest.shard), results
