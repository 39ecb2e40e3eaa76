"""logreg: K one-vs-all linear scores w_k . x on the pixels scaled to |x| <= 1, in float64,
without a bias (a convex model; the linear model certified removal is defined for, see
``unlearnflow/certified.py``).

Trained by Adam on cross-entropy like the other models, or, with ``train.certified``, to
the optimum of Guo et al.'s perturbed objective. Then the model also carries what the
``certified_removal`` method needs (buffers, so they travel in every checkpoint and
constituent file): the objective and guarantee it was trained for (lam, sigma, epsilon,
delta), the seed of its loss perturbation, and the gradient-residual bound each classifier
has spent on removals since it was trained.
"""

import math

import torch
from torch import nn

from unlearnflow.certified import features
from unlearnflow.config import CertifiedConfig
from unlearnflow.models._registry import register_model


class LogReg(nn.Module):
    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes, bias=False, dtype=torch.float64)  # init from seed
        self.register_buffer("certified", torch.zeros(4, dtype=torch.float64))  # lam, sigma, epsilon, delta; 0 = not
        self.register_buffer("perturbation_seed", torch.zeros((), dtype=torch.int64))
        self.register_buffer("spent", torch.zeros(num_classes, dtype=torch.float64))  # residual bound since training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(features(x)).to(torch.float32)  # (B, K) scores

    def certified_config(self) -> CertifiedConfig | None:
        """What the weights were trained for, or None (trained by Adam: no certificate possible)."""
        if not float(self.certified[0]):
            return None
        lam, sigma, epsilon, delta = (float(v) for v in self.certified)
        return CertifiedConfig(lam=lam, sigma=sigma, epsilon=epsilon, delta=delta)

    def set_certified(self, weights: torch.Tensor, cfg: CertifiedConfig, seed: int) -> None:
        """Weights at the optimum of the perturbed objective drawn from ``seed``; nothing spent yet."""
        with torch.no_grad():
            self.linear.weight.copy_(weights)
            self.certified.copy_(torch.tensor([cfg.lam, cfg.sigma, cfg.epsilon, cfg.delta], dtype=torch.float64))
            self.perturbation_seed.fill_(seed)
            self.spent.zero_()


@register_model("logreg")
def logreg(input_shape, num_classes: int) -> nn.Module:
    return LogReg(input_shape, num_classes)
