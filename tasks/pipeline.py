"""Prefect tasks: each wraps one stage of ``unlearnflow.stages`` (what ``dvc repro`` runs too)."""

from __future__ import annotations

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE

from tasks import lineage as lineage_mod
from tasks import warmup
from tasks.workspace import Workspace
from unlearnflow import stages
from unlearnflow.config import AggregateConfig, DataConfig, PartitionConfig, TrainConfig
from unlearnflow.layout import Layout
from unlearnflow.progress import progress_callbacks
from unlearnflow.timing import Clock


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(cfg: DataConfig, root: str) -> dict:
    ws = Workspace(root)
    return stages.prepare(cfg, ws.layout, ws.secret_key(cfg), ws.ledger().read(), ws.tombstones())


@task(name="partition", cache_policy=NO_CACHE)
def partition(cfg: PartitionConfig, root: str) -> dict:
    return stages.partition_stage(cfg, Layout(root))


@task(name="train-shard", task_run_name="train-shard-{shard}", cache_policy=NO_CACHE)
def train_shard(cfg: TrainConfig, root: str, shard: int) -> dict:
    return {**stages.train_stage(cfg, Layout(root), shard, progress_callbacks()), "executor": _executor()}


def _executor() -> str:
    """Where this task ran: a Dask worker's name and address, else this host and process."""
    import os
    import socket

    try:
        from distributed import get_worker

        worker = get_worker()
        return f"dask {worker.name} {worker.address}"
    except (ImportError, ValueError):  # not inside a Dask worker
        return f"local {socket.gethostname()} pid {os.getpid()}"


def build(params, root: str, clock: Clock) -> dict:
    """The SISA pipeline's computation inside a flow: prepare, partition, train every shard
    (mapped: affected shards resume from their newest clean checkpoint, the others reuse every
    checkpoint), aggregate, evaluate. Returns {prepared, partition, shards, ensemble, metrics}."""
    prepared = prepare(params.data, root)
    clock.mark("prepare")
    partitioned = partition(params.partition, root)
    clock.mark("partition")
    warmup.start()  # what evaluate, the audit and MLflow will load, loaded while the shards train
    futures = train_shard.map(unmapped(params.train), unmapped(root), params.partition.shards)
    shards = [f.result() for f in futures]
    clock.mark("train")
    ensemble = aggregate(params.aggregate, params.partition, root)
    metrics = evaluate(root, params.train.device, params.runner.workers)
    clock.mark("evaluate")
    return {"prepared": prepared, "partition": partitioned, "shards": shards, "ensemble": ensemble,
            "metrics": metrics}


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate(cfg: AggregateConfig, partition_cfg: PartitionConfig, root: str) -> dict:
    return stages.aggregate_stage(cfg, partition_cfg, Layout(root))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(root: str, device: str = "auto", workers: int = 1) -> dict:
    return stages.evaluate_stage(Layout(root), device, workers)


@task(name="score-for-audits", cache_policy=NO_CACHE)
def score_for_audits(params, root: str) -> dict:
    """Score the new constituents on the audit's sample of each split once, into the
    workspace's output cache, so the first erasure's audit (and the fast path's) only
    scores what it changes."""
    from unlearnflow.devices import resolve
    from unlearnflow.records import SPLITS, stable_sample
    from unlearnflow.scoring import OutputCache

    layout = Layout(root)
    cache = OutputCache(layout.outputs_cache, resolve(params.train.device))
    paths = [str(layout.model(k)) for k in params.partition.shards]
    for split in SPLITS:
        cache.probabilities(paths, stable_sample(stages.load_split(layout, split), params.audit.sample),
                            workers=params.runner.workers)
    return {"scored": cache.computed, "reused": cache.reused}


@task(name="record-lineage", cache_policy=NO_CACHE)
def record_lineage(root: str, commit: bool, message: str, gc: bool = False) -> dict:
    """dvc commit (hashes into dvc.lock + cache), ``dvc push`` to the workspace's DVC remote if
    it has one, then git commit of the lineage files (DVC through its Python API, in this
    process: ``lineage.dvc_record``). With ``gc``, objects the workspace no
    longer uses (erased data) are deleted from the cache and from the remote. ``seconds``: each
    part's."""
    ws = Workspace(root)
    clock = Clock()
    remote = lineage_mod.dvc_remote(ws.root)
    clean, status = lineage_mod.dvc_record(ws.root, remote, gc, clock)  # DVC in this process
    info = lineage_mod.lock_info(ws.root)
    head = lineage_mod.git_commit_lineage(ws.root, message) if commit else lineage_mod.git_head(ws.root)
    dirty = lineage_mod.git_is_dirty(ws.root)
    clock.mark("git_commit")
    data_version = info["outs"].get("prepare", {}).get("data/prepared") or ""
    return {
        **info,
        "git_commit": head,
        "git_dirty": dirty,
        "dvc_status_clean": clean,
        "dvc_status": status,
        "data_version": data_version,
        "dvc_remote": remote,
        "seconds": clock.steps(),
    }


@task(name="log-to-mlflow", cache_policy=NO_CACHE)
def log_to_mlflow(root: str, params, prepared, shards, ensemble, metrics, lineage, blockers=None,
                  started_at: float | None = None, rotation: dict | None = None) -> dict:
    from tasks import tracking

    return tracking.log_training(Workspace(root), params, prepared, shards, ensemble, metrics, lineage, blockers,
                                 started_at, rotation)
