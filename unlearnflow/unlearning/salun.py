"""salun: saliency unlearning (Fan et al., "SalUn", ICLR 2024). A weight-saliency mask from
the forget loss's gradient (the share ``sparsity`` of weights with the smallest
|gradient| are frozen, and every weight whose gradient is exactly 0), then random-label fine-tuning of only the salient weights: the
forget set relabelled with random wrong classes (corrected points keep their right labels),
each batch joined by as many retain records when retain data is given."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnflow.unlearning._base import Data, FineTuning, Unlearner, concat, fit, register_unlearner


def saliency_mask(model, forget: Data, sparsity: float) -> list[torch.Tensor]:
    """1 for the weights whose forget-loss gradient is among the largest (1 - sparsity)."""
    model.zero_grad(set_to_none=True)
    model.eval()
    F.cross_entropy(model(forget.x), forget.y).backward()
    grads = [p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    everything = torch.cat([g.flatten() for g in grads])
    keep = max(1, int(round((1 - sparsity) * everything.numel())))
    chosen = torch.zeros_like(everything)
    chosen[torch.topk(everything, keep).indices] = 1.0  # exactly that many (ties cut), and never a weight
    chosen[everything == 0] = 0.0  # whose gradient is 0: a confident model leaves many at exactly 0
    model.zero_grad(set_to_none=True)
    masks, at = [], 0
    for g in grads:
        masks.append(chosen[at:at + g.numel()].view_as(g))
        at += g.numel()
    return masks


@dataclass(frozen=True)
class SalunSettings(FineTuning):
    """unlearn.salun: lr, epochs, and the share of weights frozen."""

    sparsity: float = 0.5  # the share of weights with the smallest forget-loss gradient left as they are

    def __post_init__(self):
        super().__post_init__()
        self.check(0 <= self.sparsity < 1, "sparsity", "a number in [0, 1)")

@register_unlearner
class SalUn(Unlearner):
    name = "salun"
    Settings = SalunSettings
    summary = "random-label fine-tuning of the salient weights only (forget-loss gradient mask; Fan et al.)"
    bench_grid = tuple({"lr": lr} for lr in (0.1, 0.01, 0.001, 1e-4, 1e-5))

    def update(self, model, edit, retain, cfg):
        mask = saliency_mask(model, edit.forget, cfg.sparsity)
        with torch.no_grad():
            k = model(edit.x[:1]).shape[1]
        g = torch.Generator().manual_seed(cfg.seed)
        wrong = (edit.y + torch.randint(1, k, edit.y.shape, generator=g).to(edit.y.device)) % k
        steps = fit(model, concat(Data(edit.x, wrong), edit.replacement), cfg, retain=retain,
                    mask=mask, generator=g)
        return {"steps": steps, "salient_weights": int(sum(m.sum() for m in mask)),
                "weights": int(sum(m.numel() for m in mask))}
