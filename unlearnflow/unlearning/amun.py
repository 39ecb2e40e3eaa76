"""amun: "Not All Wrong is Bad: Using Adversarial Examples for Unlearning"
(Ebrahimpour-Boroojeny et al., ICML 2025).

For every forget example, the nearest adversarial example under L2 PGD: start from a
radius (``eps_init``, or the example's logit margin over its input-gradient norm, the
linearised distance to the decision boundary), run ``pgd_steps`` steps, and double the
radius for the examples whose prediction has not flipped yet (at most
``eps_doublings`` times). All examples are searched together in one batch and each
stops at its first flip. The adversarial examples are labelled with the model's own
(wrong) prediction, and adversarial images are kept in the pixel range. The model is then
fine-tuned on forget + adversarial examples; with retain data, by default on retain +
forget + adversarial examples each epoch, as the authors' code does (``unlearn.amun.retain:
full``), or with each batch joined by as many random retain records (``batch``: cheaper).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnflow.unlearning._base import Data, FineTuning, Unlearner, concat, fit, register_unlearner


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def margin_radius(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(logit_y - best other logit) / |d margin / dx|: first-order distance to the boundary."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other[torch.arange(len(y), device=y.device), y] = -torch.inf
    margin = true - other.max(1).values
    (grad,) = torch.autograd.grad(margin.sum(), x)
    return (margin.detach().clamp_min(0) / _norms(grad).flatten()).clamp_min(1e-3)


def nearest_adversarial(model, x: torch.Tensor, y: torch.Tensor, steps: int, eps_init: float | None,
                        doublings: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(adversarial inputs, the model's label for them, radius used) per example. An
    example that never flips keeps its last PGD point, labelled with the model's prediction."""
    model.eval()
    eps = torch.full((len(y),), float(eps_init), device=x.device) if eps_init else margin_radius(model, x, y)
    adv, label = x.clone(), y.clone()
    todo = torch.ones(len(y), dtype=torch.bool, device=x.device)
    for _ in range(doublings + 1):
        idx = todo.nonzero().flatten()
        if len(idx) == 0:
            break
        x0, y0, radius = x[idx], y[idx], eps[idx].view(-1, *([1] * (x.dim() - 1)))
        delta = torch.zeros_like(x0)
        active = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x0 + delta), y0)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = 2.5 * radius / steps * grad / _norms(grad)
                delta = torch.where(active.view(-1, *([1] * (x.dim() - 1))), delta + step, delta)
                delta = delta * torch.clamp(radius / _norms(delta), max=1.0)  # project onto the L2 ball
                delta = (x0 + delta).clamp(0, 1) - x0  # and keep a valid image (pixels in [0, 1])
                pred = model(x0 + delta).argmax(1)
                active &= pred == y0  # an example stops at its first flip
            if not active.any():
                break
        with torch.no_grad():
            pred = model(x0 + delta).argmax(1)
        flipped = pred != y0
        adv[idx], label[idx] = (x0 + delta).detach(), pred
        todo[idx[flipped]] = False
        eps[idx[~flipped]] *= 2
    return adv, label, eps


@dataclass(frozen=True)
class AmunSettings(FineTuning):
    """unlearn.amun: the fine-tuning's lr and epochs, the adversarial search, and how retain data joins."""

    pgd_steps: int = 10  # L2 PGD steps per radius
    eps_init: float | None = None  # the first L2 radius; None = from each example's logit margin
    eps_doublings: int = 8  # times the radius may double before giving up on an example
    retain: str = "full"  # full = each epoch over retain + forget + adversarial examples (the authors'
    #                       protocol); batch = each batch joined by as many random retain records (cheaper)

    def __post_init__(self):
        super().__post_init__()
        self.check(self.pgd_steps >= 1, "pgd_steps", "an integer >= 1")
        self.check(self.eps_init is None or self.eps_init > 0, "eps_init", "a positive number or null")
        self.check(self.eps_doublings >= 0, "eps_doublings", "an integer >= 0")
        self.check(self.retain in ("full", "batch"), "retain", "'full' or 'batch'")


@register_unlearner
class AMUN(Unlearner):
    name = "amun"
    Settings = AmunSettings
    summary = "AMUN (ICML 2025): fine-tune on forget + nearest adversarial examples (+ retain: unlearn.amun.retain)"
    # the AMUN paper's grid + 1e-4 (sequential requests without retain chose 1e-3, the smallest)
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001, 1e-4))

    def update(self, model, edit, retain, cfg):
        t0 = time.perf_counter()
        adv, adv_label, eps = nearest_adversarial(model, edit.x, edit.y, cfg.pgd_steps, cfg.eps_init,
                                                  cfg.eps_doublings)
        search = time.perf_counter() - t0
        data = concat(edit.forget, Data(adv, adv_label), edit.replacement)
        if retain is not None and cfg.retain == "full":
            steps = fit(model, concat(retain, data), cfg)
        else:
            steps = fit(model, data, cfg, retain=retain)
        return {"steps": steps, "adversarial_search_seconds": search, "median_eps": float(eps.median()),
                "flipped": float((adv_label != edit.y).float().mean())}
