"""The aggregator registry. An aggregator maps constituent probabilities
``(S, N, K)`` to ensemble scores ``(N, K)``; the prediction is the arg-max."""

from unlearnflow._registry import Registry

AGGREGATORS: Registry = Registry("aggregation method")
register_aggregator = AGGREGATORS.register
