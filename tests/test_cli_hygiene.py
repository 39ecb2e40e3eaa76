"""What a user sees and what the commands leave behind: reports without dict text, ANSI
codes or Prefect's log lines (unless --verbose), and `ui` stopping every process it
started on SIGTERM."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, free_port

BIN = Path(sys.executable).parent


def _descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
def test_ui_leaves_no_process_after_sigterm(tmp_path):
    root = tmp_path / "ws"
    assert cli("init", str(root), "--dataset", "digits") == 0
    port = free_port()
    ui = subprocess.Popen([str(BIN / "unlearnflow"), "ui", "-C", str(root), "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the MLflow UI answers
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI never answered")
        children = _descendants(ui.pid)
        assert children, "ui started no server process"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
            time.sleep(0.2)
        left = [c for c in children if Path(f"/proc/{c}").exists()]
        assert left == [], f"processes left after SIGTERM: {left}"
        with socket.socket() as s:  # and the port is free again
            s.bind(("127.0.0.1", port))
    finally:
        for c in children | _descendants(ui.pid):
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ui.kill()


DICT_TEXT = re.compile(r"\{'|\{\"|': |\[\'")  # Python dict / list reprs (and JSON objects) in a report
ANSI = "\x1b["
THEIR_LINES = re.compile(r"\| INFO +\| (prefect|Flow run|Task run)|Created version '\d+' of model")


def _run(root: Path, api: str, *args: str) -> str:
    env = {**os.environ, "PREFECT_API_URL": api}
    proc = subprocess.run([str(BIN / "unlearnflow"), *args, "-C", str(root)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _subjects(ws) -> list[str]:
    from unlearnflow.datasets import load_dataset
    from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
    from unlearnflow.stages import load_split

    in_training = set(load_split(ws.layout, "train").subject_ids)
    return [raw for raw in sorted(set(load_dataset(ws.load_params().data).subject_ids))
            if pseudonym(SYNTHETIC_KEY, raw) in in_training]


@pytest.mark.slow
def test_reports_hold_no_dict_text_ansi_codes_or_prefect_lines_unless_verbose(prefect_server, tmp_path):
    from flows.train import run_train
    from test_pipeline_integration import make_workspace

    ws = make_workspace(tmp_path / "ws")
    run_train(str(ws.root))
    subject = ws.training_subjects(ws.load_params())[0]
    outputs = {"forget": _run(ws.root, prefect_server, "forget", "--subject", subject),
               "lineage": _run(ws.root, prefect_server, "lineage"),
               "status": _run(ws.root, prefect_server, "status")}
    for command, text in outputs.items():
        assert ANSI not in text, (command, text)
        assert not DICT_TEXT.search(text), (command, DICT_TEXT.search(text).group(0), text)
        assert not THEIR_LINES.search(text), (command, text)  # Prefect's and MLflow's own log lines
    assert "too few records to judge" in outputs["forget"]  # one subject: a handful of records
    second = next(s for s in _subjects(ws) if s != subject)
    verbose = _run(ws.root, prefect_server, "forget", "--subject", second, "--verbose")
    assert THEIR_LINES.search(verbose), verbose  # --verbose brings them back


@pytest.mark.slow
def test_an_error_raised_inside_a_flow_is_one_line_and_prefects_lines_go_to_a_file(prefect_server, tmp_path):
    from flows.train import run_train
    from test_pipeline_integration import make_workspace

    ws = make_workspace(tmp_path / "ws")
    run_train(str(ws.root))
    subjects = ws.training_subjects(ws.load_params())
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "UNLEARNFLOW_FAIL_AT": "purge"}  # a task raises
    proc = subprocess.run([str(BIN / "unlearnflow"), "forget", "--subject", subjects[0], "-C", str(ws.root)],
                          env=env, capture_output=True, text=True, timeout=600)
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(said) == 1, proc.stderr
    assert "injected fault at purge" in said[0]
    assert "Traceback" not in proc.stdout + proc.stderr and "ERROR" not in proc.stdout + proc.stderr, proc.stderr
    log = Path(said[0].rsplit("Prefect's log of the run: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "ERROR" in log.read_text()  # where they went instead
    proc = subprocess.run([str(BIN / "unlearnflow"), "erase", "--verbose", "-C", str(ws.root)],
                          env=env, capture_output=True, text=True, timeout=600)  # recovery meets the fault again
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "ERROR" in proc.stderr, proc.stderr
    env.pop("UNLEARNFLOW_FAIL_AT")
    proc = subprocess.run([str(BIN / "unlearnflow"), "erase", "-C", str(ws.root)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "finishing it first" in proc.stderr, proc.stderr  # nothing was lost


@pytest.mark.parametrize("make, expected", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("not a folder"), "is a file, not a folder"),
    (lambda p: p.mkdir(), "holds no images in class sub-folders"),
    (lambda p: (p / "referee").mkdir(parents=True), "holds no images in class sub-folders"),
])
def test_init_refuses_an_image_folder_that_is_not_one(tmp_path, capsys, make, expected):
    photos = tmp_path / "photos"
    make(photos)
    target = tmp_path / "ws"
    assert cli("init", str(target), "--dataset", f"imagefolder:{photos}") == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and str(photos) in said[0] and expected in said[0] and "expected a folder" in said[0], err
    assert not target.exists()  # nothing created
