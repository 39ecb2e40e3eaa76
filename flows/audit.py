"""The audit flow: audit a registered model version against everything erased so far.

    unlearnflow audit [--version N] [--reference M] [--lira K] [--json]

Forget set = every record erased in this workspace (tombstones and certificates)
whose source still exists: packaged datasets keep them, but an image folder's erased
files are deleted, so for it only retain/test numbers remain. The version's stored
model files are scored on it, on the retain split, the test
split and the holdout split. The numbers and the histogram are logged to the
version's MLflow run (prefix ``audit_rerun_``).

``--reference M`` audits version M on the same records too and reports the "Avg Gap"
between them (e.g. an approximate unlearning method's version against the exact SISA
erasure's). ``--lira K`` overrides ``audit.lira_references`` for this audit.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from tasks import audit, registry
from tasks.workspace import Workspace
from unlearnflow.audit.report import avg_gap
from unlearnflow.config import Params
from unlearnflow.errors import UnlearnflowError


@flow(name="unlearnflow-audit", validate_parameters=False)
def audit_flow(workspace: str = ".", version: str | None = None, reference: str | None = None,
               lira: int | None = None, params: Params | None = None) -> dict:
    ws = Workspace(workspace)
    params = params or ws.load_params()
    if lira is not None:
        params = replace(params, audit=replace(params.audit, lira_references=lira))
    name = params.tracking.registered_model
    mv = audit.find_version(ws, name, version)
    ref = audit.find_version(ws, name, reference) if reference else None
    erased = audit.erased_so_far(ws)
    result = audit.audit_version(params, str(ws.root), erased, f"v{mv.version}",
                                 registry.stored_constituents(ws, ref) if ref else None,
                                 registry.stored_constituents(ws, mv),
                                 titles=(f"version {mv.version}", f"reference version {ref.version}" if ref else ""))
    result["reference"] = result.pop("before")
    if ref:
        result["avg_gap"] = avg_gap(result["after"], result["reference"])
        result["reference_version"] = str(ref.version)
    result["histogram"] = audit.log_rerun(ws, mv, result)
    return {"version": str(mv.version), "erased_total": len(erased), **result}


def run_audit(workspace: str = ".", version: str | None = None, reference: str | None = None,
              lira: int | None = None, params: Params | None = None) -> dict:
    from flows.guard import writing

    if lira is not None and (lira < 0 or lira == 1 or lira % 2):
        raise UnlearnflowError(f"--lira {lira} is invalid: expected 0 (off) or an even number >= 2")
    with writing(workspace, "unlearnflow audit", params=params) as (ws, params):  # it logs to the audited run
        name = params.tracking.registered_model
        audit.find_version(ws, name, version)  # bad versions fail here, before Prefect starts
        if reference:
            audit.find_version(ws, name, reference)
        return audit_flow(workspace=str(ws.root), version=version, reference=reference, lira=lira, params=params)
