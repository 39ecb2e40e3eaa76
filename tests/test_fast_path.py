"""The fast path end to end on digits: an approximate version is served first, its
lineage says so, `verify` refuses to call it exact, and the exact SISA erasure
supersedes it (and purges its model files)."""

import json

import numpy as np

import pytest

from conftest import cli
from tasks import lineage
from tasks.store import client_for
from unlearnflow.hashing import md5_file
from test_pipeline_integration import make_workspace

pytestmark = pytest.mark.slow


def test_approximate_version_is_served_then_superseded_by_the_exact_erasure(prefect_server, tmp_path, capsys):
    from flows.train import run_train

    ws = make_workspace(tmp_path / "fast")
    run_train(str(ws.root))
    subject = ws.training_subjects(ws.load_params())[0]
    ledger_before = (ws.root / "ledger" / "requests.jsonl").read_text() if (ws.root / "ledger" / "requests.jsonl").exists() else ""
    lock_before = (ws.root / "dvc.lock").read_text()
    models_before = {p.name: p.read_bytes() for p in (ws.root / "models" / "shards").glob("*.pt")}
    capsys.readouterr()

    assert cli("forget", "-C", str(ws.root), "--subject", subject, "--method", "amun", "--exact", "later") == 0
    out = capsys.readouterr().out
    assert "guarantee approximate (production)" in out and "exact erasure queued" in out
    client = client_for(ws)
    prod = client.get_model_version_by_alias("unlearnflow-sisa", "production")
    assert str(prod.version) == "2" and prod.tags["guarantee"] == "approximate" and prod.tags["unlearn_method"] == "amun"
    assert prod.tags["exact_erasure"] == "pending"
    records = sorted((ws.root / "lineage" / "approximations").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    rid = prod.tags["approximated_requests"]
    assert record["requests"] == [rid] and record["new_version"] == "2" and record["guarantee"] == "approximate"
    assert len(record["affected_shards"]) == 1  # one synthetic subject lives in one shard
    card = client.get_model_version("unlearnflow-sisa", "2").description  # its lineage card
    assert card.startswith("### Lineage of version 2 (approximate guarantee)") and "updated by amun" in card
    assert f"[{records[0].name}](#/experiments/" in card and f"`{rid}`" in card
    phases = record["seconds"]  # served before the comparison audit, histogram and git record
    order = ["resolved", "unlearned", "audited", "registered", "served"]  # seconds since the flow started
    assert sorted(phases) == sorted(order) and [phases[p] for p in order] == sorted(phases.values())
    run = client.get_run(client.get_model_version("unlearnflow-sisa", "2").run_id)
    assert run.data.metrics["served_after_seconds"] == phases["served"]
    assert "audit_before_forget_vs_holdout_mia_auc" in run.data.metrics  # logged once served
    assert record["audit"]["before"]["forget_records"] == record["audit"]["after"]["forget_records"] > 0
    assert lineage.git(ws.root, "log", "--oneline", "--", records[0].relative_to(ws.root).as_posix()).stdout.strip()
    # nothing in the data version moved: the exact erasure has not run
    ledger_now = (ws.root / "ledger" / "requests.jsonl").read_text()
    assert ledger_now.startswith(ledger_before) and '"event": "resolved"' not in ledger_now
    assert (ws.root / "dvc.lock").read_text() == lock_before
    assert {p.name: p.read_bytes() for p in (ws.root / "models" / "shards").glob("*.pt")} == models_before

    assert cli("status", "-C", str(ws.root), "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["requests_only_approximately_forgotten"] == [rid]
    assert cli("verify", "-C", str(ws.root)) == 1
    assert "FAIL  production carries the exact guarantee: v2 is approximate (amun)" in capsys.readouterr().out

    cached = ws.layout.outputs_cache  # the audits' outputs: training warmed it, the fast path added its own
    assert len(list(cached.glob("*.npz"))) == 3 + 1  # one table per constituent: 3 trained + 1 approximated

    assert cli("erase", "-C", str(ws.root)) == 0  # the queued exact erasure
    capsys.readouterr()
    current = {md5_file(p) for p in (ws.root / "models" / "shards").glob("*.pt")}
    left = list(cached.glob("*.npz"))  # pruned to the current constituents and records
    assert {f.name.split("-")[0] for f in left} == current
    cert = json.loads(sorted((ws.root / "lineage" / "certificates").glob("*.json"))[-1].read_text())
    erased = set(cert["erased_record_ids"])
    assert erased and not any(erased & set(np.load(f)["ids"].tolist()) for f in left)
    prod = client.get_model_version_by_alias("unlearnflow-sisa", "production")
    assert str(prod.version) == "3" and prod.tags["guarantee"] == "exact"
    approx = client.get_model_version("unlearnflow-sisa", "2")
    assert approx.tags["exact_erasure"].startswith("done: e") and approx.tags.get("purged")
    assert cli("verify", "-C", str(ws.root), "--retrain") == 0
    assert cli("lineage", "-C", str(ws.root)) == 0
    history = capsys.readouterr().out
    row = next(line.split() for line in history.splitlines() if line.startswith("v2 "))  # the lineage table
    assert row[3:5] == ["approximate", "approximate"]  # version, date, time, kind, guarantee
    assert "amun on v1" in history and "exact erasure done: e" in history
    assert cli("status", "-C", str(ws.root), "--json") == 0
    assert json.loads(capsys.readouterr().out)["requests_only_approximately_forgotten"] == []


def test_an_unknown_method_is_refused_before_the_request_is_filed(tmp_path, capsys):
    ws = make_workspace(tmp_path / "bad")
    assert cli("forget", "-C", str(ws.root), "--subject", "s000", "--method", "magic") == 2
    err = capsys.readouterr().err
    assert "unlearning method 'magic' is unknown; valid choices: sisa (exact only), amun, certified_removal, finetune" in err
    assert not (ws.root / "ledger" / "requests.jsonl").exists() or \
        not (ws.root / "ledger" / "requests.jsonl").read_text().strip()
    # a method the workspace's models cannot take (an mlp here): refused the same way, not after filing
    assert cli("forget", "-C", str(ws.root), "--subject", "s000", "--method", "certified_removal") == 2
    err = capsys.readouterr().err
    assert "unlearning method 'certified_removal' cannot update this workspace's models: it needs a logreg " \
           "constituent trained with train.certified" in err and "Traceback" not in err
    assert not (ws.root / "ledger" / "requests.jsonl").exists() or \
        not (ws.root / "ledger" / "requests.jsonl").read_text().strip()


def _subjects_in_training(ws, params, count: int) -> list[str]:
    return ws.training_subjects(params)[:count]


def test_certified_removal_records_its_guarantee_in_the_record_mlflow_and_lineage(prefect_server, tmp_path, capsys):
    from flows.train import run_train
    from test_pipeline_integration import FAST

    certified = {"lam": 0.01, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4}
    ws = make_workspace(tmp_path / "cr", {**FAST, "train": {"model": "logreg", "certified": certified},
                                          "promote": {"min_test_accuracy": 0.0}})
    trained = run_train(str(ws.root))
    assert trained["metrics"]["ensemble_accuracy"] > 0.5
    first, second = _subjects_in_training(ws, ws.load_params(), 2)
    capsys.readouterr()
    spent = []
    for subject in (first, second):  # two fast paths: the second's retain data leaves the first's records out
        assert cli("forget", "-C", str(ws.root), "--subject", subject, "--method", "certified_removal",
                   "--exact", "later") == 0
        out = capsys.readouterr().out
        assert "certified (epsilon 1, delta 0.0001); bound " in out
        record = json.loads(sorted((ws.root / "lineage" / "approximations").glob("*.json"))[-1].read_text())
        (shard, entry), = record["affected_shards"].items()
        d, = entry["method_details"]
        assert d["epsilon"] == 1.0 and d["delta"] == 1e-4 and 0 < d["bound"] and d["residual"] <= d["bound"]
        assert isinstance(d["retrain_triggered"], bool) and (d["spent"] <= d["budget"])
        spent.append((shard, d))
    client = client_for(ws)
    prod = client.get_model_version_by_alias("unlearnflow-sisa", "production")
    assert prod.tags["certified_epsilon"] == "1" and prod.tags["certified_delta"] == "0.0001"
    assert float(prod.tags["certified_budget"]) == pytest.approx(spent[-1][1]["budget"], rel=1e-3)
    run = client.get_run(prod.run_id)
    assert run.data.metrics["unlearn_bound"] == pytest.approx(spent[-1][1]["bound"])
    assert run.data.tags["unlearn_retrain_triggered_shards"] in ("none", spent[-1][0])
    if spent[0][0] == spent[1][0] and not spent[1][1]["retrain_triggered"]:  # same shard: the bound accumulates
        assert spent[1][1]["spent"] >= spent[0][1]["spent"]
    assert cli("lineage", "-C", str(ws.root)) == 0
    assert "certified removal: (epsilon 1, delta 0.0001); gradient-residual bound spent" in capsys.readouterr().out


def test_params_yaml_is_parsed_once_per_command(prefect_server, tmp_path, monkeypatch, capsys):
    """Each command reads params.yaml once and hands the values on (the issue counted six
    parses in one `forget --method amun`): counted through Workspace.load_params."""
    from flows.train import run_train
    from tasks.workspace import Workspace

    ws = make_workspace(tmp_path / "once")
    run_train(str(ws.root))
    root = str(ws.root)
    subject = ws.training_subjects(ws.load_params())[0]
    calls = []
    parse = Workspace.load_params

    def counted(self):
        calls.append(self.root)
        return parse(self)

    monkeypatch.setattr(Workspace, "load_params", counted)
    commands = [["forget", "-C", root, "--subject", subject, "--method", "finetune", "--exact", "later"],
                ["erase", "-C", root], ["train", "-C", root], ["audit", "-C", root], ["status", "-C", root],
                ["lineage", "-C", root], ["verify", "-C", root], ["rectify", "-C", root, "--record", "x",
                                                                     "--label", "1", "--no-wait"]]
    counts = {}
    for args in commands:
        calls.clear()
        assert cli(*args) == 0, args
        counts[args[0]] = len(calls)
    capsys.readouterr()
    assert counts == {name: 1 for name in counts}
