"""Issue 25: a receipt the person can check without trusting us. On a small digits workspace
(the real flow, git, DVC and MLflow in a temporary directory): three erasures, then a
receipt checked by ``receipt_verify.py`` copied alone into an empty directory and run by a
fresh virtual environment that holds only ``cryptography`` (and its ``cffi``); every
flipped byte fails naming its check; a rewritten history is caught by ``verify`` and by an
old receipt with ``--since``; a pending request gets no receipt."""

import base64
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import cli
from test_guarantee import make_workspace, train_subjects
from tasks import lineage, transparency
from tasks.workspace import Workspace
from unlearnflow import receipt_verify as rv
from unlearnflow import tlog

pytestmark = pytest.mark.slow
VERIFIER = Path(rv.__file__)


@pytest.fixture(scope="module")
def erased(prefect_server, tmp_path_factory):
    """A workspace with three erasures (three subjects, one each) and the subjects' ids."""
    root = make_workspace(tmp_path_factory.mktemp("receipts") / "ws")
    assert cli("train", "-C", str(root)) == 0
    subjects = train_subjects(root)[:3]
    for s in subjects:
        assert cli("forget", "-C", str(root), "--subject", s) == 0
    return root, subjects


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A new venv (no pip, no site packages) holding only cryptography and cffi, linked in."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for name in ("cryptography", "cffi", *[p.name for p in ours.glob("_cffi_backend*")]):
        (site / name).symlink_to(ours / name)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0  # it really is bare
    return venv / "bin" / "python"


def key_of(root: Path) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "unlearnflow"), "log", "key", "-C", str(root)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def check(python: Path, where: Path, receipt: str, key: str, *extra: str) -> subprocess.CompletedProcess:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(VERIFIER, where / "receipt_verify.py")
    (where / "r.proof").write_text(receipt)
    return subprocess.run([str(python), "-I", "receipt_verify.py", "verify", "r.proof", "--key", key, *extra],
                          cwd=where, capture_output=True, text=True)


def test_a_receipt_passes_in_a_bare_venv_and_every_flipped_byte_fails_naming_its_check(erased, bare_python,
                                                                                        tmp_path):
    root, subjects = erased
    out = tmp_path / "r.proof"
    assert cli("receipt", "-C", str(root), "--subject", subjects[0], "-o", str(out)) == 0
    receipt, key = out.read_text(), key_of(root)
    assert subjects[0] not in receipt and subjects[0] not in base64.b64decode(receipt.split("\n")[1][6:]).decode()
    proc = check(bare_python, tmp_path / "empty", receipt, key)
    assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr
    assert "entry 0 of the erasure log" in proc.stdout and "(size 3)" in proc.stdout

    proof = rv.parse_proof(receipt)
    claims = json.loads(proof.extra)
    lines = receipt.split("\n")
    index_line = lines.index(f"index {proof.index}")
    path_line = index_line + 1
    body_line = index_line + len(proof.path) + 2  # the checkpoint's origin line
    sig_line = len(lines) - 2
    flipped_cert = dict(claims, certificate=claims["certificate"].replace('"forget"', '"forgot"', 1))

    def flip_char(line: str, at: int) -> str:
        c = line[at]
        return line[:at] + ("B" if c != "B" else "C") + line[at + 1:]

    cases = {
        "inclusion path": ("inclusion", lines[:path_line] + [flip_char(lines[path_line], 3)] + lines[path_line + 1:]),
        "index": ("inclusion", lines[:index_line] + [f"index {proof.index + 1}"] + lines[index_line + 1:]),
        "checkpoint body": ("signature", lines[:body_line + 1] + [str(int(lines[body_line + 1]) + 1)]
                            + lines[body_line + 2:]),
        "its signature": ("signature", lines[:sig_line] + [flip_char(lines[sig_line], len(lines[sig_line]) - 6)]
                          + lines[sig_line + 1:]),
        "the certificate": ("certificate", [lines[0], "extra " + base64.b64encode(
            json.dumps(flipped_cert).encode()).decode()] + lines[2:]),
    }
    for what, (named, changed) in cases.items():
        proc = check(bare_python, tmp_path / what.replace(" ", "_"), "\n".join(changed), key)
        assert proc.returncode == 1 and proc.stdout.startswith(f"FAIL {named}:"), (what, proc.stdout, proc.stderr)
    # the same checks through the CLI: `unlearnflow receipt verify`
    assert cli("receipt", "verify", str(out), "--key", key) == 0
    assert cli("receipt", "verify", str(out), "--key", key.replace(key.split("+")[0], "someone.else")) == 1


def test_verify_checks_the_log_and_a_pending_request_gets_no_receipt(erased, capsys):
    root, subjects = erased
    capsys.readouterr()
    assert cli("verify", "-C", str(root)) == 0
    assert "erasure log" in capsys.readouterr().out
    ws = Workspace(root)
    log = transparency.erasure_log(ws)
    assert [x.request_id for x in log.leaves()] == [r["request_id"] for p in sorted(ws.layout.certificates.glob(
        "*.json")) for r in json.loads(p.read_text()).get("requests", [])]
    assert len(log.checkpoints()) == 3
    committed = lineage.git(root, "ls-files", "lineage/log").stdout.split()
    assert "lineage/log/leaves.txt" in committed and len([c for c in committed if "/checkpoints/" in c]) == 3

    pending = train_subjects(root)[5]
    assert cli("forget", "-C", str(root), "--subject", pending, "--no-wait") == 0
    capsys.readouterr()
    assert cli("receipt", "-C", str(root), "--subject", pending) == 2
    assert "pending: no erasure has carried it out yet" in capsys.readouterr().err
    assert cli("receipt", "-C", str(root), "--subject", "nobody-at-all") == 2


def test_a_rewritten_history_is_caught_by_verify_and_by_an_old_receipt(erased, bare_python, tmp_path, capsys):
    root, subjects = erased
    work = tmp_path / "ws"
    shutil.copytree(root, work, symlinks=True)
    old = tmp_path / "old.proof"
    assert cli("receipt", "-C", str(work), "--subject", subjects[0], "-o", str(old)) == 0
    key = key_of(work)
    ws = Workspace(work)
    # the operator rewrites the first certificate, rebuilds the log and signs its checkpoints again
    first = sorted(ws.layout.certificates.glob("*.json"))[0]
    text = first.read_text()
    assert '"train_device":"cpu"' in text
    first.write_text(text.replace('"train_device":"cpu"', '"train_device":"gpu"'))
    (ws.layout.erasure_log / "leaves.txt").unlink()
    transparency.publish(ws, ws.load_params())
    capsys.readouterr()
    assert cli("verify", "-C", str(work)) == 1
    out = capsys.readouterr().out
    assert "both have size 1 with different roots" in out and "is not consistent with the earlier" in out, out
    new = tmp_path / "new.proof"
    assert cli("receipt", "-C", str(work), "--subject", subjects[1], "-o", str(new), "--since", "3") == 0
    proc = check(bare_python, tmp_path / "since", new.read_text(), key, "--since", str(old))
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL consistency:"), proc.stdout + proc.stderr
    # and the honest log passes the same check
    good = tmp_path / "good.proof"
    assert cli("receipt", "-C", str(root), "--subject", subjects[1], "-o", str(good), "--since", "3") == 0
    first_receipt = tmp_path / "first.proof"
    assert cli("receipt", "-C", str(root), "--subject", subjects[0], "-o", str(first_receipt)) == 0
    proc = check(bare_python, tmp_path / "since-good", good.read_text(), key_of(root), "--since", str(first_receipt))
    assert proc.returncode == 0 and "extends the one of size" in proc.stdout, proc.stdout + proc.stderr


def test_a_log_is_built_from_certificates_that_predate_it(erased, tmp_path):
    root, _ = erased
    work = tmp_path / "ws"
    shutil.copytree(root, work, symlinks=True)
    ws = Workspace(work)
    before = sorted(p.read_text() for p in transparency.erasure_log(ws).checkpoints())
    shutil.rmtree(ws.layout.erasure_log)
    published = transparency.publish(ws, ws.load_params())
    assert published["log_size"] == 3 and len(published["written"]) == 3
    assert sorted(p.read_text() for p in transparency.erasure_log(ws).checkpoints()) == before  # deterministic
    assert tlog.tree_hash([x.hash for x in transparency.erasure_log(ws).leaves()]).hex() == published["root"]


def start_witness(directory: Path, port: int, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "unlearnflow"), "witness", "serve", "--dir",
                             str(directory), "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().startswith("witness "), "the witness did not start"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def witnessed_workspace(tmp_path: Path, **lineage_settings) -> tuple[Path, subprocess.Popen, Path, str, int]:
    """A trained workspace whose params.yaml lists one running witness (auditor.example/w1,
    following its log). Returns (root, the witness process, its directory, its verifier key,
    its port)."""
    import yaml
    from conftest import free_port

    root = make_workspace(tmp_path / "ws")
    assert cli("train", "-C", str(root)) == 0
    port, home = free_port(), tmp_path / "witness"
    witness = start_witness(home, port, "--name", "auditor.example/w1", "--log", key_of(root))
    wkey = subprocess.run([str(Path(sys.executable).parent / "unlearnflow"), "witness", "key", "--dir", str(home)],
                          capture_output=True, text=True, check=True).stdout.strip()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lineage"] = {"witnesses": [{"url": f"http://127.0.0.1:{port}", "key": wkey}], **lineage_settings}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "a witness")
    return root, witness, home, wkey, port


def test_a_witness_cosigns_catches_up_after_a_gap_and_refuses_a_rewritten_history(prefect_server, tmp_path,
                                                                                   bare_python, capsys):
    from test_guarantee import production

    root, witness, home, wkey, port = witnessed_workspace(tmp_path, witness_timeout_seconds=2)
    subjects = train_subjects(root)
    try:
        capsys.readouterr()
        assert cli("forget", "-C", str(root), "--subject", subjects[0]) == 0
        assert "cosigned by auditor.example/w1" in capsys.readouterr().out
        stop(witness)  # it does not answer: the erasure goes on, the gap is said and recorded
        assert cli("forget", "-C", str(root), "--subject", subjects[1]) == 0
        assert "NOT cosigned by auditor.example/w1 (unreachable" in capsys.readouterr().out
        state = json.loads((root / "lineage" / "log" / "witnesses.json").read_text())["auditor.example/w1"]
        assert (state["size"], state["missed_size"]) == (1, 2)
        witness = start_witness(home, port)
        assert cli("forget", "-C", str(root), "--subject", subjects[2]) == 0  # brought up to date: 1 -> 3
        assert "cosigned by auditor.example/w1" in capsys.readouterr().out
        assert witness_size(home) == 3
        out = tmp_path / "r.proof"
        assert cli("receipt", "-C", str(root), "--subject", subjects[2], "-o", str(out)) == 0
        proc = check(bare_python, tmp_path / "v", out.read_text(), key_of(root), "--witness", wkey, "--quorum", "1")
        assert proc.returncode == 0 and "cosigned by auditor.example/w1" in proc.stdout, proc.stdout + proc.stderr
        other = tlog.log_key("someone.example/w9", bytes(32))
        proc = check(bare_python, tmp_path / "v2", out.read_text(), key_of(root), "--witness", wkey, "--witness",
                     rv.VerifierKey(other.name, rv.COSIGNATURE, other.public).text)  # 2 of 2 asked for
        assert proc.returncode == 1 and proc.stdout.startswith("FAIL witnesses:"), proc.stdout

        # the operator rewrites an old certificate, rebuilds the log, signs it again: the witness refuses
        ws = Workspace(root)
        first = sorted(ws.layout.certificates.glob("*.json"))[0]
        first.write_text(first.read_text().replace('"train_device":"cpu"', '"train_device":"gpu"'))
        (ws.layout.erasure_log / "leaves.txt").unlink()
        transparency.publish(ws, ws.load_params())
        served = str(production(root).version)
        capsys.readouterr()
        assert cli("forget", "-C", str(root), "--subject", subjects[3]) == 2
        err = capsys.readouterr().err
        assert "witness auditor.example/w1" in err and "refused the erasure log's checkpoint of size 4: HTTP 422" in err
        assert "production was not moved" in err and len(err.strip().splitlines()[-1]) > 0
        assert str(production(root).version) == served
        assert witness_size(home) == 3
    finally:
        stop(witness)


def witness_size(home: Path) -> int:
    from unlearnflow.witness import Witness

    return Witness(home).logs()[0]["size"]


def test_a_crash_inside_the_log_step_is_finished_by_the_next_command(prefect_server, tmp_path, capsys):
    """kill -9 after the log's leaves are on disk, after its checkpoint is signed, and after the
    witness cosigned but before the log kept its cosignature: the next command finishes the
    erasure, each request is in the log once, the witness is in step, `verify` passes."""
    import signal

    root, witness, home, wkey, _ = witnessed_workspace(tmp_path)
    subjects = train_subjects(root)
    env = {**__import__("os").environ, "PREFECT_API_URL": prefect_server}
    try:
        for n, point in enumerate(("log_extended", "checkpoint_signed", "witness_call")):
            assert cli("forget", "-C", str(root), "--subject", subjects[n], "--no-wait") == 0
            proc = subprocess.run([str(Path(sys.executable).parent / "unlearnflow"), "erase", "-C", str(root)],
                                  env={**env, "UNLEARNFLOW_CRASH_AT": point}, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
            capsys.readouterr()
            assert cli("erase", "-C", str(root)) == 0, point
            assert "was interrupted (last step done: certified)" in capsys.readouterr().err, point
            ws = Workspace(root)
            log = transparency.erasure_log(ws)
            ids = [x.request_id for x in log.leaves()]
            assert len(ids) == len(set(ids)) == n + 1, (point, ids)
            newest = rv.parse_checkpoint(log.newest_checkpoint().read_text())
            assert newest.size == n + 1 and rv.cosigners(newest.note, [rv.parse_vkey(wkey)]) == ["auditor.example/w1"]
            assert witness_size(home) == n + 1, point
            assert cli("verify", "-C", str(root)) == 0, (point, capsys.readouterr().out)
    finally:
        stop(witness)
