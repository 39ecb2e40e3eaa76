"""Approximate (and reference) unlearning methods, one module each, registered by name.

| method                  | retain data | what it does                                            |
|-------------------------|-------------|---------------------------------------------------------|
| retrain                 | needs       | exact reference: new weights, trained on retain only    |
| finetune                | needs       | keep training on retain (+ corrected points)            |
| gradient_ascent         | never       | ascend the loss on the forget set                       |
| random_label            | optional    | fine-tune on the forget set with random wrong labels    |
| influence_first_order   | never       | Warnecke et al. (NDSS 2023), gradient step              |
| influence_second_order  | optional    | Warnecke et al., inverse-Hessian step (CG or LiSSA)     |
| influence_last_layer    | needs       | the same on the last linear layer, exact Hessian        |
| amun                    | optional    | AMUN (ICML 2025): fine-tune on nearest adversarials     |
| certified_removal       | needs       | Guo et al. (ICML 2020): Newton step, (eps, delta) bound |

    model, result = create_unlearner("amun")(model, edit, retain, cfg)

Every method takes an ``Edit`` (erase points, or correct their labels or features), so
rectification and feature removal go through the same interface. Adding a method: a
module with an ``Unlearner`` subclass decorated ``@register_unlearner``, imported below;
tests/test_unlearning.py runs every registered method.
"""

from unlearnflow.config import TrainConfig
from unlearnflow.errors import ConfigError
from unlearnflow.unlearning._base import UNLEARNERS, Data, Edit, Unlearner, UnlearnResult, register_unlearner
from unlearnflow.unlearning import (  # noqa: F401  (registration)
    amun, certified_removal, finetune, gradient_ascent, influence, influence_last_layer, random_label, retrain,
)


def create_unlearner(name: str) -> Unlearner:
    return UNLEARNERS.get(name)()


def check_method(name: str, train: TrainConfig, exact_allowed: bool = True) -> None:
    """Refuse, before a request is filed or a flow starts, a method that is unknown or cannot
    update models trained with ``train`` (``Unlearner.refuses``). ``exact_allowed``: whether
    'sisa', the exact erasure alone, is a valid choice (not for the fast path itself)."""
    if name == "sisa" and exact_allowed:
        return
    if name not in UNLEARNERS:
        raise ConfigError(f"unlearning method {name!r} is unknown; valid choices: sisa (exact only), "
                          f"{', '.join(UNLEARNERS.names())}" if exact_allowed else
                          f"unlearning method {name!r} is not an approximate method; valid choices: "
                          f"{', '.join(UNLEARNERS.names())} (or 'sisa': the exact erase flow alone)")
    why = UNLEARNERS.get(name).refuses(train)
    if why:
        raise ConfigError(f"unlearning method {name!r} cannot update this workspace's models: {why}")


__all__ = ["UNLEARNERS", "Data", "Edit", "Unlearner", "UnlearnResult", "check_method", "create_unlearner",
           "register_unlearner"]
