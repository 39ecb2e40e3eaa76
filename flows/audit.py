"""The audit flow: audit a registered model version against everything erased so far.

    unlearnflow audit [--version N] [--json]

Forget set = every record erased in this workspace (tombstones and certificates)
whose source still exists: packaged datasets keep them, but an image folder's erased
files are deleted, so for it only retain/test numbers remain. The version's stored
model files are scored on it, on the retain split, the test
split and the holdout split. The numbers and the histogram are logged to the
version's MLflow run (prefix ``audit_rerun_``).
"""

from __future__ import annotations

import json

from prefect import flow

from tasks import erasure, tracking
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.errors import UnlearnflowError


@flow(name="unlearnflow-audit")
def audit_flow(workspace: str = ".", version: str | None = None) -> dict:
    ws = Workspace(workspace)
    params = ws.load_params()
    client = tracking.client_for(ws)
    name = params.tracking.registered_model
    mv = client.get_model_version(name, version) if version else tracking.production_version(ws, name)
    if mv is None:
        raise UnlearnflowError(f"no production version of {name!r} yet; train first or pass --version")
    files = tracking.stored_constituents(ws, mv)
    if files is None:
        raise UnlearnflowError(f"version {mv.version}'s model files were purged ({mv.tags.get('purged')}); "
                               f"only versions still stored can be audited")
    erased = set(ws.tombstones())
    for path in certificates.certificate_files(ws.layout.certificates):
        erased |= set(json.loads(path.read_text()).get("erased_record_ids", []))
    result = erasure.audit_version(params.data, str(ws.root), sorted(erased), f"v{mv.version}", None, files)
    for key, value in result["after"].items():
        if value == value:
            client.log_metric(mv.run_id, f"audit_rerun_{key}", float(value))
    client.log_metric(mv.run_id, "audit_rerun_seconds", result["seconds"])
    client.log_artifact(mv.run_id, result["histogram"], "audit")
    return {"version": str(mv.version), "erased_total": len(erased), **result}


def run_audit(workspace: str = ".", version: str | None = None) -> dict:
    ws = Workspace(workspace)
    ws.check()
    return audit_flow(workspace=str(ws.root), version=version)
