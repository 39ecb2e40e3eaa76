"""Benchmark: the very first run on a fresh machine (issue 16).

10 runs (--runs) of `unlearnflow init` + `unlearnflow train` on the default dataset, each in
a fresh workspace with a Prefect home that was never used (so Prefect creates its
database), half of them (every second run) with both cores kept busy by CPU-hog processes
started and stopped here. For each: success, seconds from launching `train` to its first
line of output, to "Prefect server ready", and in total (init + train).

    .venv/bin/python bench/first_run.py          # -> bench/results/first_run.md (about 25 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save_json, save_md  # noqa: E402

BIN = Path(sys.executable).parent
HOG = "while True:\n    pass\n"


def timed_lines(proc: subprocess.Popen, t0: float, lines: list) -> threading.Thread:
    def read():
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def one_run(n: int, busy: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-first-run-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)] if busy else []
    try:
        t0 = time.perf_counter()
        init = subprocess.run([str(BIN / "unlearnflow"), "init", str(tmp / "ws")], env=env, capture_output=True,
                              text=True)
        t_train = time.perf_counter()
        lines: list = []
        proc = subprocess.Popen([str(BIN / "unlearnflow"), "train", "-C", str(tmp / "ws")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        reader = timed_lines(proc, t_train, lines)
        proc.wait()
        reader.join(timeout=10)
        total = time.perf_counter() - t0
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    ready = next((t for t, line in lines if "Prefect server ready after" in line), None)
    ok = init.returncode == 0 and proc.returncode == 0
    return {"run": n, "cores_busy": busy, "success": ok, "init_exit": init.returncode, "train_exit": proc.returncode,
            "first_line_s": round(lines[0][0], 2) if lines else None, "prefect_ready_s": round(ready, 2) if ready else None,
            "total_s": round(total, 1), "tail": [line for _, line in lines[-5:]] if not ok else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "first_run"))
    args = ap.parse_args()
    rows = []
    for n in range(1, args.runs + 1):
        row = one_run(n, busy=n % 2 == 0)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cores": os.cpu_count(),
              "machine": platform.machine(), "runs": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json(out, result)
    ok = sum(r["success"] for r in rows)
    lines = [f"# First run on a fresh machine ({result['date']}, {result['cores']} cores, `bench/first_run.py`)", "",
             f"`unlearnflow init` + `unlearnflow train` (mnist5k, S=5, R=4), each with a fresh workspace and a "
             f"never-used PREFECT_HOME; every second run with all cores kept busy by CPU hogs. "
             f"**{ok}/{len(rows)} succeeded.** Times in seconds; first line and Prefect ready are counted from "
             f"launching `train`.", "",
             "| run | cores busy | success | first line | Prefect server ready | total (init + train) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {'yes' if r['cores_busy'] else 'no'} | {'yes' if r['success'] else 'NO'} | "
                     f"{r['first_line_s']} | {r['prefect_ready_s']} | {r['total_s']} |")
    save_md(out, lines)


if __name__ == "__main__":
    main()
