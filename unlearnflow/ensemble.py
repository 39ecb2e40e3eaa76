"""Constituent model files and the aggregated ensemble built from them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unlearnflow.aggregators import aggregate
from unlearnflow.models import create_model
from unlearnflow.training import ModelSpec, predict_proba

CONSTITUENT_FORMAT = "unlearnflow.constituent/1"


def constituent_bytes(spec: ModelSpec, state_dict: dict, slice_keys: list[str], shard: int) -> bytes:
    """Serialised constituent. Deterministic: same weights and metadata, same bytes.

    ``slice_keys`` are the checkpoint keys of its slice stages (the last one names
    the weights); an erasure compares them to find the first affected slice."""
    buf = io.BytesIO()
    torch.save(
        {"format": CONSTITUENT_FORMAT, "shard": shard, "spec": spec.to_json(), "checkpoint_key": slice_keys[-1],
         "slice_keys": list(slice_keys), "state_dict": state_dict},
        buf,
    )
    return buf.getvalue()


def load_constituent(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata) from a constituent file."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if obj.get("format") != CONSTITUENT_FORMAT:
        raise ValueError(f"{path} is not an unlearnflow constituent (format {obj.get('format')!r})")
    spec = ModelSpec.from_json(obj["spec"])
    model = create_model(spec.name, spec.input_shape, spec.num_classes, seed=0)
    model.load_state_dict(obj["state_dict"])
    model.eval()
    meta = {k: obj[k] for k in ("shard", "spec", "checkpoint_key", "slice_keys")}
    return model, meta


@dataclass
class Ensemble:
    """S constituents and an aggregation rule; ``predict`` is what gets served."""

    models: list[nn.Module]
    method: str
    classes: tuple[str, ...]

    @classmethod
    def from_files(cls, paths, method: str, classes) -> "Ensemble":
        return cls([load_constituent(p)[0] for p in paths], method, tuple(classes))

    def constituent_probs(self, images: np.ndarray) -> np.ndarray:
        return np.stack([predict_proba(m, images) for m in self.models])  # (S, N, K)

    def scores(self, images: np.ndarray, method: str | None = None) -> np.ndarray:
        return aggregate(self.constituent_probs(images), method or self.method)  # (N, K)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.scores(images).argmax(axis=1)
