"""majority_vote: each constituent votes for its arg-max class (the SISA paper's label
aggregation). Scores are vote shares; a tie goes to the class with the higher mean
softmax, added at a scale too small to outweigh one vote."""

import numpy as np

from unlearnflow.aggregators._registry import register_aggregator


@register_aggregator("majority_vote")
def majority_vote(probs: np.ndarray) -> np.ndarray:
    s, n, k = probs.shape
    votes = np.zeros((n, k), dtype=np.float64)
    np.add.at(votes, (np.arange(n)[None, :].repeat(s, 0), probs.argmax(axis=2)), 1.0)  # (N, K)
    return votes / s + probs.mean(axis=0) / (2 * s)  # mean softmax <= 1 < one vote (1/s) when halved
