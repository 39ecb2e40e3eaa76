"""mlp: one hidden layer over the flattened image; fast on 8x8 digits."""

import math

from torch import nn

from unlearnflow.models._registry import register_model


@register_model("mlp")
def mlp(input_shape, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),  # (B, C*H*W)
        nn.Linear(math.prod(input_shape), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),  # (B, num_classes) logits
    )
