"""MLflow: one run per training flow, a child run per constituent, one registered model.

Parent run: all params, ensemble metrics, the pipeline's lineage tags (git
commit, dvc.lock md5, data version) and the ensemble as a loadable pyfunc model,
registered under ``tracking.registered_model``. The ``production`` alias moves to
the new version only if it passes the ``promote`` gate.

Child run ``shard-<k>``: the constituent's metrics, its checkpoint keys, the md5s
DVC recorded for its manifest, pixels and model, and the manifest as an MLflow
dataset input whose digest is the DVC md5.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from tasks.workspace import Workspace
from unlearnflow.config import Params

PRODUCTION = "production"
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


def setup(ws: Workspace, experiment: str) -> str:
    mlflow.set_tracking_uri(ws.tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(experiment, artifact_location=ws.artifact_root)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_training(
    ws: Workspace, params: Params, prepared: dict, shards: list[dict], ensemble: dict, metrics: dict, lineage: dict
) -> dict:
    """Log one training flow; returns {run_id, version, promoted, reason}."""
    setup(ws, params.tracking.experiment)
    layout = ws.layout
    lock_outs = lineage["outs"]
    with mlflow.start_run(run_name=f"train-{lineage['data_version'][:8]}") as parent:
        mlflow.log_params(_flatten(params.to_dict()))
        mlflow.set_tags(
            {
                "unlearnflow.kind": "train",
                "git_commit": lineage["git_commit"] or "",
                "git_dirty": str(lineage["git_dirty"]),
                "dvc_lock_md5": lineage["dvc_lock_md5"],
                "data_version": lineage["data_version"],
                "dataset": prepared["dataset"],
                "guarantee": "exact",
            }
        )
        mlflow.log_metrics(
            {
                "ensemble_test_accuracy": metrics["ensemble_accuracy"],
                **{f"test_accuracy_{m}": a for m, a in metrics["accuracy_by_aggregation"].items()},
                "train_records": prepared["train_records"],
                "test_records": prepared["test_records"],
                "train_seconds_total": sum(s["seconds"] for s in shards),
            }
        )
        for s in shards:
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
                        "git_commit": lineage["git_commit"] or "",
                    }
                )
                mlflow.log_params({"shard": k, "records": s["records"], "slice_keys": json.dumps(s["slice_keys"])})
                mlflow.log_metrics(
                    {"test_accuracy": metrics["shard_accuracy"][str(k)], "train_seconds": s["seconds"],
                     "trained_stages": len(s["trained_stages"])}
                )
                records = json.loads(manifest_path.read_text())["records"]
                with warnings.catch_warnings():  # schema-inference hints about int columns: not actionable here
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = mlflow.data.from_pandas(
                        pd.DataFrame(records), source=manifest_path.as_uri(), name=f"shard_{k}",
                        digest=s["manifest_md5"],
                    )
                    mlflow.log_input(
                        dataset, context="training", tags={"dvc_md5": s["manifest_md5"], "dvc_stage": f"train@{k}"}
                    )
        artifacts = {"ensemble": str(layout.ensemble)}
        artifacts.update({f"shard_{c['shard']}": str(layout.root / c["path"]) for c in ensemble["constituents"]})
        with warnings.catch_warnings():  # "add type hints to predict": inputs are validated in predict itself
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=str(PYFUNC_FILE),
                artifacts=artifacts,
                code_paths=[str(Path(__file__).resolve().parent.parent / "unlearnflow")],
                pip_requirements=_pip_requirements(),
                registered_model_name=params.tracking.registered_model,
            )
        version = str(info.registered_model_version)
        mlflow.log_dict(ensemble, "ensemble.json")
        mlflow.log_dict(metrics, "metrics/eval.json")
        run_id = parent.info.run_id

    client = MlflowClient()
    name = params.tracking.registered_model
    for key, value in {
        "data_version": lineage["data_version"],
        "dvc_lock_md5": lineage["dvc_lock_md5"],
        "git_commit": lineage["git_commit"] or "",
        "guarantee": "exact",
        "shards": str(len(shards)),
        "ensemble_test_accuracy": f"{metrics['ensemble_accuracy']:.4f}",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    gate = params.promote.min_test_accuracy
    promoted = metrics["ensemble_accuracy"] >= gate
    reason = (
        f"test accuracy {metrics['ensemble_accuracy']:.4f} >= promote.min_test_accuracy {gate}"
        if promoted
        else f"test accuracy {metrics['ensemble_accuracy']:.4f} < promote.min_test_accuracy {gate}"
    )
    client.set_model_version_tag(name, version, "promotion", ("promoted: " if promoted else "held back: ") + reason)
    if promoted:
        client.set_registered_model_alias(name, PRODUCTION, version)
    return {"run_id": run_id, "version": version, "promoted": promoted, "reason": reason,
            "experiment_id": parent.info.experiment_id}


def production_version(ws: Workspace, registered_model: str):
    """The ModelVersion behind the production alias, or None."""
    mlflow.set_tracking_uri(ws.tracking_uri)
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(registered_model, PRODUCTION)
    except mlflow.exceptions.MlflowException:
        return None
