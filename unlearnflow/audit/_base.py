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

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the true class, (N,)."""
        return self.probs[np.arange(len(self.labels)), self.labels]

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy of each record, (N,)."""
        return -np.log(np.clip(self.confidence, 1e-12, 1.0))

    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).mean()) if len(self.labels) else float("nan")


class Attack:
    name: str = ""

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
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
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([m, n]))  # ties get their average rank
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))
