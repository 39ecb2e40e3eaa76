"""How constituent predictions become one (``aggregate.method`` in params.yaml).

| name                   | rule                                                         |
|------------------------|--------------------------------------------------------------|
| softmax_mean (default) | mean of the constituents' softmax outputs                    |
| majority_vote          | most votes over constituents' arg-max; ties by mean softmax  |
"""

import numpy as np

from unlearnflow.aggregators._registry import AGGREGATORS, register_aggregator
from unlearnflow.aggregators import majority_vote, softmax_mean  # noqa: F401  (registration)


def aggregate(probs: np.ndarray, method: str) -> np.ndarray:
    """(S, N, K) constituent probabilities -> (N, K) ensemble scores."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected constituent probabilities of shape (S, N, K), got {probs.shape}")
    return AGGREGATORS.get(method)(probs)


__all__ = ["AGGREGATORS", "register_aggregator", "aggregate"]
