"""Certified removal for L2-regularised logistic regression (Guo et al., "Certified Data
Removal from Machine Learning Models", ICML 2020). Pure math on float64 tensors; the
``logreg`` model (``models/logreg.py``) carries the weights and what they were trained
for, and the ``certified_removal`` method (``unlearning/certified_removal.py``) applies it.

Training minimises, for each class j one-vs-all (labels s in {-1, +1}),

    L_b(w; D) = sum_i log(1 + exp(-s_i w.x_i)) + lam * n / 2 * |w|^2 + b.w,     b ~ N(0, sigma^2 I)

to its optimum (Newton's method in float64). The random linear term b is the loss
perturbation: it hides the small gradient a removal leaves behind.

Editing the data D -> D' (records removed, or replaced by corrected ones): with
Delta = -grad L_b(w; D') (b cancels: it is sum over removed grad l - sum over added grad l
+ lam (n - n') w at an optimum of D) and H the Hessian of L_b(.; D') at w, the Newton step
is  w- = w + H^-1 Delta.  w- is not D''s optimum; its gradient residual |grad L_b(w-; D')|
is bounded by (Guo et al., Corollary 2, data-dependent)

    bound = gamma * |X'|_2 * |H^-1 Delta| * |X' H^-1 Delta|,      gamma = 1/4 for logistic loss,

X' the remaining records' features. The bounds of successive edits add up. A classifier is
(epsilon, delta)-certified while its accumulated bound stays within sigma * epsilon / c,
c = sqrt(2 log(1.5 / delta)) (their Theorem 3: then it is (epsilon, delta)-indistinguishable
from one trained on D' alone); past that, retrain. The K one-vs-all classifiers are K
releases, so each gets (epsilon / K, delta / K) and the model (epsilon, delta) by basic
composition (``budget``). Because L_b(.; D') is lam*n'-strongly convex, w- is within
bound / (lam * n') of the retrained optimum: the certified radius.

Features are pixels scaled so that |x| <= 1, which the paper's worst-case bound assumes:
``worst_case_bound`` = 4 gamma / (lam^2 (n - 1)) for one removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unlearnflow.config import CertifiedConfig

GAMMA = 0.25  # Lipschitz constant of the logistic loss's second derivative, as Guo et al. take it


def budget(cfg: CertifiedConfig, classes: int) -> float:
    """The accumulated gradient-residual bound each of ``classes`` one-vs-all classifiers may
    carry for the whole model to stay (epsilon, delta)-certified: (epsilon/K, delta/K) each."""
    eps, delta = cfg.epsilon / classes, cfg.delta / classes
    return cfg.sigma * eps / math.sqrt(2 * math.log(1.5 / delta))


def features(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) inputs in [0, 1] -> (N, d) float64 rows of norm <= 1 (divided by sqrt(d))."""
    flat = x.reshape(len(x), -1).to(torch.float64)
    return flat / math.sqrt(flat.shape[1])


def perturbation(d: int, classes: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, d, generator=g, dtype=torch.float64) * sigma  # (K, d)


def signs(y: torch.Tensor, classes: int) -> torch.Tensor:
    """(N,) class indices -> (K, N) one-vs-all labels in {-1, +1}."""
    return (torch.arange(classes, device=y.device)[:, None] == y[None, :]).to(torch.float64) * 2 - 1


def objective_grad(w: torch.Tensor, X: torch.Tensor, s: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    """grad of L_b(w; D) for one classifier: -X^T (s * sigmoid(-s Xw)) + lam n w + b."""
    z = s * (X @ w)
    return -(X.T @ (s * torch.sigmoid(-z))) + lam * len(X) * w + b


def hessian(w: torch.Tensor, X: torch.Tensor, lam: float) -> torch.Tensor:
    p = torch.sigmoid(X @ w)
    return X.T @ (X * (p * (1 - p))[:, None]) + lam * len(X) * torch.eye(X.shape[1], dtype=X.dtype)


def newton_step(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """H^-1 g for a symmetric positive definite H (Cholesky)."""
    return torch.cholesky_solve(g[:, None], torch.linalg.cholesky(H))[:, 0]


def train(X: torch.Tensor, y: torch.Tensor, classes: int, cfg: CertifiedConfig, seed: int,
          start: torch.Tensor | None = None, iterations: int = 50, tol: float = 1e-10) -> torch.Tensor:
    """(K, d) optimum of L_b for each one-vs-all classifier, b drawn from ``seed``: Newton's
    method from ``start`` (default 0). The objective is strongly convex, so it converges to the
    unique optimum; a warm start (the previous slice stage's weights) saves iterations."""
    b = perturbation(X.shape[1], classes, cfg.sigma, seed)
    W = torch.zeros(classes, X.shape[1], dtype=torch.float64) if start is None else start.clone()
    for j, s in enumerate(signs(y, classes)):
        for _ in range(iterations):
            g = objective_grad(W[j], X, s, cfg.lam, b[j])
            if g.norm() < tol:
                break
            W[j] = W[j] - newton_step(hessian(W[j], X, cfg.lam), g)
    return W


@dataclass
class Update:
    weights: torch.Tensor  # (K, d) after the Newton step
    bounds: list[float]  # per classifier: the data-dependent gradient-residual bound of this edit
    residuals: list[float]  # per classifier: the actual |grad L_b(w-; D')| (needs b; audits and tests)


def remove(W: torch.Tensor, X_keep: torch.Tensor, y_keep: torch.Tensor, X_gone: torch.Tensor, y_gone: torch.Tensor,
           cfg: CertifiedConfig, b: torch.Tensor, X_add: torch.Tensor | None = None,
           y_add: torch.Tensor | None = None) -> Update:
    """One Newton step per classifier taking a model of D = keep + gone to D' = keep + add
    (no ``add``: a removal; with it, the gone records' corrected versions)."""
    classes, lam = W.shape[0], cfg.lam
    if X_add is not None and len(X_add):
        X_new, y_new = torch.cat([X_keep, X_add]), torch.cat([y_keep, y_add])
    else:
        X_new, y_new = X_keep, y_keep
        X_add, y_add = X_gone[:0], y_gone[:0]
    new_s, gone_s, add_s = signs(y_new, classes), signs(y_gone, classes), signs(y_add, classes)
    norm_X = torch.linalg.matrix_norm(X_new, 2)
    out, bounds, residuals = W.clone(), [], []
    for j in range(classes):
        w = W[j]
        pulled = -(X_gone.T @ (gone_s[j] * torch.sigmoid(-gone_s[j] * (X_gone @ w))))  # sum of removed grads
        pushed = -(X_add.T @ (add_s[j] * torch.sigmoid(-add_s[j] * (X_add @ w))))  # sum of added grads
        delta = pulled - pushed + lam * (len(X_keep) + len(X_gone) - len(X_new)) * w
        step = newton_step(hessian(w, X_new, lam), delta)
        out[j] = w + step
        bounds.append(float(GAMMA * norm_X * step.norm() * (X_new @ step).norm()))
        residuals.append(float(objective_grad(out[j], X_new, new_s[j], lam, b[j]).norm()))
    return Update(out, bounds, residuals)


def worst_case_bound(n: int, lam: float) -> float:
    """Guo et al.'s data-independent bound for removing one of n records with |x| <= 1."""
    return 4 * GAMMA / (lam ** 2 * (n - 1))


def certified_radius(bound: float, n_remaining: int, lam: float) -> float:
    """How far w- can be from the retrained optimum: bound / (lam * n') by strong convexity."""
    return bound / (lam * n_remaining)
