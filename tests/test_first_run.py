"""Issue 16: the first run on a fresh, busy machine. A flow command with a Prefect home that
was never used (so Prefect must create its database) while both cores are kept busy by a
CPU hog started here; and a start-up budget too short, which must fail in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cli
from tasks import lineage

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
HOG = "import time\nwhile True:\n    pass\n"


def small_workspace(root: Path) -> Path:
    assert cli("init", str(root), "--dataset", "digits", "--model", "mlp") == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["partition"].update({"shards": [0, 1], "slices": 1})
    params["train"].update({"epochs": 1, "augment": False})
    params["promote"]["min_test_accuracy"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "small params")
    return root


def fresh_env(tmp_path: Path, **extra) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "never-used-prefect-home"), **extra}
    env.pop("PREFECT_API_URL", None)
    return env


def test_train_with_a_fresh_prefect_home_on_busy_cores_succeeds(tmp_path):
    root = small_workspace(tmp_path / "ws")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    try:
        proc = subprocess.run([str(BIN / "unlearnflow"), "train", "-C", str(root)], env=fresh_env(tmp_path),
                              capture_output=True, text=True, timeout=900)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting the local Prefect server" in proc.stderr
    assert "first run: creating its database" in proc.stderr
    assert "Prefect server ready after" in proc.stderr and "Traceback" not in proc.stderr
    assert "registered version 1: production" in proc.stdout


def test_a_prefect_server_that_does_not_come_up_in_time_is_one_line_exit_2(tmp_path):
    root = small_workspace(tmp_path / "ws")
    proc = subprocess.run([str(BIN / "unlearnflow"), "train", "-C", str(root)],
                          env=fresh_env(tmp_path, UNLEARNFLOW_PREFECT_STARTUP_SECONDS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not become ready within 1s" in errors[0]
    assert not (root / "dvc.lock").exists()  # nothing trained
