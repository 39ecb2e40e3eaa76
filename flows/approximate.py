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

import time
from dataclasses import replace

from prefect import flow

from tasks import approximate, audit, registry, tracking
from tasks.erasure import advance
from tasks.workspace import Workspace
from unlearnflow.config import Params
from unlearnflow.errors import UnlearnflowError
from unlearnflow.hashing import hash_json
from unlearnflow.unlearning import check_method


@flow(name="unlearnflow-approximate", validate_parameters=False)
def approximate_flow(workspace: str = ".", method: str | None = None, commit: bool = True,
                     params: Params | None = None) -> dict:
    t0 = time.perf_counter()
    clock = {}  # phase -> seconds since the flow started

    def lap(phase: str) -> None:
        clock[phase] = round(time.perf_counter() - t0, 2)

    ws = Workspace(workspace)
    root = str(ws.root)
    params = params or ws.load_params()
    if method:
        params = replace(params, unlearn=replace(params.unlearn, method=method))
    name = params.tracking.registered_model
    base = registry.production_version(ws, name)
    base_files = registry.stored_constituents(ws, base)
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
                                                   todo["earlier"], todo["features"])
    state = advance(ws, state, "unlearned", scratch=[updated["dir"]])
    lap("unlearned")
    gated = audit.audit_version(params, root, todo["erased"], aid, None, updated["files"], histogram=False)
    gated["passed"], gated["failed_because"] = audit.gate(params, gated, base)
    lap("audited")
    tracked = tracking.log_approximate_run(ws, params, approximation_id=aid, base_version=str(base.version),
                                           approximated=updated, requests=todo["requests"], audit=gated,
                                           seconds=time.perf_counter() - t0)
    state = advance(ws, state, "registered", version=tracked["version"])
    lap("registered")
    decision = registry.promote(ws, params, tracked["version"], {"ensemble_accuracy": gated["after"]["test_accuracy"]},
                                blockers=[f"audit failed: {r}" for r in gated["failed_because"]])
    served_at = time.time()
    state = advance(ws, state, "served" if decision["promoted"] else "held_back")
    lap("served" if decision["promoted"] else "held_back")

    # Then the record: the audit beside the version it replaced, its histogram, the git record, the card.
    audited = audit.audit_version(params, root, todo["erased"], aid, base_files, updated["files"],
                                  titles=(f"after {params.unlearn.method} ({aid})", f"before (v{base.version})"))
    audited["passed"], audited["failed_because"] = gated["passed"], gated["failed_because"]
    recorded = approximate.record(ws, params, state, aid, todo, base, updated, tracked, decision, audited, clock,
                                  commit)
    lap("recorded")
    return {"status": "approximated", "approximation_id": aid, "method": params.unlearn.method,
            "requests": todo["requests"], "erased_records": len(todo["erased"]),
            "relabelled_records": len(todo["rectified"]), "feature_edited_records": len(todo["features"]),
            "shards": updated["shards"], "audit": audited, "mlflow": {**tracked, **decision},
            "base_version": str(base.version), **recorded, "served_at": served_at if decision["promoted"] else None,
            "seconds": clock, "total_seconds": time.perf_counter() - t0}


def run_approximate(workspace: str = ".", method: str | None = None, commit: bool = True,
                    params: Params | None = None) -> dict:
    from flows.guard import writing

    with writing(workspace, "unlearnflow fast path", params=params) as (ws, params):
        check_method(method or params.unlearn.method, params.train, exact_allowed=False)
        return approximate_flow(workspace=str(ws.root), method=method, commit=commit, params=params)
