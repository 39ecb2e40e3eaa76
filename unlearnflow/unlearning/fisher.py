"""fisher: Fisher forgetting (Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR
2020). The diagonal of the Fisher information of the retain data says how much each weight
matters to what is kept; each weight is then perturbed with Gaussian noise of variance
``fisher_scale / F`` (capped at ``fisher_max_variance``), so weights the retain data rely on
move little and the rest, which only the forgotten data needed, are scrubbed. Corrected
points, if any, join the retain data. Needs retain data.

The Fisher is the true one: the expectation over the model's own predictive distribution of
the squared gradient of the log-likelihood, estimated on up to ``hessian_samples`` retain
records (one backward pass per record and class with non-negligible probability)."""

import torch
import torch.nn.functional as F

from unlearnflow.unlearning._base import Unlearner, concat, register_unlearner


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


@register_unlearner
class FisherForgetting(Unlearner):
    name = "fisher"
    needs_retain = True
    summary = "Fisher forgetting: noise scaled by the retain data's inverse diagonal Fisher (Golatkar et al.)"
    bench_grid = tuple({"fisher_scale": a} for a in (1e-7, 1e-6, 1e-5, 1e-4))

    def update(self, model, edit, retain, cfg):
        g = torch.Generator().manual_seed(cfg.seed)
        fisher = diagonal_fisher(model, concat(retain, edit.replacement), cfg.hessian_samples, g)
        scrubbed = 0
        with torch.no_grad():
            for p, f in zip([p for p in model.parameters() if p.requires_grad], fisher):
                var = (cfg.fisher_scale / (f + 1e-12)).clamp(max=cfg.fisher_max_variance)
                p.add_(var.sqrt() * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
                scrubbed += int((var >= cfg.fisher_max_variance).sum())
        return {"records_for_fisher": min(cfg.hessian_samples, len(retain) + (len(edit.y) if edit.replacement
                                                                              else 0)),
                "weights_at_max_variance": scrubbed}
