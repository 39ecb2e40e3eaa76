"""Audit metrics on data with a known answer."""


import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from unlearnflow.audit import ATTACKS, Outputs, auc, create_attack, tpr_at_fpr
from unlearnflow.audit._base import average_ranks
from unlearnflow.audit.lira import References, membership_plan
from unlearnflow.audit.report import audit, avg_gap


def outputs_with_confidence(conf: np.ndarray, k: int = 10, ids=None) -> Outputs:
    """Probabilities whose true-class entry is ``conf`` (label 0), the rest spread evenly."""
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[:, 0] = conf
    return Outputs(probs, np.zeros(len(conf), dtype=np.int64), ids)


def synthetic_references(n: int = 2000, k: int = 8, seed: int = 5):
    """References where every record has its own difficulty (mean OUT logit-confidence)
    and training on it raises its logit-confidence by 3."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"r{i}" for i in range(n))
    mu_out = rng.normal(0, 3, n)  # hard and easy records: a global threshold mixes them up
    mu_in = mu_out + 3
    member = membership_plan(n, k, seed)
    phi = np.where(member, mu_in, mu_out) + rng.normal(0, 0.5, (k, n))
    return References(ids, np.zeros(n, dtype=np.int64), phi, member), mu_in, mu_out, rng


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_auc_agrees_with_scikit_learn_including_ties():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.3, 1, 300).round(1), rng.normal(0, 1, 200).round(1)  # rounding makes ties
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[m, n])
    assert auc(m, n) == pytest.approx(expected, abs=1e-12)


def test_average_ranks_agree_with_scipy_including_ties():
    from scipy.stats import rankdata

    rng = np.random.default_rng(4)
    for _ in range(100):
        x = rng.integers(0, rng.integers(1, 12), size=rng.integers(1, 60)).astype(float)
        assert np.array_equal(average_ranks(x), rankdata(x)), x


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
    ids = [tuple(f"r{i}" for i in range(j * 100, (j + 1) * 100)) for j in range(3)]
    a, b, c = (outputs_with_confidence(rng.uniform(0.05, 0.99, 100), ids=i) for i in ids)
    kwargs = {"references": synthetic_references(n=300)[0]} if name == "lira" else {}
    result = create_attack(name, **kwargs).score(a, b, c)
    assert result and all(0.0 <= v <= 1.0 for v in result.values())


def test_tpr_at_low_fpr_agrees_with_scikit_learns_roc_curve():
    rng = np.random.default_rng(6)
    m, n = rng.normal(1, 1, 700), rng.normal(0, 1, 900).round(2)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(700), np.zeros(900)], np.r_[m, n])
    for target in (0.001, 0.01, 0.1):
        assert tpr_at_fpr(m, n, target) == pytest.approx(tpr[np.searchsorted(fpr, target, side="right") - 1])


def test_membership_plan_puts_every_record_in_exactly_half_the_references():
    plan = membership_plan(500, 8, seed=0)
    assert plan.shape == (8, 500) and (plan.sum(0) == 4).all()
    assert 200 < plan[0].sum() < 300  # each reference trains on about half the pool
    with pytest.raises(ValueError, match="even number"):
        membership_plan(10, 3, 0)


def test_lira_finds_members_per_example_where_a_global_loss_threshold_cannot():
    refs, mu_in, mu_out, rng = synthetic_references()
    n = len(refs.record_ids)
    is_member = rng.random(n) < 0.5
    target_phi = np.where(is_member, mu_in, mu_out) + rng.normal(0, 0.5, n)
    out = outputs_with_confidence(sigmoid(target_phi), ids=refs.record_ids)
    members = Outputs(out.probs[is_member], out.labels[is_member], tuple(np.array(refs.record_ids)[is_member]))
    non = Outputs(out.probs[~is_member], out.labels[~is_member], tuple(np.array(refs.record_ids)[~is_member]))
    lira = create_attack("lira", references=refs).score(members, non)
    loss = create_attack("loss_threshold").score(members, non)
    assert lira["auc"] > 0.95 and lira["tpr_at_1pct_fpr"] > 0.5
    assert loss["auc"] < lira["auc"] - 0.2


def test_lira_gives_one_half_when_nobody_is_a_member():
    refs, _, mu_out, rng = synthetic_references()
    n = len(refs.record_ids)
    out = outputs_with_confidence(sigmoid(mu_out + rng.normal(0, 0.5, n)), ids=refs.record_ids)
    half = n // 2
    a = Outputs(out.probs[:half], out.labels[:half], refs.record_ids[:half])
    b = Outputs(out.probs[half:], out.labels[half:], refs.record_ids[half:])
    result = create_attack("lira", references=refs).score(a, b)
    assert abs(result["auc"] - 0.5) < 0.04 and result["tpr_at_1pct_fpr"] < 0.04


def test_lira_refuses_records_or_labels_it_has_no_references_for():
    refs = synthetic_references(n=50)[0]
    attack = create_attack("lira", references=refs)
    with pytest.raises(ValueError, match="not in the reference pool"):
        attack.scores(outputs_with_confidence(np.full(2, 0.5), ids=("r1", "elsewhere")))
    with pytest.raises(ValueError, match="record_ids"):
        attack.scores(outputs_with_confidence(np.full(2, 0.5)))
    relabelled = Outputs(np.full((2, 10), 0.1), np.array([3, 3]), ("r1", "r2"))
    with pytest.raises(ValueError, match="labels differ"):
        attack.scores(relabelled)


def test_logit_confidence_stays_finite_for_confident_predictions():
    probs = np.array([[1 - 1e-9, 1e-9], [0.5, 0.5], [0.2, 0.8]], dtype=np.float32)
    phi = Outputs(probs, np.array([0, 0, 0])).logit_confidence
    assert phi[0] == pytest.approx(np.log(1 - 1e-9) - np.log(1e-9), rel=1e-3)  # 1 - p would round to 0
    np.testing.assert_allclose(phi[1:], [0.0, np.log(0.2 / 0.8)], atol=1e-6)


def test_avg_gap_is_the_mean_absolute_difference_of_the_four_amun_metrics():
    a = {"forget_accuracy": 0.9, "retain_accuracy": 0.95, "test_accuracy": 0.9, "mia_efficacy": 0.2}
    b = {"forget_accuracy": 0.8, "retain_accuracy": 0.97, "test_accuracy": 0.9, "mia_efficacy": 0.3}
    assert avg_gap(a, b) == pytest.approx((0.1 + 0.02 + 0 + 0.1) / 4)
    assert avg_gap(a, a) == 0.0
    assert avg_gap({**a, "forget_accuracy": float("nan")}, b) == pytest.approx((0.02 + 0 + 0.1) / 3)


def test_outputs_accuracy_loss_and_confidence():
    out = Outputs(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 0, 1]))
    assert out.accuracy() == pytest.approx(1 / 3)
    np.testing.assert_allclose(out.confidence, [0.9, 0.2, 0.4])
    np.testing.assert_allclose(out.loss, -np.log([0.9, 0.2, 0.4]))


def test_a_diverged_model_fails_the_gate_instead_of_crashing_the_audit():
    from unlearnflow.config import AuditConfig
    from unlearnflow.audit.report import gate

    ok = outputs_with_confidence(np.full(20, 0.9))
    broken = Outputs(np.full((20, 10), np.nan), np.zeros(20, dtype=np.int64))
    report = audit(broken, ok, ok, ok)
    assert report["nonfinite_outputs"] == 20 and report["mia_efficacy"] != report["mia_efficacy"]
    passed, reasons = gate(report, AuditConfig(), previous_test_accuracy=None)
    assert not passed and "not finite for 20 records (diverged)" in reasons[0]


@pytest.mark.slow
def test_an_attack_registered_in_one_module_runs_in_every_audit(prefect_server, tmp_path, capsys):
    """A toy attack registered here shows up in the erase run's metrics, the certificate, the
    version's lineage card and `unlearnflow audit`."""
    import json

    from conftest import cli
    from flows.train import run_train
    from tasks.store import client_for
    from test_pipeline_integration import make_workspace
    from unlearnflow.audit import ATTACKS, Attack, register_attack

    class ForgetConfidence(Attack):
        name = "toy_forget_confidence"
        labels = {"toy_forget_confidence": "mean true-class confidence on the forget set (toy)"}

        def audit(self, sets):
            forget = sets["forget"]
            return {"toy_forget_confidence": float(forget.confidence.mean()) if len(forget.labels) else float("nan")}

    ws = make_workspace(tmp_path / "ws")
    run_train(str(ws.root))
    register_attack(ForgetConfidence)
    try:
        assert cli("forget", "-C", str(ws.root), "--subject", ws.training_subjects(ws.load_params())[0]) == 0
        assert cli("audit", "-C", str(ws.root)) == 0
        assert "mean true-class confidence on the forget set (toy)" in capsys.readouterr().out
    finally:
        ATTACKS._entries.pop(ForgetConfidence.name)
    cert = json.loads(sorted((ws.root / "lineage" / "certificates").glob("*.json"))[-1].read_text())
    value = cert["audit"]["after"]["toy_forget_confidence"]
    assert 0 < value <= 1
    client = client_for(ws)
    prod = client.get_model_version_by_alias("unlearnflow-sisa", "production")
    metrics = client.get_run(prod.run_id).data.metrics
    assert metrics["audit_toy_forget_confidence"] == pytest.approx(value)
    assert "audit_rerun_toy_forget_confidence" in metrics  # the audit command ran it too
    assert "| mean true-class confidence on the forget set (toy) |" in prod.description  # the lineage card


def test_the_auc_interval_is_wide_for_a_handful_of_records_and_narrow_for_many():
    from unlearnflow.audit import auc_interval

    lo, hi = auc_interval(0.62, 6, 500)
    assert lo < 0.45 and hi > 0.8  # six erased records: the AUC alone says little
    lo, hi = auc_interval(0.62, 2000, 2000)
    assert 0.6 < lo < 0.62 < hi < 0.64
    # by hand, AUC 0.8 with 50 and 50: Q1 = 0.8/1.2, Q2 = 1.28/1.8,
    # SE^2 = (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500 = 0.0019804, SE = 0.04450
    lo, hi = auc_interval(0.8, 50, 50)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(0.04450, abs=1e-5)
    assert all(v != v for v in auc_interval(0.5, 0, 10))
