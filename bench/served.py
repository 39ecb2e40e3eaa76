"""Benchmark: the served request flow under a stream of requests. A real `prefect server
start`, a fresh mnist5k workspace (S=5, R=4), `unlearnflow train`, then `unlearnflow serve`;
N requests are filed `--interval` seconds apart (`unlearnflow forget --subject … --no-wait`,
then one `unlearnflow.erasure.requested` event each, as a deletion service would), and the
certificates folder is watched. Per request: filing (the command's return: the request is
acknowledged) to the first certificate that names it. Reported: p50, p95 and max, how many
runs and batches carried them out, and whether any request was lost or certified twice.

    .venv/bin/python bench/served.py --requests 20 --interval 5      # -> bench/results/served.{md,json}
    .venv/bin/python bench/served.py --code /tmp/before --label before  # another checkout's code
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasure import prefect_server  # noqa: E402
from overhead import Runner  # noqa: E402
from record import save_md, stamp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "served"


class CertificateWatch:
    """Notes when each request id first appears in a certificate (polled every 0.2 s)."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self.certificates = folder, {}, {}
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop.is_set():
            for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
                if path.name in self.certificates:
                    continue
                try:
                    body = json.loads(path.read_text())
                except ValueError:  # being written
                    continue
                now = time.time()
                ids = [r["request_id"] for r in body.get("requests", [])]
                self.certificates[path.name] = ids
                for rid in ids:
                    self.seen.setdefault(rid, now)
            time.sleep(0.2)


def emit(env: dict) -> None:
    subprocess.run([sys.executable, "-c", "from prefect.events import emit_event; emit_event("
                    "event='unlearnflow.erasure.requested', resource={'prefect.resource.id': 'unlearnflow.bench'})"],
                   env=env, check=True, capture_output=True, timeout=120)


def bench(tmp: Path, env: dict, args) -> dict:
    runner = Runner(args.code.resolve() if args.code else None)
    ws = tmp / "ws"
    runner.run(["init", str(ws)], env, tmp)
    t_train, _ = runner.run(["train", "-C", str(ws)], env, tmp)
    print(f"train {t_train:.1f}s", flush=True)
    from tasks.workspace import Workspace

    workspace = Workspace(ws)
    subjects = random.Random(args.seed).sample(workspace.training_subjects(workspace.load_params()), args.requests)
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen(runner.command(["serve", "-C", str(ws)]), env=runner.env(env), cwd=tmp, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "serving the erase flow" not in (tmp / "serve.log").read_text():
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"serve did not start:\n{(tmp / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        time.sleep(2)  # a deployment's trigger (older code) is loaded by the server a beat after it appears
        watch = CertificateWatch(ws / "lineage" / "certificates")
        filed: dict[str, float] = {}
        t0 = time.time()
        for i, subject in enumerate(subjects):
            time.sleep(max(0.0, t0 + i * args.interval - time.time()))
            _, out = runner.run(["forget", "-C", str(ws), "--subject", subject, "--no-wait"], env, tmp)
            rid = out.split()[1]
            filed[rid] = time.time()
            emit(env)
            print(f"filed {i + 1}/{len(subjects)}: {rid} at +{filed[rid] - t0:.1f}s", flush=True)
        deadline = time.time() + args.timeout
        while set(filed) - set(watch.seen) and time.time() < deadline:
            time.sleep(0.5)
        watch.stop.set()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    lost = sorted(set(filed) - set(watch.seen))
    counts = {rid: sum(rid in ids for ids in watch.certificates.values()) for rid in filed}
    latency = sorted(watch.seen[rid] - filed[rid] for rid in filed if rid in watch.seen)
    served_log = (tmp / "serve.log").read_text()
    runs = [line for line in served_log.splitlines()  # the request flow's runs, as Prefect logs their start
            if re.search(r"Beginning flow run .* for flow 'unlearnflow-requests'", line)]
    return {"train_s": t_train, "requests": len(filed), "interval_s": args.interval, "lost": lost,
            "certified_twice": sorted(r for r, n in counts.items() if n > 1),
            "latency_s": latency, "batch_sizes": [len(ids) for _, ids in sorted(watch.certificates.items())],
            "runs": len(runs) or None, "run_lines": runs,
            "first_filed_to_last_certified_s": max(watch.seen.values()) - t0 if watch.seen else None}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def write(recorded: dict) -> None:
    lines = ["# The served flow under a stream of requests", "",
             "Generated by `bench/served.py` (see its docstring): a real `prefect server start`, `unlearnflow serve` "
             "on a fresh mnist5k workspace (S=5, R=4), requests filed with `forget --no-wait` a fixed interval apart, "
             "one `unlearnflow.erasure.requested` event each. Latency: from the filing command's return to the first "
             "certificate naming the request (the watcher polls every 0.2 s). 2 cores.", "",
             "| label | measured | code | requests | interval s | **p50 s** | **p95 s** | max s | runs | batches "
             "(requests each) | lost | certified twice |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for label, r in recorded["runs"].items():
        lat = r["latency_s"]
        lines.append(f"| {label} | {r['date']} | {r['code_commit']} | {r['requests']} | {r['interval_s']:g} | "
                     f"**{percentile(lat, 50):.1f}** | **{percentile(lat, 95):.1f}** | {max(lat):.1f} | "
                     f"{r['runs'] if r['runs'] is not None else 'n/a'} | {len(r['batch_sizes'])} "
                     f"({', '.join(map(str, r['batch_sizes']))}) | {len(r['lost'])} | {len(r['certified_twice'])} |")
    lines += ["", *[f"- {label}: {r['note']}" for label, r in recorded["runs"].items() if r.get("note")]]
    lines += ["", "## Targets (issue 24)", ""]
    for label, r in recorded["runs"].items():
        lat = r["latency_s"]
        p50, p95 = percentile(lat, 50), percentile(lat, 95)
        ok = not r["lost"] and not r["certified_twice"]
        lines.append(f"- {label}: filing -> certificate p50 <= 15 s: {p50:.1f} s: "
                     f"**{'met' if p50 <= 15 else 'missed'}**; p95 <= 30 s: {p95:.1f} s: **{'met' if p95 <= 30 else 'missed'}**; no request lost or "
                     f"certified twice: {len(r['lost'])} lost, {len(r['certified_twice'])} twice: "
                     f"**{'met' if ok else 'missed'}**.")
    save_md(OUT, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait after the last filing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code", type=Path, help="a checkout whose code to measure (default: this one)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--note", default="")
    ap.add_argument("--render", action="store_true", help="only write served.md again from served.json")
    args = ap.parse_args()
    path = OUT.with_suffix(".json")
    recorded = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if args.render:
        return write(recorded)
    tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-bench-served-"))
    with prefect_server(tmp) as env:
        res = bench(tmp, env, args)
    code_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.code or REPO, capture_output=True,
                                 text=True).stdout.strip()
    recorded["runs"][args.label] = {**stamp(), "code_commit": code_commit, "note": args.note, **res}
    path.write_text(json.dumps(recorded, indent=1) + "\n")
    write(recorded)
    print(f"(workspace and logs kept in {tmp})")


if __name__ == "__main__":
    main()
