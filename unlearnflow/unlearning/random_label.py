"""random_label: fine-tune on the forget set relabelled with random wrong classes (plus
corrected points); with retain data, each batch is joined by as many retain records."""

from dataclasses import dataclass

import torch

from unlearnflow.unlearning._base import Data, FineTuning, Unlearner, concat, fit, register_unlearner


@dataclass(frozen=True)
class RandomLabelSettings(FineTuning):
    """unlearn.random_label: lr, epochs."""


@register_unlearner
class RandomLabel(Unlearner):
    name = "random_label"
    Settings = RandomLabelSettings
    summary = "fine-tune on the forget set with random wrong labels (+ retain)"
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001, 1e-4, 1e-5))

    def update(self, model, edit, retain, cfg):
        with torch.no_grad():
            k = model(edit.x[:1]).shape[1]
        g = torch.Generator().manual_seed(cfg.seed)
        wrong = (edit.y + torch.randint(1, k, edit.y.shape, generator=g).to(edit.y.device)) % k
        return {"steps": fit(model, concat(Data(edit.x, wrong), edit.replacement), cfg, retain=retain)}
