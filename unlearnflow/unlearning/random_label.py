"""random_label: fine-tune on the forget set relabelled with random wrong classes (plus
corrected points); with retain data, each batch is joined by as many retain records."""

import torch

from unlearnflow.unlearning._base import Data, Unlearner, concat, fit, register_unlearner


@register_unlearner
class RandomLabel(Unlearner):
    name = "random_label"
    summary = "fine-tune on the forget set with random wrong labels (+ retain)"
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.05, 0.01, 0.001, 1e-4, 1e-5))

    def update(self, model, edit, retain, cfg):
        with torch.no_grad():
            k = model(edit.x[:1]).shape[1]
        g = torch.Generator().manual_seed(cfg.seed)
        wrong = (edit.y + torch.randint(1, k, edit.y.shape, generator=g).to(edit.y.device)) % k
        return {"steps": fit(model, concat(Data(edit.x, wrong), edit.replacement), cfg, retain=retain)}
