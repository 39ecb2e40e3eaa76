"""Prefect tasks of every audit (the erase flow's, the fast path's gate and record, and
``unlearnflow audit``'s): score a version on the erased records beside retain, test and
holdout records (every registered attack, ``unlearnflow.audit.ATTACKS``), gate it, and log
a re-audit to the audited version's run."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry, store
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.audit.report import gate as audit_gate
from unlearnflow.config import DataConfig, Params
from unlearnflow.devices import resolve as resolve_device
from unlearnflow.erasure import erased_record_metrics, load_pseudonymized
from unlearnflow.errors import UnlearnflowError
from unlearnflow.records import SPLITS, RecordSet, stable_sample
from unlearnflow.scoring import OutputCache
from unlearnflow.stages import load_ensemble, load_split


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
    import time

    import numpy as np

    from unlearnflow.aggregators import aggregate
    from unlearnflow.audit import Outputs
    from unlearnflow.audit.report import audit_ensembles, confidence_histogram, histogram_panels

    t0 = time.perf_counter()
    ws = Workspace(root)
    splits = {name: load_split(ws.layout, name) for name in SPLITS}
    sets = {"forget": forget_records(params.data, ws, splits, erased),
            **{name: stable_sample(split, params.audit.sample) for name, split in splits.items()}}
    references = lira_references(params, sets) if params.audit.lira_references and len(sets["forget"]) else None
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


def lira_references(params: Params, sets: dict):
    """``audit.lira_references`` reference ensembles, each trained on a random half of the
    retain, forget and holdout records (held in memory only, never stored)."""
    import logging

    from unlearnflow.audit.lira import train_references

    log, k = logging.getLogger("unlearnflow"), params.audit.lira_references
    pool = RecordSet.concat([sets["train"], sets["forget"], sets["holdout"]])
    log.info("audit: training %d LiRA reference ensembles on halves of %d records", k, len(pool))
    return train_references(pool, k, params.partition, params.train, params.aggregate.method,
                            seed=params.train.seed, workers=params.runner.workers,
                            progress=lambda i, n: log.info("audit: LiRA reference %d/%d trained", i, n))


def forget_records(cfg: DataConfig, ws: Workspace, splits: dict, erased: list[str]):
    """The erased records: from the workspace's splits while they still hold them all
    (the fast path, before the exact erasure), else from the dataset itself."""
    wanted = set(erased)
    every = RecordSet.concat(list(splits.values()))
    index = [i for i, r in enumerate(every.record_ids) if r in wanted]
    if len(index) < len(wanted):
        every = load_pseudonymized(cfg, ws.secret_key(cfg), ws.layout.ingest_cache)
        index = [i for i, r in enumerate(every.record_ids) if r in wanted]
    return every.take(index)


def gate(params: Params, audited: dict, previous) -> tuple[bool, list[str]]:
    """The audit gate (``audit`` in params.yaml). Test accuracy is compared like with like: the
    version before, scored by this audit on the same records; its tag when its files are gone."""
    before = (audited["before"] or {}).get("test_accuracy")
    if before is None and previous is not None and "ensemble_test_accuracy" in previous.tags:
        before = float(previous.tags["ensemble_test_accuracy"])
    return audit_gate(audited["after"], params.audit, before)


def erased_so_far(ws: Workspace) -> list[str]:
    """Every record erased in this workspace: tombstones and certificates."""
    erased = set(ws.tombstones())
    for path in certificates.certificate_files(ws.layout.certificates):
        erased |= set(json.loads(path.read_text()).get("erased_record_ids", []))
    return sorted(erased)


def find_version(ws: Workspace, name: str, version: str | None):
    """A registered version whose model files are still stored (default: production), or a
    one-line error naming the versions there are."""
    if version is None:
        mv = registry.production_version(ws, name)
        if mv is None:
            raise UnlearnflowError(f"no production version of {name!r} yet; train first or pass --version")
    else:
        known = sorted(int(v.version) for v in registry.registered_versions(ws, name))
        if not str(version).isdigit() or int(version) not in known:
            raise UnlearnflowError(f"{name!r} has no version {version!r}; registered versions: "
                                   f"{', '.join(map(str, known)) or 'none'}")
        mv = registry.get_version(ws, name, str(version))
    if registry.stored_constituents(ws, mv) is None:
        raise UnlearnflowError(f"version {mv.version}'s model files were purged ({mv.tags.get('purged')}); "
                               f"only versions still stored can be audited")
    return mv


def log_rerun(ws: Workspace, mv, result: dict) -> str:
    """A re-audit's figures (prefix ``audit_rerun_``) and histogram on the audited version's run;
    the histogram's temporary folder is removed. Returns where the histogram now is."""
    metrics = {f"audit_rerun_{k}": float(v) for k, v in result["after"].items()}
    metrics["audit_rerun_seconds"] = result["seconds"]
    if "avg_gap" in result:
        metrics["audit_rerun_avg_gap"] = result["avg_gap"]
        store.client_for(ws).set_tag(mv.run_id, "audit_rerun_reference_version", result["reference_version"])
    store.log_metrics(ws, mv.run_id, metrics)
    png = Path(result["histogram"])
    store.log_artifact(ws, mv.run_id, str(png), "audit")
    shutil.rmtree(png.parent, ignore_errors=True)
    return f"MLflow run {mv.run_id}, artifact audit/{png.name}"
