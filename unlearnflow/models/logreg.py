"""logreg: multinomial logistic regression on the flattened pixels (a convex model; the
linear model certified removal is defined for, see ``unlearnflow/certified.py``)."""

import math

from torch import nn

from unlearnflow.models._registry import register_model


@register_model("logreg")
def logreg(input_shape, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),  # (B, C*H*W)
        nn.Linear(math.prod(input_shape), num_classes),  # (B, num_classes) logits
    )
