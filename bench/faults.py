"""Benchmark: the erasure guarantee under kill -9 and concurrent commands (issue 10).

In a fresh demo workspace (mnist5k, S=5, R=4, trained here) beside a running Prefect
server:

  kill trials (--kills, default 30): `unlearnflow forget --subject X` is started and
    killed with SIGKILL (its whole process group: a power cut) at a time drawn uniformly
    from [0, T], T = the duration of one uninterrupted forget measured first. Then the
    next command, `unlearnflow erase`, must recover on its own, and `unlearnflow verify`
    must pass.
  concurrent trials (--pairs, default 5): two `unlearnflow forget --subject …` for two
    subjects started together; both must succeed (one waits for the other), then verify.

After every trial:
  acknowledged lost     a request whose "filed" line the user saw, missing from the ledger
                        or never carried out (not in a certificate, not recorded unmatched)
  wrong certificates    a certificate whose affected shards differ from the shards whose
                        served model md5 changed, or whose constituents differ from the files
  double applications   a request resolved twice in the ledger or listed in two certificates
  manual interventions  recovery that needed anything but the next ordinary command
  verify failures       `unlearnflow verify` exiting non-zero after recovery

    .venv/bin/python bench/faults.py            # -> bench/results/faults.md (about 45 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.erasure import BIN, init_workspace, run, with_prefect_server  # noqa: E402

from record import save_json, save_md  # noqa: E402

COLUMNS = ("acknowledged_lost", "wrong_certificates", "double_applications", "manual_interventions",
           "verify_failures")


def launch(ws: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "unlearnflow"), *args, "-C", str(ws)], env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def filed_ids(stdout: str) -> list[str]:
    """Request ids the user was told were filed (what a terminal showed before the kill)."""
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("request ") and " filed" in line]


def ledger(ws: Path) -> list[dict]:
    text = (ws / "ledger" / "requests.jsonl").read_text(errors="replace")
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn tail: the next writer sets it aside
    return out


def certificates(ws: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ws / "lineage" / "certificates").glob("*.json"))]


def served(ws: Path, env: dict) -> dict:
    """constituent md5s of the production version (from `unlearnflow status --json`)."""
    _, proc = run(["status", "-C", str(ws), "--json"], env, ws)
    prod = json.loads(proc.stdout)["production"]
    return json.loads(prod["constituent_md5s"]) if prod else {}


def check(ws: Path, env: dict, acknowledged: set[str], before: dict, n_certs_before: int) -> dict:
    """The five counts for one trial, after recovery."""
    events = ledger(ws)
    filed = {e["request_id"] for e in events if e["event"] == "filed"}
    resolved = [e["request_id"] for e in events if e["event"] == "resolved"]
    unmatched = {e["request_id"] for e in events if e["event"] == "unmatched"}
    certs = certificates(ws)
    in_certs = [r["request_id"] for c in certs for r in c["requests"]]
    lost = sum(1 for r in acknowledged if r not in filed or (r not in in_certs and r not in unmatched))
    double = sum(1 for r in set(resolved) if resolved.count(r) > 1) + sum(1 for r in set(in_certs)
                                                                           if in_certs.count(r) > 1)
    wrong, md5s = 0, before
    models = ws / "models" / "shards"
    for cert in certs[n_certs_before:]:
        changed = {k for k, c in cert["constituents"].items() if c["model_md5"] != md5s.get(k)}
        wrong += set(cert["affected_shards"]) != changed
        md5s = {k: c["model_md5"] for k, c in cert["constituents"].items()}
    if certs[n_certs_before:]:
        from unlearnflow.hashing import md5_file

        wrong += any(md5_file(models / f"shard_{k}.pt") != c["model_md5"] for k, c in certs[-1]["constituents"].items())
    verify = subprocess.run([str(BIN / "unlearnflow"), "verify", "-C", str(ws)], env=env, capture_output=True, text=True)
    return {"acknowledged_lost": lost, "wrong_certificates": wrong, "double_applications": double,
            "verify_failures": int(verify.returncode != 0), "verify_output": verify.stdout[-1500:]}


def recover(ws: Path, env: dict) -> tuple[int, str, str]:
    """The next ordinary command; a second try or anything else counts as a manual intervention.
    Returns (manual interventions, what recovery said, the step the killed erasure had done)."""
    proc = subprocess.run([str(BIN / "unlearnflow"), "erase", "-C", str(ws)], env=env, capture_output=True, text=True)
    said = [line for line in proc.stderr.splitlines() if line.startswith("unlearnflow: ")]
    step = re.search(r"last step done: (\w+)", proc.stderr)
    interrupted = step.group(1) if step else "no journal"
    if proc.returncode == 0:
        return 0, " | ".join(said), interrupted
    again = subprocess.run([str(BIN / "unlearnflow"), "erase", "-C", str(ws)], env=env, capture_output=True, text=True)
    return 1, f"first erase failed ({proc.returncode}): {proc.stderr[-1500:]}; second: {again.returncode}", interrupted


def subjects_in_training(ws: Path) -> list[str]:
    from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
    from unlearnflow.layout import Layout
    from unlearnflow.stages import load_split

    train = set(load_split(Layout(ws), "train").subject_ids)
    return [s for s in (f"s{i:03d}" for i in range(1000)) if pseudonym(SYNTHETIC_KEY, s) in train]


def bench(tmp: Path, env: dict, args) -> dict:
    rng = random.Random(args.seed)
    ws = tmp / "demo"
    init_workspace(ws, env)
    t_train, _ = run(["train", "-C", str(ws)], env, tmp)
    print(f"trained the demo workspace in {t_train:.1f}s", flush=True)
    subjects = subjects_in_training(ws)
    rng.shuffle(subjects)

    t0 = time.perf_counter()
    run(["forget", "-C", str(ws), "--subject", subjects.pop()], env, tmp)
    horizon = time.perf_counter() - t0
    print(f"one uninterrupted forget: {horizon:.1f}s; kill times drawn from [0, {horizon:.1f}]s", flush=True)

    trials = []
    n = 0
    while sum(t.get("killed", False) for t in trials) < args.kills if args.count_kills else n < args.kills:
        before, n_certs = served(ws, env), len(certificates(ws))
        subject, at = subjects.pop(), rng.uniform(0, horizon)
        proc = launch(ws, env, "forget", "--subject", subject)
        try:
            proc.wait(timeout=at)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        out, _ = proc.communicate()
        acknowledged = set(filed_ids(out))
        manual, recovery, interrupted = recover(ws, env)
        row = {"trial": n + 1, "kind": "kill -9", "kill_at_s": round(at, 2), "killed": killed,
               "acknowledged": len(acknowledged), "manual_interventions": manual, "recovery": recovery,
               "journal_step": interrupted,
               **check(ws, env, acknowledged, before, n_certs)}
        trials.append(row)
        n += 1
        print(f"kill {n}/{args.kills} at {at:5.1f}s ({'killed' if killed else 'had finished'}; journal: {interrupted}): "
              f"acknowledged {len(acknowledged)}, "
              + ", ".join(f"{c} {row[c]}" for c in COLUMNS), flush=True)

    for n in range(args.pairs):
        before, n_certs = served(ws, env), len(certificates(ws))
        pair = [subjects.pop(), subjects.pop()]
        procs = [launch(ws, env, "forget", "--subject", s) for s in pair]
        outs = [p.communicate(timeout=900) for p in procs]
        acknowledged = {r for out, _ in outs for r in filed_ids(out)}
        failed = [p.returncode for p in procs if p.returncode != 0]
        manual = 0
        if failed:  # both should have succeeded; recovering is then a manual step
            recover(ws, env)
            manual = 1
        row = {"trial": n + 1, "kind": "two writers", "acknowledged": len(acknowledged),
               "exit_codes": [p.returncode for p in procs], "waited": any("waiting for" in err for _, err in outs),
               "manual_interventions": manual, **check(ws, env, acknowledged, before, n_certs)}
        trials.append(row)
        print(f"pair {n + 1}/{args.pairs}: exit codes {row['exit_codes']}, one waited: {row['waited']}, "
              + ", ".join(f"{c} {row[c]}" for c in COLUMNS), flush=True)
    return {"trials": trials, "forget_seconds": round(horizon, 1), "train_seconds": round(t_train, 1)}


def write(result: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cores": os.cpu_count(),
              "machine": platform.machine(), "seed": args.seed}
    save_json(out, result)
    rows = result["trials"]
    lines = [f"# Erasure under faults ({result['date']}, {result['cores']} cores, `bench/faults.py --seed {args.seed}`)",
             "", f"Demo workspace (mnist5k, S=5, R=4), a running Prefect server. One uninterrupted "
             f"`forget` took {result['forget_seconds']} s; kills are drawn uniformly from [0, that].", "",
             "| trials | kind | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for kind in ("kill -9", "two writers"):
        group = [r for r in rows if r["kind"] == kind]
        if group:
            lines.append(f"| {len(group)} | {kind} | " + " | ".join(str(sum(r[c] for r in group)) for c in COLUMNS)
                         + " |")
    steps = {}
    for r in rows:
        if r["kind"] == "kill -9":
            steps[r["journal_step"]] = steps.get(r["journal_step"], 0) + 1
    lines += ["", "Where the kills landed (the erase journal's last step when the next command found it; "
              "\"no journal\": killed while filing or before the erase flow began, or after it ended): "
              + ", ".join(f"{k} {v}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])) + ".",
              "", "Per trial:", "", "| # | kind | kill at (s) | killed | journal step | acknowledged | "
              + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |", "|---" * (6 + len(COLUMNS)) + "|"]
    for r in rows:
        lines.append(f"| {r['trial']} | {r['kind']} | {r.get('kill_at_s', '-')} | {r.get('killed', '-')} | "
                     f"{r.get('journal_step', '-')} | {r['acknowledged']} | " + " | ".join(str(r[c]) for c in COLUMNS)
                     + " |")
    save_md(out, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--count-kills", action="store_true",
                    help="go on until --kills commands were really killed (a command that finished before its "
                         "drawn time is recorded, but not counted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults"))
    args = ap.parse_args()
    write(with_prefect_server(bench, args), args)


if __name__ == "__main__":
    main()
