"""Benchmark: where a one-subject erasure's time goes (the waterfall), on the embedded default
(no server running: what the README's first command gets) and on the team stack
(`deploy/stack.sh`), on mnist5k (S=5, R=4, the demo's settings).

For each setup: a fresh workspace, `unlearnflow train`, one warm-up erasure (not counted:
the first command after `train` pays one-off costs the next ones do not), then N erasures
`unlearnflow forget --subject <random training subject> --json`, each timed end to end
from outside. Per erasure the command's own waterfall (`waterfall` in its JSON: every
step's seconds before, inside and after the flow) is kept; the table shows medians.
Code of another checkout can be measured with the same script (``--code DIR``: its
``flows.cli`` is run with ``PYTHONPATH=DIR``), so a before/after pair runs the same
benchmark; results are filed under ``--label`` in bench/results/overhead.json and the
table in overhead.md shows every label recorded.

    .venv/bin/python bench/overhead.py --label after --erasures 5       # ~10 min
    git worktree add /tmp/before <rev>
    .venv/bin/python bench/overhead.py --label before --code /tmp/before

The 200,000-record figures come from bench/scale.py (bench/results/scale.json), which
records the same waterfall; overhead.md quotes them.
"""

from __future__ import annotations

import argparse
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasure import free_port  # noqa: E402
from record import git_commit, save_md, stamp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = REPO / "bench" / "results" / "overhead"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DVC_NO_ANALYTICS": "1"}
COMPUTE = ("prepare", "partition", "train", "evaluate", "audit")  # the pipeline's computation inside the flow


class Runner:
    """Runs one checkout's CLI: this one (the venv's ``unlearnflow``) or ``--code DIR``'s."""

    def __init__(self, code: Path | None):
        self.code = code

    def command(self, args: list[str]) -> list[str]:
        if self.code is None:
            return [str(BIN / "unlearnflow"), *args]
        return [sys.executable, "-m", "flows.cli", *args]

    def env(self, env: dict) -> dict:
        return {**env, "PYTHONPATH": str(self.code)} if self.code else env

    def run(self, args: list[str], env: dict, cwd: Path) -> tuple[float, str]:
        t0 = time.perf_counter()
        proc = subprocess.run(self.command(args), env=self.env(env), cwd=cwd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"unlearnflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return seconds, proc.stdout


def waterfall(result: dict, end_to_end: float) -> dict[str, float]:
    """The erasure's steps in order. Code before the waterfall existed reports only the flow's
    steps: then 'before the flow' is what the outside clock saw beyond the flow."""
    if "waterfall" in result:
        steps = dict(result["waterfall"])
    else:
        steps = {"before and after the flow": end_to_end - result["total_seconds"], **result["step_seconds"]}
    steps["unaccounted"] = end_to_end - sum(steps.values())
    return steps


def erasures(runner: Runner, tmp: Path, env: dict, n: int, seed: int) -> dict:
    ws = tmp / "ws"
    runner.run(["init", str(ws)], env, tmp)
    t_train, _ = runner.run(["train", "-C", str(ws)], env, tmp)
    print(f"  train: {t_train:.1f}s", flush=True)
    from tasks.workspace import Workspace

    workspace = Workspace(ws)
    subjects = random.Random(seed).sample(workspace.training_subjects(workspace.load_params()), n + 1)
    rows = []
    for i, subject in enumerate(subjects):
        e2e, out = runner.run(["forget", "-C", str(ws), "--subject", subject, "--json"], env, tmp)
        r = json.loads(out[out.index("{"):])
        training = sum(s["seconds"] for s in r["shards"] if s["trained_stages"])
        steps = waterfall(r, e2e)
        compute = sum(steps.get(k, 0.0) for k in COMPUTE)
        print(f"  forget {subject}{' (warm-up, not counted)' if i == 0 else ''}: end to end {e2e:.1f}s, "
              f"training {training:.1f}s, rest {e2e - training:.1f}s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()), flush=True)
        if i:
            rows.append({"subject": subject, "end_to_end_s": e2e, "training_s": training, "compute_s": compute,
                         "orchestration_s": e2e - compute, "minus_training_s": e2e - training, "steps": steps})
    return {"train_s": t_train, "erasures": rows}


def default_setup(runner: Runner, tmp: Path, n: int, seed: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARNFLOW_", "PREFECT_API"))}
    env.update(QUIET, PREFECT_HOME=str(tmp / "prefect-home"))
    try:
        return erasures(runner, tmp, env, n, seed)
    finally:  # a local Prefect server the code under test keeps for later commands (if it has one)
        subprocess.run(runner.command(["server", "stop", "-C", str(tmp / "ws")]), env=runner.env(env), cwd=tmp,
                       capture_output=True)


def stack_setup(runner: Runner, tmp: Path, n: int, seed: int) -> dict:
    ports = {"STACK_PREFECT_PORT": free_port(), "STACK_MLFLOW_PORT": free_port(), "STACK_DASK_PORT": free_port()}
    stack_env = {**os.environ, **QUIET, "STACK_DIR": str(tmp / "stack"), "STACK_NAME": f"ufover{os.getpid()}",
                 "STACK_BIN": str(BIN), **{k: str(v) for k, v in ports.items()}}
    subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "up"], env=stack_env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        env = dict(stack_env)
        for line in (tmp / "stack" / "stack.env").read_text().splitlines():
            if line.startswith("export "):
                for assignment in line[len("export "):].split():
                    key, value = assignment.split("=", 1)
                    env[key] = value
        if runner.code:  # the stack's Dask workers import the code under test too
            env["PYTHONPATH"] = str(runner.code)
        return erasures(runner, tmp, env, n, seed)
    finally:
        subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "destroy"], env=stack_env, check=False,
                       stdout=subprocess.DEVNULL)


SETUPS = {"default": ("embedded default (no server running)", default_setup),
          "stack": ("running stack", stack_setup)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="e.g. before / after")
    ap.add_argument("--code", type=Path, help="a checkout whose code to measure (default: this one)")
    ap.add_argument("--setups", default="default,stack", help="comma-separated: " + ", ".join(SETUPS))
    ap.add_argument("--erasures", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="what was measured (e.g. which code), shown in the table")
    ap.add_argument("--render", action="store_true", help="only write overhead.md again from overhead.json")
    args = ap.parse_args()
    if args.render:
        return write(_load())
    runner = Runner(args.code.resolve() if args.code else None)
    code_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runner.code or REPO,
                                 capture_output=True, text=True).stdout.strip()
    recorded = _load()
    for key in args.setups.split(","):
        if key not in SETUPS:
            raise SystemExit(f"--setups: unknown setup {key!r}; choose from {', '.join(SETUPS)}")
        name, setup = SETUPS[key]
        print(f"{args.label} / {name}:", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="unlearnflow-bench-overhead-"))
        try:
            res = setup(runner, tmp, args.erasures, args.seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        recorded["runs"][f"{args.label}/{key}"] = {**stamp(), "code_commit": code_commit, "setup": name,
                                                   "label": args.label, "note": args.note, **res}
        _save(recorded)
    write(recorded)


def _load() -> dict:
    path = OUT.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def _save(recorded: dict) -> None:
    OUT.with_suffix(".json").write_text(json.dumps(recorded, indent=1) + "\n")


def medians(run: dict) -> dict:
    e = run["erasures"]
    steps: dict[str, list[float]] = {}
    for x in e:
        for k, v in x["steps"].items():
            steps.setdefault(k, []).append(v)
    med = {k: statistics.median(x[k] for x in e) for k in ("end_to_end_s", "training_s", "compute_s",
                                                          "orchestration_s", "minus_training_s")}
    return {**med, "steps": {k: statistics.median(v) for k, v in steps.items()}}


def write(recorded: dict) -> None:
    runs = recorded["runs"]
    lines = ["# What a one-subject erasure costs around its training: the waterfall", "",
             "Generated by `bench/overhead.py` (see its docstring). mnist5k, S=5, R=4, the default CNN, 2 cores. "
             "Each column: one setup and one version of the code, a fresh workspace, `train`, one warm-up erasure "
             "not counted, then N one-subject `forget --subject … --json` commands, timed from outside. Seconds, "
             "medians over the N erasures. Orchestration = end to end minus the pipeline's computation (prepare, "
             "partition, training, evaluate, audit).", ""]
    keys = list(runs)
    lines.append("| | " + " | ".join(f"{runs[k]['label']}: {runs[k]['setup']}" for k in keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    lines.append("| measured | " + " | ".join(f"{runs[k]['date']}, code {runs[k]['code_commit']}" for k in keys) + " |")
    lines.append("| erasures | " + " | ".join(str(len(runs[k]["erasures"])) for k in keys) + " |")
    m = {k: medians(runs[k]) for k in keys}
    for label, field in (("**end to end**", "end_to_end_s"), ("training", "training_s"),
                         ("**end to end minus training**", "minus_training_s"), ("pipeline computation", "compute_s"),
                         ("**orchestration**", "orchestration_s")):
        lines.append(f"| {label} | " + " | ".join(f"{m[k][field]:.1f}" for k in keys) + " |")
    order: list[str] = []
    for k in keys:
        order += [s for s in m[k]["steps"] if s not in order]
    for step in order:
        lines.append(f"| step: {step} | " + " | ".join(
            f"{m[k]['steps'][step]:.2f}" if step in m[k]["steps"] else "" for k in keys) + " |")
    notes = [f"- {runs[k]['label']}: {runs[k]['setup']}: {runs[k]['note']}" for k in keys if runs[k].get("note")]
    lines += ["", *notes, "", *targets(m), "", *scale_section()]
    save_md(OUT, lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(m: dict) -> list[str]:
    """Issue 24's targets for mnist5k, each with its figure (medians above), met or missed."""
    out = ["## Targets (issue 24)", ""]
    for label in ("before", "after"):
        d, st = m.get(f"{label}/default"), m.get(f"{label}/stack")
        if d:
            out.append(f"- {label}: one-subject `forget` on the embedded default, end to end <= training + 6 s: "
                       f"{d['end_to_end_s']:.1f} s = training {d['training_s']:.1f} s + "
                       f"{d['minus_training_s']:.1f} s: {verdict(d['minus_training_s'] <= 6)}.")
        if st:
            out.append(f"- {label}: the same against the running stack, orchestration <= 3 s: "
                       f"{st['orchestration_s']:.1f} s: {verdict(st['orchestration_s'] <= 3)}.")
    served = REPO / "bench" / "results" / "served.md"
    if served.exists():
        out.append(f"- The served flow (p50 <= 15 s, p95 <= 30 s, nothing lost or certified twice): "
                   f"[served.md](served.md).")
    return out


def scale_section() -> list[str]:
    """The 200,000-record figures, from bench/scale.py's record (bench/results/scale.json)."""
    path = REPO / "bench" / "results" / "scale.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    by = {(r["n"], r["shards"]): r for r in data["rows"]}
    big, small = by.get((200000, 20)), by.get((5000, 20))
    if not big:
        return []
    lines = ["## 200,000 records (synthetic:200000, S=20, R=4, 2 epochs; from bench/results/scale.json)", "",
             f"Measured {data['meta']['date']} at commit {data['meta']['commit']} by `bench/scale.py`, against a "
             "running Prefect server, one run per row: see [scale.md](scale.md).", ""]
    ratio = big["forget_command_s"] / big["train_command_s"]
    lines.append(f"- One-subject `forget` <= 1/10 of a full `train`: {big['forget_command_s']:.1f} s vs "
                 f"{big['train_command_s']:.1f} s = {ratio:.3f}: {verdict(ratio <= 0.1)}.")
    if small:
        a, b = big["erasure_overhead_s"], small["erasure_overhead_s"]
        lines.append(f"- Fixed cost (forget minus retraining) at 200,000 <= 1.5x that at 5,000: {a:.1f} s vs "
                     f"{b:.1f} s = {a / b:.2f}x: {verdict(a <= 1.5 * b)}.")
    peak = max(big["train_peak_rss_mb"], big["forget_peak_rss_mb"])
    lines.append(f"- Peak RSS at 200,000 <= 2 GB: {peak} MB: {verdict(peak <= 2048)}.")
    if big.get("forget_waterfall"):
        lines.append("- Where the 200,000-record erasure's time went: "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in big["forget_waterfall"].items()) + ".")
    return lines


if __name__ == "__main__":
    main()
