"""Benchmark: what one-subject erasure costs around the computation, on the single-folder
default (a temporary Prefect server per command, SQLite MLflow, threads) vs the team stack
(`deploy/stack.sh`: Prefect and MLflow servers on PostgreSQL, proxied artifacts, a DVC
directory remote, two Dask workers), on mnist5k (S=5, R=4).

For each setup: a fresh workspace, `unlearnflow train`, then N times
`unlearnflow forget --subject <random training subject>`, timed end to end. Per erasure:
  orchestration = end-to-end - pipeline compute (prepare, retraining, evaluation, audit),
  i.e. Python start-up, Prefect, MLflow, DVC and git; also end-to-end - training alone,
  and where the non-compute time goes (the erase flow's steps, and before the flow starts).

    .venv/bin/python bench/stack.py --subjects 5      # -> bench/results/stack.{md,json} (~15 min)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasure import free_port, init_workspace, run, subject_args  # noqa: E402
from record import git_commit, save_json, save_md  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DVC_NO_ANALYTICS": "1"}
FLOW_STEPS = ("resolve", "purge", "dvc_git", "mlflow", "certificate", "promote")  # the erase flow's non-compute steps


def erasures(tmp: Path, env: dict, n: int, seed: int) -> dict:
    ws = tmp / "ws"
    init_workspace(ws, env)
    t_train, _ = run(["train", "-C", str(ws)], env, tmp)
    print(f"  train: {t_train:.1f}s", flush=True)
    from tasks.workspace import Workspace

    workspace = Workspace(ws)
    raw = workspace.training_subjects(workspace.load_params())
    rows = []
    for subject in random.Random(seed).sample(raw, n):
        e2e, proc = run(["forget", "-C", str(ws), "--subject", subject, "--json"], env, tmp)
        r = json.loads(proc.stdout[proc.stdout.index("{"):])
        steps = r["step_seconds"]
        training = sum(s["seconds"] for s in r["shards"] if s["trained_stages"])
        rows.append({"subject": subject, "end_to_end_s": e2e, "flow_s": r["total_seconds"],
                     "compute_s": r["compute_seconds"], "training_s": training,
                     "orchestration_s": e2e - r["compute_seconds"], "minus_training_s": e2e - training,
                     "before_flow_s": e2e - r["total_seconds"],
                     "flow_steps_s": {k: steps.get(k, 0.0) for k in FLOW_STEPS},
                     "executors": sorted({s.get("executor", "").split(" ")[0] for s in r["shards"]})})
        print(f"  forget {subject}: end-to-end {e2e:.1f}s, compute {r['compute_seconds']:.1f}s, "
              f"orchestration {rows[-1]['orchestration_s']:.1f}s", flush=True)
    return {"train_s": t_train, "erasures": rows}


def default_setup(tmp: Path, n: int, seed: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARNFLOW_", "PREFECT_API"))}
    env.update(QUIET, PREFECT_HOME=str(tmp / "prefect-home"))
    return erasures(tmp, env, n, seed)


def stack_setup(tmp: Path, n: int, seed: int) -> dict:
    ports = {"STACK_PREFECT_PORT": free_port(), "STACK_MLFLOW_PORT": free_port(), "STACK_DASK_PORT": free_port()}
    stack_env = {**os.environ, **QUIET, "STACK_DIR": str(tmp / "stack"), "STACK_NAME": f"ufbench{os.getpid()}",
                 "STACK_BIN": str(BIN), **{k: str(v) for k, v in ports.items()}}
    t0 = time.perf_counter()
    subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "up"], env=stack_env, check=True)
    up_s = time.perf_counter() - t0
    try:
        env = dict(stack_env)
        for line in (tmp / "stack" / "stack.env").read_text().splitlines():
            if line.startswith("export "):
                for assignment in line[len("export "):].split():
                    key, value = assignment.split("=", 1)
                    env[key] = value
        return {"stack_up_s": up_s, **erasures(tmp, env, n, seed)}
    finally:
        subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "destroy"], env=stack_env, check=False)


def main() -> None:
    args = subject_args(__doc__, "stack")
    res = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "setups": {}}
    for name, setup in (("temporary server (default)", default_setup), ("running stack", stack_setup)):
        print(f"{name}:", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-bench-stack-"))
        try:
            res["setups"][name] = setup(tmp, args.subjects, args.seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    write(res, args)


def write(res: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json(out, res)
    lines = [
        "# Orchestration per one-subject erasure: temporary server (default) vs running stack",
        "",
        f"Generated by `bench/stack.py --subjects {args.subjects} --seed {args.seed}` on {res['date']} at commit "
        f"{res['commit']}, {res['cores']} cores; mnist5k, S=5, R=4, the default CNN. Seconds, median over the "
        f"erasures (each a fresh `unlearnflow forget --subject …` command). Orchestration = end-to-end minus the "
        f"pipeline's computation (prepare, retraining, evaluation, audit). Target: 3 s.",
        "",
        "| setup | erasures | end-to-end | pipeline compute | training | **orchestration** | end-to-end minus training | "
        "before the flow starts | " + " | ".join(f"flow: {s}" for s in FLOW_STEPS) + " | shards ran on |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(FLOW_STEPS) + "---|",
    ]
    for name, r in res["setups"].items():
        e = r["erasures"]
        med = lambda key: statistics.median(x[key] for x in e)  # noqa: E731
        step = lambda k: statistics.median(x["flow_steps_s"][k] for x in e)  # noqa: E731
        where = ", ".join(sorted({w for x in e for w in x["executors"]}))
        lines.append(f"| {name} | {len(e)} | {med('end_to_end_s'):.1f} | {med('compute_s'):.1f} | "
                     f"{med('training_s'):.1f} | **{med('orchestration_s'):.1f}** | {med('minus_training_s'):.1f} | "
                     f"{med('before_flow_s'):.1f} | " + " | ".join(f"{step(k):.1f}" for k in FLOW_STEPS)
                     + f" | {where} |")
    stack = res["setups"].get("running stack", {})
    if "stack_up_s" in stack:
        lines += ["", f"`deploy/stack.sh up` took {stack['stack_up_s']:.1f}s (fresh databases); "
                      f"`unlearnflow train` {stack['train_s']:.1f}s on the stack vs "
                      f"{res['setups']['temporary server (default)']['train_s']:.1f}s by default."]
    save_md(out, lines)


if __name__ == "__main__":
    main()
