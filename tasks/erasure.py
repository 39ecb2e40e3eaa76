"""Prefect tasks of the erase flow: resolve the ledger's pending requests, audit the new
version on the erased records, purge what still holds them, and write the certificate."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.faults import crash_point
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import DataConfig, Params, PartitionConfig
from unlearnflow.datasets import load_dataset
from unlearnflow.devices import resolve as resolve_device
from unlearnflow.ensemble import load_constituent
from unlearnflow.erasure import add_tombstones, erased_record_metrics, load_pseudonymized, resolve
from unlearnflow.errors import UnlearnflowError
from unlearnflow.hashing import hash_json, md5_file
from unlearnflow.pseudonyms import pseudonym
from unlearnflow.records import SPLITS, RecordSet, stable_sample
from unlearnflow.scoring import OutputCache
from unlearnflow.stages import load_ensemble, load_split


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# The erase flow's journal (``.unlearnflow/journal.json``) names the batch, the state before it
# and every step done, in this order; a crash after any of them is finished by the next
# writing command (``flows/recovery.py``), which runs the flow again from the journal.
STEPS = ("begun", "resolved", "computed", "audited", "purged", "data_committed", "registered", "certified",
         "promoted")


def advance(ws: Workspace, state: dict, step: str, **values) -> dict:
    """Record that ``step`` is done (durably), then the fault-injection point of that step."""
    state = ws.journal().update(state, step, **values)
    crash_point(step)
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
    from tasks import lineage, tracking

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
    previous = tracking.production_version(ws, params.tracking.registered_model)
    served = tracking.stored_constituents(ws, previous)
    ids = [r.request.request_id for r in pending]
    state = journal.begin({"kind": "erase", "erasure_id": erasure_id(ids, lock_md5), "request_ids": ids,
                           # before = what production serves, not whatever files an interrupted run left
                           "before": served_snapshot(served) if served else snapshot(params.partition, root),
                           "before_dvc_lock_md5": lock_md5,
                           "previous_version": str(previous.version) if previous else "", "started_at": now()})
    return {**advance(ws, state, "begun"), "resumed": False}


@task(name="resolve-requests", cache_policy=NO_CACHE)
def resolve_requests(cfg: DataConfig, root: str, request_ids: list[str]) -> dict:
    """Match the batch's requests to records and append the outcome to the ledger (once:
    requests already resolved keep their records)."""
    ws = Workspace(root)
    ledger = ws.ledger()
    known = ledger.read().requests
    batch = [known[rid] for rid in request_ids]
    records = load_pseudonymized(cfg, ws.secret_key(), ws.layout.ingest_cache)
    source_of = dict(zip(records.record_ids, records.sources))
    events, report, erased = [], [], {}
    for r in batch:
        rid = r.request.request_id
        matched = r.records if r.status == "resolved" else resolve(r.request, records, ws.secret_key())
        if r.status == "pending":  # resolved/unmatched ones came from an attempt that stopped later: keep
            events.append({"event": "resolved", "request_id": rid, "records": list(matched)} if matched
                          else {"event": "unmatched", "request_id": rid})
        report.append({"request_id": rid, "kind": r.request.kind, "records": len(matched)})
        if r.request.kind == "forget":
            erased.update({m: rid for m in matched})
    ledger.record(events)
    add_tombstones(ws.layout.tombstones, erased)
    return {
        "requests": report,
        "matched": [x["request_id"] for x in report if x["records"]],
        "unmatched": [x["request_id"] for x in report if not x["records"]],
        "erased_records": sorted(erased),
        "erased_sources": sorted({source_of[m] for m in erased if m in source_of}),
    }


@task(name="purge-workspace", cache_policy=NO_CACHE)
def purge_workspace(cfg: DataConfig, partition_cfg: PartitionConfig, root: str, erased_sources: list[str]) -> dict:
    """Delete slice checkpoints no current constituent uses (all that saw erased records),
    for image folders the erased image files themselves (reported as pseudonyms, like the
    ledger's) and their decoded pixels in the ingest cache, and cached outputs of models
    or records no longer current."""
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
                deleted_files.append(pseudonym(ws.secret_key(), rel))  # file names are personal data
        load_dataset(cfg, layout.ingest_cache)  # the ingest cache now holds only the files left
    pruned = OutputCache(layout.outputs_cache).prune(  # outputs of superseded models or erased records
        {md5_file(layout.model(k)) for k in partition_cfg.shards},
        {rid for split in SPLITS for rid in load_split(layout, split).record_ids})
    return {"checkpoints_deleted": len(removed), "files_deleted": deleted_files, "cached_outputs_deleted": pruned}


@task(name="commit-ledger", cache_policy=NO_CACHE)
def commit_ledger(root: str, commit: bool, message: str) -> None:
    """Only the ledger changed (requests recorded as unmatched): git-commit it; no data
    version, so dvc.lock stays what the production version recorded."""
    from tasks import lineage

    if commit:
        lineage.git_commit_lineage(Path(root), message)


def run_metrics(audited: dict, audit_ok: bool, compute_seconds: float) -> dict:
    """The erase run's metrics: the erased records beside holdout, the audit after and before
    (NaN left out: no erased records to score), and the seconds."""
    return {**{k: v for k, v in audited["forgotten"].items() if v == v},
            **{f"audit_{k}": v for k, v in audited["after"].items() if v == v},
            **{f"audit_before_{k}": v for k, v in (audited["before"] or {}).items() if v == v},
            "audit_seconds": audited["seconds"], "audit_passed": float(audit_ok),
            **({"audit_lira_reference_seconds": audited["lira_reference_seconds"]}
               if audited["lira_reference_seconds"] else {}),
            "erasure_compute_seconds": compute_seconds}


def erasure_id(request_ids: list[str], before_lock_md5: str) -> str:
    return "e" + hash_json({"requests": sorted(request_ids), "before": before_lock_md5})[:12]


@task(name="audit", cache_policy=NO_CACHE)
def audit_version(params: Params, root: str, erased: list[str], eid: str, previous_files: dict | None,
                  current_files: dict | None = None, titles: tuple[str, str] | None = None,
                  histogram: bool = True) -> dict:
    """Audit the new ensemble (the workspace's, or ``current_files``) and, if its files are
    still stored, the previous one (or a reference version), on the erased records; draw
    their confidence beside retain and test records, one panel each, titled ``titles``
    (unless ``histogram`` is False).
    ``forgotten``: the erased records' mean loss and confidence beside the holdout
    records' (from the same outputs). With ``audit.lira_references`` = K > 0, K reference
    ensembles are trained first (held in memory only, never stored)."""
    import logging
    import time

    import numpy as np

    from unlearnflow.aggregators import aggregate
    from unlearnflow.audit import Outputs
    from unlearnflow.audit.lira import train_references
    from unlearnflow.audit.report import audit_ensembles, confidence_histogram, histogram_panels

    t0 = time.perf_counter()
    ws = Workspace(root)
    splits = {name: load_split(ws.layout, name) for name in SPLITS}
    sets = {"forget": forget_records(params.data, ws, splits, erased),
            **{name: stable_sample(split, params.audit.sample) for name, split in splits.items()}}
    references, k = None, params.audit.lira_references
    if k and len(sets["forget"]):
        log = logging.getLogger("unlearnflow")
        log.info("audit: training %d LiRA reference ensembles on halves of %d records", k,
                 len(sets["train"]) + len(sets["forget"]) + len(sets["holdout"]))
        references = train_references(
            RecordSet.concat([sets["train"], sets["forget"], sets["holdout"]]), k, params.partition, params.train,
            params.aggregate.method, seed=params.train.seed, workers=params.runner.workers,
            progress=lambda i, n: log.info("audit: LiRA reference %d/%d trained", i, n))

    cache = OutputCache(ws.layout.outputs_cache, resolve_device(params.train.device))  # shared constituents: scored once

    def outputs(paths: list[str], name: str, records) -> Outputs:
        """Softmax-mean outputs of the ensemble of ``paths`` (the forget set's kept in memory only)."""
        probs = cache.probabilities(paths, records, workers=params.runner.workers, persist=name != "forget")
        return Outputs(aggregate(np.stack(probs), "softmax_mean"), records.labels, records.record_ids)

    if current_files:
        current_paths = current_files["paths"]
    else:
        load_ensemble(ws.layout)  # checks the constituents' md5s against ensemble.json
        spec = json.loads(ws.layout.ensemble.read_text())
        current_paths = [str(ws.layout.root / c["path"]) for c in spec["constituents"]]
    audited = audit_ensembles(sets, outputs, current_paths, previous_files["paths"] if previous_files else None,
                              references)
    report, report_before = audited["after"], audited["before"]
    after = audited["outputs_after"]
    png = None
    if histogram:
        panels = histogram_panels(titles or (f"after erasure {eid}", "before"), after, audited["outputs_before"])
        png = confidence_histogram(
            ws.layout.audits / f"{eid}.png" if not current_files
            else Path(tempfile.mkdtemp(prefix="unlearnflow-audit-")) / f"{eid}.png", panels)
    forget, holdout = after["forget"], after["holdout"]
    return {"after": report, "before": report_before, "histogram": str(png) if png else None,
            "forgotten": erased_record_metrics(forget.probs, forget.labels, holdout.probs, holdout.labels),
            "lira_reference_seconds": round(references.seconds, 2) if references else None,
            "outputs_scored": cache.computed, "outputs_reused": cache.reused,
            "seconds": round(time.perf_counter() - t0, 2)}


def forget_records(cfg: DataConfig, ws: Workspace, splits: dict, erased: list[str]):
    """The erased records: from the workspace's splits while they still hold them all
    (the fast path, before the exact erasure), else from the dataset itself."""
    wanted = set(erased)
    every = RecordSet.concat(list(splits.values()))
    index = [i for i, r in enumerate(every.record_ids) if r in wanted]
    if len(index) < len(wanted):
        every = load_pseudonymized(cfg, ws.secret_key(), ws.layout.ingest_cache)
        index = [i for i, r in enumerate(every.record_ids) if r in wanted]
    return every.take(index)


@task(name="certify", cache_policy=NO_CACHE)
def certify(root: str, body: dict, run_id: str, histogram: str | None, commit: bool, registered_model: str) -> str:
    """Write the signed certificate (unless this erasure's is already written), log it and the
    audit histogram to the erase run, record the signing key in MLflow, commit it to git."""
    from tasks import lineage, tracking

    ws = Workspace(root)
    path = certificates.find(ws.layout.certificates, body["erasure_id"])
    if path is None:
        path = certificates.write_certificate(ws.layout.certificates, body, ws.signing_key())
    tracking.log_certificate(ws, run_id, str(path), registered_model, ws.public_key())
    if histogram and Path(histogram).is_file():
        tracking.log_artifact(ws, run_id, histogram, "audit")
    if commit:
        lineage.git_commit_lineage(ws.root, f"unlearnflow certificate {body['erasure_id']}")
    return str(path)
