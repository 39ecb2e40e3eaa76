"""The erase flow: every pending request in the ledger, as one batch.

    resolve requests -> new data version (prepare, partition) -> retrain affected shards
    only (train@k resumes from the newest checkpoint without the erased records; others
    reuse every checkpoint) -> aggregate, evaluate, measure the erased records ->
    purge (checkpoints, image files, DVC cache) -> commit data version (DVC + git) ->
    MLflow run + new model version -> certificate (hash-chained, committed) ->
    move `production`, then delete superseded versions' model files.

    unlearnflow forget --subject ID     # files a request and runs this flow
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from tasks import erasure, lineage as lineage_mod, pipeline, tracking
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow.audit.report import gate as audit_gate
from unlearnflow.certificates import completed_requests
from unlearnflow.preflight import check_names


def nan_to_none(d: dict) -> dict:
    """NaN metrics as None, for JSON records (certificates, approximation records)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


@flow(name="unlearnflow-erase")
def erase_flow(workspace: str = ".", commit: bool = True) -> dict:
    t0 = time.perf_counter()
    ws = Workspace(workspace)
    root = str(ws.root)
    params = ws.load_params()
    if not ws.pending_requests():
        return {"status": "idle", "message": "no pending requests in the ledger"}

    before = erasure.snapshot(params.partition, root)
    before_lock = lineage_mod.lock_info(ws.root) if (ws.root / "dvc.lock").exists() else {"dvc_lock_md5": ""}
    previous = tracking.production_version(ws, params.tracking.registered_model)
    resolved = erasure.resolve_requests(params.data, root)
    eid = erasure.erasure_id([r["request_id"] for r in resolved["requests"]], before_lock["dvc_lock_md5"])

    t_compute = time.perf_counter()
    prepared = pipeline.prepare(params.data, root)
    pipeline.partition(params.partition, root)
    futures = pipeline.train_shard.map(unmapped(params.train), unmapped(root), params.partition.shards)
    shards = [f.result() for f in futures]
    ensemble = pipeline.aggregate(params.aggregate, params.partition, root)
    metrics = pipeline.evaluate(root)
    audited = erasure.audit_version(params, root, resolved["erased_records"], eid,
                                    tracking.stored_constituents(ws, previous))
    forgotten = audited["forgotten"]
    compute_seconds = time.perf_counter() - t_compute
    previous_acc = float(previous.tags["ensemble_test_accuracy"]) if previous and \
        "ensemble_test_accuracy" in previous.tags else None
    audit_ok, audit_reasons = audit_gate(audited["after"], params.audit, previous_acc)

    purged = erasure.purge_workspace(params.data, params.partition, root, resolved["erased_sources"])
    data_lineage = pipeline.record_lineage(
        root, commit, f"unlearnflow erase {eid}: {len(resolved['requests'])} request(s), "
        f"{len(resolved['erased_records'])} record(s) removed", gc=True)

    affected = {}
    for s in shards:
        if s["trained_stages"]:
            old = before.get(str(s["shard"]), {})
            affected[str(s["shard"])] = {
                "first_retrained_slice": s["trained_stages"][0] + 1,
                "resumed_from_checkpoint": s["slice_keys"][s["resumed_from"]] if s["resumed_from"] >= 0 else None,
                "previous_model_md5": old.get("model_md5"),
                "model_md5": s["model_md5"],
                "manifest_md5": s["manifest_md5"],
            }
    prev_version = str(previous.version) if previous else ""
    tracked = tracking.log_pipeline_run(
        ws, params, kind="erase", run_name=f"erase-{eid}", prepared=prepared, shards=shards,
        child_shards=[int(k) for k in affected], ensemble=ensemble, metrics=metrics, lineage=data_lineage,
        extra_tags={
            "erasure_id": eid,
            "erasure_requests": ",".join(r["request_id"] for r in resolved["requests"]),
            "erasure_unmatched": ",".join(resolved["unmatched"]),
            "affected_shards": ",".join(affected) or "none",
            "affected_slices": str({k: v["first_retrained_slice"] for k, v in affected.items()}),
            "resumed_from": str({k: v["resumed_from_checkpoint"] for k, v in affected.items()}),
            "previous_version": prev_version,
        },
        extra_metrics={**{k: v for k, v in forgotten.items() if v == v},  # drop NaN (no erased records)
                       **{f"audit_{k}": v for k, v in audited["after"].items() if v == v},
                       **{f"audit_before_{k}": v for k, v in (audited["before"] or {}).items() if v == v},
                       "audit_seconds": audited["seconds"], "audit_passed": float(audit_ok),
                       **({"audit_lira_reference_seconds": audited["lira_reference_seconds"]}
                          if audited["lira_reference_seconds"] else {}),
                       "erasure_compute_seconds": compute_seconds},
    )
    body = {
        "erasure_id": eid,
        "created_at": erasure.now(),
        "requests": resolved["requests"],
        "unmatched_requests": resolved["unmatched"],
        "erased_record_ids": resolved["erased_records"],
        "affected_shards": affected,
        "constituents": {str(s["shard"]): {"manifest_md5": s["manifest_md5"], "model_md5": s["model_md5"]}
                         for s in shards},
        "dvc_lock_md5": data_lineage["dvc_lock_md5"],
        "data_version": data_lineage["data_version"],
        "git_commit": data_lineage["git_commit"],
        "previous_version": prev_version,
        "new_version": tracked["version"],
        "registered_model": params.tracking.registered_model,
        "metrics": {"test_accuracy": metrics["ensemble_accuracy"], **nan_to_none(forgotten)},
        "purged": {**purged, "dvc_cache": "gc --workspace"},
        "audit": {"after": nan_to_none(audited["after"]), "before": nan_to_none(audited["before"] or {}),
                  "passed": audit_ok, "failed_because": audit_reasons},
        "superseded_versions": ("kept: " + params.retention.reason) if params.retention.keep_superseded
        else "model files deleted once this version is in production",
    }
    cert_path = erasure.write_certificate(root, body)  # from here on, these requests are done
    tracking.log_certificate(ws, tracked["run_id"], cert_path)
    tracking.log_artifact(ws, tracked["run_id"], audited["histogram"], "audit")
    approximations_done = tracking.mark_superseded_approximations(  # fast-path versions these requests had
        ws, params, tracked["version"], eid, completed_requests(ws.layout.certificates))
    cert_commit = lineage_mod.git_commit_lineage(ws.root, f"unlearnflow certificate {eid}") if commit else None
    decision = tracking.promote(ws, params, tracked["version"], metrics, blockers=audit_reasons)
    superseded, retained = [], []
    if decision["promoted"] and params.retention.keep_superseded:
        retained = tracking.retain_superseded(ws, params, tracked["version"], eid)
    elif decision["promoted"]:
        superseded = tracking.purge_superseded(ws, params, tracked["version"], f"erased under {eid}")
    return {
        "status": "erased",
        "erasure_id": eid,
        "requests": resolved["requests"],
        "unmatched": resolved["unmatched"],
        "erased_records": len(resolved["erased_records"]),
        "shards": shards,
        "affected": affected,
        "metrics": metrics,
        "forgotten": forgotten,
        "audit": {**audited, "passed": audit_ok, "failed_because": audit_reasons},
        "purged": purged,
        "superseded_purged": superseded,
        "superseded_retained": retained,
        "approximations_superseded": approximations_done,
        "mlflow": {**tracked, **decision},
        "previous_version": prev_version,
        "certificate": cert_path,
        "git_commit": cert_commit or data_lineage["git_commit"],
        "compute_seconds": round(compute_seconds, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
    }


def run_erase(workspace: str = ".", commit: bool = True) -> dict:
    ws = Workspace(workspace)
    ws.check()
    params = ws.load_params()
    check_names(params)
    return erase_flow.with_options(task_runner=make_task_runner(params.runner))(workspace=str(ws.root), commit=commit)
