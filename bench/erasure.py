"""Benchmark: erasing one subject on mnist5k (S=5, R=4) vs retraining everything.

In one run, against a running Prefect server (started here, as in production):
  1. `unlearnflow train` in a fresh workspace (full SISA training);
  2. N times: `unlearnflow forget --subject <random training subject>` (files the
     request and waits for the new production version), timed end to end;
  3. a full SISA retrain: `unlearnflow train` with the checkpoints deleted;
  4. a monolithic retrain: `unlearnflow train` in a workspace with S=1, R=1.

For each erasure: slice-epochs retrained (a stage k trained for e epochs over k
slices counts k*e), training compute (sum of the retrained shards' train times),
the erase flow's own time, and the command's end-to-end time; "orchestration" is
end-to-end minus all pipeline computation (Prefect, MLflow, DVC, git, Python start-up).

    .venv/bin/python bench/erasure.py --subjects 5     # -> bench/results/erasure.md (~8 min)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save_json, save_md  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, env, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "unlearnflow"), *args], env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"unlearnflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def init_workspace(path: Path, env, overrides: dict | None = None) -> None:
    run(["init", str(path)], env, path.parent)
    if overrides:
        params = yaml.safe_load((path / "params.yaml").read_text())
        for section, values in overrides.items():
            params[section].update(values)
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                        "bench params"], cwd=path, check=True)


@contextlib.contextmanager
def prefect_server(tmp: Path):
    """A real `prefect server start` in ``tmp``; yields the environment that points at it."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.perf_counter() - t0 > 120:
                    raise SystemExit("prefect server did not become healthy in 120 s")
                time.sleep(0.5)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        print(f"prefect server healthy after {time.perf_counter() - t0:.1f}s", flush=True)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def with_prefect_server(bench, args):
    """``bench(tmp, env, args)`` in a temporary folder beside a running Prefect server
    (``env`` points at it); both are gone afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-bench-"))
    try:
        with prefect_server(tmp) as env:
            return bench(tmp, env, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def subject_args(doc: str, name: str) -> argparse.Namespace:
    """The command line of a benchmark that erases random subjects one by one."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=5, help="how many subjects to erase")
    ap.add_argument("--seed", type=int, default=0, help="which subjects (random, by this seed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / name))
    return ap.parse_args()


def main() -> None:
    args = subject_args(__doc__, "erasure")
    write(with_prefect_server(bench, args), args)


def bench(tmp: Path, env: dict, args) -> dict:
    ws = tmp / "sisa"
    init_workspace(ws, env)
    t_train, proc = run(["train", "-C", str(ws), "--json"], env, tmp)
    trained = json.loads(proc.stdout)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    slices = params["partition"]["slices"]
    epochs = max(1, round(2 * params["train"]["epochs"] / (slices + 1)))
    full_slice_epochs = len(trained["shards"]) * epochs * slices * (slices + 1) // 2
    print(f"initial training: {t_train:.1f}s command", flush=True)

    from unlearnflow.datasets import load_dataset
    from unlearnflow.config import DataConfig
    from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
    from unlearnflow.layout import Layout
    from unlearnflow.stages import load_split

    train = load_split(Layout(ws), "train")
    in_train = set(train.subject_ids)
    raw = sorted({s for s in load_dataset(DataConfig()).subject_ids if pseudonym(SYNTHETIC_KEY, s) in in_train})
    chosen = random.Random(args.seed).sample(raw, args.subjects)

    erasures = []
    for subject in chosen:
        e2e, proc = run(["forget", "-C", str(ws), "--subject", subject, "--json"], env, tmp)
        r = json.loads(proc.stdout[proc.stdout.index("{"):])
        retrained = [s for s in r["shards"] if s["trained_stages"]]
        slice_epochs = sum((k + 1) * epochs for s in retrained for k in s["trained_stages"])
        train_compute = sum(s["seconds"] for s in retrained)
        erasures.append({
            "subject": subject, "records": r["erased_records"], "shards": [s["shard"] for s in retrained],
            "first_slice": [s["trained_stages"][0] + 1 for s in retrained],
            "slice_epochs": slice_epochs, "train_compute_s": train_compute,
            "pipeline_compute_s": r["compute_seconds"], "flow_s": r["total_seconds"], "end_to_end_s": e2e,
            "orchestration_s": e2e - r["compute_seconds"],
        })
        print(f"erase {subject}: {r['erased_records']} records, shards {erasures[-1]['shards']} from slice "
              f"{erasures[-1]['first_slice']}, train {train_compute:.1f}s, flow {r['total_seconds']:.1f}s, "
              f"end-to-end {e2e:.1f}s", flush=True)

    shutil.rmtree(ws / "checkpoints")
    t_full, proc = run(["train", "-C", str(ws), "--json"], env, tmp)
    full = json.loads(proc.stdout)
    full_train = sum(s["seconds"] for s in full["shards"])
    print(f"full SISA retrain: {t_full:.1f}s command, {full_train:.1f}s training", flush=True)

    mono = tmp / "mono"
    init_workspace(mono, env, {"partition": {"shards": [0], "slices": 1}})
    t_mono, proc = run(["train", "-C", str(mono), "--json"], env, tmp)
    mono_train = sum(s["seconds"] for s in json.loads(proc.stdout)["shards"])
    print(f"monolithic retrain: {t_mono:.1f}s command, {mono_train:.1f}s training", flush=True)
    return {"erasures": erasures, "epochs_per_stage": epochs, "full_slice_epochs": full_slice_epochs,
            "full_sisa": {"command_s": t_full, "train_compute_s": full_train},
            "monolithic": {"command_s": t_mono, "train_compute_s": mono_train}}


def write(res: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json(out, res)
    e = res["erasures"]
    med = lambda key: statistics.median(x[key] for x in e)  # noqa: E731
    mean = lambda key: statistics.mean(x[key] for x in e)  # noqa: E731
    full, mono = res["full_sisa"], res["monolithic"]
    lines = [
        "# Erasing one subject on mnist5k (S=5, R=4) vs retraining",
        "",
        f"Generated by `bench/erasure.py --subjects {args.subjects} --seed {args.seed}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, against a running Prefect server; every figure is wall-clock seconds of one run (1 torch thread per model).",
        "",
        "| subject | records | shard(s) | first retrained slice | slice-epochs | training compute | pipeline compute | "
        "erase flow | end-to-end command | orchestration |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for x in e:
        lines.append(f"| {x['subject']} | {x['records']} | {x['shards']} | {x['first_slice']} | {x['slice_epochs']} | "
                     f"{x['train_compute_s']:.1f} | {x['pipeline_compute_s']:.1f} | {x['flow_s']:.1f} | "
                     f"{x['end_to_end_s']:.1f} | {x['orchestration_s']:.1f} |")
    lines += [
        f"| **mean** | {mean('records'):.1f} | | | {mean('slice_epochs'):.0f} | {mean('train_compute_s'):.1f} | "
        f"{mean('pipeline_compute_s'):.1f} | {mean('flow_s'):.1f} | {mean('end_to_end_s'):.1f} | "
        f"{mean('orchestration_s'):.1f} |",
        f"| **median** | | | | {med('slice_epochs'):.0f} | {med('train_compute_s'):.1f} | "
        f"{med('pipeline_compute_s'):.1f} | {med('flow_s'):.1f} | {med('end_to_end_s'):.1f} | "
        f"{med('orchestration_s'):.1f} |",
        "",
        "| baseline | slice-epochs | training compute | command time |",
        "|---|---:|---:|---:|",
        f"| full SISA retrain (all 5 shards, `unlearnflow train`, no checkpoints) | {res['full_slice_epochs']} | "
        f"{full['train_compute_s']:.1f} | {full['command_s']:.1f} |",
        f"| monolithic retrain (S=1, R=1, `unlearnflow train`) | {res['full_slice_epochs']} | "
        f"{mono['train_compute_s']:.1f} | {mono['command_s']:.1f} |",
        "",
        f"Compute speed-up of an erasure vs a full SISA retrain (median training compute): "
        f"{full['train_compute_s'] / max(med('train_compute_s'), 1e-9):.1f}x; in slice-epochs: "
        f"{res['full_slice_epochs'] / max(med('slice_epochs'), 1e-9):.1f}x.",
        f"Median end-to-end erasure {med('end_to_end_s'):.1f}s vs monolithic retrain command {mono['command_s']:.1f}s; "
        f"median orchestration {med('orchestration_s'):.1f}s per erasure.",
    ]
    save_md(out, lines)


if __name__ == "__main__":
    main()
