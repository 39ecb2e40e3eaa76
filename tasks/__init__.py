"""Thin layers over the core: Prefect tasks, DVC/git lineage, MLflow tracking.

Nothing here computes anything the core does not: a task is a few lines around
one ``unlearnflow`` call, plus the side effects (files committed, runs logged).
"""

import os

# cuBLAS reads this when it starts; deterministic CUDA training (unlearnflow/devices.py) needs it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
