"""The local Prefect server kept between commands (flows/local_server.py): started by the first
command that needs it, reused by the next (which pays no start-up), still up after a kill -9
of a command, stopped by `unlearnflow server stop` or after it has been idle; real processes,
each test with its own Prefect home."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import local_server
from tasks import lineage

pytestmark = pytest.mark.slow
WATERFALL = ["python", "file_request", "imports", "lock", "ledger_keys", "prefect_api", "recover", "flow_start",
             "resolve", "prepare", "partition", "train", "evaluate", "audit", "purge", "dvc_git", "mlflow",
             "certificate", "log", "promote", "flow_end"]
BIN = Path(sys.executable).parent


def env_for(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "UNLEARNFLOW_PREFECT_SERVER")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), **extra}


def cli(env, cwd, *args, **kw):
    return subprocess.run([str(BIN / "unlearnflow"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kw)


def alive(pid: int) -> bool:
    return local_server._alive(pid)


def small_workspace(env, tmp_path) -> Path:
    ws = tmp_path / "ws"
    assert cli(env, tmp_path, "init", str(ws), "--dataset", "digits", "--model", "mlp").returncode == 0
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update({"epochs": 4, "augment": False})
    params["partition"]["shards"] = [0, 1, 2]
    params["promote"]["min_test_accuracy"] = 0.3
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(ws, *lineage.GIT_IDENTITY, "commit", "-qam", "params")
    return ws


def test_the_server_is_started_once_reused_survives_a_kill_9_and_stops_on_request(tmp_path):
    env = env_for(tmp_path)
    home = Path(env["PREFECT_HOME"])
    ws = small_workspace(env, tmp_path)
    trained = cli(env, tmp_path, "train", "-C", str(ws))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "starting the local Prefect server" in trained.stderr
    first = local_server.status(home)
    assert first is not None and alive(first["pid"])

    erased = cli(env, tmp_path, "forget", "-C", str(ws), "--subject", "s042", "--json")
    assert erased.returncode == 0, erased.stderr[-2000:]
    assert "starting the local Prefect server" not in erased.stderr  # reused
    result = json.loads(erased.stdout[erased.stdout.index("{"):])
    steps = result["waterfall"]
    assert steps["prefect_api"] < 1.0, steps  # no start-up paid (a start takes 4 s and more)
    assert list(steps) == WATERFALL, steps  # every step of the command, in order, with its seconds
    assert all(v >= 0 for v in steps.values()) and abs(sum(steps.values()) - result["command_seconds"]) < 0.05
    assert set(result["dvc_git_seconds"]) == {"dvc_commit", "dvc_gc", "git_commit"}
    from tasks.store import client_for
    from tasks.workspace import Workspace

    metrics = client_for(Workspace(ws)).get_run(result["mlflow"]["run_id"]).data.metrics  # the erase run's
    assert {f"seconds_{k}" for k in WATERFALL[:-1]} | {"seconds_flow", "seconds_dvc_git_dvc_commit"} <= set(metrics)
    assert local_server.status(home)["pid"] == first["pid"]

    # a command killed -9 mid-erasure: the server is in its own session and stays up
    cmd = subprocess.Popen([str(BIN / "unlearnflow"), "forget", "-C", str(ws), "--subject", "s043"], env=env,
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = ws / ".unlearnflow" / "journal.json"
    deadline = time.time() + 120
    while not journal.exists() and time.time() < deadline and cmd.poll() is None:
        time.sleep(0.1)
    assert journal.exists(), "the erasure did not begin"
    os.killpg(cmd.pid, signal.SIGKILL)
    cmd.wait()
    after_kill = local_server.status(home)
    assert after_kill is not None and after_kill["pid"] == first["pid"] and cmd.pid not in after_kill["users"]

    finished = cli(env, tmp_path, "erase", "-C", str(ws))  # finishes the interrupted erasure, same server
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "was interrupted" in finished.stderr and "starting the local Prefect server" not in finished.stderr

    stopped = cli(env, tmp_path, "server", "stop", "-C", str(ws))
    assert stopped.returncode == 0 and f"pid {first['pid']}" in stopped.stdout
    assert not alive(first["pid"]) and local_server.status(home) is None
    assert "no local Prefect server runs" in cli(env, tmp_path, "server", "status").stdout


def test_an_idle_server_stops_by_itself(tmp_path):
    env = env_for(tmp_path, UNLEARNFLOW_SERVER_IDLE_SECONDS="4")
    home = Path(env["PREFECT_HOME"])
    ws = small_workspace(env, tmp_path)
    done = cli(env, tmp_path, "erase", "-C", str(ws))  # nothing pending: a flow that finds nothing to do
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((home / local_server.STATE).read_text())
    deadline = time.time() + 60
    while alive(state["pid"]) and time.time() < deadline:
        time.sleep(0.5)
    assert not alive(state["pid"]), "the idle server is still running after 60 s"
    assert not (home / local_server.STATE).exists()
