"""Benchmark: the privacy audit of the original model and of the exact SISA erasure, on
mnist5k, for three forget sets, beside two retrained references (the noise floor).

    forget set            non-members the forget set is compared with
    random 10%            holdout records
    flipped labels 5%     holdout records with their labels flipped too (like with like)
    one subject           holdout records

Per forget set: the original ensemble (with checkpoints), the exact erasure (SISA:
resumes every shard from its last checkpoint without the forget set; bitwise the same
as retraining with the original seed), and N ensembles retrained from scratch without
it with other seeds (retrain 1 is the reference for "Avg Gap"). The noise floor is the
largest difference between two of those retrains: a difference smaller than it is
not a finding.
For the flipped-label set, also LiRA with K reference ensembles on halves of
(training records + flipped holdout). Everything uses the core directly (no Prefect,
MLflow or DVC) and the product's default recipe unless ``--recipe memorising``.

    .venv/bin/python bench/audit.py                       # ~8 min on 2 cores
    .venv/bin/python bench/audit.py --recipe memorising   # 60 epochs, no augmentation

Writes bench/results/audit[_RECIPE].{md,json}.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unlearnflow.audit import Outputs
from unlearnflow.audit.lira import LiRA, train_references
from unlearnflow.audit.report import audit, avg_gap
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import DataConfig, PartitionConfig, TrainConfig
from unlearnflow.erasure import apply_requests, load_pseudonymized, mislabel
from unlearnflow.records import RecordSet, split_records
from unlearnflow.sisa import train_ensemble

from record import save_json, save_md  # bench/record.py

RECIPES = {"default": {}, "memorising": {"epochs": 60, "augment": False}}
METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "forget_vs_holdout_mia_auc", "mia_efficacy")


def outputs(ensemble, rs: RecordSet) -> Outputs:
    return Outputs(ensemble.scores(rs.images), rs.labels, rs.record_ids)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=list(RECIPES), default="default")
    ap.add_argument("--lira", type=int, default=8, help="LiRA reference ensembles for the flipped-label set")
    ap.add_argument("--retrains", type=int, default=3, help="retrained references (seeds 1..N), N >= 2")
    ap.add_argument("--workers", type=int, default=2, help="shards trained at once (threads, 1 torch thread each)")
    ap.add_argument("--out", help="output path without suffix (default bench/results/audit[_RECIPE])")
    args = ap.parse_args()
    if args.retrains < 2:
        ap.error(f"--retrains {args.retrains}: a noise floor needs at least 2 retrained references")
    out = Path(args.out or Path(__file__).parent / "results" / ("audit" if args.recipe == "default"
                                                                   else f"audit_{args.recipe}"))
    t_start = time.perf_counter()
    data_cfg, pcfg = DataConfig(), PartitionConfig()
    tcfg = replace(TrainConfig(), **RECIPES[args.recipe])
    splits = split_records(load_pseudonymized(data_cfg, b""), data_cfg)  # synthetic subjects: public key
    train, test, holdout = splits["train"], splits["test"], splits["holdout"]
    rng = np.random.default_rng(0)
    print(f"mnist5k: {len(train)} train, {len(test)} test, {len(holdout)} holdout records; recipe {args.recipe}",
          flush=True)

    subjects = sorted(set(train.subject_ids))
    victim = subjects[rng.integers(len(subjects))]
    flipped_at = rng.choice(len(train), len(train) // 20, replace=False)
    scenarios = {
        "random 10%": (train, rng.choice(len(train), len(train) // 10, replace=False), holdout),
        "flipped labels 5%": (mislabel(train, flipped_at, rng), flipped_at,
                              mislabel(holdout, range(len(holdout)), rng)),
        "one subject": (train, [i for i, s in enumerate(train.subject_ids) if s == victim], holdout),
    }

    originals: dict[int, tuple] = {}  # id(training set) -> (ensemble, store, seconds): shared by two scenarios
    results = {}
    for name, (full, forget_at, non_members) in scenarios.items():
        forget = full.take(forget_at)
        retain = apply_requests(full, set(forget.record_ids), {})
        if id(full) not in originals:
            store = CheckpointStore(Path(tempfile.mkdtemp(prefix="bench-audit-")))
            ens, secs = timed(train_ensemble, full, pcfg, tcfg, store=store, workers=args.workers)
            originals[id(full)] = (ens[0], store, secs)
            print(f"{name}: original trained in {secs:.1f}s", flush=True)
        original, store, original_seconds = originals[id(full)]
        (erased, erase_results), erase_seconds = timed(train_ensemble, retain, pcfg, tcfg, store=store,
                                                       workers=args.workers)
        retrains, retrain_seconds = {}, []
        for seed in range(1, args.retrains + 1):
            (model, _), secs = timed(train_ensemble, retain, pcfg, replace(tcfg, seed=seed), workers=args.workers)
            retrains[f"retrain {seed} (seed {seed})"] = model
            retrain_seconds.append(secs)
        print(f"{name}: {len(forget)} records; erasure {erase_seconds:.1f}s "
              f"(stages trained per shard {[len(r.trained_stages) for r in erase_results]}), "
              f"retrain {np.median(retrain_seconds):.1f}s (median)", flush=True)
        reference = "retrain 1 (seed 1)"
        models = {"original": original, "exact erasure": erased, **retrains}
        audits = {}
        for label, model in models.items():
            report, secs = timed(lambda m: audit(outputs(m, forget), outputs(m, retain), outputs(m, test),
                                                 outputs(m, non_members)), model)
            audits[label] = {**report, "audit_seconds": secs}
        for label in models:
            audits[label]["avg_gap"] = avg_gap(audits[label], audits[reference])
        row = {"records": len(forget), "non_members": len(non_members), "audits": audits,
               "noise_floor": floor([audits[r] for r in retrains], (*METRICS, "avg_gap")),
               "erase_seconds": erase_seconds, "retrain_seconds": float(np.median(retrain_seconds)),
               "original_seconds": original_seconds,
               "erase_stages_trained": sum(len(r.trained_stages) for r in erase_results)}
        # avg_gap's floor: the largest Avg Gap between two retrains
        row["noise_floor"]["avg_gap"] = max(avg_gap(audits[a], audits[b]) for a in retrains for b in retrains)

        if name.startswith("flipped") and args.lira:
            pool = RecordSet.concat([full, non_members])
            refs = train_references(pool, args.lira, pcfg, tcfg, workers=args.workers,
                                    progress=lambda i, n: print(f"  LiRA reference {i}/{n}", flush=True))
            lira = {}
            for label, model in models.items():
                scores, secs = timed(lambda m: LiRA(refs).score(outputs(m, forget), outputs(m, non_members)), model)
                lira[label] = {**scores, "scoring_seconds": secs}
            row["lira"] = {"k": args.lira, "pool": len(pool), "reference_seconds": refs.seconds, "models": lira,
                           "noise_floor": floor([lira[r] for r in retrains], ("auc", "tpr_at_1pct_fpr"))}
        results[name] = row

    write(out, args, results, time.perf_counter() - t_start, len(train), tcfg)


def floor(reports: list[dict], keys) -> dict:
    """Per metric, the largest difference between two retrained references."""
    return {k: float(max(r[k] for r in reports) - min(r[k] for r in reports)) for k in keys}


def write(out: Path, args, results: dict, wall: float, n_train: int, tcfg: TrainConfig) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu_count": mp.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "recipe": args.recipe, "train": tcfg.__dict__, "wall_seconds": round(wall, 1)}
    save_json(out, {"meta": meta, "results": results})

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# Privacy audit on mnist5k: original vs exact SISA erasure ({args.recipe} recipe)", "",
             f"Generated by `bench/audit.py{'' if args.recipe == 'default' else ' --recipe ' + args.recipe}` on "
             f"{meta['date']}, {meta['cpu_count']} cores, torch {meta['torch']}; {n_train} training records, "
             f"S=5 shards × R=4 slices, {tcfg.model}, {tcfg.epochs} epochs, augment={tcfg.augment}; "
             f"wall time {wall:.0f}s. Numbers in percent. AUC: loss-threshold attack, forget set vs "
             f"non-members (50 = looks unseen). MIA-eff.: SVC MIA-efficacy (share of the forget set called "
             f"non-member). Avg Gap: mean |difference| to retrain 1 over forget/retain/test accuracy and "
             f"MIA-efficacy. Noise floor: the largest difference between two of the {args.retrains} retrains "
             f"(other seeds). Audit s: time to score the model on all sets and compute every metric.", ""]
    for name, row in results.items():
        lines += [f"## {name}: {row['records']} forget records vs {row['non_members']} non-members", "",
                  f"Original trained in {row['original_seconds']:.1f}s; exact erasure retrained "
                  f"{row['erase_stages_trained']} of 20 slice stages in {row['erase_seconds']:.1f}s; "
                  f"a retrain from scratch took {row['retrain_seconds']:.1f}s (median).", "",
                  "| model | forget acc | retain acc | test acc | MIA AUC | MIA-eff. | Avg Gap | audit s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, a in row["audits"].items():
            lines.append(f"| {label} | {pct(a['forget_accuracy'])} | {pct(a['retain_accuracy'])} | "
                         f"{pct(a['test_accuracy'])} | {pct(a['forget_vs_holdout_mia_auc'])} | "
                         f"{pct(a['mia_efficacy'])} | {pct(a['avg_gap'])} | {a['audit_seconds']:.1f} |")
        f = row["noise_floor"]
        lines.append(f"| **noise floor** (retrains) | {pct(f['forget_accuracy'])} | {pct(f['retain_accuracy'])} | "
                     f"{pct(f['test_accuracy'])} | {pct(f['forget_vs_holdout_mia_auc'])} | {pct(f['mia_efficacy'])} | "
                     f"{pct(f['avg_gap'])} | |")
        if "lira" in row:
            lira = row["lira"]
            lines += ["", f"LiRA with K={lira['k']} reference ensembles (each on a random half of {lira['pool']} "
                      f"records; trained in {lira['reference_seconds']:.0f}s, shared by every model below):", "",
                      "| model | LiRA AUC | TPR at 1% FPR | scoring s |", "|---|---:|---:|---:|"]
            for label, m in lira["models"].items():
                lines.append(f"| {label} | {pct(m['auc'])} | {pct(m['tpr_at_1pct_fpr'])} | {m['scoring_seconds']:.2f} |")
            f = lira["noise_floor"]
            lines.append(f"| **noise floor** (retrains) | {pct(f['auc'])} | {pct(f['tpr_at_1pct_fpr'])} | |")
        lines.append("")
    save_md(out, lines)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
