"""svc_efficacy: MIA-efficacy as in SalUn / AMUN (``evaluation/SVC_MIA.py``).

An RBF SVC on true-class confidence is fitted with ``members`` (the retain set) as
class 1 and ``non_members`` (test data) as class 0, both cut to the same size;
the efficacy is the share of ``target`` (the forget set) predicted non-member.
Higher = the forget set looks more like unseen data.
"""

import numpy as np

from unlearnflow.audit._base import Attack, Outputs, register_attack


@register_attack
class SVCEfficacy(Attack):
    name = "svc_efficacy"
    labels = {"mia_efficacy": "MIA-efficacy (SVC; higher = more forgotten)"}

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
        from sklearn.svm import SVC

        if target is None or len(target.labels) == 0:
            return {"efficacy": float("nan")}
        n = min(len(members.labels), len(non_members.labels))
        rng = np.random.default_rng(self.seed)
        m = members.confidence[rng.choice(len(members.labels), n, replace=False)]
        u = non_members.confidence[rng.choice(len(non_members.labels), n, replace=False)]
        x = np.concatenate([m, u])[:, None]  # (2n, 1)
        y = np.concatenate([np.ones(n), np.zeros(n)])
        clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
        pred = clf.predict(target.confidence[:, None])
        return {"efficacy": float((pred == 0).mean())}

    def audit(self, sets: dict[str, Outputs]) -> dict[str, float]:
        return {"mia_efficacy": self.score(sets["retain"], sets["test"], sets["forget"])["efficacy"]}
