"""The ``Unlearner`` interface: a model, what to forget, maybe retain data, a config in;
an updated copy of the model and a result record out.

What to forget is an ``Edit`` (Warnecke et al.'s Z -> Z~): the affected points as
trained (``x``, ``y``) and, optionally, what they should have been: corrected labels
(``y_new``, rectification) or corrected features (``x_new``, e.g. a pixel region
zeroed in every record). No replacement means the points are erased.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow._registry import Registry
from unlearnflow.config import TrainConfig, UnlearnConfig


@dataclass
class Data:
    x: torch.Tensor  # (N, C, H, W) float, as the model takes it
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Edit:
    x: torch.Tensor  # (N, C, H, W) the affected points as the model was trained on them
    y: torch.Tensor  # (N,)
    x_new: torch.Tensor | None = None  # corrected features (None: unchanged)
    y_new: torch.Tensor | None = None  # corrected labels (None: unchanged)
    train_size: int | None = None  # records the model was trained on (influence needs it without retain)

    @property
    def erases(self) -> bool:
        return self.x_new is None and self.y_new is None

    @property
    def forget(self) -> Data:
        return Data(self.x, self.y)

    @property
    def replacement(self) -> Data | None:
        """The corrected points, or None when the edit erases."""
        if self.erases:
            return None
        return Data(self.x if self.x_new is None else self.x_new, self.y if self.y_new is None else self.y_new)


@dataclass
class UnlearnResult:
    method: str
    seconds: float
    used_retain: bool
    details: dict = field(default_factory=dict)


class Unlearner:
    """One method. Subclasses set ``name`` and the two retain flags and implement ``update``."""

    name: str = ""
    needs_retain: bool = False  # cannot work without retain data
    can_use_retain: bool = True  # reads retain data when given and allowed
    summary: str = ""  # one line: `unlearnflow methods` and the README's table show it
    # what bench/unlearning.py tries (unlearn.* overrides; the row with the smallest gap to a retrain is
    # reported): declared with the method, so a new method is benchmarked without editing the bench
    bench_grid: tuple[dict, ...] = ()

    def __call__(self, model: nn.Module, edit: Edit, retain: Data | None, cfg: UnlearnConfig) -> tuple[nn.Module, UnlearnResult]:
        retain = retain if (cfg.use_retain and self.can_use_retain) else None
        if self.needs_retain and retain is None:
            raise ValueError(f"method {self.name!r} needs retain data (unlearn.use_retain is false or none given); "
                             f"methods that work without it: {', '.join(n for n in UNLEARNERS.names() if not UNLEARNERS.get(n).needs_retain)}")
        why = self.accepts(model)
        if why:
            raise ValueError(f"method {self.name!r} cannot update this model: {why}")
        t0 = time.perf_counter()
        model = copy.deepcopy(model)
        details = self.update(model, edit, retain, cfg) or {}
        model.eval()
        return model, UnlearnResult(self.name, time.perf_counter() - t0, retain is not None, details)

    def accepts(self, model: nn.Module) -> str | None:
        """None if this method can update ``model``, else why not (most methods take any model)."""
        return None

    @classmethod
    def refuses(cls, train: TrainConfig) -> str | None:
        """Why models trained with ``train`` are not ones ``accepts`` takes, or None: checked
        before a request is filed, where only the config is at hand."""
        return None

    def update(self, model: nn.Module, edit: Edit, retain: Data | None, cfg: UnlearnConfig) -> dict | None:
        raise NotImplementedError


UNLEARNERS: Registry = Registry("unlearning method")


def register_unlearner(cls):
    UNLEARNERS.register(cls.name)(cls)
    return cls


def concat(*parts: Data | None) -> Data:
    parts = [p for p in parts if p is not None and len(p)]
    return Data(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def fit(model: nn.Module, data: Data, cfg: UnlearnConfig, sign: float = 1.0, retain: Data | None = None,
        mask: list[torch.Tensor] | None = None, generator: torch.Generator | None = None) -> int:
    """``cfg.epochs`` passes of SGD (momentum 0.9) over ``data`` on cross-entropy times
    ``sign`` (-1: ascent). With ``retain``, each batch is joined by as many retain records
    drawn at random (their loss always descends), so the cost follows ``data``, not the
    retain set. With ``mask`` (one 0/1 tensor per parameter), only the weights marked 1
    move. ``generator`` (default: seeded with ``cfg.seed``) draws the batches. Returns the
    number of steps."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    g = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    steps = 0
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = sign * F.cross_entropy(model(data.x[idx]), data.y[idx])
            if retain is not None and len(retain):
                r = torch.randint(len(retain), (len(idx),), generator=g)
                loss = loss + F.cross_entropy(model(retain.x[r]), retain.y[r])
            loss.backward()
            if mask is not None:
                for p, m in zip(model.parameters(), mask):
                    if p.grad is not None:
                        p.grad.mul_(m)
            opt.step()
            steps += 1
    return steps
