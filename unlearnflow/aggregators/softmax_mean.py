"""softmax_mean: average the constituents' class probabilities."""

import numpy as np

from unlearnflow.aggregators._registry import register_aggregator


@register_aggregator("softmax_mean")
def softmax_mean(probs: np.ndarray) -> np.ndarray:
    return probs.mean(axis=0)  # (S, N, K) -> (N, K)
