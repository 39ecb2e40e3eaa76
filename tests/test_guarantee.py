"""Issue 10: the erasure guarantee under faults, tried as a user would (the CLI, plain
shell operations on the workspace). Each test reproduces one reported defect, or one
tampering case, on a small digits workspace (S=3, R=2, an MLP) trained with the real
Prefect flow, DVC, git and MLflow in a temporary directory."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
import yaml

from conftest import cli
from tasks import lineage
from tasks.erasure import STEPS
from tasks.store import client_for
from tasks.workspace import Workspace
from unlearnflow.hashing import canonical_json, md5_file
from unlearnflow.layout import Layout

BIN = Path(sys.executable).parent
MODEL = "unlearnflow-sisa"


def make_workspace(root: Path) -> Path:
    assert cli("init", str(root), "--dataset", "digits", "--model", "mlp") == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["partition"].update({"shards": [0, 1, 2], "slices": 2})
    params["train"].update({"epochs": 2, "augment": False})
    params["promote"]["min_test_accuracy"] = 0.0
    params["audit"]["max_test_accuracy_drop"] = 1.0  # a 2-epoch MLP moves a lot: keep the gate out of these tests
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "small params")
    return root


def trained_workspace(root: Path) -> Path:
    make_workspace(root)
    assert cli("train", "-C", str(root)) == 0
    return root


def train_subjects(root: Path) -> list[str]:
    """Raw synthetic subjects (s000 … s359) that have records in the training split."""
    ws = Workspace(root)
    return ws.training_subjects(ws.load_params())


def unlearnflow(root: Path, *args: str, api: str | None = None, **env) -> subprocess.Popen:
    environ = {**os.environ, **env}
    if api:
        environ["PREFECT_API_URL"] = api
    return subprocess.Popen([str(BIN / "unlearnflow"), *args, "-C", str(root)], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ledger_events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "ledger" / "requests.jsonl").read_text().splitlines() if line]


def certs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "lineage" / "certificates").glob("*.json"))]


def production(root: Path):
    return client_for(Workspace(root)).get_model_version_by_alias(MODEL, "production")


def version_count(root: Path) -> int:
    return len(client_for(Workspace(root)).search_model_versions(f"name = '{MODEL}'"))


def served_md5s(root: Path) -> dict:
    return json.loads(production(root).tags["constituent_md5s"])


def assert_applied_once(root: Path, request_id: str) -> dict:
    """The request was resolved once, is in exactly one certificate, and that certificate
    names exactly the shards whose served model changed."""
    resolved = [e for e in ledger_events(root) if e["event"] == "resolved" and e["request_id"] == request_id]
    assert len(resolved) == 1
    holding = [c for c in certs(root) if any(r["request_id"] == request_id for r in c["requests"])]
    assert len(holding) == 1
    return holding[0]


def changed_shards(before: dict, cert: dict) -> set[str]:
    return {k for k, c in cert["constituents"].items() if c["model_md5"] != before[k]}


@pytest.fixture(scope="module")
def trained(prefect_server, tmp_path_factory):
    """A trained workspace that the tests using it only read."""
    return trained_workspace(tmp_path_factory.mktemp("trained") / "ws")


# ---- defect 1: a torn ledger line ---------------------------------------------------------

def test_a_torn_ledger_line_loses_no_acknowledged_request(tmp_path, capsys):
    root = make_workspace(tmp_path / "ws")
    for i in range(2):
        assert cli("forget", "-C", str(root), "--record", f"rec{i}", "--no-wait") == 0
    ledger = root / "ledger" / "requests.jsonl"
    ledger.write_bytes(ledger.read_bytes()[:-30])  # a crash or a full disk mid-append
    capsys.readouterr()
    assert cli("status", "-C", str(root)) == 0
    assert "torn line" in capsys.readouterr().err  # said, not silently ignored
    for i in (2, 3):
        assert cli("forget", "-C", str(root), "--record", f"rec{i}", "--no-wait") == 0
    out = capsys.readouterr()
    assert "set aside in" in out.err and out.out.count("filed") == 2
    assert cli("status", "-C", str(root), "--json") == 0
    pending = json.loads(capsys.readouterr().out)["requests_pending_exact"]
    filed = [e["request_id"] for e in ledger_events(root) if e["event"] == "filed"]
    assert len(filed) == 3 and pending == filed  # rec0 acknowledged; rec1 torn (never acknowledged); rec2, rec3


# ---- defect 2: an interrupted erase, then erase again --------------------------------------

def test_an_erase_interrupted_in_training_is_finished_with_a_true_certificate(prefect_server, tmp_path, capsys):
    root = trained_workspace(tmp_path / "ws")
    before = served_md5s(root)
    assert cli("forget", "-C", str(root), "--subject", train_subjects(root)[0], "--no-wait") == 0
    proc = unlearnflow(root, "erase", api=prefect_server)
    layout = Layout(root)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # Ctrl-C as soon as a retrained model is written
        if any(layout.model(int(k)).is_file() and md5_file(layout.model(int(k))) != md5 for k, md5 in before.items()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the erase finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert cli("erase", "-C", str(root)) == 0
    cert = certs(root)[-1]
    assert cert["affected_shards"] and set(cert["affected_shards"]) == changed_shards(before, cert)
    capsys.readouterr()
    assert cli("lineage", "-C", str(root)) == 0
    out = capsys.readouterr().out
    assert all(f"shard {k} from slice " in out for k in cert["affected_shards"]) and "{" not in out
    assert cli("verify", "-C", str(root)) == 0


# ---- defect 3: train after a filed request ----------------------------------------------

def test_train_refuses_while_a_request_is_pending_and_verify_names_it(prefect_server, tmp_path, capsys):
    root = trained_workspace(tmp_path / "ws")
    versions = version_count(root)
    assert cli("forget", "-C", str(root), "--subject", train_subjects(root)[0], "--no-wait") == 0
    request = [e["request_id"] for e in ledger_events(root)][-1]
    capsys.readouterr()
    assert cli("train", "-C", str(root)) == 2
    assert request in capsys.readouterr().err
    assert version_count(root) == versions  # nothing trained, registered or promoted
    assert cli("stage", "-C", str(root), "prepare") == 2  # what `dvc repro` runs
    assert request in capsys.readouterr().err
    assert cli("verify", "-C", str(root)) == 1  # production's data holds the pending request's records
    assert f"pending: {request}" in capsys.readouterr().out
    assert cli("status", "-C", str(root)) == 0
    assert "run `unlearnflow erase`" in capsys.readouterr().out
    assert cli("erase", "-C", str(root)) == 0
    assert cli("verify", "-C", str(root)) == 0


# ---- defect 4: two writers -------------------------------------------------------------------

def test_two_erase_commands_at_once_apply_the_request_once(prefect_server, tmp_path):
    root = trained_workspace(tmp_path / "ws")
    assert cli("forget", "-C", str(root), "--subject", train_subjects(root)[0], "--no-wait") == 0
    request = [e["request_id"] for e in ledger_events(root)][-1]
    first, second = (unlearnflow(root, "erase", api=prefect_server) for _ in range(2))
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[1][-2000:] for o in outs]
    assert any("waiting for `unlearnflow erase`" in err for _, err in outs)
    assert any("no pending requests" in out for out, _ in outs)
    assert_applied_once(root, request)
    assert cli("verify", "-C", str(root)) == 0


# ---- defect 5 and the seven tampering cases -------------------------------------------------

@pytest.fixture(scope="module")
def three_erasures(prefect_server, tmp_path_factory):
    root = trained_workspace(tmp_path_factory.mktemp("tamper") / "ws")
    for subject in train_subjects(root)[:3]:
        assert cli("forget", "-C", str(root), "--subject", subject) == 0
    assert len(certs(root)) == 3 and cli("verify", "-C", str(root)) == 0
    return root


def _forge_newest(root):
    path = sorted((root / "lineage" / "certificates").glob("*.json"))[-1]
    cert = json.loads(path.read_text())
    cert["erased_record_ids"] = cert["erased_record_ids"][1:]  # one erased record id gone, canonical form kept
    path.write_bytes(canonical_json(cert) + b"\n")


def _delete(index):
    def tamper(root):
        sorted((root / "lineage" / "certificates").glob("*.json"))[index].unlink()
    return tamper


def _readd_erased_record(root):
    path = Layout(root).shard_manifest(0)
    manifest = json.loads(path.read_text())
    erased = certs(root)[0]["erased_record_ids"][0]
    manifest["records"].append({**manifest["records"][-1], "record_id": erased})
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _swap_constituent(root):
    layout = Layout(root)
    shutil.copyfile(layout.model(1), layout.model(0))


def _edit_dvc_lock(root):
    path = root / "dvc.lock"
    text = path.read_text()
    md5 = Layout(root).model(2)
    old = md5_file(md5)
    path.write_text(text.replace(old, "0" * 32, 1))


def _move_production_back(root):
    client_for(Workspace(root)).set_registered_model_alias(MODEL, "production", "1")


TAMPERING = {
    "newest certificate forged in canonical form": (_forge_newest, "certificate chain intact and signed"),
    "newest certificate deleted": (_delete(-1), "certificates equal their git and MLflow copies"),
    "a middle certificate removed": (_delete(1), "certificate chain intact and signed"),
    "manifest edited to re-add an erased record": (_readd_erased_record, "no record of a filed request"),
    "one constituent file swapped for another": (_swap_constituent, "hashes agree"),
    "a dvc.lock md5 edited": (_edit_dvc_lock, "hashes agree"),
    "production moved back to a pre-erasure version": (_move_production_back, "hashes agree"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_detects_tampering(three_erasures, case, capsys):
    root = three_erasures
    tamper, failing_check = TAMPERING[case]
    backup = root.parent / "backup"
    shutil.rmtree(backup, ignore_errors=True)
    for rel in ("lineage", "data/shards", "models", "dvc.lock"):
        src, dst = root / rel, backup / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    newest = production(root).version
    try:
        tamper(root)
        capsys.readouterr()
        assert cli("verify", "-C", str(root)) == 1
        out = capsys.readouterr().out
        assert f"FAIL  {failing_check}" in out, out
    finally:
        for rel in ("lineage", "data/shards", "models", "dvc.lock"):
            src, dst = backup / rel, root / rel
            if dst.is_dir():
                shutil.rmtree(dst)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        client_for(Workspace(root)).set_registered_model_alias(MODEL, "production", newest)
    assert cli("verify", "-C", str(root)) == 0


# ---- defect 6: a copied workspace -------------------------------------------------------------

def test_a_copied_workspace_refuses_to_write_before_touching_anything(trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(trained), str(copy)], check=True)
    original_runs = sorted(p.relative_to(trained) for p in (trained / "mlruns").rglob("*"))
    assert cli("forget", "-C", str(copy), "--subject", train_subjects(copy)[0], "--no-wait") == 0
    ledger_before = (copy / "ledger" / "requests.jsonl").read_bytes()
    capsys.readouterr()
    assert cli("erase", "-C", str(copy)) == 2
    err = capsys.readouterr().err
    assert f"copied or moved from {trained}" in err and "Nothing was written" in err
    assert sorted(p.relative_to(trained) for p in (trained / "mlruns").rglob("*")) == original_runs
    assert (copy / "ledger" / "requests.jsonl").read_bytes() == ledger_before
    assert not (copy / "lineage" / "certificates").exists()
    assert cli("status", "-C", str(copy)) == 0  # reading still works


# ---- defect 7: requests that match nothing ---------------------------------------------------

def test_a_request_that_matches_nothing_changes_no_model(prefect_server, tmp_path, capsys):
    root = trained_workspace(tmp_path / "ws")
    versions, served = version_count(root), production(root).version
    capsys.readouterr()
    assert cli("forget", "-C", str(root), "--subject", "") == 2
    assert "is empty" in capsys.readouterr().err
    assert cli("forget", "-C", str(root), "--file", "Away_image03.JPG") == 0
    out = capsys.readouterr()
    assert "matches no record in the current data" in out.err
    assert "matched no record; recorded as unmatched" in out.out
    assert version_count(root) == versions and production(root).version == served
    assert "purged" not in production(root).tags and certs(root) == []
    assert [e["event"] for e in ledger_events(root)] == ["filed", "unmatched"]
    assert cli("status", "-C", str(root), "--json") == 0
    assert json.loads(capsys.readouterr().out)["requests_pending_exact"] == []
    assert cli("verify", "-C", str(root)) == 0


# ---- defect 8: one-line errors ------------------------------------------------------------

def _port_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _imagefolder(tmp_path, bad: bytes) -> Path:
    from PIL import Image

    photos = tmp_path / "photos"
    for cls in ("a", "b"):
        (photos / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(photos / cls / f"{cls}{i}.png")
    (photos / "b" / "anna_2019_party.jpg").write_bytes(bad)
    root = tmp_path / "ws"
    assert cli("init", str(root), "--dataset", f"imagefolder:{photos}", "--model", "mlp") == 0
    return root


def _edit_params(edit):
    def setup(tmp_path, trained):
        root = make_workspace(tmp_path / "ws")
        path = root / "params.yaml"
        path.write_text(edit(path.read_text()))
        return root
    return setup


def _damaged_ledger(tmp_path, trained):
    root = make_workspace(tmp_path / "ws")
    for i in range(3):
        assert cli("forget", "-C", str(root), "--record", f"rec{i}", "--no-wait") == 0
    path = root / "ledger" / "requests.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("rec1", "rec7")
    path.write_text("\n".join(lines) + "\n")
    return root


T = lambda tmp_path, trained: trained  # noqa: E731  the shared trained workspace
U = lambda tmp_path, trained: make_workspace(tmp_path / "ws")  # noqa: E731  never trained
NOWHERE = lambda tmp_path, trained: tmp_path  # noqa: E731  not a workspace

BAD_INPUTS = [
    ("lineage --version abc", T, ["lineage", "--version", "abc"], "is invalid: expected a version number"),
    ("lineage --version 0", T, ["lineage", "--version", "0"], "is invalid: expected a version number"),
    ("lineage --version 999", T, ["lineage", "--version", "999"], "has no version 999; registered versions: 1"),
    ("audit --version 999", T, ["audit", "--version", "999"], "has no version '999'; registered versions: 1"),
    ("audit --version abc", T, ["audit", "--version", "abc"], "has no version 'abc'"),
    ("audit --reference 999", T, ["audit", "--reference", "999"], "has no version '999'"),
    ("audit --lira 3", T, ["audit", "--lira", "3"], "--lira 3 is invalid"),
    ("ui --port 99999", T, ["ui", "--port", "99999"], "not a TCP port; valid: 1-65535"),
    ("ui --port 0", T, ["ui", "--port", "0"], "not a TCP port"),
    ("ui --port abc", T, ["ui", "--port", "abc"], "not a TCP port"),
    ("ui on a port in use", T, ["ui", "--port", "{busy_port}"], "pick another --port"),
    ("verify, never trained", U, ["verify"], "has never been trained"),
    ("verify, not a workspace", NOWHERE, ["verify"], "is not an unlearnflow workspace"),
    ("status, not a workspace", NOWHERE, ["status"], "is not an unlearnflow workspace"),
    ("train, not a workspace", NOWHERE, ["train"], "is not an unlearnflow workspace"),
    ("forget with no selector", T, ["forget"], "name at least one --subject, --record or --file"),
    ("forget --subject ''", T, ["forget", "--subject", ""], "--subject '' is empty"),
    ("forget --record '  '", T, ["forget", "--record", "  "], "--record '  ' is empty"),
    ("forget --method nope", T, ["forget", "--subject", "s001", "--method", "nope"], "unlearning method 'nope' is unknown"),
    ("erase --method nope", T, ["erase", "--method", "nope"], "unlearning method 'nope' is unknown"),
    ("erase --exact sometimes", T, ["erase", "--exact", "sometimes"], "invalid choice: 'sometimes'"),
    ("rectify --label abc", T, ["rectify", "--record", "x", "--label", "abc"], "is not a class; valid choices: 0, 1"),
    ("rectify --label 99", T, ["rectify", "--record", "x", "--label", "99"], "is not a class"),
    ("rectify without --label", T, ["rectify", "--record", "x"],
     "give --label (a label correction) or --region (a feature request), or both"),
    ("rectify --region outside", T, ["rectify", "--record", "x", "--region", "0,0,40,3"],
     "reaches outside the 8x8 images (width x height)"),
    ("stage train --shard 9", T, ["stage", "train", "--shard", "9"], "--shard must be one of [0, 1, 2]; got 9"),
    ("stage bogus", T, ["stage", "bogus"], "invalid choice: 'bogus'"),
    ("an unknown command", T, ["obliterate"], "invalid choice: 'obliterate'"),
    ("params.yaml with an unknown section", _edit_params(lambda t: t.replace("\ntrain:", "\nxtrain:").replace("xtrain:", "unused_train:", 1)),
     ["status"], "unknown key(s) unused_train"),
    ("params.yaml with its train: section removed", _edit_params(
        lambda t: yaml.safe_dump({k: v for k, v in yaml.safe_load(t).items() if k != "train"})),
     ["status"], "has no `train` (dvc.yaml's stage train reads it)"),
    ("params.yaml partition.slices: 0", _edit_params(lambda t: t.replace("slices: 2", "slices: 0")),
     ["status"], "partition.slices = 0 is invalid"),
    ("params.yaml not YAML", _edit_params(lambda t: t + "\n  - : [\n"), ["status"], "is not valid YAML"),
    ("a ledger damaged in the middle", _damaged_ledger, ["status"], "requests.jsonl:2 is not an intact ledger event"),
    ("a zero-byte image", lambda tmp_path, trained: _imagefolder(tmp_path, b""), ["train"], "is not a readable image"),
    ("a file that is no image", lambda tmp_path, trained: _imagefolder(tmp_path, b"<html>not an image</html>"),
     ["train"], "is not a readable image"),
]


@pytest.mark.parametrize("name, setup, args, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_input_is_one_line_error_with_exit_2(name, setup, args, message, trained, tmp_path, capsys):
    root = setup(tmp_path, trained)
    busy = _port_in_use()
    try:
        argv = [a.replace("{busy_port}", str(busy.getsockname()[1])) for a in args]
        argv = argv[:1] + (["-C", str(root)] if argv[0] not in ("obliterate",) else []) + argv[1:]
        capsys.readouterr()
        try:
            rc = cli(*argv)
        except SystemExit as e:  # argparse
            rc = e.code
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and message in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "anna_2019_party" not in errors[0].split(" (the file: ")[0]  # a file name only on the terminal


# ---- fault injection at every step of the erasure --------------------------------------------

def test_a_crash_at_any_step_is_recovered_by_the_next_command(prefect_server, tmp_path, capsys):
    root = trained_workspace(tmp_path / "ws")
    subjects = train_subjects(root)
    for n, step in enumerate(STEPS):
        before = served_md5s(root)
        assert cli("forget", "-C", str(root), "--subject", subjects[n], "--no-wait") == 0
        request = [e["request_id"] for e in ledger_events(root)][-1]
        proc = unlearnflow(root, "erase", api=prefect_server, UNLEARNFLOW_CRASH_AT=step)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (step, err[-2000:])
        assert json.loads((root / ".unlearnflow" / "journal.json").read_text())["steps"][-1] == step
        capsys.readouterr()
        assert cli("erase", "-C", str(root)) == 0, step  # the next command, no manual step
        err = capsys.readouterr().err
        assert f"was interrupted (last step done: {step}); finishing it first" in err, (step, err)
        assert not (root / ".unlearnflow" / "journal.json").exists()
        cert = assert_applied_once(root, request)
        assert cert["affected_shards"] and set(cert["affected_shards"]) == changed_shards(before, cert), step
        assert str(production(root).version) == cert["new_version"], step
        assert cli("verify", "-C", str(root)) == 0, (step, capsys.readouterr().out)


@pytest.mark.parametrize("step, rolled_back", [("served", True), ("recorded", False)])
def test_a_crashed_fast_path_is_rolled_back_or_finished_by_the_next_command(prefect_server, tmp_path, capsys,
                                                                             step, rolled_back):
    root = trained_workspace(tmp_path / "ws")
    base = str(production(root).version)
    proc = unlearnflow(root, "forget", "--subject", train_subjects(root)[0], "--method", "finetune",
                       "--exact", "later", api=prefect_server, UNLEARNFLOW_CRASH_AT=step)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    approximate = str(production(root).version)
    assert approximate != base  # it was served before the crash
    capsys.readouterr()
    assert cli("erase", "-C", str(root)) == 0
    err = capsys.readouterr().err
    tags = client_for(Workspace(root)).get_model_version(MODEL, approximate).tags
    if rolled_back:  # no record yet: undone, and tagged so
        assert f"rolled back: v{approximate} tagged abandoned, production is v{base} again" in err
        assert "abandoned" in tags
    else:  # its record was written: kept, and committed
        assert "its record was written; committed it" in err and "abandoned" not in tags
        assert not lineage.git_is_dirty(root)
    assert int(production(root).version) > int(approximate)  # then the exact erasure served
    assert cli("verify", "-C", str(root)) == 0
