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

import json
import shutil
from dataclasses import replace
from pathlib import Path

from prefect import flow

from tasks import erasure, tracking
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.audit.report import avg_gap
from unlearnflow.errors import UnlearnflowError


@flow(name="unlearnflow-audit")
def audit_flow(workspace: str = ".", version: str | None = None, reference: str | None = None,
               lira: int | None = None) -> dict:
    ws = Workspace(workspace)
    params = ws.load_params()
    if lira is not None:
        params = replace(params, audit=replace(params.audit, lira_references=lira))
    client = tracking.client_for(ws)
    name = params.tracking.registered_model
    mv = _version(ws, client, name, version)
    files = _stored(ws, mv)
    ref = _version(ws, client, name, reference) if reference else None
    erased = set(ws.tombstones())
    for path in certificates.certificate_files(ws.layout.certificates):
        erased |= set(json.loads(path.read_text()).get("erased_record_ids", []))
    result = erasure.audit_version(params, str(ws.root), sorted(erased), f"v{mv.version}",
                                   _stored(ws, ref) if ref else None, files,
                                   titles=(f"version {mv.version}", f"reference version {ref.version}" if ref else ""))
    result["reference"] = result.pop("before")
    if ref:
        result["avg_gap"] = avg_gap(result["after"], result["reference"])
        result["reference_version"] = str(ref.version)
        client.log_metric(mv.run_id, "audit_rerun_avg_gap", result["avg_gap"])
        client.set_tag(mv.run_id, "audit_rerun_reference_version", str(ref.version))
    for key, value in result["after"].items():
        if value == value:
            client.log_metric(mv.run_id, f"audit_rerun_{key}", float(value))
    client.log_metric(mv.run_id, "audit_rerun_seconds", result["seconds"])
    png = Path(result["histogram"])
    client.log_artifact(mv.run_id, str(png), "audit")
    shutil.rmtree(png.parent, ignore_errors=True)  # a temporary folder: the histogram now lives in MLflow
    result["histogram"] = f"MLflow run {mv.run_id}, artifact audit/{png.name}"
    return {"version": str(mv.version), "erased_total": len(erased), **result}


def _version(ws: Workspace, client, name: str, version: str | None):
    if version is None:
        mv = tracking.production_version(ws, name)
        if mv is None:
            raise UnlearnflowError(f"no production version of {name!r} yet; train first or pass --version")
        return mv
    known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if not str(version).isdigit() or int(version) not in known:
        raise UnlearnflowError(f"{name!r} has no version {version!r}; registered versions: "
                               f"{', '.join(map(str, known)) or 'none'}")
    return client.get_model_version(name, str(version))


def _stored(ws: Workspace, mv) -> dict:
    files = tracking.stored_constituents(ws, mv)
    if files is None:
        raise UnlearnflowError(f"version {mv.version}'s model files were purged ({mv.tags.get('purged')}); "
                               f"only versions still stored can be audited")
    return files


def run_audit(workspace: str = ".", version: str | None = None, reference: str | None = None,
              lira: int | None = None) -> dict:
    from flows.guard import writing

    if lira is not None and (lira < 0 or lira == 1 or lira % 2):
        raise UnlearnflowError(f"--lira {lira} is invalid: expected 0 (off) or an even number >= 2")
    with writing(workspace, "unlearnflow audit") as (ws, params):  # it logs to the audited version's run
        client = tracking.client_for(ws)  # bad versions fail here, before Prefect starts
        name = params.tracking.registered_model
        _stored(ws, _version(ws, client, name, version))
        if reference:
            _stored(ws, _version(ws, client, name, reference))
        return audit_flow(workspace=str(ws.root), version=version, reference=reference, lira=lira)
