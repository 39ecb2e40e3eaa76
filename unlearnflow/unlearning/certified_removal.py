"""certified_removal: Guo et al., "Certified Data Removal from Machine Learning Models"
(ICML 2020), the certified variant Warnecke et al. compare against; the math is in
``unlearnflow/certified.py``.

Only for a ``logreg`` constituent trained with ``train.certified`` (it carries lam, sigma,
epsilon, delta, its perturbation seed and the bound spent so far). One Newton step per
one-vs-all classifier takes the model from D to D' (erased records removed; corrected
records replaced); the step's gradient-residual bound is added to what the classifier has
spent. While every classifier's total stays within its budget the model is
(epsilon, delta)-certified; an edit that would pass the budget triggers a retrain instead:
the exact optimum on D' under a fresh perturbation, with nothing spent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnflow import certified
from unlearnflow.hashing import stable_bucket
from unlearnflow.unlearning._base import Settings, Unlearner, register_unlearner


@dataclass(frozen=True)
class CertifiedRemovalSettings(Settings):
    """unlearn.certified_removal: none of its own; its budget and noise are train.certified's."""


@register_unlearner
class CertifiedRemoval(Unlearner):
    name = "certified_removal"
    Settings = CertifiedRemovalSettings
    needs_retain = True  # the Newton step's Hessian is over the remaining records
    summary = "Guo et al. (ICML 2020): Newton step on a train.certified logreg, (eps, delta) bound checked; retrains past it"

    NEEDS = "it needs a logreg constituent trained with train.certified (train.model: logreg, " \
            "train.certified: {lam, sigma, epsilon, delta})"

    def accepts(self, model) -> str | None:
        return self.NEEDS if getattr(model, "certified_config", lambda: None)() is None else None

    @classmethod
    def refuses(cls, train) -> str | None:
        return cls.NEEDS if train.certified is None else None

    def update(self, model, edit, retain, cfg):
        ccfg, classes = model.certified_config(), model.linear.out_features
        seed = int(model.perturbation_seed)
        W = model.linear.weight.detach().cpu()
        b = certified.perturbation(W.shape[1], classes, ccfg.sigma, seed)
        X_keep, y_keep = certified.features(retain.x.cpu()), retain.y.cpu()
        X_gone, y_gone = certified.features(edit.x.cpu()), edit.y.cpu()
        new = edit.replacement
        X_add, y_add = (certified.features(new.x.cpu()), new.y.cpu()) if new is not None else (None, None)
        step = certified.remove(W, X_keep, y_keep, X_gone, y_gone, ccfg, b, X_add, y_add)
        spent = model.spent.cpu() + torch.tensor(step.bounds, dtype=torch.float64)
        limit = certified.budget(ccfg, classes)
        n_left = len(X_keep) + (len(X_add) if X_add is not None else 0)
        retrain = bool((spent > limit).any())
        if retrain:  # past the budget: the exact optimum on D' under a fresh perturbation
            X_new = X_keep if X_add is None else torch.cat([X_keep, X_add])
            y_new = y_keep if y_add is None else torch.cat([y_keep, y_add])
            seed = stable_bucket(2**63 - 1, "perturbation", seed, n_left)
            model.set_certified(certified.train(X_new, y_new, classes, ccfg, seed, start=step.weights)
                                .to(model.linear.weight.device), ccfg, seed)
        else:
            with torch.no_grad():
                model.linear.weight.copy_(step.weights.to(model.linear.weight.device))
                model.spent.copy_(spent.to(model.spent.device))
        spent_max = 0.0 if retrain else float(spent.max())
        return {"epsilon": ccfg.epsilon, "delta": ccfg.delta, "budget": limit, "bound": max(step.bounds),
                "spent": spent_max, "residual": max(step.residuals), "retrain_triggered": retrain,
                "certified_radius": certified.certified_radius(spent_max, n_left, ccfg.lam)}
