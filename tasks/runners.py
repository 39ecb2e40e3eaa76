"""The Prefect task runner that per-shard training is mapped over (``runner`` in params.yaml).

``UNLEARNFLOW_DASK_ADDRESS`` (what ``deploy/stack.sh`` writes into its env file) sends the
shards to that Dask scheduler whatever ``runner.kind`` says: where shards train is a fact of
the deployment, not of the experiment (the constituents are bitwise the same).
"""

from __future__ import annotations

import os

from unlearnflow.config import RunnerConfig


def make_task_runner(cfg: RunnerConfig):
    address = os.environ.get("UNLEARNFLOW_DASK_ADDRESS")
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    # dask: a running cluster's scheduler address, or a local cluster of `workers` processes
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True})
