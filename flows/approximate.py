"""The fast path: serve an approximately unlearned version within seconds of a request,
then let the exact SISA erasure supersede it.

    pending requests not yet approximated -> match them to records (in memory)
    -> apply unlearn.method to the affected constituents of the production version
    -> audit the update -> MLflow run + version tagged guarantee=approximate -> production
    (if the audit gate passes)                                        <- served here
    -> audit beside the version it replaced + histogram -> lineage/approximations/NNNN-<id>.json (git)

The model is served as soon as the gate has passed and MLflow holds the version with its
guarantee and requests; the comparison with the replaced version and the git record follow
(``seconds`` in the result and the record: when each phase ended).

Nothing in the data version changes here: the ledger, the prepared data, the shards
and dvc.lock stay as they were, and no certificate is written. The requests stay
pending until the erase flow (exact) runs, batches everything pending and certifies it;
that version carries guarantee=exact and supersedes the approximate ones (whose model
files are purged like every superseded version's).

    unlearnflow forget --subject ID --method amun               # fast path, then the exact erasure
    unlearnflow forget --subject ID --method amun --exact later # fast path only; exact stays queued
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from prefect import flow

from tasks import approximate, erasure, lineage as lineage_mod, tracking
from tasks.erasure import advance
from flows.erase import nan_to_none
from tasks.workspace import Workspace
from unlearnflow.audit.report import gate as audit_gate
from unlearnflow.errors import UnlearnflowError
from unlearnflow.hashing import hash_json
from unlearnflow.unlearning import check_method


@flow(name="unlearnflow-approximate")
def approximate_flow(workspace: str = ".", method: str | None = None, commit: bool = True) -> dict:
    t0 = time.perf_counter()
    clock = {}  # phase -> seconds since the flow started

    def lap(phase: str) -> None:
        clock[phase] = round(time.perf_counter() - t0, 2)

    ws = Workspace(workspace)
    root = str(ws.root)
    params = ws.load_params()
    if method:
        params = replace(params, unlearn=replace(params.unlearn, method=method))
    name = params.tracking.registered_model
    base = tracking.production_version(ws, name)
    base_files = tracking.stored_constituents(ws, base)
    if base_files is None:
        raise UnlearnflowError("the fast path updates the production version's stored model files; "
                               "there is no production version with stored files (train first)")
    todo = approximate.resolve_pending(params, root)
    if not todo["requests"]:
        return {"status": "idle", "message": "no pending request that is not already approximated"}
    aid = "a" + hash_json({"requests": [r["request_id"] for r in todo["requests"]], "base": str(base.version),
                           "method": params.unlearn.method})[:12]
    state = ws.journal().begin({"kind": "approximate", "approximation_id": aid, "base_version": str(base.version)})
    state = advance(ws, state, "begun")
    lap("resolved")

    # The critical path: update, audit the update (the gate needs it), register, serve.
    updated = approximate.approximate_constituents(params, root, base_files, todo["erased"], todo["rectified"],
                                                   todo["earlier"])
    state = advance(ws, state, "unlearned", scratch=[updated["dir"]])
    lap("unlearned")
    gated = erasure.audit_version(params, root, todo["erased"], aid, None, updated["files"], histogram=False)
    previous_acc = float(base.tags["ensemble_test_accuracy"]) if "ensemble_test_accuracy" in base.tags else None
    audit_ok, audit_reasons = audit_gate(gated["after"], params.audit, previous_acc)
    lap("audited")
    tracked = tracking.log_approximate_run(ws, params, approximation_id=aid, base_version=str(base.version),
                                           approximated=updated, requests=todo["requests"], audit=gated,
                                           seconds=time.perf_counter() - t0)
    state = advance(ws, state, "registered", version=tracked["version"])
    lap("registered")
    decision = tracking.promote(ws, params, tracked["version"], {"ensemble_accuracy": gated["after"]["test_accuracy"]},
                                blockers=[f"audit failed: {r}" for r in audit_reasons])
    served_at = time.time()
    state = advance(ws, state, "served" if decision["promoted"] else "held_back")
    lap("served" if decision["promoted"] else "held_back")

    # Then the record: the audit beside the version it replaced, its histogram, the git record.
    audited = erasure.audit_version(params, root, todo["erased"], aid, base_files, updated["files"],
                                    titles=(f"after {params.unlearn.method} ({aid})", f"before (v{base.version})"))
    tracking.log_metrics(ws, tracked["run_id"], {**{f"audit_before_{k}": v for k, v in audited["before"].items()},
                                                 **{f"{phase}_after_seconds": t for phase, t in clock.items()}})
    tracking.log_artifact(ws, tracked["run_id"], audited["histogram"], "audit")
    record = approximate.write_record(root, {
        "approximation_id": aid,
        "guarantee": "approximate",
        "method": params.unlearn.method,
        "unlearn_params": params.to_dict()["unlearn"],
        "requests": [r["request_id"] for r in todo["requests"]],
        "records_erased": len(todo["erased"]),
        "records_relabelled": len(todo["rectified"]),
        "base_version": str(base.version),
        "new_version": tracked["version"],
        "promoted": decision["promoted"],
        "constituents": {str(c["shard"]): c["md5"] for c in updated["ensemble"]["constituents"]},
        "affected_shards": {str(s["shard"]): {"previous_md5": s["previous_md5"], "model_md5": s["model_md5"],
                                              "seconds": round(s["seconds"], 3), "used_retain": s["used_retain"],
                                              "method_details": s["details"]}
                            for s in updated["shards"]},
        "audit": {"after": nan_to_none(audited["after"]), "before": nan_to_none(audited["before"] or {}),
                  "passed": audit_ok, "failed_because": audit_reasons},
        "exact_erasure": "pending: run `unlearnflow erase` (or the served erase flow) to certify these requests",
        "created_at": erasure.now(),
        "seconds": clock,
    })
    state = advance(ws, state, "recorded", scratch=[updated["dir"], str(Path(audited["histogram"]).parent)])
    git_commit = lineage_mod.git_commit_lineage(ws.root, f"unlearnflow approximate {aid}") if commit else None
    tracking.log_artifact(ws, tracked["run_id"], record, "approximation")
    for scratch in (updated["dir"], str(Path(audited["histogram"]).parent)):  # now stored in MLflow
        shutil.rmtree(scratch, ignore_errors=True)
    audited["histogram"] = f"MLflow run {tracked['run_id']}, artifact audit/{Path(audited['histogram']).name}"
    ws.journal().finish()
    lap("recorded")
    return {"status": "approximated", "approximation_id": aid, "method": params.unlearn.method,
            "requests": todo["requests"], "erased_records": len(todo["erased"]),
            "relabelled_records": len(todo["rectified"]), "shards": updated["shards"], "audit":
            {**audited, "passed": audit_ok, "failed_because": audit_reasons},
            "mlflow": {**tracked, **decision}, "base_version": str(base.version), "record": record,
            "git_commit": git_commit, "served_at": served_at if decision["promoted"] else None,
            "seconds": clock, "total_seconds": time.perf_counter() - t0}


def run_approximate(workspace: str = ".", method: str | None = None, commit: bool = True) -> dict:
    from flows.guard import writing

    with writing(workspace, "unlearnflow fast path") as (ws, params):
        check_method(method or params.unlearn.method, params.train, exact_allowed=False)
        return approximate_flow(workspace=str(ws.root), method=method, commit=commit)
