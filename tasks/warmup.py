"""Loading that the end of an erasure needs, done in a background thread while the shards
train (their torch kernels leave the interpreter free): the first call of each costs a
command 0.5-1.5 s (bench/results/overhead.md), a served process pays it once.

- ``torch._dynamo``: imported by torch on the first optimizer or checkpoint call;
- ``matplotlib.pyplot`` (Agg): the audit's histogram;
- ``sklearn.svm``: the audit's ``svc_efficacy`` attack (about 1 s to import);
- MLflow's map of installed packages, built when a model is logged (it checks the model's
  pip requirements against the environment) by scanning every installed distribution.

Only imports and a read-only scan: nothing here writes or talks to a server, and a failure
only means the step pays the cost itself.
"""

from __future__ import annotations

import threading


def _load() -> None:
    for step in (_dynamo, _pyplot, _sklearn, _mlflow_packages):
        try:
            step()
        except Exception:  # never a reason to fail an erasure: the caller pays the cost instead
            pass


def _dynamo() -> None:
    import torch._dynamo  # noqa: F401


def _pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _sklearn() -> None:
    import sklearn.svm  # noqa: F401


def _mlflow_packages() -> None:
    from mlflow.utils import requirements_utils

    requirements_utils._init_modules_to_packages_map()  # cached by MLflow for the process


def start() -> threading.Thread:
    thread = threading.Thread(target=_load, name="unlearnflow-warmup", daemon=True)
    thread.start()
    return thread
