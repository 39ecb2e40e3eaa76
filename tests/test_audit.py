"""Audit metrics on data with a known answer (issue 4, first part)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from unlearnflow.audit import ATTACKS, Outputs, auc, create_attack


def outputs_with_confidence(conf: np.ndarray, k: int = 10) -> Outputs:
    """Probabilities whose true-class entry is ``conf`` (label 0), the rest spread evenly."""
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[:, 0] = conf
    return Outputs(probs, np.zeros(len(conf), dtype=np.int64))


def test_auc_agrees_with_scikit_learn_including_ties():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.3, 1, 300).round(1), rng.normal(0, 1, 200).round(1)  # rounding makes ties
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[m, n])
    assert auc(m, n) == pytest.approx(expected, abs=1e-12)


def test_a_random_split_of_one_population_gives_auc_near_one_half():
    rng = np.random.default_rng(1)
    conf = rng.beta(8, 2, 4000)
    a, b = outputs_with_confidence(conf[:2000]), outputs_with_confidence(conf[2000:])
    assert abs(create_attack("loss_threshold").score(a, b)["auc"] - 0.5) < 0.03


def test_members_of_an_overfit_model_are_clearly_detected():
    rng = np.random.default_rng(2)
    members = outputs_with_confidence(rng.beta(20, 1, 1000))  # fitted: confidence near 1
    unseen = outputs_with_confidence(rng.beta(4, 2, 1000))
    assert create_attack("loss_threshold").score(members, unseen)["auc"] > 0.8


def test_svc_efficacy_calls_unseen_like_data_non_members_and_memorised_data_members():
    rng = np.random.default_rng(3)
    retain = outputs_with_confidence(rng.beta(20, 1, 800))
    test = outputs_with_confidence(rng.beta(4, 2, 800))
    looks_unseen = outputs_with_confidence(rng.beta(4, 2, 200))
    memorised = outputs_with_confidence(rng.beta(20, 1, 200))
    attack = create_attack("svc_efficacy")
    assert attack.score(retain, test, looks_unseen)["efficacy"] > 0.7
    assert attack.score(retain, test, memorised)["efficacy"] < 0.3


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_returns_finite_numbers_in_unit_range(name):
    rng = np.random.default_rng(4)
    a, b, c = (outputs_with_confidence(rng.uniform(0.05, 0.99, 100)) for _ in range(3))
    result = create_attack(name).score(a, b, c)
    assert result and all(0.0 <= v <= 1.0 for v in result.values())


def test_outputs_accuracy_loss_and_confidence():
    out = Outputs(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 0, 1]))
    assert out.accuracy() == pytest.approx(1 / 3)
    np.testing.assert_allclose(out.confidence, [0.9, 0.2, 0.4])
    np.testing.assert_allclose(out.loss, -np.log([0.9, 0.2, 0.4]))
