"""Issue 12: erasure that reaches every store of a team's deployment.

``test_erasure_reaches_every_store_of_the_stack`` brings up ``deploy/stack.sh`` (PostgreSQL,
Prefect and MLflow servers on it, MLflow's proxied artifact store, moto's S3 API server as the
DVC remote, a Dask scheduler with two workers) on free loopback ports, runs train -> forget -> erase
-> verify against it, then looks into the stores themselves: the S3 bucket (through the S3 API)
and the MLflow server's artifact folder hold no byte pattern of an erased record and no file
of the purged version. It also checks the shards trained on the Dask workers, bitwise equal to
local threads. ``test_directory_remote_...`` does the same for a plain directory remote
without the stack, and shows verify failing when an old object is put back."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT
from tasks import lineage
from tasks.workspace import Workspace
from unlearnflow.layout import Layout
from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
from unlearnflow.stages import load_split

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
STACK = REPO_ROOT / "deploy" / "stack.sh"
MODEL = "unlearnflow-sisa"


def have_postgres() -> bool:
    return shutil.which("pg_ctlcluster") is not None and (os.geteuid() == 0 or shutil.which("sudo") is not None)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(args: list[str], env: dict, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def unlearnflow(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "unlearnflow"), *args, "-C", str(root)], env)


def small_workspace(root: Path, env: dict) -> Path:
    run([str(BIN / "unlearnflow"), "init", str(root), "--dataset", "digits", "--model", "mlp"], env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["partition"].update({"shards": [0, 1, 2], "slices": 2})
    params["train"].update({"epochs": 2, "augment": False})
    params["promote"]["min_test_accuracy"] = 0.0
    params["audit"]["max_test_accuracy_drop"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "small params")
    return root


def erased_patterns(root: Path, subjects: list[str]) -> list[bytes]:
    """The pixel bytes of the subjects' training records, as the prepared data stores them,
    keeping only patterns no other record of any split has (a duplicate image legitimately stays)."""
    layout = Layout(root)
    splits = [load_split(layout, s) for s in ("train", "test", "holdout")]
    wanted = {pseudonym(SYNTHETIC_KEY, s) for s in subjects}
    erased, kept = [], set()
    for split in splits:
        images = np.asarray(split.images)
        for i, subject in enumerate(split.subject_ids):
            (erased.append(images[i].tobytes()) if subject in wanted else kept.add(images[i].tobytes()))
    patterns = [p for p in erased if p not in kept]
    assert len(patterns) >= 5, "the chosen subjects should own several unique images"
    return patterns


def train_subjects(root: Path, n: int) -> list[str]:
    ws = Workspace(root)
    return ws.training_subjects(ws.load_params())[:n]


def count_hits(blobs, patterns: list[bytes]) -> int:
    return sum(blob.count(p) for blob in blobs for p in patterns)


def files_under(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            yield path.read_bytes()


def model_md5s(root: Path) -> dict:
    lock = lineage.lock_info(root)
    return {k: v for stage, outs in lock["outs"].items() if stage.startswith("train@") for k, v in outs.items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not have_postgres():
        pytest.skip("PostgreSQL (pg_ctlcluster) and root or sudo are needed to bring up the stack")
    folder = tmp_path_factory.mktemp("stack")
    prefect, mlflow, s3, dask = free_ports(4)
    env = {**os.environ, "STACK_DIR": str(folder), "STACK_NAME": f"uftest{os.getpid()}", "STACK_S3": "1",
           "STACK_PREFECT_PORT": str(prefect), "STACK_MLFLOW_PORT": str(mlflow), "STACK_S3_PORT": str(s3),
           "STACK_DASK_PORT": str(dask), "STACK_BIN": str(BIN)}
    try:
        run(["bash", str(STACK), "up"], env, timeout=400)
        assert "up" in run(["bash", str(STACK), "status"], env).stdout
        exports = {}
        for line in (folder / "stack.env").read_text().splitlines():
            if line.startswith("export "):
                for assignment in line[len("export "):].split():
                    key, value = assignment.split("=", 1)
                    exports[key] = value
        yield {"env": {**os.environ, **exports}, "dir": folder, "exports": exports}
    finally:
        subprocess.run(["bash", str(STACK), "destroy"], env=env, capture_output=True, timeout=120)
    for port in (prefect, mlflow, s3, dask):  # nothing left listening
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still bound after destroy"


def s3_objects(exports: dict) -> list[bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=exports["UNLEARNFLOW_DVC_REMOTE_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="unlearnflow")
            for o in page.get("Contents", [])]
    return [client.get_object(Bucket="unlearnflow", Key=k)["Body"].read() for k in keys]


def test_erasure_reaches_every_store_of_the_stack(stack, tmp_path):
    env, exports = stack["env"], stack["exports"]
    root = small_workspace(tmp_path / "ws", env)
    unlearnflow(root, env, "train")

    # MLflow's server holds the version, Prefect's server the flow run: nothing ran on temporary stores
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()
    from mlflow.tracking import MlflowClient

    uri = exports["UNLEARNFLOW_TRACKING_URI"]  # the registry too: an earlier test may have pointed it elsewhere
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v1 = client.get_model_version_by_alias(MODEL, "production")
    request = urllib.request.Request(exports["PREFECT_API_URL"] + "/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    runs = json.loads(urllib.request.urlopen(request, timeout=10).read())
    assert any(r["state_type"] == "COMPLETED" for r in runs), "the train flow ran on the stack's Prefect server"

    # shards trained on the Dask workers, bitwise equal to local threads on the same data
    def executors(run_id):
        children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{run_id}'")
        return {c.data.tags["shard"]: c.data.tags["executor"] for c in children}

    train_executors = executors(v1.run_id)
    assert len(train_executors) == 3 and all(e.startswith("dask worker-") for e in train_executors.values()), \
        train_executors
    local_env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARNFLOW_", "PREFECT_API"))}
    local = small_workspace(tmp_path / "local", local_env)
    unlearnflow(local, local_env, "train")
    assert model_md5s(local) == model_md5s(root)

    # the erased records' bytes are on the remote before the erasure (so the search below can fail)
    subjects = train_subjects(root, 3)
    patterns = erased_patterns(root, subjects)
    assert count_hits(s3_objects(exports), patterns) >= len(patterns)
    v1_dir = Path(lineage_location(client, v1, stack["dir"]))
    v1_files = {hashlib.md5(b).hexdigest() for b in files_under(v1_dir)}
    assert v1_files, "version 1's model files are in the artifact store"

    # forget: the fast path (finetune on the production model, read through the server: v2,
    # approximate), the exact erasure left queued; erase: the exact erasure (v3), which purges both
    args = [a for s in subjects for a in ("--subject", s)]
    unlearnflow(root, env, "forget", *args, "--method", "finetune", "--exact", "later")
    assert client.get_model_version_by_alias(MODEL, "production").tags.get("guarantee") == "approximate"
    unlearnflow(root, env, "erase")
    checks = unlearnflow(root, env, "verify").stdout
    assert "PASS  purged versions hold no model file in MLflow's artifact store: 2 purged version(s)" in checks
    assert "PASS  DVC remote 'unlearnflow' holds exactly the current data version" in checks
    v3 = client.get_model_version_by_alias(MODEL, "production")
    v2 = client.get_model_version(MODEL, "2")
    assert int(v3.version) == 3 and v2.tags.get("guarantee") == "approximate"
    assert all(client.get_model_version(MODEL, v).tags.get("purged") for v in ("1", "2"))
    erase_executors = executors(v3.run_id)
    assert erase_executors and all(e.startswith("dask worker-") for e in erase_executors.values())

    # the stores themselves: 0 erased byte patterns, 0 files of the purged versions
    assert count_hits(s3_objects(exports), patterns) == 0
    assert count_hits(files_under(stack["dir"] / "artifacts"), patterns) == 0
    v3_files = {hashlib.md5(b).hexdigest() for b in files_under(Path(lineage_location(client, v3, stack["dir"])))}
    left = [p for p in (stack["dir"] / "artifacts").rglob("*")
            if p.is_file() and hashlib.md5(p.read_bytes()).hexdigest() in v1_files - v3_files]
    assert not v1_dir.exists() and not Path(lineage_location(client, v2, stack["dir"])).exists() and left == []
    assert not any((root / ".unlearnflow" / "model-cache" / f"v{v}").exists() for v in (1, 2))


def lineage_location(client, mv, stack_dir: Path) -> str:
    """The folder in the MLflow server's artifact destination that holds a version's model."""
    location = client.get_logged_model(mv.source.split("/", 1)[1].strip("/")).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    return str(stack_dir / "artifacts" / location[len("mlflow-artifacts:/"):].lstrip("/"))


def test_directory_remote_is_pushed_and_garbage_collected_and_verify_sees_leftovers(tmp_path):
    remote = tmp_path / "remote"
    env = {**os.environ, "UNLEARNFLOW_DVC_REMOTE": str(remote)}
    root = small_workspace(tmp_path / "ws", env)
    unlearnflow(root, env, "train")
    subjects = train_subjects(root, 3)
    patterns = erased_patterns(root, subjects)
    assert count_hits(files_under(remote), patterns) >= len(patterns)
    before = {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()}

    unlearnflow(root, env, "forget", *[a for s in subjects for a in ("--subject", s)])
    assert count_hits(files_under(remote), patterns) == 0
    assert "PASS  DVC remote 'unlearnflow' holds exactly" in unlearnflow(root, env, "verify").stdout

    # an object of the old data version put back on the remote: verify names it
    gone = sorted(before - {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()})
    assert gone
    (remote / gone[0]).parent.mkdir(parents=True, exist_ok=True)
    (remote / gone[0]).write_bytes(b"an object of the erased data version")
    proc = subprocess.run([str(BIN / "unlearnflow"), "verify", "-C", str(root)], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "1 NOT USED" in proc.stdout, proc.stdout


def test_a_stack_server_that_does_not_answer_is_named_at_once_not_retried_for_minutes(tmp_path):
    """Pointed at servers that are down (a stopped stack, a typo in a port), read and write
    commands fail in seconds with one line naming the server, not a traceback after MLflow's
    and Prefect's retries."""
    import time

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARNFLOW_", "PREFECT_API"))}
    root = small_workspace(tmp_path / "ws", env)
    for args, server_env, name in [(["status"], {"UNLEARNFLOW_TRACKING_URI": dead}, "MLflow tracking server"),
                                   (["erase"], {"UNLEARNFLOW_TRACKING_URI": dead}, "MLflow tracking server"),
                                   (["erase"], {"PREFECT_API_URL": dead + "/api"}, "Prefect server")]:
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / "unlearnflow"), *args, "-C", str(root)], env={**env, **server_env},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and time.perf_counter() - t0 < 30, (args, proc.stderr[-2000:])
        assert f"error: the {name} at {dead}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
