"""The erase flow: every pending request in the ledger, as one batch, as a journaled
transaction (``tasks/erasure.py:STEPS``; the journal is ``.unlearnflow/journal.json``).

    begin (journal: batch + state before) -> resolve requests -> new data version
    (prepare, partition, train@k: affected shards resume from their newest clean checkpoint,
    the others reuse every checkpoint) -> aggregate, evaluate -> audit -> purge (checkpoints,
    image files, output cache) -> commit data version (DVC + git, dvc gc) -> MLflow run +
    new model version -> signed certificate (git, MLflow) -> `production` -> superseded
    versions' model files deleted -> journal removed.

Every step is idempotent and recorded when done, so a crash anywhere is finished by the
next writing command (``flows/recovery.py`` runs this flow again on the journal's batch):
computation is repeated from content-keyed checkpoints, what was registered or certified
is found again by the erasure id, and what the certificate says about shards is derived
from the state before (journal) and after (files), not from what one process trained.
`production` moves only after the certificate is written.

    unlearnflow forget --subject ID     # files a request and runs this flow
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from tasks import erasure, lineage, pipeline, tracking
from tasks.erasure import advance
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.audit.report import gate as audit_gate
from unlearnflow.certificates import completed_requests


def nan_to_none(d: dict) -> dict:
    """NaN metrics as None, for JSON records (certificates, approximation records)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


@flow(name="unlearnflow-erase")
def erase_flow(workspace: str = ".", commit: bool = True) -> dict:
    t0 = time.perf_counter()
    marks = [("start", t0)]

    def mark(step: str) -> None:
        marks.append((step, time.perf_counter()))

    ws = Workspace(workspace)
    root = str(ws.root)
    params = ws.load_params()
    name = params.tracking.registered_model
    state = erasure.begin(params, root)
    if state is None:
        return {"status": "idle", "message": "no pending requests in the ledger"}
    eid = state["erasure_id"]
    resolved = erasure.resolve_requests(params.data, root, state["request_ids"])
    if not resolved["matched"]:  # nothing to erase: no new version, nothing purged, the ledger says so
        erasure.commit_ledger(root, commit, f"unlearnflow erase {eid}: {len(resolved['unmatched'])} request(s) "
                              "matched no record")
        ws.journal().finish()
        return {"status": "unmatched", "erasure_id": eid, "requests": resolved["requests"],
                "unmatched": resolved["unmatched"], "resumed": state["resumed"],
                "total_seconds": round(time.perf_counter() - t0, 2)}
    state = advance(ws, state, "resolved")
    mark("resolve")

    t_compute = time.perf_counter()
    prepared = pipeline.prepare(params.data, root)
    pipeline.partition(params.partition, root)
    mark("prepare_partition")
    futures = pipeline.train_shard.map(unmapped(params.train), unmapped(root), params.partition.shards)
    shards = [f.result() for f in futures]
    mark("train")
    ensemble = pipeline.aggregate(params.aggregate, params.partition, root)
    metrics = pipeline.evaluate(root, params.train.device)
    mark("evaluate")
    after = erasure.snapshot(params.partition, root)
    affected = certificates.affected_shards(state["before"], after)
    state = advance(ws, state, "computed")

    previous = tracking.get_version(ws, name, state["previous_version"])
    audited = erasure.audit_version(params, root, resolved["erased_records"], eid,
                                    tracking.stored_constituents(ws, previous))
    compute_seconds = time.perf_counter() - t_compute
    # the gate compares like with like: the version before, scored by this audit on the same records
    # (its tag, when its files are gone)
    previous_acc = (audited["before"]["test_accuracy"] if audited["before"] else
                    float(previous.tags["ensemble_test_accuracy"]) if previous and
                    "ensemble_test_accuracy" in previous.tags else None)
    audit_ok, audit_reasons = audit_gate(audited["after"], params.audit, previous_acc)
    state = advance(ws, state, "audited")
    mark("audit")

    purged = erasure.purge_workspace(params.data, params.partition, root, resolved["erased_sources"])
    files_deleted = sorted(set(state.get("files_deleted", [])) | set(purged["files_deleted"]))  # an earlier attempt's too
    state = advance(ws, state, "purged", files_deleted=files_deleted)
    mark("purge")

    data_lineage = pipeline.record_lineage(
        root, commit, f"unlearnflow erase {eid}: {len(resolved['requests'])} request(s), "
        f"{len(resolved['erased_records'])} record(s) removed", gc=True)
    state = advance(ws, state, "data_committed")
    mark("dvc_git")

    tracked = tracking.find_erasure_version(ws, name, eid) or tracking.log_pipeline_run(
        ws, params, kind="erase", run_name=f"erase-{eid}", prepared=prepared, shards=shards,
        child_shards=[int(k) for k in affected], ensemble=ensemble, metrics=metrics, lineage=data_lineage,
        extra_tags=tracking.erasure_tags(eid, resolved, affected, state["previous_version"]),
        extra_metrics=erasure.run_metrics(audited, audit_ok, compute_seconds))
    state = advance(ws, state, "registered", version=tracked["version"], run_id=tracked["run_id"])
    mark("mlflow")

    body = certificates.body(
        erasure_id=eid, created_at=erasure.now(), resolved=resolved, affected=affected, after=after,
        lineage=data_lineage, previous_version=state["previous_version"], new_version=tracked["version"],
        registered_model=name,
        metrics={"test_accuracy": metrics["ensemble_accuracy"], **nan_to_none(audited["forgotten"])},
        audit={"after": nan_to_none(audited["after"]), "before": nan_to_none(audited["before"] or {}),
               "passed": audit_ok, "failed_because": audit_reasons},
        purged={**purged, "files_deleted": files_deleted, "dvc_cache": "gc --workspace"
                + (f" --cloud --remote {data_lineage['dvc_remote']}" if data_lineage.get("dvc_remote") else "")},
        superseded=("kept: " + params.retention.reason) if params.retention.keep_superseded
        else "model files deleted once this version is in production",
        train_device=", ".join(sorted({s["device"] for s in shards})))
    cert_path = erasure.certify(root, body, tracked["run_id"], audited["histogram"], commit, name)
    approximations_done = tracking.mark_superseded_approximations(  # fast-path versions these requests had
        ws, params, tracked["version"], eid, completed_requests(ws.layout.certificates))
    state = advance(ws, state, "certified", certificate=cert_path)
    mark("certificate")

    decision = tracking.promote(ws, params, tracked["version"], metrics,
                                blockers=[f"audit failed: {r}" for r in audit_reasons])
    state = advance(ws, state, "promoted", promoted=decision["promoted"])
    superseded, retained = [], []
    if decision["promoted"] and params.retention.keep_superseded:
        retained = tracking.retain_superseded(ws, params, tracked["version"], eid)
    elif decision["promoted"]:
        superseded = tracking.purge_superseded(ws, params, tracked["version"], f"erased under {eid}")
    ws.journal().finish()
    mark("promote")
    return {
        "status": "erased",
        "erasure_id": eid,
        "resumed": state["resumed"],
        "requests": resolved["requests"],
        "unmatched": resolved["unmatched"],
        "erased_records": len(resolved["erased_records"]),
        "shards": shards,
        "affected": affected,
        "metrics": metrics,
        "forgotten": audited["forgotten"],
        "audit": {**audited, "passed": audit_ok, "failed_because": audit_reasons},
        "purged": {**purged, "files_deleted": files_deleted},
        "superseded_purged": superseded,
        "superseded_retained": retained,
        "approximations_superseded": approximations_done,
        "mlflow": {**tracked, **decision},
        "previous_version": state["previous_version"],
        "certificate": cert_path,
        "git_commit": lineage.git_head(ws.root),
        "compute_seconds": round(compute_seconds, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "step_seconds": {step: round(t - marks[i][1], 2) for i, (step, t) in enumerate(marks[1:])},
    }


def run_erase(workspace: str = ".", commit: bool = True, wait: bool = True) -> dict:
    from flows.guard import writing

    with writing(workspace, "unlearnflow erase", wait=wait) as (ws, params):
        return erase_flow.with_options(task_runner=make_task_runner(params.runner))(workspace=str(ws.root),
                                                                                      commit=commit)
