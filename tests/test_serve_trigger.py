"""Event trigger against a real Prefect server: `prefect server start` (started and
stopped here), `unlearnflow serve` in one process, the event emitted from another,
and the new model versions seen in MLflow: with `unlearn.method: amun` the fast
path serves an approximate version first, then the exact erasure supersedes it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from tasks import lineage

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def wait_until(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}/api/health"), 120, "prefect server health", proc)
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def unlearnflow(env, cwd):
    def run(*args):
        return subprocess.run([str(BIN / "unlearnflow"), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)
    return run


def small_workspace(run, ws: Path, method: str) -> None:
    assert run("init", str(ws), "--dataset", "digits", "--model", "mlp").returncode == 0
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update({"epochs": 4, "augment": False})
    params["partition"]["shards"] = [0, 1, 2]
    params["promote"]["min_test_accuracy"] = 0.3
    params["unlearn"]["method"] = method
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(ws, *lineage.GIT_IDENTITY, "commit", "-qam", "params")
    trained = run("train", "-C", str(ws))
    assert trained.returncode == 0, trained.stderr[-2000:]


def start_serving(env, ws: Path, cwd: Path, method: str):
    server = subprocess.Popen([str(BIN / "unlearnflow"), "serve", "-C", str(ws)], env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert server.stdout.readline().startswith("unlearnflow serve: loading")  # said before the slow imports
    first = server.stdout.readline()
    assert "serving the erase flow" in first, first  # said once it follows the server's event stream
    assert ("after the fast path (amun)" in first) == (method == "amun")
    return server


def emit(env) -> None:
    emitted = subprocess.run(
        [sys.executable, "-c", "from prefect.events import emit_event; "
         "emit_event(event='unlearnflow.erasure.requested', resource={'prefect.resource.id': 'unlearnflow.test'})"],
        env=env, capture_output=True, text=True, timeout=60)
    assert emitted.returncode == 0, emitted.stderr


def production(run, ws):
    out = run("status", "-C", str(ws), "--json")
    return json.loads(out.stdout)["production"] if out.returncode == 0 else None


def stop(server) -> str:
    os.killpg(server.pid, signal.SIGTERM)
    out, _ = server.communicate(timeout=30)
    return out


def test_an_event_from_another_process_runs_the_erase_flow(prefect_server, tmp_path):
    env = prefect_server
    ws = tmp_path / "ws"
    run = unlearnflow(env, tmp_path)
    small_workspace(run, ws, "amun")  # the served flow: fast path first, then the exact erasure
    server = start_serving(env, ws, tmp_path, "amun")
    try:
        assert run("forget", "-C", str(ws), "--subject", "s042", "--no-wait").returncode == 0
        emit(env)
        wait_until(lambda: (production(run, ws) or {}).get("version") == "3", 240,
                   "production = the erase flow's version", server)
        assert production(run, ws)["kind"] == "erase"
        assert any((ws / "lineage" / "certificates").glob("0001-*.json"))
        approximations = list((ws / "lineage" / "approximations").glob("0001-*.json"))  # v2: the fast path's
        assert len(approximations) == 1 and json.loads(approximations[0].read_text())["new_version"] == "2"
    finally:
        stop(server)


def test_a_request_filed_while_a_run_works_is_taken_by_that_run_without_a_second_event(prefect_server, tmp_path):
    """The drain: one event; a second request filed while the run is working (held 10 s after
    its 'computed' step by UNLEARNFLOW_PAUSE_AT) is certified by the same run, no event for it."""
    env = prefect_server
    ws = tmp_path / "ws"
    run = unlearnflow(env, tmp_path)
    small_workspace(run, ws, "sisa")
    server = start_serving({**env, "UNLEARNFLOW_PAUSE_AT": "computed:10"}, ws, tmp_path, "sisa")
    journal = ws / ".unlearnflow" / "journal.json"
    try:
        assert run("forget", "-C", str(ws), "--subject", "s042", "--no-wait").returncode == 0
        emit(env)
        wait_until(lambda: journal.is_file() and '"computed"' in journal.read_text(), 120,
                   "the run at work (its 'computed' step done)", server)
        filed = run("forget", "-C", str(ws), "--subject", "s043", "--no-wait")
        assert filed.returncode == 0, filed.stderr
        second = filed.stdout.split()[1]  # "request <id> filed …"
        batch = json.loads(journal.read_text())
        assert second not in batch["request_ids"] and "computed" in batch["steps"]  # filed while batch 1 works
        wait_until(lambda: len(list((ws / "lineage" / "certificates").glob("*.json"))) == 2, 180,
                   "both requests certified", server)
        status = json.loads(run("status", "-C", str(ws), "--json").stdout)
        assert status["requests_pending_exact"] == []
    finally:
        out = stop(server)
    assert "run done: 2 batch(es): erased (1 request(s)), erased (1 request(s))" in out, out[-3000:]
    assert out.count("run done") == 1, out[-3000:]  # one run took both: the second needed no event
