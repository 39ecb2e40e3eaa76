"""What the commands leave behind: `ui` stops every process it started on SIGTERM."""

import os
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
