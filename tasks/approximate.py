"""Prefect tasks of the fast path: which requests still need an approximate update,
the update itself (on the production version's constituents), and its record."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry
from tasks.workspace import Workspace
from unlearnflow.certificates import numbered_files
from unlearnflow.durable import atomic_write
from unlearnflow.approximate import approximate_constituent
from unlearnflow.config import Params, to_dict
from unlearnflow.erasure import resolve
from unlearnflow.hashing import md5_file
from unlearnflow.partition import read_shard
from unlearnflow.records import SPLITS, RecordSet
from unlearnflow.unlearning import settings_of
from unlearnflow.stages import load_split

@task(name="resolve-for-approximation", cache_policy=NO_CACHE)
def resolve_pending(params: Params, root: str) -> dict:
    """Pending requests no approximate version has handled yet, matched in memory to the
    records of the workspace's data version (what the served constituents were trained and
    evaluated on); the ledger and the data stay as they are until the exact erase flow."""
    ws = Workspace(root)
    done = ws.approximated_requests()
    pending = ws.pending_requests()
    todo = [r for r in pending if r.request.request_id not in done]
    records = RecordSet.concat([load_split(ws.layout, s) for s in SPLITS]) if todo else None
    now, before = ({"erased": set(), "rectified": {}, "features": {}, "report": []} for _ in range(2))
    for r in pending if todo else []:
        edits = before if r.request.request_id in done else now
        matched = r.records if r.status == "resolved" else resolve(r.request, records, ws.secret_key(params.data))
        edits["report"].append({"request_id": r.request.request_id, "kind": r.request.kind, "records": len(matched)})
        if r.request.kind == "forget":
            edits["erased"].update(matched)
            continue
        if r.request.label is not None:
            edits["rectified"].update({m: r.request.label for m in matched})
        if r.request.feature is not None:
            for m in matched:
                edits["features"].setdefault(m, []).append(r.request.feature.to_json())
    # what an earlier fast path already took out of (or corrected in) the served model: not retain data now
    return {"requests": now["report"], "erased": sorted(now["erased"]), "rectified": now["rectified"],
            "features": now["features"],
            "earlier": {"erased": sorted(before["erased"]), "rectified": before["rectified"],
                        "features": before["features"]}}


@task(name="approximate-constituents", cache_policy=NO_CACHE)
def approximate_constituents(params: Params, root: str, base_files: dict, erased: list[str],
                             rectified: dict[str, int], earlier: dict | None = None,
                             features: dict[str, list[dict]] | None = None) -> dict:
    """Copy the base version's constituents, applying ``params.unlearn.method`` to the
    affected ones (``earlier``: what earlier fast paths already applied, left out of the retain
    data). Returns the new files (``stored_constituents`` shape) and per-shard results."""
    ws = Workspace(root)
    earlier = earlier or {"erased": [], "rectified": {}}
    out = Path(tempfile.mkdtemp(prefix="unlearnflow-approx-"))
    paths, shards = [], []
    erased_set = set(erased)
    for k, base in zip(params.partition.shards, base_files["paths"]):
        manifest, images = read_shard(ws.layout.shard_manifest(k), ws.layout.shard_images(k))
        target = out / f"shard_{k}.pt"
        updated = approximate_constituent(base, manifest, images, erased_set, rectified, params.unlearn,
                                          params.train.threads, params.train.device,
                                          set(earlier["erased"]), earlier["rectified"],
                                          feature_edits(features), feature_edits(earlier.get("features")))
        if updated is None:
            shutil.copyfile(base, target)
        else:
            data, results = updated
            target.write_bytes(data)
            shards.append({"shard": k, "seconds": sum(r.seconds for r in results), "used_retain":
                           any(r.used_retain for r in results), "details": [r.details for r in results],
                           "previous_md5": md5_file(base), "model_md5": md5_file(target)})
        paths.append(str(target))
    ensemble = {"method": base_files["method"], "classes": base_files["classes"],
                "constituents": [{"shard": k, "path": Path(p).name, "md5": md5_file(p)}
                                 for k, p in zip(params.partition.shards, paths)]}
    (out / "ensemble.json").write_text(json.dumps(ensemble, indent=1, sort_keys=True) + "\n")
    return {"files": {"paths": paths, "method": base_files["method"], "classes": base_files["classes"]},
            "dir": str(out), "ensemble": ensemble, "shards": shards}


def feature_edits(features: dict[str, list[dict]] | None) -> dict:
    """{record: [FeatureEdit, ...]} from their JSON form (as resolve_pending returns them)."""
    from unlearnflow.features import FeatureEdit

    return {rid: [FeatureEdit.from_json(e) for e in edits] for rid, edits in (features or {}).items()}


def find_record(ws: Workspace, approximation_id: str) -> Path | None:
    hits = numbered_files(ws.layout.approximations, approximation_id)
    return hits[0] if hits else None


@task(name="write-approximation-record", cache_policy=NO_CACHE)
def write_record(root: str, body: dict) -> str:
    """Write the record (atomically; once per approximation id)."""
    ws = Workspace(root)
    existing = find_record(ws, body["approximation_id"])
    if existing:
        return str(existing)
    folder = ws.layout.approximations
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{len(list(folder.glob('*.json'))) + 1:04d}-{body['approximation_id']}.json"
    atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    return str(path)


def recover_interrupted(ws: Workspace, params: Params, state: dict) -> str:
    """A fast path stopped by a crash: if its record was written, commit it (roll forward);
    otherwise undo what it did (production back to the base version, its version tagged
    abandoned). Either way the requests stay pending for the exact erasure. Returns what was done."""
    from tasks import lineage, registry, store

    for scratch in state.get("scratch", []):
        shutil.rmtree(scratch, ignore_errors=True)
    aid, name = state["approximation_id"], params.tracking.registered_model
    if find_record(ws, aid):
        lineage.git_commit_lineage(ws.root, f"unlearnflow approximate {aid}")
        outcome = "its record was written; committed it"
    elif state.get("version"):
        client = store.client_for(ws)
        production = registry.production_version(ws, name)
        moved_back = production is not None and str(production.version) == str(state["version"])
        if moved_back:
            client.set_registered_model_alias(name, registry.PRODUCTION, state["base_version"])
        client.set_model_version_tag(name, state["version"], "abandoned",
                                     "fast path interrupted before its record was written; rolled back")
        outcome = (f"rolled back: v{state['version']} tagged abandoned"
                   + (f", production is v{state['base_version']} again" if moved_back else ""))
    else:
        outcome = "nothing was registered yet; rolled back"
    ws.journal().finish()
    return outcome + "; its requests stay pending for the exact erasure"


def record(ws: Workspace, params: Params, state: dict, aid: str, todo: dict, base, updated: dict, tracked: dict,
           decision: dict, audited: dict, clock: dict, commit: bool) -> dict:
    """After the version is served: the audit beside the version it replaced and its histogram on
    the run, the approximation record (``lineage/approximations``, git, the run), the version's
    lineage card; scratch folders removed (their files now live in MLflow). Returns
    {record, git_commit}; ``audited["histogram"]`` says where the histogram now is."""
    from tasks import cards, lineage, store
    from tasks.erasure import advance, nan_to_none, now

    store.log_metrics(ws, tracked["run_id"], {**{f"audit_before_{k}": v for k, v in audited["before"].items()},
                                              **{f"{phase}_after_seconds": t for phase, t in clock.items()}})
    store.log_artifact(ws, tracked["run_id"], audited["histogram"], "audit")
    body = {
        "approximation_id": aid, "guarantee": "approximate", "method": params.unlearn.method,
        "unlearn_params": {"method": params.unlearn.method,
                           **to_dict(settings_of(params.unlearn.method, params.unlearn))}, "requests": [r["request_id"] for r in todo["requests"]],
        "records_erased": len(todo["erased"]), "records_relabelled": len(todo["rectified"]),
        **({"records_feature_edited": len(todo["features"])} if todo.get("features") else {}),
        "base_version": str(base.version), "new_version": tracked["version"], "promoted": decision["promoted"],
        "constituents": {str(c["shard"]): c["md5"] for c in updated["ensemble"]["constituents"]},
        "affected_shards": {str(s["shard"]): {"previous_md5": s["previous_md5"], "model_md5": s["model_md5"],
                                              "seconds": round(s["seconds"], 3), "used_retain": s["used_retain"],
                                              "method_details": s["details"]}
                            for s in updated["shards"]},
        "audit": {"after": nan_to_none(audited["after"]), "before": nan_to_none(audited["before"] or {}),
                  "passed": audited["passed"], "failed_because": audited["failed_because"]},
        "exact_erasure": "pending: run `unlearnflow erase` (or the served erase flow) to certify these requests",
        "created_at": now(), "seconds": clock}
    path = write_record(str(ws.root), body)
    histogram = Path(audited["histogram"])
    advance(ws, state, "recorded", scratch=[updated["dir"], str(histogram.parent)])
    git_commit = lineage.git_commit_lineage(ws.root, f"unlearnflow approximate {aid}") if commit else None
    store.log_artifact(ws, tracked["run_id"], path, "approximation")
    registry.write_card(ws, params.tracking.registered_model, tracked["version"], cards.approximation_card(
        ws, body, path, dict(base.tags), tracked["run_id"], str(histogram), git_commit or lineage.git_head(ws.root)))
    for scratch in (updated["dir"], str(histogram.parent)):
        shutil.rmtree(scratch, ignore_errors=True)
    audited["histogram"] = f"MLflow run {tracked['run_id']}, artifact audit/{histogram.name}"
    ws.journal().finish()
    return {"record": path, "git_commit": git_commit}
