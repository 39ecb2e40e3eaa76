"""MLflow runs: one run per training or erase flow (a child run per constituent it trained),
one per fast path; each registers its ensemble as a new version of one registered model.

Parent run: all params, ensemble metrics, the pipeline's lineage tags (git
commit, dvc.lock md5, data version) and the ensemble as a loadable pyfunc model,
registered under ``tracking.registered_model``. What happens to the version next
(promotion, its lineage card, superseding) is ``tasks/registry.py``'s.

Child run ``shard-<k>``: the constituent's metrics, its checkpoint keys, the md5s
DVC recorded for its manifest, pixels and model, and the manifest as an MLflow
dataset input whose digest is the DVC md5.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import mlflow
import pandas as pd

from tasks.registry import promote, set_version_tags
from tasks.store import client_for
from tasks.workspace import Workspace
from unlearnflow.config import Params

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")  # logged as code; importing it would register it


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    return [f"{p}=={md.version(p)}" for p in ("mlflow", "torch", "torchvision", "numpy", "pandas")]


KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development"}  # MLflow 3's UI: a model-training experiment, not GenAI


def setup(ws: Workspace, experiment: str) -> str:
    if ws.tracking_uri.startswith("sqlite:") and not (ws.root / "mlflow.db").exists():
        import logging

        logging.getLogger("unlearnflow").info("creating the workspace's MLflow store (mlflow.db): a few seconds, once")
    client_for(ws)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:  # a tracking server picks the artifact location itself (proxied: mlflow-artifacts:/)
        exp_id = mlflow.create_experiment(experiment, artifact_location=ws.artifact_root, tags=EXPERIMENT_TAGS)
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(KIND_TAG) != EXPERIMENT_TAGS[KIND_TAG]:  # made before the tag was set
            client_for(ws).set_experiment_tag(exp_id, KIND_TAG, EXPERIMENT_TAGS[KIND_TAG])
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_pipeline_run(
    ws: Workspace, params: Params, *, kind: str, run_name: str, prepared: dict, shards: list[dict],
    child_shards: list[int], ensemble: dict, metrics: dict, lineage: dict, extra_tags: dict | None = None,
    extra_metrics: dict | None = None, started_at: float | None = None,
) -> dict:
    """Log one pipeline run (training or erasure) and register its ensemble as a new version.

    The version is not promoted here: callers move ``production`` with ``promote`` once
    every step of their flow has succeeded. Returns {run_id, version, experiment_id}.
    """
    experiment_id = setup(ws, params.tracking.experiment)
    layout = ws.layout
    lock_outs = lineage["outs"]
    common = {
        "git_commit": lineage["git_commit"] or "",
        "dvc_lock_md5": lineage["dvc_lock_md5"],
        "data_version": lineage["data_version"],
        "guarantee": "exact",
        "train_device": ", ".join(sorted({s.get("device", "cpu") for s in shards})),  # cpu | cuda/<GPU name>
        **_dp_tags(params, shards),
    }
    with _start_run(ws, experiment_id, run_name, started_at) as parent:
        mlflow.log_params(_flatten(params.to_dict()))
        mlflow.set_tags({"unlearnflow.kind": kind, "git_dirty": str(lineage["git_dirty"]),
                         "dataset": prepared["dataset"], **common, **(extra_tags or {})})
        mlflow.log_metrics(
            {
                "ensemble_test_accuracy": metrics["ensemble_accuracy"],
                **{f"test_accuracy_{m}": a for m, a in metrics["accuracy_by_aggregation"].items()},
                "train_records": prepared["train_records"],
                "test_records": prepared["test_records"],
                "train_seconds_total": sum(s["seconds"] for s in shards),
                **(extra_metrics or {}),
            }
        )
        for s in shards:
            if s["shard"] in child_shards:
                _log_constituent(layout, s, metrics, lock_outs, lineage)
        artifacts = {"ensemble": str(layout.ensemble)}
        artifacts.update({f"shard_{c['shard']}": str(layout.root / c["path"]) for c in ensemble["constituents"]})
        version = _log_ensemble_model(params, artifacts)
        mlflow.log_dict(ensemble, "ensemble.json")
        mlflow.log_dict(metrics, "metrics/eval.json")
        run_id = parent.info.run_id

    version_tags = {**common, "shards": str(len(shards)), "kind": kind,
                    "ensemble_test_accuracy": f"{metrics['ensemble_accuracy']:.4f}",
                    "constituent_md5s": json.dumps({str(c["shard"]): c["md5"] for c in ensemble["constituents"]}),
                    **{k: v for k, v in (extra_tags or {}).items() if k.startswith(("erasure", "key_rotation"))}}
    set_version_tags(ws, params.tracking.registered_model, version, version_tags)
    return {"run_id": run_id, "version": version, "experiment_id": parent.info.experiment_id}


def _start_run(ws: Workspace, experiment_id: str, run_name: str, started_at: float | None):
    """The flow's run, started when the flow started (``started_at``, epoch seconds): its duration
    in the UI is the flow's up to the version's registration, not the seconds spent logging."""
    if started_at is None:
        return mlflow.start_run(run_name=run_name)
    run = client_for(ws).create_run(experiment_id, start_time=int(started_at * 1000), run_name=run_name)
    return mlflow.start_run(run_id=run.info.run_id)


def _dp_tags(params: Params, shards: list[dict]) -> dict:
    """With ``train.dp``: the version's (epsilon, delta), the largest over its constituents
    (each record is in one shard only, so the shards compose in parallel)."""
    if params.train.dp is None:
        return {}
    worst = max(s["dp_epsilon"] for s in shards)
    return {"dp_epsilon": f"{worst:.4f}", "dp_delta": f"{params.train.dp.delta:g}",
            "dp_noise_multiplier": f"{params.train.dp.noise_multiplier:g}",
            "dp_max_grad_norm": f"{params.train.dp.max_grad_norm:g}"}


def code_archive(folder: Path) -> Path:
    """The core package (``unlearnflow/``, its .py files) as one zip in ``folder``, named by its
    content hash: the served model's code, one artifact instead of one upload per file. Entries
    sorted, timestamps fixed: the same code gives the same bytes."""
    import hashlib
    import zipfile

    package = Path(__file__).resolve().parent.parent / "unlearnflow"
    files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.relative_to(package.parent).as_posix().encode() + b"\0" + p.read_bytes())
    path = Path(folder) / f"unlearnflow-code-{digest.hexdigest()[:12]}.zip"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                info = zipfile.ZipInfo(p.relative_to(package.parent).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                z.writestr(info, p.read_bytes(), zipfile.ZIP_DEFLATED)
        os.replace(tmp, path)
    return path


def _log_ensemble_model(params: Params, artifacts: dict) -> str:
    """Log the aggregated model as a pyfunc and register it; returns the new version. The code
    it runs is the core package as one zip artifact (``code_archive``; the model puts it on
    ``sys.path`` when loaded): 12 uploads per version instead of 66.
    MLflow's own prints ("Registered model … already exists", "Created version '2' …") are
    muted unless ``--verbose`` (UNLEARNFLOW_VERBOSE): our report says which version it made.
    Muted with MLflow's counted switch, so a nested mute inside log_model cannot undo it."""
    from mlflow.utils.autologging_utils.logging_and_warnings import MlflowEventsAndWarningsBehaviorGlobally

    quiet = MlflowEventsAndWarningsBehaviorGlobally(disable_event_logs=not os.environ.get("UNLEARNFLOW_VERBOSE"),
                                                    disable_warnings=False, reroute_warnings=False)
    import tempfile

    with quiet, warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
        info = mlflow.pyfunc.log_model(  # "no input example": inputs are checked in predict itself
            name="ensemble",
            python_model=str(PYFUNC_FILE),
            artifacts={**artifacts, "code": str(code_archive(Path(tmp)))},
            pip_requirements=_pip_requirements(),
            registered_model_name=params.tracking.registered_model,
            signature=_signature(),
        )
    return str(info.registered_model_version)


def _signature():
    """The served model's signature: the parameter ``output`` = classes (default) | probabilities,
    and the default output, one class index per image. Inputs are images in two accepted shapes,
    (N, C, H, W) or flattened (N, C*H*W), checked by the model itself: an input schema would make
    MLflow enforce one shape and dtype, so none is declared."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(outputs=Schema([TensorSpec(np.dtype("int64"), (-1,), "class")]),
                          params=ParamSchema([ParamSpec("output", "string", "classes")]))


def log_approximate_run(ws: Workspace, params: Params, *, approximation_id: str, base_version: str,
                        approximated: dict, requests: list[dict], audit: dict, seconds: float) -> dict:
    """Log a fast-path run and register its ensemble with guarantee ``approximate``."""
    experiment_id = setup(ws, params.tracking.experiment)
    method = params.unlearn.method
    tags = {"guarantee": "approximate", "unlearn_method": method, "approximation_id": approximation_id,
            "base_version": base_version, "approximated_requests": ",".join(r["request_id"] for r in requests),
            "exact_erasure": "pending"}
    numbers, flags = fold_details(approximated["shards"])  # e.g. certified_removal's bound and retrains
    tags.update(_certified_tags(method, numbers, flags))
    with _start_run(ws, experiment_id, f"approximate-{approximation_id}", time.time() - seconds) as run:
        mlflow.log_params(_flatten(params.to_dict()))
        mlflow.set_tags({"unlearnflow.kind": "approximate", **tags,
                         "affected_shards": ",".join(str(s["shard"]) for s in approximated["shards"]) or "none",
                         **{f"unlearn_{k}_shards": ",".join(map(str, v)) or "none" for k, v in flags.items()}})
        mlflow.log_metrics({**{f"unlearn_{k}": v for k, v in numbers.items()},
                            "ensemble_test_accuracy": audit["after"]["test_accuracy"],
                            "approximate_seconds": seconds,
                            "unlearn_seconds": sum(s["seconds"] for s in approximated["shards"]),
                            **{f"audit_{k}": v for k, v in audit["after"].items() if v == v},
                            **{f"audit_before_{k}": v for k, v in (audit["before"] or {}).items() if v == v}})
        folder = Path(approximated["dir"])
        artifacts = {"ensemble": str(folder / "ensemble.json")}
        artifacts.update({f"shard_{c['shard']}": str(folder / c["path"])
                          for c in approximated["ensemble"]["constituents"]})
        version = _log_ensemble_model(params, artifacts)
        mlflow.log_dict(approximated["ensemble"], "ensemble.json")
        run_id = run.info.run_id
    version_tags = {**tags, "kind": "approximate", "shards": str(len(approximated["ensemble"]["constituents"])),
                    "ensemble_test_accuracy": f"{audit['after']['test_accuracy']:.4f}",
                    "constituent_md5s": json.dumps({str(c["shard"]): c["md5"]
                                                    for c in approximated["ensemble"]["constituents"]})}
    set_version_tags(ws, params.tracking.registered_model, version, version_tags)
    return {"run_id": run_id, "version": version}


def fold_details(shards: list[dict]) -> tuple[dict[str, float], dict[str, list[int]]]:
    """The methods' per-edit ``details`` of every affected shard (``{"shard", "details": [..]}``)
    folded for a record: the largest value of each number, and for each flag the shards
    where it was true (certified_removal's ``retrain_triggered``)."""
    numbers, flags = {}, {}
    for s in shards:
        for d in s["details"]:
            for k, v in d.items():
                if isinstance(v, bool):
                    hits = flags.setdefault(k, [])
                    if v and s["shard"] not in hits:
                        hits.append(s["shard"])
                elif isinstance(v, (int, float)) and v == v:
                    numbers[k] = max(numbers.get(k, v), float(v))
    return numbers, flags


def _certified_tags(method: str, numbers: dict, flags: dict) -> dict:
    """certified_removal's guarantee as version tags (shown by ``lineage``)."""
    if method != "certified_removal" or "epsilon" not in numbers:
        return {}
    retrained = flags.get("retrain_triggered", [])
    return {"certified_epsilon": f"{numbers['epsilon']:g}", "certified_delta": f"{numbers['delta']:g}",
            "certified_spent": f"{numbers['spent']:.4g}", "certified_budget": f"{numbers['budget']:.4g}",
            "certified_retrained_shards": ",".join(map(str, retrained)) or "none"}


def _log_constituent(layout, s: dict, metrics: dict, lock_outs: dict, lineage: dict) -> None:
    k = s["shard"]
    with mlflow.start_run(run_name=f"shard-{k}", nested=True):
        manifest_path = layout.shard_manifest(k)
        stage_outs = lock_outs.get(f"train@{k}", {})
        mlflow.set_tags(
            {
                "unlearnflow.kind": "constituent",
                "shard": str(k),
                "dvc_stage": f"train@{k}",
                "manifest_path": layout.rel(manifest_path),
                "manifest_md5": s["manifest_md5"],
                "images_md5": s["images_md5"],
                "model_md5": s["model_md5"],
                "dvc_model_md5": stage_outs.get(layout.rel(layout.model(k)), ""),
                "checkpoint_key": s["slice_keys"][-1],
                "resumed_from_stage": str(s["resumed_from"]),
                "executor": s.get("executor", ""),  # a Dask worker, or this host's process
                "git_commit": lineage["git_commit"] or "",
            }
        )
        mlflow.log_params({"shard": k, "records": s["records"], "slice_keys": json.dumps(s["slice_keys"])})
        mlflow.log_metrics(
            {"test_accuracy": metrics["shard_accuracy"][str(k)], "train_seconds": s["seconds"],
             "trained_stages": len(s["trained_stages"]),
             **({"dp_epsilon": s["dp_epsilon"]} if s.get("dp_epsilon") is not None else {})}
        )
        records = json.loads(manifest_path.read_text())["records"]
        with warnings.catch_warnings():  # schema-inference hints about int columns: not actionable here
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                pd.DataFrame(records), source=manifest_path.as_uri(), name=f"shard_{k}", digest=s["manifest_md5"],
            )
            mlflow.log_input(dataset, context="training", tags={"dvc_md5": s["manifest_md5"], "dvc_stage": f"train@{k}"})


def log_training(
    ws: Workspace, params: Params, prepared: dict, shards: list[dict], ensemble: dict, metrics: dict, lineage: dict,
    blockers: list[str] | None = None, started_at: float | None = None, rotation: dict | None = None,
) -> dict:
    """A training flow's run (a child per constituent), registered and, if good and nothing
    blocks it, promoted. ``rotation``: the training a subject-key rotation runs (its run, kind and
    version tags say so)."""
    from tasks.cards import training_card
    from tasks.registry import write_card

    run_name = f"rotate-{rotation['rotation_id']}" if rotation else f"train-{lineage['data_version'][:8]}"
    tags = {"key_rotation": rotation["summary"], "key_rotation_id": rotation["rotation_id"],
            "key_rotation_requests_rekeyed": str(rotation["requests_rekeyed"])} if rotation else None
    out = log_pipeline_run(
        ws, params, kind="key_rotation" if rotation else "train", run_name=run_name, prepared=prepared,
        shards=shards, child_shards=[s["shard"] for s in shards], ensemble=ensemble, metrics=metrics, lineage=lineage,
        extra_tags=tags, started_at=started_at,
    )
    write_card(ws, params.tracking.registered_model, out["version"],
               training_card(out["version"], shards, metrics, lineage, run_name))
    return {**out, **promote(ws, params, out["version"], metrics, blockers)}


def log_certificate(ws: Workspace, run_id: str, path: str, registered_model: str, public_key: str) -> None:
    """The certificate as an artifact of its erase run; the signing key's public half as a
    registered-model tag (set once: a later, different key is what ``verify`` reports)."""
    client = client_for(ws)
    client.log_artifact(run_id, path, "certificate")
    if "certificate_public_key" not in client.get_registered_model(registered_model).tags:
        client.set_registered_model_tag(registered_model, "certificate_public_key", public_key)


def log_metrics(ws: Workspace, run_id: str, metrics: dict[str, float]) -> None:
    """Metrics added to a finished run in one request (the erase flow's steps after its registration)."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    client_for(ws).log_batch(run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()])


def log_key_rotation(ws: Workspace, params: Params, rotation_id: str, path: str, public_key: str) -> str:
    """A signing-key rotation: its chain entry as the artifact of a run of its own, and the new
    public key as the registered model's ``certificate_public_key`` (what ``verify`` expects).
    Idempotent (an interrupted attempt's run is found and completed); returns the run id."""
    client = client_for(ws)
    run_id = rotation_run(ws, params.tracking.experiment, rotation_id)
    if run_id is None:
        run_id = client.create_run(setup(ws, params.tracking.experiment), run_name=f"key-rotation-{rotation_id}",
                                   tags={"unlearnflow.kind": "key_rotation", "key_rotation_id": rotation_id,
                                         "key_rotation": "signing key", "signer_public_key": public_key}).info.run_id
    if logged_certificate(ws, run_id) is None:
        client.log_artifact(run_id, path, "certificate")
    client.set_terminated(run_id)
    if registered_model_exists(ws, params.tracking.registered_model):
        client.set_registered_model_tag(params.tracking.registered_model, "certificate_public_key", public_key)
    return run_id


def rotation_run(ws: Workspace, experiment: str, rotation_id: str | None) -> str | None:
    """The MLflow run of key rotation ``rotation_id`` (a subject key's: its training run), if any."""
    exp = client_for(ws).get_experiment_by_name(experiment) if rotation_id else None
    if exp is None:
        return None
    runs = client_for(ws).search_runs([exp.experiment_id], f"tags.key_rotation_id = '{rotation_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


def registered_model_exists(ws: Workspace, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client_for(ws).get_registered_model(name)
        return True
    except MlflowException:
        return False


def logged_certificate(ws: Workspace, run_id: str) -> bytes | None:
    """The certificate file logged to an erase run (None if there is none)."""
    client = client_for(ws)
    files = [f.path for f in client.list_artifacts(run_id, "certificate")]
    if not files:
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="unlearnflow-cert-") as tmp:
        return Path(client.download_artifacts(run_id, files[0], tmp)).read_bytes()


def erasure_tags(erasure_id: str, resolved: dict, affected: dict, previous_version: str) -> dict:
    """Tags of an erase run (and, those starting with ``erasure``, of its version)."""
    return {
        "erasure_id": erasure_id,
        "erasure_requests": ",".join(r["request_id"] for r in resolved["requests"]),
        "erasure_unmatched": ",".join(resolved["unmatched"]),
        "affected_shards": ",".join(affected) or "none",
        "affected_slices": "; ".join(f"shard {k} from slice {v['first_retrained_slice']}"
                                     for k, v in affected.items()) or "none",
        "resumed_from": "; ".join(f"shard {k}: {(v['resumed_from_checkpoint'] or 'scratch')[:12]}"
                                  for k, v in affected.items()) or "none",
        "previous_version": previous_version,
    }


def latest_full_training_seconds(ws: Workspace, registered_model: str) -> float | None:
    """Training time of the newest run that trained every slice stage of every shard."""
    client = client_for(ws)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, "tags.`unlearnflow.kind` = 'train'", order_by=["attributes.start_time DESC"])
    for run in runs:
        children = client.search_runs(exp_ids, f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        stages = [c.data.metrics.get("trained_stages", 0) for c in children]
        slices = int(run.data.params.get("partition.slices", 0))
        if children and all(s == slices for s in stages):
            return run.data.metrics.get("train_seconds_total")
    return None


