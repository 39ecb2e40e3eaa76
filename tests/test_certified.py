"""Certified removal (Guo et al. 2020) for L2-regularised logistic regression: the Newton
removal, its gradient-residual bound by hand, and the gap to retraining."""

import math

import numpy as np
import pytest
import torch

from unlearnflow.certified import (GAMMA, budget, certified_radius, features, objective_grad, perturbation, remove,
                                   signs, train, worst_case_bound)
from unlearnflow.config import CertifiedConfig

CFG = CertifiedConfig(lam=0.05, sigma=0.5, epsilon=1.0, delta=1e-4)
SEED = 3
B = perturbation(9, 3, CFG.sigma, SEED)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 3, 3, generator=g)  # 60 records of 9 "pixels" in [0, 1]
    y = torch.randint(0, 3, (60,), generator=g)
    return features(x), y


def test_training_reaches_the_optimum_of_the_perturbed_objective(data):
    X, y = data
    assert (X.norm(dim=1) <= 1 + 1e-12).all()
    W = train(X, y, 3, CFG, SEED)
    b = B
    for j, s in enumerate(signs(y, 3)):
        assert objective_grad(W[j], X, s, CFG.lam, b[j]).norm() < 1e-9


def test_the_bound_equals_a_hand_computation_and_bounds_the_residual(data):
    X, y = data
    W = train(X, y, 3, CFG, SEED)
    keep, gone = slice(1, None), slice(0, 1)  # remove record 0
    removal = remove(W, X[keep], y[keep], X[gone], y[gone], CFG, B)

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
    # Theorem 3's budget, split over the K = 3 one-vs-all classifiers (epsilon/K, delta/K each)
    assert budget(CFG, 3) == pytest.approx(CFG.sigma * (CFG.epsilon / 3) / math.sqrt(2 * math.log(1.5 * 3 / CFG.delta)))


@pytest.mark.parametrize("removed", [1, 3])
def test_a_removal_lands_within_the_certified_radius_of_retraining(data, removed):
    X, y = data
    W = train(X, y, 3, CFG, SEED)
    keep, gone = slice(removed, None), slice(0, removed)
    removal = remove(W, X[keep], y[keep], X[gone], y[gone], CFG, B)
    retrained = train(X[keep], y[keep], 3, CFG, SEED)  # the same perturbation b: the model D' alone would give
    n_left = len(X) - removed
    for j in range(3):
        gap = float((removal.weights[j] - retrained[j]).norm())
        assert gap <= certified_radius(removal.bounds[j], n_left, CFG.lam)
        assert gap < float((W[j] - retrained[j]).norm())  # the Newton step moved towards the retrained model
    assert max(removal.bounds) < budget(CFG, 3)  # this small removal is (epsilon, delta)-certified


# --- through the pipeline's pieces: certified training of a logreg constituent, the method by name ---

def certified_constituent(n=120, cfg=CertifiedConfig(lam=0.05, sigma=0.5), store=None, records=None):
    from conftest import make_records
    from unlearnflow.config import PartitionConfig, TrainConfig
    from unlearnflow.models import create_model
    from unlearnflow.partition import partition
    from unlearnflow.training import ModelSpec, derive_seed, train_constituent

    records = records if records is not None else make_records(n, shape=(1, 4, 4))
    (manifest, images), = partition(records, PartitionConfig(shards=(0,), slices=3))
    spec = ModelSpec("logreg", (1, 4, 4), 4)
    tcfg = TrainConfig(model="logreg", certified=cfg)
    result = train_constituent(manifest, images, spec, tcfg, store)
    model = create_model("logreg", spec.input_shape, 4, seed=0)
    model.load_state_dict(result.state_dict)
    return model.eval(), manifest, images, result, derive_seed(tcfg.seed, 0, "perturbation")


def as_tensors(manifest, images, rows):
    from unlearnflow.training import to_input

    return to_input(np.asarray(images[rows])), torch.as_tensor(np.asarray(manifest.labels)[rows])


def test_a_certified_constituent_is_the_optimum_on_its_shard_and_resumes_bitwise(tmp_path):
    from unlearnflow.checkpoints import CheckpointStore

    model, manifest, images, result, seed = certified_constituent(store=CheckpointStore(tmp_path))
    x, y = as_tensors(manifest, images, np.arange(len(manifest)))
    b = perturbation(16, 4, 0.5, seed)
    W = model.linear.weight.detach()
    for j, s in enumerate(signs(y, 4)):  # stage R ended at the optimum over every slice
        assert objective_grad(W[j], features(x), s, 0.05, b[j]).norm() < 1e-9
    assert model.certified_config() == CertifiedConfig(lam=0.05, sigma=0.5) and float(model.spent.sum()) == 0

    # drop the newest checkpoint: training resumes from stage 2 and lands on the same bits
    CheckpointStore(tmp_path).path(result.slice_keys[-1]).unlink()
    resumed = certified_constituent(store=CheckpointStore(tmp_path))[3]
    assert resumed.resumed_from == 1 and resumed.trained_stages == [2]
    assert all(torch.equal(resumed.state_dict[k], result.state_dict[k]) for k in result.state_dict)


def test_certified_removal_by_name_stays_within_the_radius_of_retraining():
    from unlearnflow.config import UnlearnConfig
    from unlearnflow.unlearning import Data, Edit, create_unlearner

    model, manifest, images, _, seed = certified_constituent()
    x, y = as_tensors(manifest, images, np.arange(len(manifest)))
    gone, keep = slice(0, 2), slice(2, None)
    cfg = UnlearnConfig(method="certified_removal")
    updated, result = create_unlearner("certified_removal")(model, Edit(x[gone], y[gone]), Data(x[keep], y[keep]), cfg)
    d = result.details
    by_hand = remove(model.linear.weight.detach(), features(x[keep]), y[keep], features(x[gone]), y[gone],
                     CertifiedConfig(lam=0.05, sigma=0.5), perturbation(16, 4, 0.5, seed))
    assert d["bound"] == pytest.approx(max(by_hand.bounds), rel=1e-12) and not d["retrain_triggered"]
    assert d["spent"] == pytest.approx(max(by_hand.bounds)) and d["spent"] <= d["budget"]
    assert d["budget"] == pytest.approx(budget(CertifiedConfig(lam=0.05, sigma=0.5), 4))
    assert d["residual"] <= d["bound"]
    retrained = train(features(x[keep]), y[keep], 4, CertifiedConfig(lam=0.05, sigma=0.5), seed)
    gap = float((updated.linear.weight.detach() - retrained).norm(dim=1).max())
    assert gap <= d["certified_radius"]
    assert d["certified_radius"] == pytest.approx(certified_radius(d["spent"], len(y) - 2, 0.05))
    assert torch.equal(updated.spent, torch.tensor(by_hand.bounds, dtype=torch.float64))


def test_corrected_labels_go_by_the_same_newton_step():
    from unlearnflow.config import UnlearnConfig
    from unlearnflow.unlearning import Data, Edit, create_unlearner

    roomy = CertifiedConfig(lam=0.05, sigma=0.5, epsilon=10.0)  # three corrections fit this budget
    model, manifest, images, _, seed = certified_constituent(cfg=roomy)
    x, y = as_tensors(manifest, images, np.arange(len(manifest)))
    fixed = (y[:3] + 1) % 4
    updated, result = create_unlearner("certified_removal")(
        model, Edit(x[:3], y[:3], y_new=fixed), Data(x[3:], y[3:]), UnlearnConfig(method="certified_removal"))
    assert not result.details["retrain_triggered"]
    corrected = train(features(x), torch.cat([fixed, y[3:]]), 4, roomy, seed)
    gap = float((updated.linear.weight.detach() - corrected).norm(dim=1).max())
    before = float((model.linear.weight.detach() - corrected).norm(dim=1).max())
    assert gap <= result.details["certified_radius"] and gap < before / 10


def test_a_removal_past_the_budget_retrains_and_resets_what_is_spent():
    from unlearnflow.config import UnlearnConfig
    from unlearnflow.unlearning import Data, Edit, create_unlearner

    tight = CertifiedConfig(lam=0.05, sigma=0.5, epsilon=1.0)  # a budget a few removals exhaust
    model, manifest, images, _, seed = certified_constituent(cfg=tight)
    x, y = as_tensors(manifest, images, np.arange(len(manifest)))
    method, cfg = create_unlearner("certified_removal"), UnlearnConfig(method="certified_removal")
    spent, n = [], len(y)
    for i in range(n):
        model, result = method(model, Edit(x[i:i + 1], y[i:i + 1]), Data(x[i + 1:], y[i + 1:]), cfg)
        spent.append(result.details["spent"])
        if result.details["retrain_triggered"]:
            break
    assert 0 < i < n - 1 and spent[-1] == 0.0 and spent[:-1] == sorted(spent[:-1])  # spent grew, then reset
    assert spent[-2] <= budget(tight, 4) < spent[-2] + result.details["bound"]
    new_seed = int(model.perturbation_seed)
    assert new_seed != seed and float(model.spent.sum()) == 0.0
    b = perturbation(16, 4, tight.sigma, new_seed)  # the exact optimum on what is left, fresh perturbation
    for j, s in enumerate(signs(y[i + 1:], 4)):
        assert objective_grad(model.linear.weight.detach()[j], features(x[i + 1:]), s, tight.lam, b[j]).norm() < 1e-9


@pytest.mark.parametrize("raw, message", [
    ({"train": {"model": "cnn", "certified": {}}}, "train.model = 'cnn' is invalid: expected 'logreg' when train.certified"),
    ({"train": {"model": "logreg", "certified": {"sigma": 0}}}, "train.certified.sigma = 0.0 is invalid"),
    ({"train": {"model": "logreg", "certified": {}}, "partition": {"overlap": 0.5}},
     "partition.overlap = 0.5 is invalid: expected 0 when train.certified is set"),
])
def test_certified_settings_are_checked(raw, message):
    from unlearnflow.config import parse_params
    from unlearnflow.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_params(raw)
