"""The MLflow store a workspace tracks to: a client pointed at it, and artifacts and metrics
added to runs that already exist. ``tasks/tracking.py`` logs runs; ``tasks/registry.py``
keeps the registered versions."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tasks.workspace import Workspace


def client_for(ws: Workspace) -> MlflowClient:
    """Point MLflow (tracking *and* model registry) at this workspace's store.

    The registry URI is separate state in MLflow; left alone it can keep pointing at a
    store used earlier in the same process (another workspace)."""
    ws.check_tracking_server()
    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.tracking_uri)
    return MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)


def _artifact_repository(location: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(location)


def _is_local(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("", "file")


def _local_path(location: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))


def log_metrics(ws: Workspace, run_id: str, metrics: dict) -> None:
    """Add metrics to a finished run (NaN ones are left out)."""
    client = client_for(ws)
    for key, value in metrics.items():
        if value == value:
            client.log_metric(run_id, key, value)


def log_artifact(ws: Workspace, run_id: str, path: str, folder: str) -> None:
    client_for(ws).log_artifact(run_id, path, folder)
