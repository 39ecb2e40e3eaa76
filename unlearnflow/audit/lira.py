"""lira: per-example likelihood-ratio attack (Carlini et al., "Membership Inference
Attacks From First Principles", S&P 2022), online variant.

K reference models are trained with the target model's recipe on random halves of a
pool that holds the audited records; every record is in exactly K/2 of them. For a
record x, phi = log(p_y / (1 - p_y)) under the references that trained on x (IN) and
under those that did not (OUT) gives two Gaussians; the audited model's own phi(x)
scores

    log N(phi; mu_in(x), s_in^2) - log N(phi; mu_out(x), s_out^2)     (high = member)

Means are per record, the two variances are shared by all records, as the paper
advises for fewer than 64 references. Reported: AUC and TPR at 1% FPR, members vs
non-members. Costs K trainings on half the pool; the reference models live in memory
only and are never stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from unlearnflow.audit._base import Attack, Outputs, auc, register_attack, tpr_at_fpr
from unlearnflow.config import PartitionConfig, TrainConfig
from unlearnflow.records import RecordSet
from unlearnflow.training import derive_seed


@dataclass(frozen=True)
class References:
    """What K reference models said about each record of a pool."""

    record_ids: tuple[str, ...]  # (N,) the pool
    labels: np.ndarray  # (N,) labels phi was computed with
    phi: np.ndarray  # (K, N) logit-scaled true-class confidence
    member: np.ndarray  # (K, N) bool: reference k trained on record n
    seconds: float = 0.0  # time spent training and scoring the references

    def __post_init__(self):
        k, n = self.phi.shape
        if self.member.shape != (k, n) or len(self.record_ids) != n or len(self.labels) != n:
            raise ValueError(f"references: phi {self.phi.shape}, member {self.member.shape}, "
                             f"{len(self.record_ids)} ids and {len(self.labels)} labels do not line up")
        if not (self.member.any(0) & (~self.member).any(0)).all():
            raise ValueError("every record needs at least one IN and one OUT reference model")

    @property
    def k(self) -> int:
        return self.phi.shape[0]

    def index(self, record_ids) -> np.ndarray:
        where = {r: i for i, r in enumerate(self.record_ids)}
        missing = [r for r in record_ids if r not in where]
        if missing:
            raise ValueError(f"{len(missing)} audited record(s) are not in the reference pool, e.g. {missing[0][:12]}")
        return np.array([where[r] for r in record_ids], dtype=np.int64)

    def gaussians(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Per-record IN and OUT means and the shared IN and OUT standard deviations."""
        m = self.member
        mu_in = np.where(m, self.phi, 0).sum(0) / m.sum(0)
        mu_out = np.where(~m, self.phi, 0).sum(0) / (~m).sum(0)
        dev = self.phi - np.where(m, mu_in, mu_out)
        s_in, s_out = np.sqrt((dev[m] ** 2).mean()), np.sqrt((dev[~m] ** 2).mean())
        return mu_in, mu_out, max(float(s_in), 1e-6), max(float(s_out), 1e-6)


def membership_plan(n: int, k: int, seed: int) -> np.ndarray:
    """(K, N) bool: each record is IN for exactly K/2 references, chosen at random."""
    if k < 2 or k % 2:
        raise ValueError(f"LiRA needs an even number of reference models >= 2, got {k}")
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((k, n)), axis=0)  # a random permutation of 0..K-1 per record
    return order < k // 2


@register_attack
class LiRA(Attack):
    name = "lira"
    needs_references = True
    labels = {"forget_vs_holdout_lira_auc": "LiRA AUC, forget vs holdout",
              "forget_vs_holdout_lira_tpr_at_1pct_fpr": "LiRA TPR at 1% FPR"}
    floors = {"forget_vs_holdout_lira_auc": 0.5}

    def __init__(self, references: References):
        self.references = references
        self._gaussians = references.gaussians()

    def scores(self, outputs: Outputs) -> np.ndarray:
        if outputs.record_ids is None:
            raise ValueError("lira scores records by id: build Outputs with record_ids")
        idx = self.references.index(outputs.record_ids)
        if not np.array_equal(self.references.labels[idx], outputs.labels):
            raise ValueError("the audited labels differ from those the references were scored with")
        mu_in, mu_out, s_in, s_out = self._gaussians
        phi = outputs.logit_confidence
        log_in = -0.5 * ((phi - mu_in[idx]) / s_in) ** 2 - np.log(s_in)
        log_out = -0.5 * ((phi - mu_out[idx]) / s_out) ** 2 - np.log(s_out)
        return log_in - log_out

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
        sm, sn = self.scores(members), self.scores(non_members)
        return {"auc": auc(sm, sn), "tpr_at_1pct_fpr": tpr_at_fpr(sm, sn, 0.01)}

    def audit(self, sets: dict[str, Outputs]) -> dict[str, float]:
        if not len(sets["forget"].labels):
            return {}
        result = self.score(sets["forget"], sets["holdout"])
        return {"forget_vs_holdout_lira_auc": result["auc"],
                "forget_vs_holdout_lira_tpr_at_1pct_fpr": result["tpr_at_1pct_fpr"]}


def train_references(pool: RecordSet, k: int, partition_cfg: PartitionConfig, train_cfg: TrainConfig,
                     method: str = "softmax_mean", seed: int = 0, workers: int = 1, progress=None) -> References:
    """Train K SISA ensembles with the target's recipe, each on its half of ``pool``, and
    record their logit-scaled confidence on every pool record. ``progress(i, k)`` is
    called after each reference."""
    from unlearnflow.sisa import train_ensemble

    t0 = time.perf_counter()
    plan = membership_plan(len(pool), k, seed)
    phi = np.zeros((k, len(pool)))
    for i in range(k):
        cfg = replace(train_cfg, seed=derive_seed(train_cfg.seed, "lira", seed, i))
        ensemble, _ = train_ensemble(pool.take(np.flatnonzero(plan[i])), partition_cfg, cfg, method, workers=workers)
        phi[i] = Outputs(ensemble.scores(pool.images), pool.labels).logit_confidence
        if progress:
            progress(i + 1, k)
    return References(tuple(pool.record_ids), np.asarray(pool.labels), phi, plan, time.perf_counter() - t0)
