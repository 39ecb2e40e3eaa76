"""unlearnflow core: SISA sharding, slice-incremental training and aggregation.

The core is pure: it takes typed config (``unlearnflow.config``), record sets,
manifests and tensors, and returns results. It never imports Prefect, MLflow or
DVC and never reads environment variables or ``params.yaml``; those live in the
thin layers ``tasks/`` and ``flows/``.
"""

__version__ = "0.1.0"
