"""Slice-incremental training of one SISA constituent.

Stage k (k = 1..R) trains on slices 1..k for ``TrainConfig.stage_epochs(R)``
epochs, continuing from stage k-1's model and optimizer state; a checkpoint is
saved after every stage under a content key (``slice_keys``). Training resumes
from the newest stored checkpoint whose key still matches, so an unchanged
prefix is never retrained.

Determinism: every random draw comes from a generator seeded with
(seed, shard, stage, epoch) or from the model's init seed (seed, shard); the
torch thread count is fixed by config and deterministic algorithms are on. The
same manifest, pixels and config give bitwise-identical weights on one machine,
whether the stages ran in one go or resumed from a checkpoint.

The loop knows nothing of files, tracking or progress bars: the checkpoint store
is handed in, and observers attach through ``Callbacks``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import TrainConfig, to_dict
from unlearnflow.hashing import hash_json, sha256_hex, stable_bucket
from unlearnflow.models import create_model
from unlearnflow.partition import ShardManifest

KEY_FORMAT = "unlearnflow.slice_checkpoint/1"


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a constituent's architecture."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int

    def to_json(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes}

    @classmethod
    def from_json(cls, obj: dict) -> "ModelSpec":
        return cls(obj["name"], tuple(obj["input_shape"]), int(obj["num_classes"]))


class Callbacks:
    """minGPT-style hooks: ``cb.add("on_epoch_end", fn)``; the loop calls ``trigger``."""

    def __init__(self):
        self._hooks: dict[str, list[Callable]] = defaultdict(list)

    def add(self, event: str, fn: Callable) -> "Callbacks":
        self._hooks[event].append(fn)
        return self

    def trigger(self, event: str, **info) -> None:
        for fn in self._hooks[event]:
            fn(**info)


@dataclass
class TrainResult:
    state_dict: dict
    slice_keys: list[str]
    resumed_from: int  # index of the stage whose checkpoint was loaded; -1 = from scratch
    trained_stages: list[int] = field(default_factory=list)
    seconds: float = 0.0


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, shard, stage, epoch, ...): no global RNG state."""
    return stable_bucket(2**63 - 1, "seed", *parts)


def slice_keys(manifest: ShardManifest, images: np.ndarray, spec: ModelSpec, cfg: TrainConfig) -> list[str]:
    """Content key of the checkpoint after each stage k (slices 1..k).

    key_k = H(key_{k-1}, ordered record ids, labels and pixel hash of slice k);
    key_0's parent hashes the config, the model spec and the shard index.
    """
    key = hash_json(
        {"format": KEY_FORMAT, "train": to_dict(cfg), "model": spec.to_json(), "shard": manifest.shard,
         "num_slices": manifest.num_slices}
    )
    keys = []
    for k, (a, b) in enumerate(manifest.slice_bounds()):
        key = hash_json(
            {
                "parent": key,
                "slice": k,
                "record_ids": list(manifest.record_ids[a:b]),
                "labels": list(manifest.labels[a:b]),
                "pixels": sha256_hex(np.ascontiguousarray(images[a:b]).tobytes()),
            }
        )
        keys.append(key)
    return keys


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(images))
    return x.to(torch.float32) / 255.0


def random_affine(x: torch.Tensor, g: torch.Generator, degrees=10.0, shift=0.1, scale=0.1) -> torch.Tensor:
    """Per-image random rotation, shift and zoom, drawn from ``g``.  x: (B, C, H, W)."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(degrees)
    zoom = 1 + (torch.rand(b, generator=g) * 2 - 1) * scale
    tx, ty = ((torch.rand(2, b, generator=g) * 2 - 1) * 2 * shift).unbind(0)  # grid coords span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_deterministic(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train_epoch(model, opt, x, y, cfg: TrainConfig, g: torch.Generator) -> float:
    """One pass over (x, y) in an order drawn from ``g``; returns the mean loss."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=g)
    total = 0.0
    for start in range(0, n, cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb = random_affine(xb, g)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / max(n, 1)


def train_constituent(
    manifest: ShardManifest,
    images: np.ndarray,
    spec: ModelSpec,
    cfg: TrainConfig,
    store: CheckpointStore | None = None,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train (or resume) one shard's constituent through all R slice stages."""
    callbacks = callbacks or Callbacks()
    set_deterministic(cfg.threads)
    t0 = time.perf_counter()
    keys = slice_keys(manifest, images, spec, cfg)
    shard = manifest.shard

    resume = -1
    if store is not None:
        resume = next((k for k in reversed(range(len(keys))) if store.has(keys[k])), -1)

    model = create_model(spec.name, spec.input_shape, spec.num_classes, seed=derive_seed(cfg.seed, shard, "init"))
    opt = make_optimizer(model, cfg)
    if resume >= 0:
        state = store.load(keys[resume])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    callbacks.trigger("on_start", shard=shard, resumed_from=resume, num_stages=len(keys))

    x, y = to_input(images), torch.as_tensor(np.asarray(manifest.labels, dtype=np.int64))
    bounds = manifest.slice_bounds()
    epochs = cfg.stage_epochs(manifest.num_slices)
    trained = []
    for k in range(resume + 1, len(keys)):
        end = bounds[k][1]  # stage k sees slices 0..k
        for epoch in range(epochs if end > 0 else 0):
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, shard, k, epoch))
            loss = train_epoch(model, opt, x[:end], y[:end], cfg, g)
            callbacks.trigger("on_epoch_end", shard=shard, stage=k, epoch=epoch, epochs=epochs, loss=loss, records=end)
        trained.append(k)
        if store is not None:
            store.save(keys[k], {"model": model.state_dict(), "optimizer": opt.state_dict()})
        callbacks.trigger("on_stage_end", shard=shard, stage=k, key=keys[k])
    seconds = time.perf_counter() - t0
    callbacks.trigger("on_end", shard=shard, seconds=seconds, trained_stages=trained)
    return TrainResult(model.state_dict(), keys, resume, trained, seconds)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities (N, num_classes) of one model."""
    model.eval()
    x = to_input(images)
    out = [F.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
