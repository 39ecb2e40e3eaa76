"""Prefect tasks of the erase flow: resolve the ledger's pending requests, audit the new
version on the erased records, purge what still holds them, and write the certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.faults import crash_point, fail_point, pause_point
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import DataConfig, Params, PartitionConfig
from unlearnflow.datasets import load_dataset
from unlearnflow.ensemble import load_constituent
from unlearnflow.erasure import add_tombstones, load_pseudonymized, resolve
from unlearnflow.errors import UnlearnflowError
from unlearnflow.hashing import hash_json, md5_file
from unlearnflow.pseudonyms import pseudonym
from unlearnflow.records import SPLITS
from unlearnflow.scoring import OutputCache
from unlearnflow.stages import load_split


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# The erase flow's journal (``.unlearnflow/journal.json``) names the batch, the state before it
# and every step done, in this order; a crash after any of them is finished by the next
# writing command (``flows/guard.py:recover``), which runs the flow again from the journal.
STEPS = ("begun", "resolved", "computed", "audited", "purged", "data_committed", "registered", "certified",
         "logged", "promoted")


def advance(ws: Workspace, state: dict, step: str, **values) -> dict:
    """Record that ``step`` is done (durably), then the fault-injection point of that step."""
    state = ws.journal().update(state, step, **values)
    crash_point(step)
    pause_point(step)
    return state


def snapshot(partition_cfg: PartitionConfig, root: str) -> dict:
    """The constituents now in the workspace: slice keys, model and manifest md5 of each."""
    layout = Workspace(root).layout
    out = {}
    for k in partition_cfg.shards:
        path = layout.model(k)
        if path.is_file():
            manifest = layout.shard_manifest(k)
            out[str(k)] = {"slice_keys": load_constituent(path)[1]["slice_keys"], "model_md5": md5_file(path),
                           "manifest_md5": md5_file(manifest) if manifest.is_file() else None}
    return out


def served_snapshot(stored: dict) -> dict:
    """The constituents a registered version serves (its stored files, ``stored_constituents``):
    slice keys and model md5 of each, by shard."""
    out = {}
    for path in stored["paths"]:
        meta = load_constituent(path)[1]
        out[str(meta["shard"])] = {"slice_keys": meta["slice_keys"], "model_md5": md5_file(path)}
    return out


@task(name="begin-erasure", cache_policy=NO_CACHE)
def begin(params: Params, root: str) -> dict | None:
    """The batch to erase: the interrupted one the journal names (``resumed``), else every
    pending request, journaled with the state before it. None when there is nothing to do."""
    from tasks import lineage

    ws = Workspace(root)
    journal = ws.journal()
    state = journal.read()
    if state is not None:
        if state.get("kind") != "erase":
            raise UnlearnflowError(f"{journal.path} records an interrupted {state.get('kind')}; run `unlearnflow "
                                   f"erase` to recover it first")
        return {**state, "resumed": True}
    pending = ws.pending_requests()
    if not pending:
        return None
    lock_md5 = lineage.lock_info(ws.root)["dvc_lock_md5"] if (ws.root / "dvc.lock").exists() else ""
    ids = [r.request.request_id for r in pending]
    state = journal.begin({"kind": "erase", "erasure_id": erasure_id(ids, lock_md5), "request_ids": ids,
                           **state_before(params, root), "before_dvc_lock_md5": lock_md5, "started_at": now()})
    return {**advance(ws, state, "begun"), "resumed": False}


def state_before(params: Params, root: str) -> dict:
    """What production serves before an operation that changes constituents (an erasure, a key
    rotation): {"before": its constituents' snapshot, "previous_version"}. The served files, not
    whatever files an interrupted run left in the workspace."""
    from tasks import registry

    ws = Workspace(root)
    previous = registry.production_version(ws, params.tracking.registered_model)
    served = registry.stored_constituents(ws, previous)
    return {"before": served_snapshot(served) if served else snapshot(params.partition, root),
            "previous_version": str(previous.version) if previous else ""}


@task(name="resolve-requests", cache_policy=NO_CACHE)
def resolve_requests(cfg: DataConfig, root: str, request_ids: list[str]) -> dict:
    """Match the batch's requests to records and append the outcome to the ledger (once:
    requests already resolved keep their records)."""
    ws = Workspace(root)
    ledger = ws.ledger()
    known = ledger.read().requests
    batch = [known[rid] for rid in request_ids]
    key = ws.secret_key(cfg)
    records = load_pseudonymized(cfg, key, ws.layout.ingest_cache)
    source_of = dict(zip(records.record_ids, records.sources))
    events, report, erased, edits = [], [], {}, {}
    for r in batch:
        rid = r.request.request_id
        matched = r.records if r.status == "resolved" else resolve(r.request, records, key)
        if r.status == "pending":  # resolved/unmatched ones came from an attempt that stopped later: keep
            events.append({"event": "resolved", "request_id": rid, "records": list(matched)} if matched
                          else {"event": "unmatched", "request_id": rid})
        report.append({"request_id": rid, "kind": r.request.kind, "records": len(matched),
                       **({"feature": r.request.feature.to_json()} if r.request.feature else {})})
        if r.request.kind == "forget":
            erased.update({m: rid for m in matched})
        elif r.request.feature is not None:
            edits[rid] = matched
    changed = feature_changes(ledger.read(), batch, edits, records)
    ledger.record(events)
    add_tombstones(ws.layout.tombstones, erased)
    if changed:  # outputs cached for a record's old content would be read as if they were the new one's
        OutputCache(ws.layout.outputs_cache).drop_records({c["record_id"] for c in changed})
    return {
        "requests": report,
        "matched": [x["request_id"] for x in report if x["records"]],
        "unmatched": [x["request_id"] for x in report if not x["records"]],
        "erased_records": sorted(erased),
        "erased_sources": sorted({source_of[m] for m in erased if m in source_of}),
        **({"feature_changes": changed} if changed else {}),
    }


def outcome(resolved: dict) -> dict:
    """What a batch's requests came to, for the erase flow's result: the requests, those that
    matched nothing, how many records were erased and how many had a region filled."""
    return {"requests": resolved["requests"], "unmatched": resolved["unmatched"],
            "erased_records": len(resolved["erased_records"]),
            "feature_edited_records": len({c["record_id"] for c in resolved.get("feature_changes", [])})}


def feature_changes(ledger_state, batch, matched: dict[str, tuple], records) -> list[dict]:
    """For each record a feature request of ``batch`` changes: the request, the record and the
    SHA-256 of its pixels before (with earlier batches' edits) and after (with this batch's)."""
    from unlearnflow.features import content_hash, edited_images

    if not matched:
        return []
    in_batch = {r.request.request_id for r in batch}
    earlier = {}  # record -> edits of requests outside this batch (filed and resolved before it)
    for r in ledger_state.requests.values():
        if r.request.feature is not None and r.status == "resolved" and r.request.request_id not in in_batch:
            for m in r.records:
                earlier.setdefault(m, []).append(r.request.feature)
    position = {m: i for i, m in enumerate(records.record_ids)}
    names = sorted({m for ms in matched.values() for m in ms if m in position})
    pixels = np.asarray(records.images[[position[m] for m in names]])
    current = {m: edited_images(pixels[i:i + 1], (m,), earlier) for i, m in enumerate(names)}
    out = []
    for r in batch:
        rid = r.request.request_id
        for m in matched.get(rid, ()):
            if m not in current:
                continue
            new = edited_images(current[m], (m,), {m: [r.request.feature]})
            out.append({"request_id": rid, "record_id": m, "before_sha256": content_hash(current[m][0]),
                        "after_sha256": content_hash(new[0])})
            current[m] = new
    return out


@task(name="purge-workspace", cache_policy=NO_CACHE)
def purge_workspace(cfg: DataConfig, partition_cfg: PartitionConfig, root: str, erased_sources: list[str],
                    deleted_before: list[str] = ()) -> dict:
    """Delete slice checkpoints no current constituent uses (all that saw erased records or a
    filled region's old pixels), for image folders the erased image files themselves (reported
    as pseudonyms, like the ledger's) and their decoded pixels in the ingest cache (a filled
    region's old pixels are overwritten there; the source image files stay the operator's),
    and cached outputs of models or records no longer current. ``deleted_before``: files an interrupted attempt deleted."""
    fail_point("purge")
    ws = Workspace(root)
    layout = ws.layout
    keep = set()
    for k in partition_cfg.shards:
        keep.update(load_constituent(layout.model(k))[1]["slice_keys"])
    store = CheckpointStore(layout.checkpoints)
    removed = [key for key in store.keys() if key not in keep and store.delete(key)]
    deleted_files = []
    if cfg.dataset_name == "imagefolder" and erased_sources:
        folder = Path(cfg.dataset_arg).resolve()
        for rel in erased_sources:
            path = (folder / rel).resolve()
            if folder in path.parents and path.is_file():
                path.unlink()
                deleted_files.append(pseudonym(ws.secret_key(cfg), rel))  # file names are personal data
        load_dataset(cfg, layout.ingest_cache)  # the ingest cache now holds only the files left
    filled = 0
    if cfg.dataset_name == "imagefolder":  # the decoded pixels of a filled region go from the ingest cache too
        from unlearnflow.datasets.imagefolder import fill_ingest_cache

        filled = fill_ingest_cache(cfg, layout.ingest_cache, ws.ledger().read().rectified_features())
    pruned = OutputCache(layout.outputs_cache).prune(  # outputs of superseded models or erased records
        {md5_file(layout.model(k)) for k in partition_cfg.shards},
        {rid for split in SPLITS for rid in load_split(layout, split).record_ids})
    return {"checkpoints_deleted": len(removed), "files_deleted": sorted(set(deleted_before) | set(deleted_files)),
            "cached_outputs_deleted": pruned, **({"ingest_cache_rows_filled": filled} if filled else {})}


@task(name="commit-ledger", cache_policy=NO_CACHE)
def commit_ledger(root: str, commit: bool, message: str) -> None:
    """Only the ledger changed (requests recorded as unmatched): git-commit it; no data
    version, so dvc.lock stays what the production version recorded."""
    from tasks import lineage

    if commit:
        lineage.git_commit_lineage(Path(root), message)


def run_metrics(audited: dict, compute_seconds: float) -> dict:
    """The erase run's metrics: the erased records beside holdout, the audit after and before
    (NaN left out: no erased records to score), and the seconds."""
    return {**{k: v for k, v in audited["forgotten"].items() if v == v},
            **{f"audit_{k}": v for k, v in audited["after"].items() if v == v},
            **{f"audit_before_{k}": v for k, v in (audited["before"] or {}).items() if v == v},
            "audit_seconds": audited["seconds"], "audit_passed": float(audited["passed"]),
            **({"audit_lira_reference_seconds": audited["lira_reference_seconds"]}
               if audited["lira_reference_seconds"] else {}),
            "erasure_compute_seconds": compute_seconds}


def erasure_id(request_ids: list[str], before_lock_md5: str) -> str:
    return "e" + hash_json({"requests": sorted(request_ids), "before": before_lock_md5})[:12]






@task(name="certify", cache_policy=NO_CACHE)
def certify(root: str, body: dict, run_id: str, histogram: str | None, commit: bool, registered_model: str) -> str:
    """Write the signed certificate (unless this erasure's is already written), log it and the
    audit histogram to the erase run, record the signing key in MLflow, commit it to git, and
    put the version's lineage card (with links to both) on its MLflow page."""
    from tasks import cards, lineage, registry, store, tracking

    ws = Workspace(root)
    path = certificates.find(ws.layout.certificates, body["erasure_id"])
    if path is None:
        path = certificates.write_certificate(ws.layout.certificates, body, ws.signing_key())
    tracking.log_certificate(ws, run_id, str(path), registered_model, ws.public_key())
    if histogram and Path(histogram).is_file():
        store.log_artifact(ws, run_id, histogram, "audit")
    if commit:
        lineage.git_commit_lineage(ws.root, f"unlearnflow certificate {body['erasure_id']}")
    registry.write_card(ws, registered_model, body["new_version"],
                        cards.erasure_card(ws, body, run_id, str(path), histogram))
    return str(path)


def nan_to_none(d: dict) -> dict:
    """NaN metrics as None, for JSON records (certificates, approximation records)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def close_unmatched(ws: Workspace, state: dict, resolved: dict, commit: bool, seconds: float) -> dict:
    """A batch that matched no record: the ledger says so (committed), no version, nothing purged."""
    eid = state["erasure_id"]
    commit_ledger(str(ws.root), commit, f"unlearnflow erase {eid}: {len(resolved['unmatched'])} request(s) "
                  "matched no record")
    ws.journal().finish()
    return {"status": "unmatched", "erasure_id": eid, "requests": resolved["requests"],
            "unmatched": resolved["unmatched"], "resumed": state["resumed"], "total_seconds": seconds}


def certificate_body(params: Params, state: dict, resolved: dict, affected: dict, after: dict, lineage: dict,
                     tracked: dict, built: dict, audited: dict, purged: dict, root: str) -> dict:
    """What the erasure's certificate says (``certificates.body``), from the flow's steps."""
    remote = lineage.get("dvc_remote")
    return certificates.body(
        erasure_id=state["erasure_id"], created_at=now(), resolved=resolved, affected=affected, after=after,
        lineage=lineage, previous_version=state["previous_version"], new_version=tracked["version"],
        registered_model=params.tracking.registered_model,
        metrics={"test_accuracy": built["metrics"]["ensemble_accuracy"], **nan_to_none(audited["forgotten"])},
        audit={"after": nan_to_none(audited["after"]), "before": nan_to_none(audited["before"] or {}),
               "passed": audited["passed"], "failed_because": audited["failed_because"]},
        purged={**purged, "dvc_cache": "gc --workspace" + (f" --cloud --remote {remote}" if remote else "")},
        superseded=("kept: " + params.retention.reason) if params.retention.keep_superseded
        else "model files deleted once this version is in production",
        train_device=", ".join(sorted({s["device"] for s in built["shards"]})),
        erasure_log=log_position(Workspace(root), params, resolved))


def log_position(ws: Workspace, params: Params, resolved: dict) -> dict:
    """Where the certificate's requests will be in the erasure log: its origin, the first
    leaf's index and the size of the checkpoint that ends with them."""
    from tasks import transparency
    from unlearnflow.tlog import leaves_from_certificates

    first = len(leaves_from_certificates(ws.layout.certificates))
    return {"origin": transparency.log_origin(ws, params), "first_index": first,
            "checkpoint_size": first + len(resolved["requests"])}


def serve(ws: Workspace, params: Params, tracked: dict, metrics: dict, audited: dict, eid: str) -> dict:
    """After the certificate: approximate versions these requests had are marked done, the new
    version goes to ``production`` if it passes the gates, and the versions it supersedes are
    kept with their reason (``retention.keep_superseded``) or lose their model files."""
    from tasks import registry

    approximations = registry.mark_superseded_approximations(
        ws, params, tracked["version"], eid, certificates.completed_requests(ws.layout.certificates))
    decision = registry.promote(ws, params, tracked["version"], metrics,
                                blockers=[f"audit failed: {r}" for r in audited["failed_because"]])
    purged, retained = [], []
    if decision["promoted"] and params.retention.keep_superseded:
        retained = registry.retain_superseded(ws, params, tracked["version"], eid)
    elif decision["promoted"]:
        purged = registry.purge_superseded(ws, params, tracked["version"], f"erased under {eid}")
    return {"mlflow": {**tracked, **decision}, "superseded_purged": purged, "superseded_retained": retained,
            "approximations_superseded": approximations}
