"""DP-SGD for a constituent (``train.dp``), with Opacus, and its privacy accounting.

Differential privacy is the survey's alternative to unlearning and a defence in depth
beside SISA: even before an erasure, no single record moves a constituent much.

Training: per-example gradients (Opacus' ``GradSampleModule``), each clipped to
``max_grad_norm``, summed, plus Gaussian noise of ``noise_multiplier * max_grad_norm``
(``DPOptimizer`` around the usual Adam). Batches are drawn by Poisson sampling, each of
the stage's n records with probability q = batch_size / n, which is what the accountant
assumes; the draws and the noise come from generators seeded like the rest of training,
so a DP constituent is still bitwise reproducible and resumable from its checkpoints.

Accounting: a record in slice j is trained on by the stages whose rows contain it (j..R-1
for disjoint slices, j and perhaps j+1 with overlap). Each stage k is ``steps(n_k)`` steps
at rate q_k; their composition under Renyi DP (Opacus' ``RDPAccountant``) gives that
record's epsilon at ``delta``. A constituent's epsilon is the largest over its slices, a
version's the largest over its constituents (shards hold disjoint records).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from unlearnflow.config import DPConfig, TrainConfig
from unlearnflow.errors import ConfigError
from unlearnflow.partition import ShardManifest

# Opacus' per-example hooks on a first layer whose input needs no gradient: expected, harmless
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


def steps(n: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of one stage: ``epochs`` expected passes over its n records."""
    return epochs * max(1, round(n / batch_size))


def make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 noise: torch.Generator):
    """(per-example-gradient model, DP optimizer) around ``model`` and ``optimizer``."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"train.dp cannot train model {cfg.model!r} privately ({errors[0]}); "
                          f"use train.model: cnn or mlp")
    private = GradSampleModule(model, loss_reduction="mean")
    dp_opt = DPOptimizer(optimizer, noise_multiplier=cfg.dp.noise_multiplier, max_grad_norm=cfg.dp.max_grad_norm,
                         expected_batch_size=cfg.batch_size, loss_reduction="mean", generator=noise)
    return private, dp_opt


def poisson_batches(rows: np.ndarray, batch_size: int, g: torch.Generator) -> list[np.ndarray]:
    """One expected pass over ``rows``: ``steps`` batches, each taking every row with probability
    q = batch_size / n (drawn from ``g``); an empty draw (probability (1-q)^n) is skipped."""
    n, q = len(rows), min(1.0, batch_size / max(len(rows), 1))
    draws = [rows[(torch.rand(n, generator=g) < q).numpy()] for _ in range(steps(n, batch_size, 1))]
    return [b for b in draws if len(b)]


def stage_history(manifest: ShardManifest, cfg: TrainConfig) -> list[tuple[float, float, int]]:
    """(noise multiplier, sample rate, steps) of each slice stage, in order."""
    epochs = cfg.stage_epochs(manifest.num_slices, manifest.overlap)
    out = []
    for k in range(manifest.num_slices):
        n = len(manifest.stage_rows(k))
        out.append((cfg.dp.noise_multiplier, min(1.0, cfg.batch_size / max(n, 1)), steps(n, cfg.batch_size, epochs)
                    if n else 0))
    return out


def constituent_epsilon(manifest: ShardManifest, cfg: TrainConfig) -> float:
    """The largest epsilon (at ``cfg.dp.delta``) of any record of this constituent."""
    history = stage_history(manifest, cfg)
    bounds = manifest.slice_bounds()
    worst = 0.0
    for j, (a, b) in enumerate(bounds):
        if a == b:
            continue
        seen_by = [k for k in range(manifest.num_slices) if history[k][2] and _sees(manifest, k, a, b)]
        worst = max(worst, epsilon([history[k] for k in seen_by], cfg.dp))
    return worst


def _sees(manifest: ShardManifest, k: int, a: int, b: int) -> bool:
    rows = manifest.stage_rows(k)
    return bool(((rows >= a) & (rows < b)).any())


def epsilon(history: list[tuple[float, float, int]], dp: DPConfig) -> float:
    """Epsilon at ``dp.delta`` of the composition of ``history`` (Renyi DP accountant)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [h for h in history if h[2]]
    return float(accountant.get_epsilon(delta=dp.delta)) if accountant.history else 0.0
