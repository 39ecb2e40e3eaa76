"""Privacy audit metrics (pure: model outputs in, numbers out).

| attack          | what it reports                                                   |
|-----------------|-------------------------------------------------------------------|
| loss_threshold  | AUC of -loss, members vs non-members (0.5 = looks unseen)         |
| svc_efficacy    | SalUn/AMUN MIA-efficacy: share of the forget set an SVC on        |
|                 | confidence (retain = member, test = non-member) calls non-member  |
| lira            | per-example likelihood ratio from K reference models (IN / OUT    |
|                 | Gaussians): AUC and TPR at 1% FPR; needs ``References``           |

Adding an attack: a module with an ``Attack`` subclass decorated ``@register_attack``,
imported below; tests/test_audit.py runs every registered attack.

``report.audit`` combines them into one audit of one model version; ``report.gate``
turns it into a promote / do-not-promote decision.
"""

from unlearnflow.audit._base import ATTACKS, Attack, Outputs, auc, auc_interval, register_attack, tpr_at_fpr
from unlearnflow.audit import lira, loss_threshold, svc_efficacy  # noqa: F401  (registration)


def create_attack(name: str, **kwargs) -> Attack:
    return ATTACKS.get(name)(**kwargs)


__all__ = ["ATTACKS", "Attack", "Outputs", "auc", "auc_interval", "create_attack", "register_attack", "tpr_at_fpr"]
