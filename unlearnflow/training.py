"""Slice-incremental training of one SISA constituent.

Stage k (k = 1..R) trains on slices 1..k (with ``partition.overlap``, on its window:
slice k and part of slice k-1, see ``partition.py``) for ``TrainConfig.stage_epochs``
epochs, continuing from stage k-1's model and optimizer state; a checkpoint is
saved after every stage under a content key (``slice_keys``). Training resumes
from the newest stored checkpoint whose key still matches, so an unchanged
prefix is never retrained.

Determinism: every random draw comes from a CPU generator seeded with
(seed, shard, stage, epoch) or from the model's init seed (seed, shard); the
torch thread count is fixed by config and deterministic algorithms are on
(``devices.set_deterministic``). The same manifest, pixels and config give
bitwise-identical weights on one device class, whether the stages ran in one go
or resumed from a checkpoint; the device class is part of every checkpoint key.

Memory: the shard's pixels are read batch by batch (``arrays.Rows``, optionally in
``train.loader_workers`` DataLoader processes) and become floats one batch at a
time, so a shard of any size costs a batch and the model.

The loop knows nothing of files, tracking or progress bars: the checkpoint store
is handed in, and observers attach through ``Callbacks``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow.arrays import CHUNK
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import TrainConfig, to_dict
from unlearnflow.devices import device_class, resolve, set_deterministic
from unlearnflow.hashing import hash_json, stable_bucket
from unlearnflow.models import create_model
from unlearnflow.partition import ShardManifest

KEY_FORMAT = "unlearnflow.slice_checkpoint/2"  # /2: the device class joined the key


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
    device: str = "cpu"  # device class the weights were computed on


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, shard, stage, epoch, ...): no global RNG state."""
    return stable_bucket(2**63 - 1, "seed", *parts)


def pixel_hash(images, start: int, end: int) -> str:
    """sha256 of the bytes of rows [start, end), read block by block."""
    h = hashlib.sha256()
    for i in range(start, end, CHUNK):
        h.update(np.ascontiguousarray(images[i:min(i + CHUNK, end)]).tobytes())
    return h.hexdigest()


def weights_config(cfg: TrainConfig, device: str) -> dict:
    """What of the train config decides the weights (see ``TrainConfig``)."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in ("device", "loader_workers")
           and not (k in ("dp", "certified") and v is None)}  # keys of ordinary training stay as they were
    return {**out, "device_class": device}


def slice_keys(manifest: ShardManifest, images, spec: ModelSpec, cfg: TrainConfig, device: str = "cpu") -> list[str]:
    """Content key of the checkpoint after each stage k (slices 1..k), for ``device``
    (a ``devices.device_class``).

    key_k = H(key_{k-1}, ordered record ids, labels and pixel hash of slice k);
    key_0's parent hashes the config, the device class, the model spec and the shard index.
    """
    head = {"format": KEY_FORMAT, "train": weights_config(cfg, device), "model": spec.to_json(),
            "shard": manifest.shard, "num_slices": manifest.num_slices}
    key = hash_json({**head, "overlap": manifest.overlap} if manifest.overlap else head)
    keys = []
    for k, (a, b) in enumerate(manifest.slice_bounds()):
        body = {"parent": key, "slice": k, "record_ids": list(manifest.record_ids[a:b]),
                "labels": list(manifest.labels[a:b]), "pixels": pixel_hash(images, a, b)}
        if manifest.overlap:  # which of slice k's records stage k+1 sees too
            body["shared_forward"] = list(manifest.shared[a:b])
        key = hash_json(body)
        keys.append(key)
    return keys


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]; floats are taken as already converted."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    return x if x.is_floating_point() else x.to(torch.float32) / 255.0


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


class _Rows(torch.utils.data.Dataset):
    """Item ``idx`` (an array of row numbers: one batch) is those rows' uint8 pixels, read from disk."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, idx) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.images[idx]))


class _EpochBatches(torch.utils.data.Sampler):
    """The batches of the current epoch, set by the training loop (the sampler stays in
    this process, so persistent workers read whatever batches it names next)."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def batch_loader(images, workers: int) -> tuple[torch.utils.data.DataLoader, _EpochBatches]:
    """A loader of the batches its sampler names. Workers are spawned, not forked: a fork
    of a process holding Prefect's and MLflow's threads can die at exit (seen in CI), and
    they persist across epochs, so each constituent pays their start-up once."""
    sampler = _EpochBatches()
    # its own generator: a DataLoader draws a seed per epoch, and from torch's global RNG that
    # draw races with a seeded model init in another shard's thread (weights then differ)
    loader = torch.utils.data.DataLoader(_Rows(images), sampler=sampler, batch_size=None, num_workers=workers,
                                         multiprocessing_context="spawn" if workers else None,
                                         persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    return loader, sampler


def train_epoch(model, opt, images, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator,
                device: torch.device = torch.device("cpu"), loader=None, rows: np.ndarray | None = None) -> float:
    """One pass over ``rows`` of ``images`` (default: the first ``len(y)``; ``y`` holds the labels
    of every row up to the largest) in an order drawn from ``g``; returns the mean loss."""
    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    order = rows[torch.randperm(len(rows), generator=g).numpy()]
    batches = [order[start:start + cfg.batch_size] for start in range(0, len(rows), cfg.batch_size)]
    return train_batches(model, opt, images, y, batches, cfg, g, device, loader)


def train_epoch_dp(model, opt, images, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator,
                   device: torch.device = torch.device("cpu"), loader=None, rows: np.ndarray | None = None) -> float:
    """``train_epoch`` under ``train.dp``: Poisson-sampled batches (what the DP accountant
    assumes), through the private model and optimizer of ``dp.make_private``."""
    from unlearnflow.dp import poisson_batches

    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    return train_batches(model, opt, images, y, poisson_batches(rows, cfg.batch_size, g), cfg, g, device, loader)


def train_batches(model, opt, images, y: torch.Tensor, batches: list[np.ndarray], cfg: TrainConfig,
                  g: torch.Generator, device: torch.device = torch.device("cpu"), loader=None) -> float:
    """One optimizer step per batch of row numbers; returns the mean loss over their records.
    Batches are read (by ``loader``'s workers, see ``batch_loader``, or here) and augmented
    with draws from ``g`` in order, so workers change the speed only."""
    model.train()
    loader, sampler = loader or batch_loader(images, 0)
    sampler.batches = batches
    total, seen = 0.0, 0
    for idx, pixels in zip(sampler.batches, loader):
        xb, yb = to_input(pixels), y[idx]
        if cfg.augment:
            xb = random_affine(xb, g)
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
    return total / max(seen, 1)


def train_constituent(
    manifest: ShardManifest,
    images,
    spec: ModelSpec,
    cfg: TrainConfig,
    store: CheckpointStore | None = None,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train (or resume) one shard's constituent through all R slice stages on
    ``cfg.device``. ``images``: the shard's pixels in manifest order (array or ``Rows``)."""
    callbacks = callbacks or Callbacks()
    device = resolve(cfg.device)
    set_deterministic(cfg.threads, device)
    t0 = time.perf_counter()
    keys = slice_keys(manifest, images, spec, cfg, device_class(device))
    shard = manifest.shard

    resume = -1
    if store is not None:
        resume = next((k for k in reversed(range(len(keys))) if store.has(keys[k])), -1)

    model = create_model(spec.name, spec.input_shape, spec.num_classes, seed=derive_seed(cfg.seed, shard, "init"))
    model.to(device)
    opt = make_optimizer(model, cfg)
    if resume >= 0:
        state = store.load(keys[resume])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    fit, step = model, train_epoch  # the module the loop calls, and one epoch of it
    if cfg.dp is not None:  # per-example clipping and noise (unlearnflow/dp.py); `model` keeps the weights
        from unlearnflow import dp

        noise = torch.Generator(device=device)  # seeded per stage below: resuming draws what scratch would
        fit, opt = dp.make_private(model, opt, cfg, noise)
        step = train_epoch_dp
    callbacks.trigger("on_start", shard=shard, resumed_from=resume, num_stages=len(keys))

    y = torch.as_tensor(np.asarray(manifest.labels, dtype=np.int64))
    epochs = cfg.stage_epochs(manifest.num_slices, manifest.overlap)
    loader = batch_loader(images, cfg.loader_workers) if resume + 1 < len(keys) else None
    trained = []
    for k in range(resume + 1, len(keys)):
        rows = manifest.stage_rows(k)  # slices 0..k, or with overlap its window
        if cfg.dp is not None:
            noise.manual_seed(derive_seed(cfg.seed, shard, k, "dp-noise"))
        if cfg.certified is not None:  # to the optimum on these rows, from the previous stage's weights
            _fit_certified(model, images, y, rows, cfg, derive_seed(cfg.seed, shard, "perturbation"))
            callbacks.trigger("on_epoch_end", shard=shard, stage=k, epoch=0, epochs=1, loss=float("nan"),
                              records=len(rows))
        for epoch in range(epochs if len(rows) and cfg.certified is None else 0):
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, shard, k, epoch))
            loss = step(fit, opt, images, y, cfg, g, device, loader, rows)
            callbacks.trigger("on_epoch_end", shard=shard, stage=k, epoch=epoch, epochs=epochs, loss=loss,
                              records=len(rows))
        trained.append(k)
        if store is not None:
            store.save(keys[k], {"model": model.state_dict(), "optimizer": _optimizer_state(opt)})
        callbacks.trigger("on_stage_end", shard=shard, stage=k, key=keys[k])
    seconds = time.perf_counter() - t0
    callbacks.trigger("on_end", shard=shard, seconds=seconds, trained_stages=trained)
    weights = model.state_dict() if device.type == "cpu" else {k: v.cpu() for k, v in model.state_dict().items()}
    return TrainResult(weights, keys, resume, trained, seconds, device_class(device))


def _fit_certified(model, images, y: torch.Tensor, rows: np.ndarray, cfg: TrainConfig, seed: int) -> None:
    """``train.certified``: the logreg constituent at the optimum of Guo et al.'s perturbed
    objective on ``rows`` (the loss perturbation drawn from ``seed``, one per shard)."""
    from unlearnflow import certified

    if not len(rows):
        return
    X = certified.features(to_input(np.asarray(images[rows])))
    start = model.linear.weight.detach().cpu().clone()
    W = certified.train(X, y[rows], model.linear.out_features, cfg.certified, seed, start=start)
    model.set_certified(W.to(model.linear.weight.device), cfg.certified, seed)


def _optimizer_state(opt) -> dict:
    """The wrapped Adam's state under DP (what a resumed stage loads into a fresh Adam)."""
    return getattr(opt, "original_optimizer", opt).state_dict()


@torch.no_grad()
def predict_proba(model: nn.Module, images, batch_size: int = 512, device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities (N, num_classes) of one model; ``images`` (array or ``Rows``)
    are read and converted one batch at a time, on ``device`` (default: where the model is)."""
    model.eval()
    device = device or next(model.parameters()).device
    model.to(device)
    probs = None  # one array for all outputs: per-batch pieces kept alive fragment the heap
    for i in range(0, len(images), batch_size):
        batch = F.softmax(model(to_input(images[i:i + batch_size]).to(device)), dim=1).cpu().numpy()
        if probs is None:
            probs = np.empty((len(images), batch.shape[1]), dtype=batch.dtype)
        probs[i:i + len(batch)] = batch
    return probs if probs is not None else np.zeros((0, 0), dtype=np.float32)
