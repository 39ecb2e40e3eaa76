"""Approximate (and reference) unlearning methods, one module each, registered by name.
``unlearnflow methods`` lists them (``method_rows``; the README's table is that output).

    model, result = create_unlearner("amun")(model, edit, retain, cfg)

Every method takes an ``Edit`` (erase points, or correct their labels or features), so
rectification and feature removal go through the same interface. Adding a method: a
module with an ``Unlearner`` subclass decorated ``@register_unlearner``, imported below;
tests/test_unlearning.py runs every registered method.
"""

import dataclasses

from unlearnflow.config import EXACT_METHOD, FLAT_SETTINGS, TrainConfig, UnlearnConfig
from unlearnflow.errors import ConfigError
from unlearnflow.unlearning._base import (UNLEARNERS, Data, Edit, FineTuning, Settings, Unlearner, UnlearnResult,
                                          register_unlearner, settings_of)
from unlearnflow.unlearning import (  # noqa: F401  (registration)
    amun, certified_removal, finetune, fisher, gradient_ascent, influence, influence_last_layer, random_label, retrain,
    salun,
)


FLAT_KEY = {setting: key for key, setting in FLAT_SETTINGS.items()}  # a setting's old flat name

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


def check_settings(cfg: UnlearnConfig) -> None:
    """Every ``unlearn.<method>:`` section names a method and holds valid settings for it, and
    every flat setting of the old form is one some method has (one-line errors)."""
    for name in cfg.methods:
        if name not in UNLEARNERS:
            raise ConfigError(f"unlearn.{name} is not a method; valid sections: {', '.join(UNLEARNERS.names())}")
        settings_of(name, cfg)
    for name in UNLEARNERS.names() if cfg.flat else ():  # a flat value of the wrong type or range
        try:
            settings_of(name, UnlearnConfig(flat=cfg.flat))
        except ConfigError as e:
            raise ConfigError(f"{e} (written flat under unlearn: as "
                              f"{', '.join(f'unlearn.{FLAT_KEY[k]}' for k in sorted(cfg.flat))})") from None


def flat_notice(cfg: UnlearnConfig) -> str | None:
    """What a command says about settings written the old way, flat under ``unlearn:``."""
    if not cfg.flat:
        return None
    where = []
    for setting in sorted(cfg.flat):
        takers = [n for n in UNLEARNERS.names()
                  if setting in {f.name for f in dataclasses.fields(UNLEARNERS.get(n).Settings)}]
        where.append(f"unlearn.{FLAT_KEY[setting]} -> {', '.join(f'unlearn.{n}.{setting}' for n in takers)}")
    return ("params.yaml sets method settings flat under unlearn: (the form before one section per method); "
            "they apply as before to every method that has them. Move them: " + "; ".join(where))


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


__all__ = ["EXACT_METHOD", "EXACT_SUMMARY", "UNLEARNERS", "Data", "Edit", "FineTuning", "Settings", "Unlearner",
           "UnlearnResult", "check_method", "check_settings", "create_unlearner", "flat_notice", "is_exact",
           "method_rows", "register_unlearner", "settings_of"]
