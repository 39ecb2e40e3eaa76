"""The ``Unlearner`` interface: a model, what to forget, maybe retain data, a config in;
an updated copy of the model and a result record out.

What to forget is an ``Edit`` (Warnecke et al.'s Z -> Z~): the affected points as
trained (``x``, ``y``) and, optionally, what they should have been: corrected labels
(``y_new``, rectification) or corrected features (``x_new``, e.g. a pixel region
zeroed in every record). No replacement means the points are erased.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow._registry import Registry
from unlearnflow.config import TrainConfig, UnlearnConfig, build_settings
from unlearnflow.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """A method's settings (``unlearn.<method>:`` in params.yaml): each method declares a
    subclass next to its code; these three are ``unlearn:``'s shared knobs, filled in from it."""

    use_retain: bool = True
    batch_size: int = 64
    seed: int = 0

    def check(self, ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{self.section}.{key} = {getattr(self, key)!r} is invalid: expected {expected}")

    section = "unlearn"  # where its values come from, for messages (set by register_unlearner)


@dataclass(frozen=True)
class FineTuning(Settings):
    """What every method that fine-tunes reads (``fit``)."""

    lr: float = 0.01  # SGD step size
    epochs: int = 5  # passes over the method's fine-tuning data

    def __post_init__(self):
        self.check(self.lr > 0, "lr", "a positive number")
        self.check(self.epochs >= 0, "epochs", "an integer >= 0")


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
    Settings: type[Settings] = Settings  # the method's settings (a subclass declared in its module)

    def __call__(self, model: nn.Module, edit: Edit, retain: Data | None,
                 cfg: UnlearnConfig | Settings) -> tuple[nn.Module, UnlearnResult]:
        """``cfg``: the workspace's ``UnlearnConfig`` (this method's section is read from it)
        or this method's ``Settings``."""
        cfg = cfg if isinstance(cfg, self.Settings) else settings_of(self.name, cfg)
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

    def update(self, model: nn.Module, edit: Edit, retain: Data | None, cfg: Settings) -> dict | None:
        raise NotImplementedError


UNLEARNERS: Registry = Registry("unlearning method")


def register_unlearner(cls):
    if cls.Settings is not Settings:
        cls.Settings.section = f"unlearn.{cls.name}"
    UNLEARNERS.register(cls.name)(cls)
    return cls


def settings_of(name: str, cfg: UnlearnConfig) -> Settings:
    """Method ``name``'s settings: its section ``unlearn.<name>`` over the flat settings of the
    old form that it has (``UnlearnConfig.flat``), with ``unlearn:``'s shared knobs; typed and
    checked by the method's ``Settings`` (a one-line error naming the key and the valid ones)."""
    cls = UNLEARNERS.get(name).Settings
    names = {f.name for f in dataclasses.fields(cls)}
    flat = {k: v for k, v in cfg.flat.items() if k in names}
    section = dict(cfg.methods.get(name) or {})
    shared = sorted(set(section) & set(UnlearnConfig.COMMON))
    if shared:
        raise ConfigError(f"unlearn.{name}.{shared[0]} is set under unlearn: for every method; remove it from "
                          f"unlearn.{name}")
    own = sorted(names - set(UnlearnConfig.COMMON))
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in unlearn.{name}; valid keys: "
                          f"{', '.join(own) or f'none ({name} has no settings of its own)'}")
    return build_settings(cls, {**flat, **section, **{k: getattr(cfg, k) for k in UnlearnConfig.COMMON}},
                          f"unlearn.{name}")


def concat(*parts: Data | None) -> Data:
    parts = [p for p in parts if p is not None and len(p)]
    return Data(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def fit(model: nn.Module, data: Data, cfg: FineTuning, sign: float = 1.0, retain: Data | None = None,
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
