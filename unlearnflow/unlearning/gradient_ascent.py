"""gradient_ascent: maximise the loss on the forget set (and, for a correction, then
minimise it on the corrected points). Never reads retain data."""

from dataclasses import dataclass

from unlearnflow.unlearning._base import FineTuning, Unlearner, fit, register_unlearner


@dataclass(frozen=True)
class GradientAscentSettings(FineTuning):
    """unlearn.gradient_ascent: lr, epochs (ascent on the forget set, descent on corrected points)."""


@register_unlearner
class GradientAscent(Unlearner):
    name = "gradient_ascent"
    Settings = GradientAscentSettings
    can_use_retain = False
    summary = "ascend the loss on the forget set"
    # every rate of the AMUN grid diverged: go lower
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001, 1e-4, 1e-5))

    def update(self, model, edit, retain, cfg):
        steps = fit(model, edit.forget, cfg, sign=-1.0)
        if edit.replacement is not None:
            steps += fit(model, edit.replacement, cfg)
        return {"steps": steps}
