"""The MLflow UI, as a privacy officer sees it, in a real browser (headless Chromium).

A small workspace is trained and one synthetic subject forgotten; `unlearnflow ui` serves
its store; Chromium opens the production version's page. The page must show the version's
lineage card: its data version, the constituents, the request it carries out, the audit
figures (the same numbers MLflow logged) beside their floor, and a link to the signed
certificate that leads to the certificate itself. A screenshot of the page is kept in
UNLEARNFLOW_SCREENSHOTS (default: the test's temporary folder) for a person to look at.

Needs Debian's `chromium` (`bash .ci/run` installs it); skipped, saying so, without it.
"""

import html
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import cli, free_port
from test_pipeline_integration import FAST, make_workspace

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
# headless on a closed network: without the background-networking flags it stalls
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1400,2600"]


def chromium(url: str, profile: Path, *args: str) -> str:
    """Load ``url`` (a JavaScript page: Chromium's virtual clock lets its requests finish first)."""
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args, url],
                         capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.fixture(scope="module")
def ui(prefect_server, tmp_path_factory):
    """An erased workspace and `unlearnflow ui` serving it; yields (workspace, base URL)."""
    from flows.train import run_train

    ws = make_workspace(tmp_path_factory.mktemp("ui") / "ws", FAST)
    run_train(str(ws.root))
    subject = ws.training_subjects(ws.load_params())[0]
    assert cli("forget", "-C", str(ws.root), "--subject", subject) == 0
    port = free_port()
    proc = subprocess.Popen([str(BIN / "unlearnflow"), "ui", "-C", str(ws.root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the MLflow UI never answered")
                time.sleep(0.5)
        yield ws, base
    finally:
        proc.send_signal(signal.SIGTERM)  # `ui` stops its whole server group (tested in test_cli_hygiene)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium (.ci/run does)")
def test_the_production_version_page_shows_the_lineage_card_with_certificate_and_audit(ui, tmp_path):
    from tasks.registry import production_version
    from tasks.store import client_for

    ws, base = ui
    name = ws.load_params().tracking.registered_model
    mv = production_version(ws, name)
    metrics = client_for(ws).get_run(mv.run_id).data.metrics
    page = f"{base}#/models/{name}/versions/{mv.version}"

    deadline, dom = time.monotonic() + 90, ""
    while f"Lineage of version {mv.version}" not in dom and time.monotonic() < deadline:
        dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert f"Lineage of version {mv.version}" in dom, dom[-2000:]
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    shots = Path(os.environ.get("UNLEARNFLOW_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    chromium(page, tmp_path / "profile-shot", f"--screenshot={shots / 'production-version.png'}")
    assert (shots / "production-version.png").stat().st_size > 10_000

    # the lineage: data version, the request carried out, every constituent's model md5
    assert mv.tags["data_version"] in text
    assert mv.tags["erasure_requests"] in text
    for md5 in __import__("json").loads(mv.tags["constituent_md5s"]).values():
        assert md5 in text
    assert "retrained from slice" in text and "unchanged (no training)" in text

    # the audit figures MLflow logged, beside their floor
    assert "MIA AUC, forget vs holdout (0.5 = unseen)" in text
    assert f"{metrics['audit_forget_vs_holdout_mia_auc']:.3f}" in text
    assert f"{metrics['audit_test_accuracy']:.3f}" in text
    assert "floor (data never seen)" in text and "0.500" in text

    # the certificate link leads to the certificate the workspace holds
    certificate = sorted(ws.layout.certificates.glob("*.json"))[-1]
    links = re.findall(r'href="(#/experiments/[^"]+/artifacts/certificate/[^"]+)"', dom)
    assert links and links[0].endswith(certificate.name)
    run_id = links[0].split("/runs/")[1].split("/")[0]
    served = urllib.request.urlopen(f"{base}get-artifact?path=certificate%2F{certificate.name}&run_uuid={run_id}")
    assert served.read() == certificate.read_bytes()
    # and the histogram is an image on the page, loaded from the run
    assert re.search(r'<img[^>]+src="get-artifact\?path=audit%2F[^"]+\.png', dom)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium (.ci/run does)")
def test_the_pages_ui_prints_open_on_the_runs_and_the_lineage_card(ui, tmp_path):
    """MLflow 3 opens an experiment on its GenAI overview (the sidebar switch lives in the
    browser's storage), so `unlearnflow ui` prints the pages to open: the training and erase
    runs, and the production version's page."""
    from flows.cli import _ui_pages

    ws, base = ui
    pages = _ui_pages(ws, ws.load_params())
    runs, card = pages["training and erase runs"], next(p for k, p in pages.items() if k.startswith("production"))
    deadline, text = time.monotonic() + 90, ""
    while "erase-" not in text and time.monotonic() < deadline:
        text = html.unescape(re.sub(r"<[^>]+>", " ", chromium(base + runs, tmp_path / "profile", "--dump-dom")))
    assert "Training runs" in text and "erase-e" in text and "train-" in text
    assert "No data available" not in text
    assert "Lineage of version" in chromium(base + card, tmp_path / "profile-card", "--dump-dom")
