"""retrain: the exact reference for one model: new weights (seeded), trained from
scratch on the retain data and any corrected points with the training loop's
optimiser (Adam, ``lr``, ``epochs``). Needs retain data. (For a SISA ensemble the exact
path is the erase flow's, which retrains only the affected shards.)"""

from dataclasses import dataclass, replace

import torch

from unlearnflow.config import TrainConfig
from unlearnflow.training import make_optimizer, train_epoch
from unlearnflow.unlearning._base import FineTuning, Unlearner, concat, register_unlearner


@dataclass(frozen=True)
class RetrainSettings(FineTuning):
    """unlearn.retrain: lr (Adam), epochs over the retain data from a fresh initialisation."""


@register_unlearner
class Retrain(Unlearner):
    name = "retrain"
    Settings = RetrainSettings
    needs_retain = True
    summary = "exact reference for one model: new weights, trained on retain (+ corrected points) only"
    bench_grid = ({"lr": 0.001, "epochs": 20},)  # the training recipe's optimiser and budget, no augmentation

    def update(self, model, edit, retain, cfg):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        data = concat(retain, edit.replacement)
        tcfg = replace(TrainConfig(), lr=cfg.lr, batch_size=cfg.batch_size, augment=False, seed=cfg.seed)
        opt = make_optimizer(model, tcfg)
        for epoch in range(cfg.epochs):
            train_epoch(model, opt, data.x, data.y, tcfg, torch.Generator().manual_seed(cfg.seed + epoch))
        return {"epochs": cfg.epochs}
