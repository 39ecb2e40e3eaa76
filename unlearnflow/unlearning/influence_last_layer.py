"""influence_last_layer: Warnecke et al.'s second-order update (see ``influence.py``) on
the model's last linear layer only, with its exact Hessian.

With the layers before it frozen, the last layer is a softmax regression on fixed
features f (with a 1 appended for the bias): convex, and small enough (K x (h + 1)
parameters, 1,290 for the CNN) for the mean Hessian of the remaining records,

    H = 1/n sum_i (diag(p_i) - p_i p_i^T) kron f_i f_i^T  + (C / n + damping) I,

to be built and solved exactly instead of by CG or LiSSA on the whole network. The
update is then  W <- W - H^-1 (G(Z~) - G(Z)) / n  on the last layer's weight and bias.
Needs retain data (the Hessian is over the remaining records) and a model whose last
module is an ``nn.Linear`` (cnn, mlp).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow.unlearning._base import Data, Settings, Unlearner, register_unlearner


def _features(body: nn.Module, data: Data | None, batch_size: int = 512) -> torch.Tensor:
    """(N, h + 1) float64 inputs of the last layer, with a 1 for the bias."""
    if data is None or not len(data):
        return torch.zeros(0, 0, dtype=torch.float64)
    with torch.no_grad():
        f = torch.cat([body(data.x[i:i + batch_size]) for i in range(0, len(data), batch_size)]).to(torch.float64)
    return torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64, device=f.device)], 1)


def _grad_sum(W: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over records of the cross-entropy gradient wrt W (K, h + 1): (p - e_y) f^T."""
    if not len(f):
        return torch.zeros_like(W)
    residual = torch.softmax(f @ W.T, 1) - F.one_hot(y, W.shape[0]).to(W.dtype)
    return residual.T @ f


def _mean_hessian(W: torch.Tensor, f: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(K(h+1), K(h+1)) mean Hessian of the cross-entropy wrt W, row-major in (class, feature)."""
    K, d = W.shape
    H = torch.zeros(K, d, K, d, dtype=W.dtype, device=W.device)
    for i in range(0, len(f), batch):
        fb = f[i:i + batch]
        p = torch.softmax(fb @ W.T, 1)
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, K, K)
        H += torch.einsum("bkl,bi,bj->kilj", A, fb, fb)
    return H.reshape(K * d, K * d) / len(f)


@dataclass(frozen=True)
class LastLayerSettings(Settings):
    """unlearn.influence_last_layer: the trained objective's L2 strength and the Hessian's damping."""

    l2: float = 0.0  # L2 strength C of the trained objective sum(loss) + C/2 |theta|^2
    damping: float = 0.01  # added to the mean Hessian's diagonal

    def __post_init__(self):
        self.check(self.l2 >= 0, "l2", "a number >= 0")
        self.check(self.damping >= 0, "damping", "a number >= 0")


@register_unlearner
class InfluenceLastLayer(Unlearner):
    name = "influence_last_layer"
    Settings = LastLayerSettings
    needs_retain = True
    summary = "the second-order step on the last linear layer only, with its exact Hessian (cnn, mlp)"
    bench_grid = tuple({"damping": d} for d in (1e-4, 1e-3, 1e-2, 0.1))

    NEEDS = "it needs a model whose last module is an nn.Linear (train.model cnn or mlp)"

    def accepts(self, model) -> str | None:
        return None if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear) else self.NEEDS

    @classmethod
    def refuses(cls, train) -> str | None:
        return None if train.model in ("cnn", "mlp") else cls.NEEDS

    def update(self, model, edit, retain, cfg):
        model.eval()
        body, head = model[:-1], model[-1]
        W = torch.cat([head.weight, head.bias[:, None]], 1).detach().to(torch.float64)
        new = edit.replacement
        f_old, f_new, f_keep = _features(body, edit.forget), _features(body, new), _features(body, retain)
        change = (_grad_sum(W, f_new, new.y) if new is not None else 0) - _grad_sum(W, f_old, edit.y)
        f_rest = torch.cat([f_keep, f_new]) if new is not None else f_keep
        n = len(f_rest)
        H = _mean_hessian(W, f_rest) + (cfg.l2 / n + cfg.damping) * torch.eye(W.numel(), dtype=W.dtype, device=W.device)
        step = torch.linalg.solve(H, (change / n).reshape(-1)).reshape(W.shape)
        with torch.no_grad():
            head.weight -= step[:, :-1].to(head.weight.dtype)
            head.bias -= step[:, -1].to(head.bias.dtype)
        return {"step_norm": float(step.norm()), "n": n, "parameters": W.numel()}
