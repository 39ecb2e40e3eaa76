"""finetune: keep training on the retain data (and any corrected points) only; the
forget set fades through catastrophic forgetting. Needs retain data."""

from unlearnflow.unlearning._base import Unlearner, concat, fit, register_unlearner


@register_unlearner
class Finetune(Unlearner):
    name = "finetune"
    needs_retain = True
    summary = "fine-tune on retain (+ corrected points)"

    def update(self, model, edit, retain, cfg):
        return {"steps": fit(model, concat(retain, edit.replacement), cfg)}
