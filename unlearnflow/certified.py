"""Certified removal for L2-regularised logistic regression (Guo et al., "Certified Data
Removal from Machine Learning Models", ICML 2020).

Training minimises, for each class j one-vs-all (labels y in {-1, +1}),

    L_b(w; D) = sum_i log(1 + exp(-y_i w.x_i)) + lam * n / 2 * |w|^2 + b.w,     b ~ N(0, sigma^2 I)

to its optimum (L-BFGS in float64). The random linear term b is the loss perturbation: it
hides the small gradient a removal leaves behind.

Removing m records: with Delta = lam * m * w + sum_removed grad l(w.x, y) (the gradient the
remaining objective L_b(.; D') has at w, negated) and H the Hessian of L_b(.; D') at w, the
Newton step is  w- = w + H^-1 Delta.  w- is not D''s optimum; its gradient residual
|grad L_b(w-; D')| is bounded by (Guo et al., Corollary 2, data-dependent)

    bound = gamma * |X'|_2 * |H^-1 Delta| * |X' H^-1 Delta|,      gamma = 1/4 for logistic loss,

X' the remaining records' features. Removals are certified while the bounds accumulated since
training stay within  sigma * epsilon / c,  c = sqrt(2 log(1.5 / delta))  (their Theorem 3:
then the model is (epsilon, delta)-indistinguishable from one trained on D' alone); past that,
retrain. Because L_b(.; D') is lam*n'-strongly convex, w- is within bound / (lam * n') of the
retrained optimum: the certified radius.

Features are scaled so that |x| <= 1, which the paper's worst-case bound assumes:
``worst_case_bound`` = 4 gamma / (lam^2 (n - 1)) for one removal.

Status: the math and its tests (``tests/test_certified.py``); not yet wired into the
pipeline. Still to do (issue 13): constituents of ``train.model: logreg`` trained by
``train`` here instead of Adam, a ``certified_removal`` method in the registry, and
(epsilon, delta, bound, retrain triggered) in the certificate and MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GAMMA = 0.25  # Lipschitz constant of the logistic loss's second derivative, as Guo et al. take it


@dataclass(frozen=True)
class CertifiedConfig:
    lam: float = 1e-3  # L2 strength, per record (the objective has lam * n / 2 * |w|^2)
    sigma: float = 1.0  # standard deviation of the loss perturbation b
    epsilon: float = 1.0
    delta: float = 1e-4
    seed: int = 0

    @property
    def budget(self) -> float:
        """The accumulated gradient residual bound a model may carry and stay (epsilon, delta)-certified."""
        return self.sigma * self.epsilon / math.sqrt(2 * math.log(1.5 / self.delta))


def features(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) inputs -> (N, d) float64 rows scaled to norm <= 1 (pixels in [0, 1]: divide by sqrt(d))."""
    flat = x.reshape(len(x), -1).to(torch.float64)
    return flat / math.sqrt(flat.shape[1])


def perturbation(d: int, classes: int, cfg: CertifiedConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randn(classes, d, generator=g, dtype=torch.float64) * cfg.sigma  # (K, d)


def signs(y: torch.Tensor, classes: int) -> torch.Tensor:
    """(N,) class indices -> (K, N) one-vs-all labels in {-1, +1}."""
    return (torch.arange(classes)[:, None] == y[None, :]).to(torch.float64) * 2 - 1


def objective_grad(w: torch.Tensor, X: torch.Tensor, s: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    """grad of L_b(w; D) for one classifier: -X^T (s * sigmoid(-s Xw)) + lam n w + b."""
    z = s * (X @ w)
    return -(X.T @ (s * torch.sigmoid(-z))) + lam * len(X) * w + b


def hessian(w: torch.Tensor, X: torch.Tensor, lam: float) -> torch.Tensor:
    p = torch.sigmoid(X @ w)
    return X.T @ (X * (p * (1 - p))[:, None]) + lam * len(X) * torch.eye(X.shape[1], dtype=X.dtype)


def train(X: torch.Tensor, y: torch.Tensor, classes: int, cfg: CertifiedConfig, iterations: int = 50) -> torch.Tensor:
    """(K, d) optimum of L_b for each one-vs-all classifier (Newton's method from 0: the
    objective is strongly convex, so it converges to the unique optimum in a few steps)."""
    b = perturbation(X.shape[1], classes, cfg)
    W = torch.zeros(classes, X.shape[1], dtype=torch.float64)
    for j, s in enumerate(signs(y, classes)):
        for _ in range(iterations):
            g = objective_grad(W[j], X, s, cfg.lam, b[j])
            if g.norm() < 1e-10:
                break
            W[j] = W[j] - torch.linalg.solve(hessian(W[j], X, cfg.lam), g)
    return W


@dataclass
class Removal:
    weights: torch.Tensor  # (K, d) after the Newton step
    bounds: list[float]  # per classifier: the data-dependent gradient residual bound of this removal
    residuals: list[float]  # per classifier: the actual |grad L_b(w-; D')| (for tests and audits)


def remove(W: torch.Tensor, X_keep: torch.Tensor, y_keep: torch.Tensor, X_gone: torch.Tensor,
           y_gone: torch.Tensor, cfg: CertifiedConfig) -> Removal:
    """One Newton step per classifier removing (X_gone, y_gone) from a model of X_keep + X_gone."""
    classes = W.shape[0]
    b = perturbation(W.shape[1], classes, cfg)
    keep_s, gone_s = signs(y_keep, classes), signs(y_gone, classes)
    out, bounds, residuals = W.clone(), [], []
    for j in range(classes):
        w = W[j]
        z = gone_s[j] * (X_gone @ w)
        delta = cfg.lam * len(X_gone) * w - X_gone.T @ (gone_s[j] * torch.sigmoid(-z))
        step = torch.linalg.solve(hessian(w, X_keep, cfg.lam), delta)
        out[j] = w + step
        bounds.append(float(GAMMA * torch.linalg.matrix_norm(X_keep, 2) * step.norm() * (X_keep @ step).norm()))
        residuals.append(float(objective_grad(out[j], X_keep, keep_s[j], cfg.lam, b[j]).norm()))
    return Removal(out, bounds, residuals)


def worst_case_bound(n: int, lam: float) -> float:
    """Guo et al.'s data-independent bound for removing one of n records with |x| <= 1."""
    return 4 * GAMMA / (lam ** 2 * (n - 1))


def certified_radius(bound: float, n_remaining: int, lam: float) -> float:
    """How far w- can be from the retrained optimum: bound / (lam * n') by strong convexity."""
    return bound / (lam * n_remaining)
