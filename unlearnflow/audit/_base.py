"""Membership-inference attacks: one small class per attack, registered by name.

An attack sees model outputs only: ``Outputs`` holds the softmax probabilities and
true labels of a set of records. Each attack implements ``score(members,
non_members, target)`` and returns a dict of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearnflow._registry import Registry


@dataclass(frozen=True)
class Outputs:
    probs: np.ndarray  # (N, K) softmax probabilities
    labels: np.ndarray  # (N,) true class indices
    record_ids: tuple[str, ...] | None = None  # needed by per-example attacks (lira)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the true class, (N,)."""
        return self.probs[np.arange(len(self.labels)), self.labels]

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy of each record, (N,)."""
        return -np.log(np.clip(self.confidence, 1e-12, 1.0))

    @property
    def logit_confidence(self) -> np.ndarray:
        """log(p / (1 - p)) of the true class, (N,); 1 - p summed from the other classes
        so that it does not round to 0 for confident predictions."""
        p = np.asarray(self.probs, dtype=np.float64)
        rows = np.arange(len(self.labels))
        true = p[rows, self.labels]
        others = p.copy()
        others[rows, self.labels] = 0.0
        return np.log(np.clip(true, 1e-30, None)) - np.log(np.clip(others.sum(1), 1e-30, None))

    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).mean()) if len(self.labels) else float("nan")


class Attack:
    """One membership-inference attack. ``score`` runs it on any members / non-members;
    ``audit`` is what every audit runs (``report.audit`` loops over the registry): the attack
    on the audit's record sets (forget, retain, test, holdout), its figures named as reports,
    MLflow (``audit_<key>``) and certificates show them, ``labels`` saying what each means."""

    name: str = ""
    needs_references: bool = False  # built with the LiRA reference models; skipped when there are none
    labels: dict[str, str] = {}
    floors: dict[str, float] = {}  # what data the model never saw scores (an AUC's 0.5): the lineage card's column

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
        raise NotImplementedError

    def audit(self, sets: dict[str, Outputs]) -> dict[str, float]:
        raise NotImplementedError


ATTACKS: Registry = Registry("membership-inference attack")


def register_attack(cls):
    ATTACKS.register(cls.name)(cls)
    return cls


def auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """ROC AUC of "higher score = member" (Mann-Whitney U with ties counted half)."""
    m, n = np.asarray(member_scores, float), np.asarray(non_member_scores, float)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([m, n]))
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata``'s default,
    without importing scipy.stats: a second of start-up in every audit process)."""
    order = np.argsort(x, kind="mergesort")
    edges = np.flatnonzero(np.r_[True, x[order][1:] != x[order][:-1], True])  # where tie groups start
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((edges[:-1] + edges[1:] + 1) / 2, np.diff(edges))
    return ranks


def auc_interval(value: float, members: int, non_members: int, z: float = 1.96) -> tuple[float, float]:
    """A 95% interval for an AUC from ``members`` and ``non_members`` records (Hanley and
    McNeil, 1982: the AUC's standard error from its value and the two counts), clipped to
    [0, 1]. With a handful of forget records it is wide: the AUC alone says little."""
    if not members or not non_members or value != value:
        return float("nan"), float("nan")
    q1, q2 = value / (2 - value), 2 * value ** 2 / (1 + value)
    var = (value * (1 - value) + (members - 1) * (q1 - value ** 2) + (non_members - 1) * (q2 - value ** 2)) \
        / (members * non_members)
    half = z * float(np.sqrt(max(var, 0.0)))
    return max(0.0, value - half), min(1.0, value + half)


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate whose false-positive rate is at most ``fpr`` ("higher
    score = member"): the threshold lets at most floor(fpr * len(non-members)) through."""
    m, n = np.asarray(member_scores, float), np.sort(np.asarray(non_member_scores, float))[::-1]
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    allowed = int(np.floor(fpr * len(n) + 1e-9))
    threshold = n[allowed] if allowed < len(n) else -np.inf
    return float((m > threshold).mean())
