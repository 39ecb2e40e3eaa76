"""Approximate (and reference) unlearning methods, one module each, registered by name.
``unlearnflow methods`` lists them (``method_rows``; the README's table is that output).

    model, result = create_unlearner("amun")(model, edit, retain, cfg)

Every method takes an ``Edit`` (erase points, or correct their labels or features), so
rectification and feature removal go through the same interface. Adding a method: a
module with an ``Unlearner`` subclass decorated ``@register_unlearner``, imported below;
tests/test_unlearning.py runs every registered method.
"""

from unlearnflow.config import EXACT_METHOD, TrainConfig
from unlearnflow.errors import ConfigError
from unlearnflow.unlearning._base import UNLEARNERS, Data, Edit, Unlearner, UnlearnResult, register_unlearner
from unlearnflow.unlearning import (  # noqa: F401  (registration)
    amun, certified_removal, finetune, fisher, gradient_ascent, influence, influence_last_layer, random_label, retrain,
    salun,
)


EXACT_SUMMARY = "exact: the erase flow retrains the affected shards from their last clean checkpoint (default)"


def is_exact(name: str) -> bool:
    """``sisa``: no fast path, the exact erase flow alone (the one method not in the registry:
    it is the pipeline itself, not an update of a model)."""
    return name == EXACT_METHOD


def method_rows() -> list[dict]:
    """Every choice of ``unlearn.method``: ``sisa`` first, then the registry's methods."""
    rows = [{"method": EXACT_METHOD, "retain_data": "-", "summary": EXACT_SUMMARY}]
    for name in UNLEARNERS.names():
        cls = UNLEARNERS.get(name)
        retain = "needs" if cls.needs_retain else "optional" if cls.can_use_retain else "never"
        rows.append({"method": name, "retain_data": retain, "summary": cls.summary})
    return rows


def create_unlearner(name: str) -> Unlearner:
    return UNLEARNERS.get(name)()


def check_method(name: str, train: TrainConfig, exact_allowed: bool = True) -> None:
    """Refuse, before a request is filed or a flow starts, a method that is unknown or cannot
    update models trained with ``train`` (``Unlearner.refuses``). ``exact_allowed``: whether
    'sisa', the exact erasure alone, is a valid choice (not for the fast path itself)."""
    if is_exact(name) and exact_allowed:
        return
    if name not in UNLEARNERS:
        raise ConfigError(f"unlearning method {name!r} is unknown; valid choices: {EXACT_METHOD} (exact only), "
                          f"{', '.join(UNLEARNERS.names())}" if exact_allowed else
                          f"unlearning method {name!r} is not an approximate method; valid choices: "
                          f"{', '.join(UNLEARNERS.names())} (or {EXACT_METHOD!r}: the exact erase flow alone)")
    why = UNLEARNERS.get(name).refuses(train)
    if why:
        raise ConfigError(f"unlearning method {name!r} cannot update this workspace's models: {why}")


__all__ = ["EXACT_METHOD", "EXACT_SUMMARY", "UNLEARNERS", "Data", "Edit", "Unlearner", "UnlearnResult",
           "check_method", "create_unlearner", "is_exact", "method_rows", "register_unlearner"]
