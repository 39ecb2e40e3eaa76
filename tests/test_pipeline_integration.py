"""End to end on `digits`, in temporary git + DVC workspaces: the Prefect train flow,
its lineage in DVC, git and MLflow, the served model, and `dvc repro` in a fresh clone.

One workspace is trained once per module (Prefect harness + training cost ~40 s);
each test checks one promise on it.
"""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml

from conftest import cli, free_port
from tasks import lineage
from tasks.store import client_for
from tasks.workspace import Workspace
from unlearnflow.layout import Layout
from unlearnflow.stages import load_ensemble, load_split

pytestmark = pytest.mark.slow

FAST = {"train": {"model": "mlp", "epochs": 6, "augment": False}, "partition": {"shards": [0, 1, 2], "slices": 3},
        "promote": {"min_test_accuracy": 0.5}}


def make_workspace(path, overrides=FAST, dataset="digits"):
    assert cli("init", str(path), "--dataset", dataset, "--model", overrides["train"]["model"]) == 0
    params = yaml.safe_load((path / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(path, *lineage.GIT_IDENTITY, "commit", "-qam", "test params")
    return Workspace(path)


@pytest.fixture(scope="module")
def trained(prefect_server, tmp_path_factory):
    from flows.train import run_train

    ws = make_workspace(tmp_path_factory.mktemp("ws") / "project")
    first = run_train(str(ws.root))
    second = run_train(str(ws.root))
    return ws, first, second


def test_flow_trains_every_shard_and_the_ensemble_beats_chance(trained):
    ws, first, _ = trained
    assert [s["shard"] for s in first["shards"]] == [0, 1, 2]
    assert all(s["trained_stages"] == [0, 1, 2] for s in first["shards"])
    assert first["metrics"]["ensemble_accuracy"] > 0.8


def test_dvc_status_is_clean_and_lock_records_each_constituents_data(trained):
    ws, first, _ = trained
    clean, out = lineage.dvc_status_clean(ws.root)
    assert clean, out
    lock = yaml.safe_load((ws.root / "dvc.lock").read_text())["stages"]
    for s in first["shards"]:
        stage = lock[f"train@{s['shard']}"]
        deps = {d["path"]: d["md5"] for d in stage["deps"]}
        assert deps[f"data/shards/shard_{s['shard']}.json"] == s["manifest_md5"]
        assert deps[f"data/shards/shard_{s['shard']}.npy"] == s["images_md5"]
        assert stage["outs"][0]["md5"] == s["model_md5"]
        assert set(stage["params"]["params.yaml"]) == {"train"}


def test_lineage_is_committed_to_git(trained):
    ws, first, _ = trained
    head = lineage.git_head(ws.root)
    assert first["lineage"]["git_commit"] == head
    tracked = lineage.git(ws.root, "ls-files").stdout.split()
    assert "dvc.lock" in tracked and "metrics/eval.json" in tracked
    assert lineage.git(ws.root, "status", "--porcelain").stdout.strip() == ""


def test_mlflow_run_has_a_child_per_constituent_with_dvc_md5s_and_git_commit(trained):
    ws, first, _ = trained
    client = client_for(ws)
    parent = client.get_run(first["mlflow"]["run_id"])
    assert parent.data.tags["git_commit"] == first["lineage"]["git_commit"]
    assert parent.data.tags["dvc_lock_md5"] == first["lineage"]["dvc_lock_md5"]
    assert parent.data.metrics["ensemble_test_accuracy"] == pytest.approx(first["metrics"]["ensemble_accuracy"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["shard"] for c in children) == ["0", "1", "2"]
    lock = lineage.lock_info(ws.root)["outs"]
    for child in children:
        k = child.data.tags["shard"]
        shard = first["shards"][int(k)]
        assert child.data.tags["manifest_md5"] == shard["manifest_md5"]
        assert child.data.tags["dvc_model_md5"] == lock[f"train@{k}"][f"models/shards/shard_{k}.pt"]
        assert child.data.tags["git_commit"] == first["lineage"]["git_commit"]
        inputs = child.inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.digest == shard["manifest_md5"]
        assert {t.key: t.value for t in inputs[0].tags}["dvc_md5"] == shard["manifest_md5"]


def test_production_alias_serves_a_loadable_ensemble_that_matches_the_core(trained):
    ws, first, second = trained
    name = "unlearnflow-sisa"
    version = client_for(ws).get_model_version_by_alias(name, "production")
    assert str(version.version) == second["mlflow"]["version"]  # the newest good version
    assert version.tags["dvc_lock_md5"] == second["lineage"]["dvc_lock_md5"]
    served = mlflow.pyfunc.load_model(f"models:/{name}@production")
    test = load_split(Layout(ws.root), "test")
    pixels = np.asarray(test.images)  # a split's pixels stay on disk until read
    expected = load_ensemble(Layout(ws.root)).predict(pixels)
    got = served.predict(pixels.reshape(len(test), -1).astype(np.float64))
    assert np.array_equal(np.asarray(got), expected)


def test_rerun_reuses_every_checkpoint_and_reproduces_the_same_constituents(trained):
    _, first, second = trained
    assert all(s["trained_stages"] == [] for s in second["shards"])
    assert [s["model_md5"] for s in second["shards"]] == [s["model_md5"] for s in first["shards"]]
    assert second["lineage"]["dvc_lock_md5"] == first["lineage"]["dvc_lock_md5"]


def test_status_shows_the_production_version(trained, capsys):
    ws, _, second = trained
    assert cli("status", "-C", str(ws.root), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["production"]["version"] == second["mlflow"]["version"]
    assert info["dvc_status_clean"] is True
    lock = lineage.lock_info(ws.root)["outs"]
    assert info["constituents"] == {k: lock[f"train@{k}"][f"models/shards/shard_{k}.pt"] for k in ("0", "1", "2")}


def test_dvc_repro_in_a_fresh_clone_reproduces_the_constituent_hashes(trained, tmp_path):
    ws, first, _ = trained
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ws.root), str(clone)], check=True)
    assert not list(clone.glob("models/**/*.pt")) and not (clone / "data" / "prepared").exists()  # in DVC cache, not git
    lineage.dvc(clone, "repro")
    original = lineage.lock_info(ws.root)["outs"]
    rebuilt = lineage.lock_info(clone)["outs"]
    for k in (0, 1, 2):
        assert rebuilt[f"train@{k}"] == original[f"train@{k}"]
    assert rebuilt == original
    assert lineage.git(clone, "status", "--porcelain").stdout.strip() == ""


@pytest.mark.parametrize("overrides, message", [
    ({"trian": {}}, "unknown key(s) trian in params"),
    ({"data": {"dataset": "mnist6k"}}, "unknown dataset 'mnist6k'; valid choices"),
    ({"train": {"model": "vgg"}}, "unknown model 'vgg'; valid choices: 'cnn', 'logreg', 'mlp', 'resnet18'"),
    ({"partition": {"shards": list(range(500))}}, "asks for S=500 shards but the training split"),
    ({"train": {"model": "resnet18"}}, "needs images of at least 32x32"),
])
def test_bad_params_fail_before_any_work(tmp_path, capsys, overrides, message):
    ws = make_workspace(tmp_path / "bad")
    params = yaml.safe_load((ws.root / "params.yaml").read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    (ws.root / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli("train", "-C", str(ws.root)) == 2
    assert message in capsys.readouterr().err
    assert not (ws.root / "data").exists() and not (ws.root / "dvc.lock").exists()


def test_mlflow_ui_server_shows_the_lineage(trained):
    """`unlearnflow ui` starts a real MLflow server on the workspace's store; its REST API
    returns the training run and one child run per constituent."""
    import time
    import urllib.request

    ws, first, _ = trained
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "-C", str(ws.root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [first["mlflow"]["experiment_id"]], "max_results": 100}).encode()
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        children = [t for t in tags if t.get("mlflow.parentRunId") == first["mlflow"]["run_id"]]
        assert sorted(t["manifest_md5"] for t in children) == sorted(s["manifest_md5"] for s in first["shards"])
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_demo_trains_then_erases_one_subject_and_summarises(prefect_server, tmp_path, capsys):
    ws = make_workspace(tmp_path / "demo")
    assert cli("demo", "-C", str(ws.root)) == 0
    out = capsys.readouterr().out
    assert "asks to be forgotten" in out and "removed " in out and "trained nothing" in out
    assert "(production)" in out and "lineage/certificates/0001-" in out
    assert cli("verify", "-C", str(ws.root), "--retrain") == 0


def test_erasure_audit_with_lira_and_an_avg_gap_to_a_kept_reference_version(prefect_server, tmp_path, capsys):
    overrides = {**FAST, "audit": {"lira_references": 2},
                 "retention": {"keep_superseded": True, "reason": "test: audit against v1"}}
    ws = make_workspace(tmp_path / "lira", overrides)
    assert cli("demo", "-C", str(ws.root)) == 0
    out = capsys.readouterr().out
    assert "kept v1 (test: audit against v1)" in out
    cert = json.loads(sorted((ws.root / "lineage" / "certificates").glob("*.json"))[-1].read_text())
    assert 0.0 <= cert["audit"]["after"]["forget_vs_holdout_lira_auc"] <= 1.0
    assert "forget_vs_holdout_lira_tpr_at_1pct_fpr" in cert["audit"]["before"]
    client = client_for(ws)
    run = client.get_run(client.get_model_version("unlearnflow-sisa", "2").run_id)
    assert run.data.metrics["audit_lira_reference_seconds"] > 0
    assert run.data.metrics["audit_forget_vs_holdout_lira_auc"] == cert["audit"]["after"]["forget_vs_holdout_lira_auc"]

    assert cli("audit", "-C", str(ws.root), "--reference", "1", "--lira", "0", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == "2" and result["reference_version"] == "1"
    assert "forget_vs_holdout_lira_auc" not in result["after"]  # --lira 0 overrides params.yaml
    gaps = [abs(result["after"][k] - result["reference"][k])
            for k in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy")]
    assert result["avg_gap"] == pytest.approx(sum(gaps) / 4)
    assert result["reference"]["forget_accuracy"] >= result["after"]["forget_accuracy"]  # v1 trained on them
    assert client.get_run(run.info.run_id).data.metrics["audit_rerun_avg_gap"] == pytest.approx(result["avg_gap"])

    assert cli("audit", "-C", str(ws.root), "--reference", "7") == 2
    assert "has no version '7'; registered versions: 1, 2" in capsys.readouterr().err
    assert cli("audit", "-C", str(ws.root), "--lira", "3") == 2
    assert "--lira 3 is invalid: expected 0 (off) or an even number >= 2" in capsys.readouterr().err
