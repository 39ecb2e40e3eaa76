"""The Prefect task runner that per-shard training is mapped over (``runner`` in params.yaml)."""

from __future__ import annotations

from unlearnflow.config import RunnerConfig


def make_task_runner(cfg: RunnerConfig):
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
