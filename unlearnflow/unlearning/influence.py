"""influence_first_order / influence_second_order: Warnecke et al., "Machine Unlearning
of Features and Labels" (NDSS 2023).

The affected points Z are replaced by corrected points Z~ (none, for an erasure), and
the parameters move by the change this makes to the training gradient:

    first order   theta <- theta - tau * (G(Z~) - G(Z))                 tau = unlearn.influence_first_order.lr
    second order  theta <- theta - A^-1 (G(Z~) - G(Z)) / n
                  A = mean Hessian of the remaining training loss + (C / n + damping) I

G(.) is the summed loss gradient over a set, n the number of remaining training
records, C = ``unlearn.l2`` the L2 strength of the objective sum(loss) + C/2 |theta|^2
(0 for the pipeline's models), and A^-1 v is solved by conjugate gradients or LiSSA
(``unlearn.ihvp``) with Hessian-vector products on up to ``hessian_samples`` retain
records (without retain data: on the corrected or affected points themselves, a rough
estimate). One update; no epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnflow.unlearning._base import Data, Settings, Unlearner, concat, register_unlearner


def _params(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def grad_sum(model, data: Data | None, batch_size: int = 512) -> list[torch.Tensor]:
    """Sum over ``data`` of each record's loss gradient (zeros for no data)."""
    params = _params(model)
    total = [torch.zeros_like(p) for p in params]
    if data is None:
        return total
    for start in range(0, len(data), batch_size):
        loss = F.cross_entropy(model(data.x[start:start + batch_size]), data.y[start:start + batch_size],
                               reduction="sum")
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g
    return total


def hvp(model, data: Data, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean-loss Hessian of ``data`` times ``v`` (double backward)."""
    params = _params(model)
    loss = F.cross_entropy(model(data.x), data.y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * u).sum() for g, u in zip(grads, v))
    return [h.detach() for h in torch.autograd.grad(dot, params)]


def _dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradients(apply_a, b: list[torch.Tensor], iterations: int, tol: float = 1e-10) -> list[torch.Tensor]:
    """Solve A u = b for symmetric A given as a function; stops early when the residual is tiny."""
    u = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = _dot(r, r)
    for _ in range(iterations):
        if rr <= tol * tol:
            break
        ap = apply_a(p)
        curvature = _dot(p, ap)
        if curvature <= 0:  # not positive definite along p: stop with what we have
            break
        alpha = rr / curvature
        u = [x + alpha * y for x, y in zip(u, p)]
        r = [x - alpha * y for x, y in zip(r, ap)]
        rr_new = _dot(r, r)
        p = [x + (rr_new / rr) * y for x, y in zip(r, p)]
        rr = rr_new
    return u


def lissa(apply_a, b: list[torch.Tensor], iterations: int, scale: float) -> list[torch.Tensor]:
    """A^-1 b by the Neumann series u <- b + (I - A/scale) u, then u / scale
    (converges when scale exceeds A's largest eigenvalue)."""
    u = [t.clone() for t in b]
    for _ in range(iterations):
        au = apply_a(u)
        u = [bb + x - y / scale for bb, x, y in zip(b, u, au)]
    return [x / scale for x in u]


def _gradient_change(model, edit) -> list[torch.Tensor]:
    """G(Z~) - G(Z)."""
    return [new - old for new, old in zip(grad_sum(model, edit.replacement), grad_sum(model, edit.forget))]


def _apply_update(model, step: list[torch.Tensor]) -> float:
    with torch.no_grad():
        for p, s in zip(_params(model), step):
            p -= s
    return float(torch.sqrt(_dot(step, step)))


@dataclass(frozen=True)
class FirstOrderSettings(Settings):
    """unlearn.influence_first_order: the unlearning rate tau."""

    lr: float = 0.01  # tau: theta -= tau (grad L(Z~) - grad L(Z))

    def __post_init__(self):
        self.check(self.lr > 0, "lr", "a positive number")


@dataclass(frozen=True)
class SecondOrderSettings(Settings):
    """unlearn.influence_second_order: the trained objective's L2, and how H^-1 v is computed."""

    l2: float = 0.0  # L2 strength C of the trained objective sum(loss) + C/2 |theta|^2
    damping: float = 0.01  # added to the mean Hessian's diagonal
    ihvp: str = "cg"  # cg | lissa
    ihvp_iterations: int = 50
    hessian_samples: int = 1024  # retain records the Hessian is estimated on
    lissa_scale: float = 50.0  # LiSSA: an upper bound on the mean Hessian's largest eigenvalue

    def __post_init__(self):
        self.check(self.l2 >= 0, "l2", "a number >= 0")
        self.check(self.damping >= 0, "damping", "a number >= 0")
        self.check(self.ihvp in ("cg", "lissa"), "ihvp", "cg or lissa")
        self.check(self.ihvp_iterations >= 1, "ihvp_iterations", "an integer >= 1")
        self.check(self.hessian_samples >= 1, "hessian_samples", "an integer >= 1")
        self.check(self.lissa_scale > 0, "lissa_scale", "a positive number")


@register_unlearner
class InfluenceFirstOrder(Unlearner):
    name = "influence_first_order"
    Settings = FirstOrderSettings
    summary = "Warnecke et al. (NDSS 2023): theta -= tau (grad L(Z~) - grad L(Z)); erases, relabels or changes features"
    bench_grid = tuple({"lr": tau} for tau in (1e-3, 1e-4, 1e-5, 1e-6))
    can_use_retain = False

    def update(self, model, edit, retain, cfg):
        model.eval()
        change = _gradient_change(model, edit)
        return {"step_norm": _apply_update(model, [cfg.lr * c for c in change])}


@register_unlearner
class InfluenceSecondOrder(Unlearner):
    name = "influence_second_order"
    Settings = SecondOrderSettings
    summary = "Warnecke et al.: theta -= H^-1 (grad L(Z~) - grad L(Z)) / n, by CG or LiSSA"
    bench_grid = tuple({"damping": d} for d in (0.01, 0.1, 1.0))

    def update(self, model, edit, retain, cfg):
        model.eval()
        n = _remaining(edit, retain)
        change = [c / n for c in _gradient_change(model, edit)]
        sample = concat(retain, edit.replacement) if retain is not None else (edit.replacement or edit.forget)
        if len(sample) > cfg.hessian_samples:
            g = torch.Generator().manual_seed(cfg.seed)
            idx = torch.randperm(len(sample), generator=g)[:cfg.hessian_samples]
            sample = Data(sample.x[idx], sample.y[idx])
        shift = cfg.l2 / n + cfg.damping

        def apply_a(v):
            return [h + shift * x for h, x in zip(hvp(model, sample, v), v)]

        if cfg.ihvp == "cg":
            step = conjugate_gradients(apply_a, change, cfg.ihvp_iterations)
        else:
            step = lissa(apply_a, change, cfg.ihvp_iterations, cfg.lissa_scale)
        return {"step_norm": _apply_update(model, step), "hessian_records": len(sample), "n": n}


def _remaining(edit, retain) -> int:
    """Records the model is trained on after the edit."""
    if retain is not None:
        return len(retain) + (0 if edit.erases else len(edit.y))
    if edit.train_size is None:
        raise ValueError("influence_second_order without retain data needs Edit.train_size (records trained on)")
    return edit.train_size - (len(edit.y) if edit.erases else 0)
