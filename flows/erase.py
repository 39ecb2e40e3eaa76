"""The erase flow: every pending request in the ledger, as one batch, as a journaled
transaction (``tasks/erasure.py:STEPS``; the journal is ``.unlearnflow/journal.json``).

    begin (journal: batch + state before) -> resolve requests -> new data version
    (prepare, partition, train@k: affected shards resume from their newest clean checkpoint,
    the others reuse every checkpoint) -> aggregate, evaluate -> audit -> purge (checkpoints,
    image files, output cache) -> commit data version (DVC + git, dvc gc) -> MLflow run +
    new model version -> signed certificate (git, MLflow) -> the erasure log's leaves and
    signed checkpoint (``tasks/transparency.py``; git, MLflow) -> `production` -> superseded
    versions' model files deleted -> journal removed.

Every step is idempotent and recorded when done, so a crash anywhere is finished by the
next writing command (``flows/guard.py:recover`` runs this flow again on the journal's batch):
computation is repeated from content-keyed checkpoints, what was registered or certified
is found again by the erasure id, and what the certificate says about shards is derived
from the state before (journal) and after (files), not from what one process trained.
`production` moves only after the certificate is written.

    unlearnflow forget --subject ID     # files a request and runs this flow
"""

from __future__ import annotations

from prefect import flow

from flows import waterfall

from tasks import audit, erasure, lineage, pipeline, registry, tracking, transparency
from tasks.erasure import advance
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.config import Params


@flow(name="unlearnflow-erase", validate_parameters=False)
def erase_flow(workspace: str = ".", commit: bool = True, params: Params | None = None) -> dict:
    clock = waterfall.current()  # the command's: the steps before the flow are on it too
    first = waterfall.begin("flow_start")  # Prefect's flow run begun: this flow's steps are marked from here
    ws = Workspace(workspace)
    root = str(ws.root)
    params = params or ws.load_params()  # the served flow gets only the workspace
    name = params.tracking.registered_model
    state = erasure.begin(params, root)
    if state is None:
        return {"status": "idle", "message": "no pending requests in the ledger"}
    eid = state["erasure_id"]
    resolved = erasure.resolve_requests(params.data, root, state["request_ids"])
    if not resolved["matched"]:  # nothing to erase: no new version, nothing purged, the ledger says so
        return erasure.close_unmatched(ws, state, resolved, commit, clock.since("flow_start"))
    state = advance(ws, state, "resolved")
    clock.mark("resolve")
    built = pipeline.build(params, root, clock)
    after = erasure.snapshot(params.partition, root)
    affected = certificates.affected_shards(state["before"], after)
    state = advance(ws, state, "computed")
    audited = audit_against_previous(ws, params, state, resolved["erased_records"])
    compute_seconds = clock.since("resolve")
    state = advance(ws, state, "audited")
    clock.mark("audit")
    purged = erasure.purge_workspace(params.data, params.partition, root, resolved["erased_sources"],
                                     state.get("files_deleted", []))  # an earlier attempt's deletions too
    state = advance(ws, state, "purged", files_deleted=purged["files_deleted"])
    clock.mark("purge")
    data_lineage = pipeline.record_lineage(root, commit, f"unlearnflow erase {eid}: {len(resolved['requests'])} "
                                           f"request(s), {len(resolved['erased_records'])} record(s) removed", gc=True)
    state = advance(ws, state, "data_committed")
    logged = waterfall.begin("dvc_git")  # the steps so far go into the erase run's metrics with it; the rest after
    tracked = registry.find_erasure_version(ws, name, eid) or register(ws, params, state, resolved, built, affected,
                                                                        data_lineage, audited, compute_seconds, clock)
    state = advance(ws, state, "registered", version=tracked["version"], run_id=tracked["run_id"])
    clock.mark("mlflow")
    body = erasure.certificate_body(params, state, resolved, affected, after, data_lineage, tracked, built,
                                    audited, purged, root)
    cert_path = erasure.certify(root, body, tracked["run_id"], audited["histogram"], commit, name)
    state = advance(ws, state, "certified", certificate=cert_path)
    clock.mark("certificate")
    published = transparency.publish_log(root, params, tracked["run_id"], commit, cert_path,  # the log's checkpoint
                                         audited["histogram"], tracked["version"])
    state = advance(ws, state, "logged")
    clock.mark("log")
    served = erasure.serve(ws, params, tracked, built["metrics"], audited, eid)
    state = advance(ws, state, "promoted", promoted=served["mlflow"]["promoted"])
    ws.journal().finish()
    clock.mark("promote")
    tracking.log_metrics(ws, tracked["run_id"], {**seconds_metrics(clock.steps(first=logged)), "seconds_flow":
                                                 clock.since("flow_start")})  # the steps after registration
    return {"status": "erased", "erasure_id": eid, "resumed": state["resumed"], **erasure.outcome(resolved),
            "shards": built["shards"], "affected": affected, "metrics": built["metrics"], **served,
            "forgotten": audited["forgotten"], "audit": audited, "purged": purged,
            "previous_version": state["previous_version"], "certificate": cert_path,
            "erasure_log": {k: published[k] for k in ("origin", "log_size", "root", "checkpoint", "witnesses")},
            "git_commit": lineage.git_head(ws.root), "compute_seconds": round(compute_seconds, 2),
            "total_seconds": round(clock.since("flow_start"), 2), "step_seconds": clock.steps(first=first),
            "dvc_git_seconds": data_lineage["seconds"], "waterfall": clock.steps()}


def register(ws, params: Params, state: dict, resolved: dict, built: dict, affected: dict, data_lineage: dict,
             audited: dict, compute_seconds: float, clock) -> dict:
    """The erase run in MLflow (metrics: the audit, and the waterfall so far as ``seconds_<step>``)
    and the new model version."""
    eid = state["erasure_id"]
    return tracking.log_pipeline_run(
        ws, params, kind="erase", run_name=f"erase-{eid}", prepared=built["prepared"], shards=built["shards"],
        ensemble=built["ensemble"], metrics=built["metrics"], child_shards=[int(k) for k in affected],
        lineage=data_lineage, extra_tags=tracking.erasure_tags(eid, resolved, affected, state["previous_version"]),
        extra_metrics={**erasure.run_metrics(audited, compute_seconds), **seconds_metrics(clock.steps()),
                       **seconds_metrics({f"dvc_git_{k}": v for k, v in data_lineage["seconds"].items()})},
        started_at=clock.started_at)


def audit_against_previous(ws: Workspace, params: Params, state: dict, erased: list[str]) -> dict:
    """The new ensemble audited on the erased records beside the version it replaces (while that
    one's files are stored), and the audit gate's verdict against it."""
    previous = registry.get_version(ws, params.tracking.registered_model, state["previous_version"])
    audited = audit.audit_version(params, str(ws.root), erased, state["erasure_id"],
                                  registry.stored_constituents(ws, previous))
    audited["passed"], audited["failed_because"] = audit.gate(params, audited, previous)
    return audited


def seconds_metrics(steps: dict[str, float]) -> dict[str, float]:
    """The waterfall as MLflow metrics: ``seconds_<step>``."""
    return {f"seconds_{step}": seconds for step, seconds in steps.items()}


def run_erase(workspace: str = ".", commit: bool = True, wait: bool = True, params: Params | None = None) -> dict:
    from flows.guard import writing

    with writing(workspace, "unlearnflow erase", wait=wait, params=params, signs=True) as (ws, params):
        result = erase_flow.with_options(task_runner=make_task_runner(params.runner))(
            workspace=str(ws.root), commit=commit, params=params)
    clock = waterfall.current()
    clock.mark("flow_end")  # Prefect's flow run closed, the lock released
    return {**result, "waterfall": clock.steps(), "command_seconds": clock.since_start()}
