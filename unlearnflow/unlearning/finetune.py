"""finetune: keep training on the retain data (and any corrected points) only; the
forget set fades through catastrophic forgetting. Needs retain data."""

from dataclasses import dataclass

from unlearnflow.unlearning._base import FineTuning, Unlearner, concat, fit, register_unlearner


@dataclass(frozen=True)
class FinetuneSettings(FineTuning):
    """unlearn.finetune: lr, epochs."""


@register_unlearner
class Finetune(Unlearner):
    name = "finetune"
    Settings = FinetuneSettings
    needs_retain = True
    summary = "keep training on retain data (+ corrected points)"
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001))

    def update(self, model, edit, retain, cfg):
        return {"steps": fit(model, concat(retain, edit.replacement), cfg)}
