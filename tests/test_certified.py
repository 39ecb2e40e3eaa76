"""Certified removal (Guo et al. 2020) for L2-regularised logistic regression: the Newton
removal, its gradient-residual bound by hand, and the gap to retraining."""

import math

import numpy as np
import pytest
import torch

from unlearnflow.certified import (CertifiedConfig, GAMMA, certified_radius, features, objective_grad,
                                   perturbation, remove, signs, train, worst_case_bound)

CFG = CertifiedConfig(lam=0.05, sigma=0.5, epsilon=1.0, delta=1e-4, seed=3)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 3, 3, generator=g)  # 60 records of 9 "pixels" in [0, 1]
    y = torch.randint(0, 3, (60,), generator=g)
    return features(x), y


def test_training_reaches_the_optimum_of_the_perturbed_objective(data):
    X, y = data
    assert (X.norm(dim=1) <= 1 + 1e-12).all()
    W = train(X, y, 3, CFG)
    b = perturbation(X.shape[1], 3, CFG)
    for j, s in enumerate(signs(y, 3)):
        assert objective_grad(W[j], X, s, CFG.lam, b[j]).norm() < 1e-9


def test_the_bound_equals_a_hand_computation_and_bounds_the_residual(data):
    X, y = data
    W = train(X, y, 3, CFG)
    keep, gone = slice(1, None), slice(0, 1)  # remove record 0
    removal = remove(W, X[keep], y[keep], X[gone], y[gone], CFG)

    # Guo et al., by hand in numpy for classifier j: Delta = lam m w + grad of the removed loss,
    # H = X'^T diag(p(1-p)) X' + lam n' I, bound = gamma |X'|_2 |H^-1 Delta| |X' H^-1 Delta|
    Xk, x0 = X[keep].numpy(), X[0].numpy()
    for j in range(3):
        w = W[j].numpy()
        s0 = 1.0 if int(y[0]) == j else -1.0
        delta = CFG.lam * 1 * w + (-s0 * x0 / (1 + math.exp(s0 * x0 @ w)))
        p = 1 / (1 + np.exp(-(Xk @ w)))
        H = (Xk * (p * (1 - p))[:, None]).T @ Xk + CFG.lam * len(Xk) * np.eye(len(w))
        step = np.linalg.solve(H, delta)
        by_hand = 0.25 * np.linalg.norm(Xk, 2) * np.linalg.norm(step) * np.linalg.norm(Xk @ step)
        assert removal.bounds[j] == pytest.approx(by_hand, rel=1e-9)
        assert np.allclose(removal.weights[j].numpy(), w + step, atol=1e-12)
        assert removal.residuals[j] <= removal.bounds[j] <= worst_case_bound(len(X), CFG.lam)
    assert GAMMA == 0.25
    assert CFG.budget == pytest.approx(CFG.sigma * CFG.epsilon / math.sqrt(2 * math.log(1.5 / CFG.delta)))


@pytest.mark.parametrize("removed", [1, 3])
def test_a_removal_lands_within_the_certified_radius_of_retraining(data, removed):
    X, y = data
    W = train(X, y, 3, CFG)
    keep, gone = slice(removed, None), slice(0, removed)
    removal = remove(W, X[keep], y[keep], X[gone], y[gone], CFG)
    retrained = train(X[keep], y[keep], 3, CFG)  # the same perturbation b: the model D' alone would give
    n_left = len(X) - removed
    for j in range(3):
        gap = float((removal.weights[j] - retrained[j]).norm())
        assert gap <= certified_radius(removal.bounds[j], n_left, CFG.lam)
        assert gap < float((W[j] - retrained[j]).norm())  # the Newton step moved towards the retrained model
    assert sum(removal.bounds) < CFG.budget  # this small removal is (epsilon, delta)-certified
