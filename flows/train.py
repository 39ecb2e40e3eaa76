"""The SISA training flow: prepare -> partition -> train@k (mapped) -> aggregate -> evaluate,
then DVC + git lineage and the MLflow record.

    unlearnflow train            # CLI
    python -m flows.train        # same, without the CLI
"""

from __future__ import annotations

from prefect import flow

from tasks import pipeline
from tasks.pipeline import Clock
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow.config import Params
from unlearnflow.errors import UnlearnflowError
from unlearnflow.preflight import preflight


class PendingRequests(UnlearnflowError):
    """Requests are filed but not yet carried out: no new model may be built first."""


@flow(name="unlearnflow-train", validate_parameters=False)
def train_flow(workspace: str = ".", commit: bool = True, params: Params | None = None,
               rotation: dict | None = None) -> dict:
    """``rotation``: the retraining of a subject-key rotation (``flows/keys.py``): requests pending
    before it stay pending and do not keep its version out of production (it holds exactly the
    data the version before it held); its run and version say what it rotated, and the data
    versions made under the old key are deleted from the DVC cache and remote."""
    ws = Workspace(workspace)
    root = str(ws.root)
    params = params or ws.load_params()
    clock = Clock()
    built = pipeline.build(params, root, clock)
    metrics = built["metrics"]
    pipeline.score_for_audits(params, root)
    clock.mark("score_for_audits")
    train_seconds = clock.since_start()
    what = f"unlearnflow keys rotate {rotation['rotation_id']}: {rotation['summary']}" if rotation \
        else "unlearnflow train"
    lineage = pipeline.record_lineage(root, commit, f"{what}: {len(built['shards'])} constituents, "
                                                    f"test accuracy {metrics['ensemble_accuracy']:.4f}",
                                      gc=rotation is not None)  # the old key's pseudonyms leave the DVC stores
    clock.mark("lineage")
    # a request filed while this flow trained: its records may be in this version; never serve it
    filed_meanwhile = [] if rotation else [r.request.request_id for r in ws.pending_requests()]
    blockers = [f"request(s) {', '.join(filed_meanwhile)} filed during training; run `unlearnflow erase`"] \
        if filed_meanwhile else []
    tracked = pipeline.log_to_mlflow(root, params, built["prepared"], built["shards"], built["ensemble"], metrics,
                                     lineage, blockers, clock.started_at, rotation)
    clock.mark("mlflow")
    return {"workspace": root, **{k: built[k] for k in ("prepared", "partition", "shards", "metrics")},
            "lineage": {k: v for k, v in lineage.items() if k != "outs"}, "mlflow": tracked,
            "pipeline_seconds": train_seconds, "step_seconds": clock.steps()}


def run_train(workspace: str = ".", commit: bool = True, wait: bool = True, params: Params | None = None) -> dict:
    """Validate params (before any work), refuse while requests are pending (training now
    would bring their records back), pick the task runner, run the flow."""
    from flows.guard import writing

    with writing(workspace, "unlearnflow train", wait=wait, params=params) as (ws, params):
        refuse_pending(ws)
        preflight(params, ws.layout.ingest_cache)
        runner = make_task_runner(params.runner)
        return train_flow.with_options(task_runner=runner)(workspace=str(ws.root), commit=commit, params=params)


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
