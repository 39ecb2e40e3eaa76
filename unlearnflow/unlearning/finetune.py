"""finetune: keep training on the retain data (and any corrected points) only; the
forget set fades through catastrophic forgetting. Needs retain data."""

from unlearnflow.unlearning._base import Unlearner, concat, fit, register_unlearner


@register_unlearner
class Finetune(Unlearner):
    name = "finetune"
    needs_retain = True
    summary = "keep training on retain data (+ corrected points)"
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001))

    def update(self, model, edit, retain, cfg):
        return {"steps": fit(model, concat(retain, edit.replacement), cfg)}
