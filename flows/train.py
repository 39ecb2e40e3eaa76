"""The SISA training flow: prepare -> partition -> train@k (mapped) -> aggregate -> evaluate,
then DVC + git lineage and the MLflow record.

    unlearnflow train            # CLI
    python -m flows.train        # same, without the CLI
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from tasks import pipeline
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow.errors import UnlearnflowError
from unlearnflow.preflight import preflight


class PendingRequests(UnlearnflowError):
    """Requests are filed but not yet carried out: no new model may be built first."""


@flow(name="unlearnflow-train")
def train_flow(workspace: str = ".", commit: bool = True) -> dict:
    ws = Workspace(workspace)
    root = str(ws.root)
    params = ws.load_params()
    t0 = time.perf_counter()
    marks = [("start", t0)]

    def mark(step: str) -> None:
        marks.append((step, time.perf_counter()))

    prepared = pipeline.prepare(params.data, root)
    mark("prepare")
    partitioned = pipeline.partition(params.partition, root)
    mark("partition")
    futures = pipeline.train_shard.map(unmapped(params.train), unmapped(root), params.partition.shards)
    shards = [f.result() for f in futures]
    mark("train")
    ensemble = pipeline.aggregate(params.aggregate, params.partition, root)
    metrics = pipeline.evaluate(root, params.train.device)
    mark("evaluate")
    pipeline.score_for_audits(params, root)
    mark("score_for_audits")
    train_seconds = time.perf_counter() - t0
    lineage = pipeline.record_lineage(
        root, commit, f"unlearnflow train: {len(shards)} constituents, test accuracy {metrics['ensemble_accuracy']:.4f}"
    )
    mark("lineage")
    # a request filed while this flow trained: its records may be in this version; never serve it
    filed_meanwhile = [r.request.request_id for r in ws.pending_requests()]
    blockers = [f"request(s) {', '.join(filed_meanwhile)} filed during training; run `unlearnflow erase`"] \
        if filed_meanwhile else []
    tracked = pipeline.log_to_mlflow(root, params, prepared, shards, ensemble, metrics, lineage, blockers)
    mark("mlflow")
    return {
        "workspace": root,
        "prepared": prepared,
        "partition": partitioned,
        "shards": shards,
        "metrics": metrics,
        "lineage": {k: v for k, v in lineage.items() if k != "outs"},
        "mlflow": tracked,
        "pipeline_seconds": round(train_seconds, 2),
        "step_seconds": {step: round(t - marks[i][1], 2) for i, (step, t) in enumerate(marks[1:])},
    }


def run_train(workspace: str = ".", commit: bool = True, wait: bool = True) -> dict:
    """Validate params (before any work), refuse while requests are pending (training now
    would bring their records back), pick the task runner, run the flow."""
    from flows.guard import writing

    with writing(workspace, "unlearnflow train", wait=wait) as (ws, params):
        refuse_pending(ws)
        preflight(params, ws.layout.ingest_cache)
        runner = make_task_runner(params.runner)
        return train_flow.with_options(task_runner=runner)(workspace=str(ws.root), commit=commit)


def refuse_pending(ws: Workspace) -> None:
    pending = [r.request.request_id for r in ws.pending_requests()]
    if pending:
        raise PendingRequests(
            f"{len(pending)} request(s) are pending in the ledger ({', '.join(pending[:5])}"
            f"{', …' if len(pending) > 5 else ''}): training now would build a model on data they ask to remove. "
            f"Run `unlearnflow erase` first (it retrains what they touch and writes their certificate)")


if __name__ == "__main__":
    import json

    print(json.dumps(run_train(), indent=1, default=str))
