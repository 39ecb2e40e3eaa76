"""Benchmark: how time, memory and disk grow with N, and what one erasure costs.

For each N in --sizes and S in --shards (R=4, the default CNN, --epochs few epochs),
in a fresh workspace on ``synthetic:N``, against one running Prefect server:
  1. `unlearnflow train` (the full SISA training: prepare, partition, train, evaluate,
     lineage, MLflow), timed end to end with its peak RSS;
  2. `unlearnflow forget --subject <a training subject>` (files the request, retrains
     the affected shard from its clean checkpoint, audits, certifies), same figures;
  3. the workspace's disk use.
"erasure overhead" is the forget command's time minus its retraining.

    .venv/bin/python bench/scale.py                         # -> bench/results/scale.{md,json}
    .venv/bin/python bench/scale.py --sizes 5000 --shards 5 --out /tmp/scale   # a quick look

Peak RSS is /usr/bin/time's "maximum resident set size" of the command: its largest
process (DataLoader workers and servers are separate processes, measured alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from erasure import BIN, init_workspace, prefect_server  # noqa: E402
from record import git_commit, save_json, save_md  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str], env: dict, cwd: Path) -> tuple[float, float, dict]:
    """(seconds, peak RSS in MB, the command's JSON output)."""
    rss_file = Path(tempfile.mktemp(prefix="rss-"))
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(rss_file), "-f", "%M", str(BIN / "unlearnflow"), *args],
                          env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"unlearnflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rss_mb = int(rss_file.read_text().split()[-1]) / 1024
    rss_file.unlink()
    out = proc.stdout
    return seconds, rss_mb, json.loads(out[out.index("{"):])


def du_mb(path: Path, sub: str = "") -> float:
    target = path / sub if sub else path
    if not target.exists():
        return 0.0
    out = subprocess.run(["du", "-sk", str(target)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def training_subject(ws: Path, seed: int) -> str:
    """A raw synthetic subject id that owns training records."""
    from tasks.workspace import Workspace

    workspace = Workspace(ws)
    return random.Random(seed).choice(workspace.training_subjects(workspace.load_params()))


def one(tmp: Path, env: dict, n: int, s: int, args) -> dict:
    ws = tmp / f"n{n}-s{s}"
    overrides = {"data": {"dataset": f"synthetic:{n}"}, "partition": {"shards": list(range(s)), "slices": 4},
                 "train": {"epochs": args.epochs}}
    init_workspace(ws, env, overrides)
    t_train, rss_train, trained = timed(["train", "-C", str(ws), "--json"], env, tmp)
    steps = trained["step_seconds"]
    print(f"N={n} S={s}: train {t_train:.1f}s ({json.dumps(steps)}), peak RSS {rss_train:.0f} MB", flush=True)
    subject = training_subject(ws, args.seed)
    t_forget, rss_forget, erased = timed(["forget", "-C", str(ws), "--subject", subject, "--json"], env, tmp)
    retrained = [x for x in erased["shards"] if x["trained_stages"]]
    retrain_s = sum(x["seconds"] for x in retrained)
    print(f"N={n} S={s}: forget {subject} {t_forget:.1f}s (retraining {retrain_s:.1f}s, shards "
          f"{[x['shard'] for x in retrained]}), peak RSS {rss_forget:.0f} MB", flush=True)
    row = {
        "n": n, "shards": s, "slices": 4, "epochs": args.epochs,
        "train_records": trained["prepared"]["train_records"],
        "train_command_s": round(t_train, 1), "train_peak_rss_mb": round(rss_train),
        "prepare_s": steps["prepare"], "partition_s": steps["partition"], "train_s": steps["train"],
        "evaluate_s": steps["evaluate"], "score_s": steps["score_for_audits"],
        "test_accuracy": trained["metrics"]["ensemble_accuracy"],
        "subject": subject, "erased_records": erased["erased_records"],
        "retrained_shards": [x["shard"] for x in retrained],
        "first_retrained_slice": [x["trained_stages"][0] + 1 for x in retrained],
        "forget_retrain_s": round(retrain_s, 1), "forget_compute_s": erased["compute_seconds"],
        "forget_flow_s": erased["total_seconds"], "forget_command_s": round(t_forget, 1),
        "forget_peak_rss_mb": round(rss_forget), "erasure_overhead_s": round(t_forget - retrain_s, 1),
        "audit_s": erased["audit"]["seconds"],
        "forget_step_seconds": erased.get("step_seconds", {}),
        "forget_waterfall": erased.get("waterfall", {}),
        "disk_mb": {"workspace": round(du_mb(ws)), "data": round(du_mb(ws, "data")),
                    "checkpoints": round(du_mb(ws, "checkpoints")), "dvc_cache": round(du_mb(ws, ".dvc/cache")),
                    "mlruns": round(du_mb(ws, "mlruns"))},
    }
    import shutil

    shutil.rmtree(ws, ignore_errors=True)  # the next size needs the disk
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 200000])
    ap.add_argument("--shards", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--epochs", type=int, default=2, help="train.epochs (2 with R=4: one epoch per slice stage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scale"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-scale-"))
    rows = []
    with prefect_server(tmp) as env:
        for n in args.sizes:
            for s in args.shards:
                rows.append(one(tmp, env, n, s, args))
                write(rows, args)  # after every row: a long run that stops still leaves its figures
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def write(rows: list[dict], args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "cores": os.cpu_count(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU",
            "epochs": args.epochs, "seed": args.seed}
    save_json(out, {"meta": meta, "rows": rows})
    lines = [
        "# Scale: synthetic:N, the default CNN, R=4, CPU",
        "",
        f"Generated by `bench/scale.py --sizes {' '.join(map(str, args.sizes))} --shards "
        f"{' '.join(map(str, args.shards))} --epochs {args.epochs}` on {meta['date']} (commit {meta['commit']}), "
        f"{meta['machine']}, against a running Prefect server. One run per row; seconds are wall clock; "
        "RSS is the command's largest process.",
        "",
        "| N | S | train records | prepare s | train (shards) s | train command s | train peak RSS MB | "
        "test acc | erased records | retrained shard (from slice) | forget retraining s | audit s | "
        "forget command s | erasure overhead s | forget peak RSS MB | disk MB (data / checkpoints / DVC cache) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        d = r["disk_mb"]
        lines.append(
            f"| {r['n']:,} | {r['shards']} | {r['train_records']:,} | {r['prepare_s']:.1f} | {r['train_s']:.1f} | "
            f"{r['train_command_s']:.1f} | {r['train_peak_rss_mb']} | {r['test_accuracy']:.4f} | "
            f"{r['erased_records']} | {r['retrained_shards']} ({r['first_retrained_slice']}) | "
            f"{r['forget_retrain_s']:.1f} | {r['audit_s']:.1f} | {r['forget_command_s']:.1f} | "
            f"{r['erasure_overhead_s']:.1f} | {r['forget_peak_rss_mb']} | "
            f"{d['workspace']} ({d['data']} / {d['checkpoints']} / {d['dvc_cache']}) |")
    lines += ["", *targets(rows), "", "## Where each erasure's time went (the `forget` command's waterfall, seconds)", ""]
    for r in rows:
        steps = r.get("forget_waterfall") or {}
        if steps:
            lines.append(f"- N={r['n']:,}, S={r['shards']}: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    save_md(out, lines)


def targets(rows: list[dict]) -> list[str]:
    """Each target of issues 11 and 24 with the measured figure, met or missed."""
    by = {(r["n"], r["shards"]): r for r in rows}
    big = max(r["n"] for r in rows)
    small = min(r["n"] for r in rows)
    out = ["## Targets", ""]
    peak = max((max(r["train_peak_rss_mb"], r["forget_peak_rss_mb"]), r["n"], r["shards"])
               for r in rows if r["n"] == big)
    out.append(f"- Peak RSS of `train` and `forget` at N={big:,} <= 2 GB (2048 MB): {peak[0]:.0f} MB "
               f"(S={peak[2]}): **{'met' if peak[0] <= 2048 else 'missed'}**.")
    if (big, 20) in by:
        r = by[(big, 20)]
        ratio = r["forget_command_s"] / r["train_command_s"]
        out.append(f"- One-subject erasure command at N={big:,}, S=20 <= 1/10 of a full SISA retrain command: "
                   f"{r['forget_command_s']:.1f} s vs {r['train_command_s']:.1f} s = {ratio:.3f}: "
                   f"**{'met' if ratio <= 0.1 else 'missed'}**.")
    for s in sorted({r["shards"] for r in rows}):
        if (big, s) in by and (small, s) in by and big != small:
            a, b = by[(big, s)]["erasure_overhead_s"], by[(small, s)]["erasure_overhead_s"]
            out.append(f"- Erasure overhead (fixed cost: the forget command minus its retraining) at N={big:,} <= "
                       f"1.5x that at N={small:,} (S={s}; issue 24, was 2x in issue 11): {a:.1f} s vs {b:.1f} s "
                       f"= {a / b:.2f}x: **{'met' if a <= 1.5 * b else 'missed'}**.")
    out.append("- GPU rows (ResNet-18 on synthetic:50000, S=5 and S=20; bitwise repeat; erasure vs monolithic "
               "retrain): **not measured: no GPU lent** to this session.")
    return out


if __name__ == "__main__":
    main()
