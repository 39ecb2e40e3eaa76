"""Issue 23: the keys are part of a workspace's identity, and a damaged acknowledged ledger
line is never mistaken for a torn write.

One image-folder workspace with a subjects CSV (90 photos of 30 people, S=3, R=2, an MLP),
created by `unlearnflow init` (which makes its keys), trained and erased once with the real
Prefect flow, DVC (a default remote), git and MLflow. The tests run in file order on it, as
a user's day would: a lost and a wrong subject key, a clone on another path, a rotation of
the subject key, a lost signing key, a damaged ledger line.
"""

import json
import os
import secrets
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import cli
from tasks import lineage
from tasks.store import client_for
from tasks.workspace import Workspace
from unlearnflow.hashing import md5_file
from unlearnflow.layout import Layout
from unlearnflow.pseudonyms import key_id, pseudonym
from unlearnflow.stages import load_split

pytestmark = pytest.mark.slow

MODEL = "unlearnflow-sisa"
PEOPLE = 60  # each owns three photos


def make_photos(root):
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = ["file,subject"]
    for c, cls in enumerate(["referee", "team_away", "team_home"]):
        (root / cls).mkdir(parents=True)
        for i in range(PEOPLE):
            name = f"{cls}_{i:02d}.png"
            img = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / cls / name)
            rows.append(f"{name},person-{(i + 7 * c) % PEOPLE:02d}")
    (root.parent / "subjects.csv").write_text("\n".join(rows) + "\n")
    return root.parent / "subjects.csv"


def in_training(root) -> list[str]:
    """Raw ids of the people who still have records in the training split (under the key in force)."""
    ws = Workspace(root)
    params = ws.load_params()
    key = ws.secret_key(params.data)
    train = set(load_split(ws.layout, "train").subject_ids)
    return [p for p in (f"person-{i:02d}" for i in range(PEOPLE)) if pseudonym(key, p) in train]


def snapshot(root) -> dict:
    """What must not change when a command is refused: the ledger, the data version, the
    constituents, the checkpoints, the key record."""
    layout = Layout(root)
    return {"ledger": layout.ledger.read_bytes(), "dvc.lock": (root / "dvc.lock").read_bytes(),
            "models": {k: md5_file(layout.model(k)) for k in (0, 1, 2)},
            "checkpoints": sorted(p.name for p in layout.checkpoints.glob("*")), "keys": layout.keys.read_bytes()}


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def json_result(out: str) -> dict:
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


def production(root):
    return client_for(Workspace(root)).get_model_version_by_alias(MODEL, "production")


@pytest.fixture(scope="module")
def keyed(prefect_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    subjects_csv = make_photos(base / "photos")
    root = base / "workspace"
    assert cli("init", str(root), "--dataset", f"imagefolder:{base / 'photos'}", "--model", "mlp") == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update({"subjects_csv": str(subjects_csv), "image_size": 12})
    params["partition"].update({"shards": [0, 1, 2], "slices": 2})
    params["train"].update({"epochs": 3, "augment": False})
    params["promote"]["min_test_accuracy"] = 0.0
    params["audit"]["max_test_accuracy_drop"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.dvc(root, "remote", "add", "-d", "team", str(base / "dvc-remote"))  # data versions reach a remote
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "params, DVC remote")
    assert cli("train", "-C", str(root)) == 0
    assert cli("forget", "-C", str(root), "--subject", in_training(root)[0]) == 0
    return root


def test_init_makes_the_keys_and_commits_what_identifies_them(keyed):
    layout = Layout(keyed)
    record = json.loads(layout.keys.read_text())
    assert record["subject_key_id"] == key_id(layout.subject_key.read_text().strip().encode())
    assert record["signing_public_key"] == Workspace(keyed).public_key()
    committed = lineage.git(keyed, "show", "HEAD:lineage/keys.json").stdout
    assert json.loads(committed) == record
    assert layout.subject_key.read_text().strip() not in committed  # a fingerprint, never the key


def test_a_missing_or_wrong_subject_key_is_refused_before_anything_is_filed_or_trained(keyed, capsys):
    layout = Layout(keyed)
    person = in_training(keyed)[0]
    before = snapshot(keyed)
    key = layout.subject_key.read_bytes()
    layout.subject_key.unlink()
    try:
        capsys.readouterr()
        assert cli("forget", "-C", str(keyed), "--subject", person) == 2
        said = errors(capsys.readouterr().err)
        assert len(said) == 1 and "the subject key is missing" in said[0] and "UNLEARNFLOW_SUBJECT_KEY" in said[0], said
        assert snapshot(keyed) == before and not layout.subject_key.exists()  # nothing filed, trained or created
        assert cli("keys", "-C", str(keyed)) == 1  # what is expected, against what is here
        shown = capsys.readouterr().out.splitlines()[0]
        assert shown.startswith("subject key  recorded") and "MISSING" in shown, shown
        os.environ["UNLEARNFLOW_SUBJECT_KEY"] = secrets.token_hex(32)  # another team member's key, say
        assert cli("forget", "-C", str(keyed), "--subject", person) == 2
        said = errors(capsys.readouterr().err)
        assert len(said) == 1 and "is not the one this workspace's pseudonyms were made with" in said[0], said
        assert snapshot(keyed) == before and not layout.subject_key.exists()
    finally:
        os.environ.pop("UNLEARNFLOW_SUBJECT_KEY", None)
        layout.subject_key.write_bytes(key)
    assert cli("forget", "-C", str(keyed), "--subject", person, "--json") == 0
    result = json_result(capsys.readouterr().out)
    assert result["status"] == "erased" and result["erased_records"] == 3  # exactly that person's three photos
    assert len(result["affected"]) == 1
    assert [s["shard"] for s in result["shards"] if s["trained_stages"]] == [int(k) for k in result["affected"]]


def test_a_clone_refuses_until_its_keys_are_provided_then_works(keyed, tmp_path, capsys):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(keyed), str(clone)], check=True)
    lineage.dvc(clone, "pull", "--quiet")  # the data versions, from the remote the workspace commits in .dvc/config
    lineage.dvc(clone, "remote", "add", "--local", "-d", "mine", str(tmp_path / "clone-remote"))  # its gc stays its own
    params = yaml.safe_load((clone / "params.yaml").read_text())  # that machine's copy of the photos (an erasure
    photos = params["data"]["dataset"].split(":", 1)[1]           # deletes the erased files from its source)
    shutil.copytree(photos, tmp_path / "photos")
    params["data"]["dataset"] = f"imagefolder:{tmp_path / 'photos'}"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(clone, *lineage.GIT_IDENTITY, "commit", "-qam", "the photos on this machine")
    person = in_training(keyed)[0]
    ledger = Layout(clone).ledger.read_bytes()
    capsys.readouterr()
    assert cli("forget", "-C", str(clone), "--subject", person) == 2
    said = errors(capsys.readouterr().err)
    assert len(said) == 1 and "the subject key is missing" in said[0], said
    Layout(clone).private.mkdir()
    shutil.copy(Layout(keyed).subject_key, Layout(clone).subject_key)  # restored from the backup
    assert cli("forget", "-C", str(clone), "--subject", person) == 2
    said = errors(capsys.readouterr().err)
    assert len(said) == 1 and "the signing key is missing" in said[0] and "keys rotate signing" in said[0], said
    assert Layout(clone).ledger.read_bytes() == ledger and not Layout(clone).signing_key.exists()
    shutil.copy(Layout(keyed).signing_key, Layout(clone).signing_key)
    assert cli("forget", "-C", str(clone), "--subject", person, "--json") == 0
    result = json_result(capsys.readouterr().out)
    assert result["status"] == "erased" and result["erased_records"] == 3 and len(result["affected"]) == 1


def test_rotating_the_subject_key_retrains_every_shard_and_pending_requests_still_match(keyed, capsys):
    layout = Layout(keyed)
    person = in_training(keyed)[0]
    assert cli("forget", "-C", str(keyed), "--subject", person, "--no-wait") == 0  # pending through the rotation
    before, old_key = snapshot(keyed), layout.subject_key.read_text()
    capsys.readouterr()
    assert cli("keys", "rotate", "subject", "-C", str(keyed)) == 0
    out = capsys.readouterr().out
    assert "all 3 shards retrain from scratch" in out and "1 pending request(s)" in out and "--yes" in out, out
    assert snapshot(keyed) == before  # only said what it would cost

    assert cli("keys", "rotate", "subject", "--yes", "-C", str(keyed)) == 0
    out = capsys.readouterr().out
    new_key = layout.subject_key.read_text()
    assert new_key != old_key and not (layout.private / "subject.key.new").exists()
    record = json.loads(layout.keys.read_text())
    assert record["subject_key_id"] == key_id(new_key.encode())
    assert record["rotations"][-1]["key"] == "subject" and record["rotations"][-1]["from"] == key_id(old_key.encode())
    mv = production(keyed)
    assert mv.tags["kind"] == "key_rotation" and mv.tags["key_rotation_id"] in out
    client = client_for(Workspace(keyed))
    children = client.search_runs([client.get_run(mv.run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{mv.run_id}'")
    assert sorted(int(c.data.metrics["trained_stages"]) for c in children) == [2, 2, 2]  # every shard, every slice
    assert cli("lineage", "-C", str(keyed)) == 0
    assert "key_rotation" in capsys.readouterr().out
    assert json.loads(lineage.git(keyed, "show", "HEAD:lineage/keys.json").stdout) == record  # committed
    entry = json.loads(sorted(layout.certificates.glob("*.json"))[-1].read_text())  # signed, in the chain
    assert entry["kind"] == "key_rotation" and entry["key"] == "subject" and entry["new_version"] == str(mv.version)
    assert sorted(entry["affected_shards"]) == ["0", "1", "2"]
    assert {a["first_retrained_slice"] for a in entry["affected_shards"].values()} == {1}

    pending = Workspace(keyed).pending_requests()
    assert len(pending) == 1 and pending[0].request.subjects == (pseudonym(new_key.encode(), person),)
    still_training = person in in_training(keyed)  # the new key drew the splits anew: maybe not
    assert cli("erase", "-C", str(keyed), "--json") == 0
    result = json_result(capsys.readouterr().out)
    assert result["erased_records"] == 3  # still that person's three photos
    assert len(result["affected"]) == (1 if still_training else 0)
    assert cli("verify", "-C", str(keyed)) == 0, capsys.readouterr().out


def test_a_rotation_killed_midway_is_finished_once_and_filings_wait_for_it(keyed, prefect_server, capsys):
    import sys
    from pathlib import Path

    person = in_training(keyed)[0]
    before = json.loads(Layout(keyed).keys.read_text())
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "UNLEARNFLOW_CRASH_AT": "rekeyed"}  # kill -9 there
    proc = subprocess.run([str(Path(sys.executable).parent / "unlearnflow"), "keys", "rotate", "subject", "--yes",
                           "-C", str(keyed)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9 and Workspace(keyed).journal().read()["steps"] == ["rekeyed"]
    ledger = Layout(keyed).ledger.read_bytes()
    capsys.readouterr()
    assert cli("forget", "-C", str(keyed), "--subject", person, "--no-wait") == 2  # not under the old key
    said = errors(capsys.readouterr().err)
    assert len(said) == 1 and "is being rotated (or a rotation was interrupted)" in said[0], said
    assert Layout(keyed).ledger.read_bytes() == ledger
    assert cli("keys", "rotate", "subject", "--yes", "-C", str(keyed)) == 0
    assert "finished     the interrupted rotation" in capsys.readouterr().out
    after = json.loads(Layout(keyed).keys.read_text())
    assert len(after["rotations"]) == len(before["rotations"]) + 1  # one rotation, not two
    assert Workspace(keyed).journal().read() is None and production(keyed).tags["kind"] == "key_rotation"
    assert cli("verify", "-C", str(keyed)) == 0


def test_a_lost_signing_key_is_refused_until_a_rotation_records_the_new_one_in_the_chain(keyed, capsys):
    layout = Layout(keyed)
    person = in_training(keyed)[0]
    layout.signing_key.unlink()  # lost for good
    before = snapshot(keyed)
    capsys.readouterr()
    assert cli("forget", "-C", str(keyed), "--subject", person) == 2
    said = errors(capsys.readouterr().err)
    assert len(said) == 1 and "the signing key is missing" in said[0], said
    assert snapshot(keyed) == before and not layout.signing_key.exists()
    assert cli("keys", "rotate", "signing", "-C", str(keyed)) == 0
    assert "NOT endorsed" in capsys.readouterr().out and not layout.signing_key.exists()
    assert cli("keys", "rotate", "signing", "--yes", "--reason", "laptop lost", "-C", str(keyed)) == 0
    entry = json.loads(sorted(layout.certificates.glob("*.json"))[-1].read_text())
    assert entry["kind"] == "key_rotation" and entry["reason"] == "laptop lost"
    assert entry["endorsed_by_previous_key"] is False and entry["signer_public_key"] == Workspace(keyed).public_key()
    assert json.loads(layout.keys.read_text())["signing_public_key"] == entry["signer_public_key"]
    pinned = client_for(Workspace(keyed)).get_registered_model(MODEL).tags["certificate_public_key"]
    assert pinned == entry["signer_public_key"]
    assert cli("forget", "-C", str(keyed), "--subject", person) == 0
    assert cli("verify", "-C", str(keyed)) == 0
    assert "NOT endorsed: the previous key was not at hand" in capsys.readouterr().out


def test_a_damaged_acknowledged_ledger_line_is_restored_from_git_or_refused_never_set_aside(keyed, capsys):
    layout = Layout(keyed)
    aside = layout.private / "ledger-torn"
    data = layout.ledger.read_bytes()
    assert json.loads(data.splitlines()[-1])["event"] == "resolved"  # a certificate relies on it; git holds it
    layout.ledger.write_bytes(data[:-12])
    person = in_training(keyed)[0]
    capsys.readouterr()
    assert cli("forget", "-C", str(keyed), "--subject", person, "--json") == 0
    captured = capsys.readouterr()
    assert "restored from git's committed copy" in captured.err and "Traceback" not in captured.err
    result = json_result(captured.out)
    assert result["status"] == "erased" and len(result["requests"]) == 1  # the new request, certified once
    assert layout.ledger.read_bytes().startswith(data) and not aside.exists()

    # a line git does not hold (an erasure run with --no-commit), damaged after the fact: refused, untouched
    assert cli("forget", "-C", str(keyed), "--subject", in_training(keyed)[0], "--no-commit") == 0
    data = layout.ledger.read_bytes()
    layout.ledger.write_bytes(data[:-12])
    rid = json.loads(data.splitlines()[-1])["request_id"]
    capsys.readouterr()
    for command in (["forget", "--subject", in_training(keyed)[0]], ["erase"]):
        assert cli(command[0], "-C", str(keyed), *command[1:]) == 2
        err = capsys.readouterr().err
        said = errors(err)
        assert len(said) == 1 and "Traceback" not in err, err
        assert f"line {len(data.splitlines())} (request {rid}) is damaged" in said[0], said
        assert "git checkout -- ledger/requests.jsonl" in said[0]
        assert layout.ledger.read_bytes() == data[:-12] and not aside.exists()
    assert cli("status", "-C", str(keyed)) == 0
    assert "the ledger and the lineage disagree" in capsys.readouterr().err
    assert cli("verify", "-C", str(keyed)) == 1
    assert "FAIL  ledger agrees with the certificates and the journal" in capsys.readouterr().out
    layout.ledger.write_bytes(data)  # the line restored from a backup
    lineage.git_commit_lineage(keyed, "the --no-commit erasure's lineage")
    assert cli("verify", "-C", str(keyed)) == 0
