"""Shared fixtures. Isolation first: Prefect's home, MLflow's store and every
workspace live in temporary directories, never in the checkout."""

import os
import shutil
import tempfile
import time
from pathlib import Path

_STARTED = time.time()
_TMP = Path(tempfile.mkdtemp(prefix="unlearnflow-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect-home")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as tasks/ does: deterministic cuBLAS
from flows.cli import QUIET_ENV  # noqa: E402  (imports no Prefect)

os.environ.update(QUIET_ENV)
os.environ.setdefault("UNLEARNFLOW_SERVER_IDLE_SECONDS", "300")  # a safety net: sessionfinish stops them
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("UNLEARNFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
for _name in ("UNLEARNFLOW_DASK_ADDRESS", "UNLEARNFLOW_DVC_REMOTE", "UNLEARNFLOW_DVC_REMOTE_ENDPOINT"):
    os.environ.pop(_name, None)  # a sourced deploy/stack.sh env file must not reach the tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unlearnflow.config import DataConfig  # noqa: E402
from unlearnflow.records import RecordSet, assign_record_ids, synthetic_subjects  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session, exitstatus):
    stop_local_servers()
    shutil.rmtree(_TMP, ignore_errors=True)


def stop_local_servers(since: float | None = None) -> list[int]:
    """Stop every local Prefect server (flows/local_server.py) started since the session began,
    whatever Prefect home it serves: the suite leaves none running (.ci/run checks)."""
    import psutil

    from flows import local_server

    stopped = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmd = proc.info["cmdline"] or []
        if "flows.local_server" in cmd and "--home" in cmd and proc.info["create_time"] >= (since or _STARTED) - 1:
            local_server.stop(Path(cmd[cmd.index("--home") + 1]))
            try:
                proc.kill()
            except psutil.Error:
                pass
            stopped.append(proc.pid)
    return stopped


def make_records(n: int = 200, seed: int = 0, shape=(1, 8, 8), classes: int = 4) -> RecordSet:
    """Random but reproducible records (for core tests that need no real data)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    sources = [f"synthetic:{seed}:{i}" for i in range(n)]
    ids = assign_record_ids(images, labels, sources)
    return RecordSet(images, labels, tuple(ids), tuple(synthetic_subjects(ids, 5)), tuple(sources),
                     tuple(str(c) for c in range(classes)))


@pytest.fixture
def records() -> RecordSet:
    return make_records()


@pytest.fixture(scope="session")
def digits():
    from unlearnflow.datasets import load_dataset

    return load_dataset(DataConfig(dataset="digits"))


@pytest.fixture(scope="session")
def prefect_server():
    """One isolated temporary Prefect API for the session (about 15 s to start); yields its
    URL, for subprocesses (PREFECT_API_URL)."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield prefect.settings.PREFECT_API_URL.value()


def cli(*args: str) -> int:
    from flows.cli import main

    return main(list(args))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
