"""Constituent architectures, registered by name (``train.model`` in params.yaml).

| name     | for                                   |
|----------|---------------------------------------|
| cnn      | 28x28 grey digits (default)           |
| mlp      | tiny inputs such as 8x8 digits        |
| resnet18 | 32x32 colour images (torchvision, no pretrained weights) |
| logreg   | a linear model on the pixels (convex; certified removal's setting) |

Adding a model: a module with ``@register_model("name")`` on its factory,
imported below; the registry tests then cover it with no new test code.
"""

import threading

import torch
from torch import nn

from unlearnflow.models._registry import MODELS, register_model
from unlearnflow.models import cnn, logreg, mlp, resnet  # noqa: F401  (registration)

_INIT_LOCK = threading.Lock()


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Build a model with weights initialised from ``seed`` alone.

    PyTorch's initialisers draw from the global generator; we fork it under a
    lock so that concurrent shard trainings in threads cannot interleave draws.
    """
    factory = MODELS.get(name)
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(tuple(input_shape), int(num_classes))


__all__ = ["MODELS", "register_model", "create_model"]
