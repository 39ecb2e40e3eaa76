"""The model registry: the versions a workspace registered, the ``production`` alias, each
version's tags and lineage card (its Markdown description), and the lifecycle of superseded
versions (kept with a reason, or their model files deleted).

``tasks/tracking.py`` logs the runs that register versions; this module decides what
happens to them afterwards.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import mlflow

from tasks.store import _artifact_repository, _is_local, _local_path, client_for
from tasks.workspace import Workspace
from unlearnflow.config import Params

PRODUCTION = "production"


def promote(ws: Workspace, params: Params, version: str, metrics: dict, blockers: list[str] | None = None) -> dict:
    """Move ``production`` to ``version`` if it passes the promote gate and nothing blocks it
    (``blockers``: reasons, e.g. "audit failed: …"); record the decision on the version."""
    client = client_for(ws)
    name = params.tracking.registered_model
    gate = params.promote.min_test_accuracy
    acc = metrics["ensemble_accuracy"]
    promoted = acc >= gate and not blockers
    reason = f"test accuracy {acc:.4f} {'>=' if acc >= gate else '<'} promote.min_test_accuracy {gate}"
    if blockers:
        reason += "; " + "; ".join(blockers)
    client.set_model_version_tag(name, version, "promotion", ("promoted: " if promoted else "held back: ") + reason)
    if promoted:
        client.set_registered_model_alias(name, PRODUCTION, version)
    return {"promoted": promoted, "reason": reason}


def retain_superseded(ws: Workspace, params: Params, keep_version: str, erasure: str) -> list[str]:
    """retention.keep_superseded: keep older versions' files, tagging each with the reason."""
    client = client_for(ws)
    name = params.tracking.registered_model
    kept = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        if str(mv.version) != str(keep_version) and not mv.tags.get("purged"):
            client.set_model_version_tag(name, mv.version, "retained",
                                         f"saw data erased under {erasure}; kept: {params.retention.reason}")
            kept.append(str(mv.version))
    return kept


def purge_superseded(ws: Workspace, params: Params, keep_version: str, reason: str) -> list[str]:
    """Delete the stored model files of every other version (they were trained on erased data).

    Registry entries stay, tagged ``purged``, so the history remains readable. The files go
    through MLflow's artifact repository for their location: a local folder, or the tracking
    server's proxied store (``mlflow-artifacts:``), whose server deletes them; a local copy in
    the workspace's model cache goes too.
    """
    client = client_for(ws)
    name = params.tracking.registered_model
    purged = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        if str(mv.version) == str(keep_version) or mv.tags.get("purged"):
            continue
        location = model_location(ws, mv)
        if _is_local(location) and not _local_path(location).is_relative_to(ws.root):
            raise RuntimeError(f"cannot purge model version {mv.version}: its artifacts are not in this workspace "
                               f"({location}); delete them from that store by hand")
        if _is_local(location):
            shutil.rmtree(_local_path(location), ignore_errors=True)
        else:
            _artifact_repository(location).delete_artifacts()
        shutil.rmtree(ws.layout.model_cache / f"v{mv.version}", ignore_errors=True)
        client.set_model_version_tag(name, mv.version, "purged", reason)
        purged.append(str(mv.version))
    return purged


def stored_artifacts(ws: Workspace, mv) -> list[str]:
    """Paths of the files a registered version's model location still holds, asked of the store
    itself (``verify``: a purged version must hold none)."""
    repo = _artifact_repository(model_location(ws, mv))
    found, todo = [], [None]
    while todo:
        for info in repo.list_artifacts(todo.pop()):
            (todo if info.is_dir else found).append(info.path)
    return found


def production_version(ws: Workspace, registered_model: str):
    """The ModelVersion behind the production alias, or None."""
    client = client_for(ws)
    try:
        return client.get_model_version_by_alias(registered_model, PRODUCTION)
    except mlflow.exceptions.MlflowException:
        return None


def registered_versions(ws: Workspace, registered_model: str) -> list:
    """Every version of ``registered_model``, newest first, each fetched whole (search results
    carry no aliases); [] while the model is not registered."""
    client = client_for(ws)
    try:
        found = client.search_model_versions(f"name = '{registered_model}'")
    except mlflow.exceptions.MlflowException:
        return []
    return [client.get_model_version(registered_model, v.version)
            for v in sorted(found, key=lambda v: int(v.version), reverse=True)]


def get_version(ws: Workspace, registered_model: str, version: str | None):
    """A registered version by number, or None (no number, or no such version)."""
    if not version:
        return None
    try:
        return client_for(ws).get_model_version(registered_model, str(version))
    except mlflow.exceptions.MlflowException:
        return None


def find_erasure_version(ws: Workspace, registered_model: str, erasure_id: str) -> dict | None:
    """The version an earlier, interrupted attempt of ``erasure_id`` registered, if any."""
    for v in registered_versions(ws, registered_model):
        if v.tags.get("erasure_id") == erasure_id:
            run = client_for(ws).get_run(v.run_id)
            return {"run_id": v.run_id, "version": str(v.version), "experiment_id": run.info.experiment_id}
    return None


def version_history(ws: Workspace, registered_model: str, start: str | None = None) -> list[dict]:
    """Registered versions (newest first, from ``start`` back) with their tags and run tags."""
    import datetime as dt

    client = client_for(ws)
    versions = registered_versions(ws, registered_model)
    if start is not None:
        versions = [v for v in versions if int(v.version) <= int(start)]
    out = []
    for v in versions:
        run = client.get_run(v.run_id)
        out.append({
            "version": str(v.version),
            "created": dt.datetime.fromtimestamp(v.creation_timestamp / 1000, dt.timezone.utc).isoformat(timespec="seconds"),
            "aliases": list(v.aliases),
            "tags": dict(v.tags),
            "run_id": v.run_id,
            "run_tags": {k: val for k, val in run.data.tags.items() if not k.startswith("mlflow.")},
        })
    return out


def model_location(ws: Workspace, mv) -> str:
    """Artifact URI of a registered version's logged model (MLflow 3: ``models:/m-…`` → its location)."""
    location = mv.source
    if location.startswith("models:/"):
        location = client_for(ws).get_logged_model(location.split("/", 1)[1].strip("/")).artifact_location
    return location


def model_files_dir(ws: Workspace, mv, fresh: bool = False) -> Path:
    """Local directory of a registered version's logged model. A store outside the workspace
    (a tracking server) is downloaded once into ``Layout.model_cache``; ``fresh`` downloads
    again (``verify`` checks what the server holds, not an earlier copy)."""
    location = model_location(ws, mv)
    if _is_local(location):  # the workspace's own store
        return _local_path(location)
    target = ws.layout.model_cache / f"v{mv.version}"
    if fresh or not (target / "MLmodel").is_file():
        import tempfile

        ws.layout.model_cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ws.layout.model_cache) as tmp:
            client_for(ws)
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
            shutil.rmtree(target, ignore_errors=True)
            got.rename(target)
    return target


def stored_constituents(ws: Workspace, mv) -> dict | None:
    """Paths of a registered version's stored constituent files (None once purged)."""
    if mv is None or mv.tags.get("purged"):
        return None
    root = model_files_dir(ws, mv) / "artifacts"
    spec_path = root / "ensemble.json"
    if not spec_path.is_file():
        return None
    spec = json.loads(spec_path.read_text())
    paths = [str(root / f"shard_{c['shard']}.pt") for c in spec["constituents"]]
    if not all(Path(p).is_file() for p in paths):
        return None
    return {"paths": paths, "method": spec["method"], "classes": spec["classes"]}


def mark_superseded_approximations(ws: Workspace, params: Params, exact_version: str, erasure_id: str,
                                   certified: set[str]) -> list[str]:
    """Tag approximate versions all of whose requests are now certified (``certified``):
    the exact erasure ``erasure_id`` (version ``exact_version``) has done them."""
    client = client_for(ws)
    name = params.tracking.registered_model
    done = []
    for v in registered_versions(ws, name):
        requests = set(filter(None, v.tags.get("approximated_requests", "").split(",")))
        if v.tags.get("exact_erasure") == "pending" and requests <= certified:
            client.set_model_version_tag(name, v.version, "exact_erasure", f"done: {erasure_id} (v{exact_version})")
            done.append(str(v.version))
    return done


def set_version_tags(ws: Workspace, registered_model: str, version: str, tags: dict) -> None:
    client = client_for(ws)
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)


def write_card(ws: Workspace, registered_model: str, version: str, card) -> str:
    """The version's lineage card (``unlearnflow.lineage_card.Card``) as its MLflow description:
    the first thing its page shows. Returns the Markdown."""
    from unlearnflow.lineage_card import render

    text = render(card)
    client_for(ws).update_model_version(registered_model, version, description=text)
    return text


def artifact_links(ws: Workspace, run_id: str, artifact: str) -> tuple[str, str]:
    """Links for a run's artifact on a version's page: the UI's artifact view, and the file
    itself (``get-artifact``, what an image in the card loads). Relative to the UI's address."""
    quoted = urllib.parse.quote(artifact, safe="")
    return f"{run_page(ws, run_id)}/artifacts/{artifact}", f"get-artifact?path={quoted}&run_uuid={run_id}"


def run_page(ws: Workspace, run_id: str) -> str:
    """A run's page in the UI, relative to its address."""
    return f"#/experiments/{client_for(ws).get_run(run_id).info.experiment_id}/runs/{run_id}"
