"""fisher: Fisher forgetting (Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR
2020). The diagonal of the Fisher information of the retain data says how much each weight
matters to what is kept; each weight is then perturbed with Gaussian noise of variance
``scale / F`` (capped at ``max_variance``; ``unlearn.fisher:``), so weights the retain data rely on
move little and the rest, which only the forgotten data needed, are scrubbed. Corrected
points, if any, join the retain data. Needs retain data.

The Fisher is the true one: the expectation over the model's own predictive distribution of
the squared gradient of the log-likelihood, estimated on up to ``hessian_samples`` retain
records (one backward pass per record and class with non-negligible probability)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnflow.unlearning._base import Settings, Unlearner, concat, register_unlearner


def diagonal_fisher(model, data, samples: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per parameter, the mean over records of sum_k p_k (d log p_k / d theta)^2."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    idx = torch.randperm(len(data), generator=generator)[:samples]
    model.eval()
    for i in idx.tolist():
        log_p = F.log_softmax(model(data.x[i:i + 1]), dim=1)[0]
        probs = log_p.detach().exp()
        for k in torch.nonzero(probs > 1e-3).flatten().tolist():
            grads = torch.autograd.grad(log_p[k], params, retain_graph=True)
            for f, g in zip(fisher, grads):
                f.add_(probs[k] * g.detach() ** 2)
    return [f / max(len(idx), 1) for f in fisher]


@dataclass(frozen=True)
class FisherSettings(Settings):
    """unlearn.fisher: the noise's scale and cap, and how many records the Fisher is estimated on."""

    scale: float = 1e-7  # noise variance = scale / F (the retain data's diagonal Fisher information)
    max_variance: float = 1e-3  # the cap on that variance (weights the retain data never uses)
    hessian_samples: int = 1024  # retain records the Fisher is estimated on

    def __post_init__(self):
        self.check(self.scale > 0, "scale", "a positive number")
        self.check(self.max_variance > 0, "max_variance", "a positive number")
        self.check(self.hessian_samples >= 1, "hessian_samples", "an integer >= 1")

@register_unlearner
class FisherForgetting(Unlearner):
    name = "fisher"
    Settings = FisherSettings
    needs_retain = True
    summary = "Fisher forgetting: noise scaled by the retain data's inverse diagonal Fisher (Golatkar et al.)"
    bench_grid = tuple({"scale": a} for a in (1e-7, 1e-6, 1e-5, 1e-4))

    def update(self, model, edit, retain, cfg):
        g = torch.Generator().manual_seed(cfg.seed)
        fisher = diagonal_fisher(model, concat(retain, edit.replacement), cfg.hessian_samples, g)
        scrubbed = 0
        with torch.no_grad():
            for p, f in zip([p for p in model.parameters() if p.requires_grad], fisher):
                var = (cfg.scale / (f + 1e-12)).clamp(max=cfg.max_variance)
                p.add_(var.sqrt() * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
                scrubbed += int((var >= cfg.max_variance).sum())
        return {"records_for_fisher": min(cfg.hessian_samples, len(retain) + (len(edit.y) if edit.replacement
                                                                              else 0)),
                "weights_at_max_variance": scrubbed}
