"""Benchmark: SISA ensemble accuracy and training cost vs a monolithic model, on mnist5k.

For each training recipe and S in {1, 2, 5, 10} (R slices per shard), trains every
constituent with the core (no Prefect/MLflow overhead), then reports ensemble test
accuracy under both aggregation rules and the training time. "monolithic" is one
model on all training records with the same recipe and no slicing (S=1, R=1).

Accuracy is measured on all records never trained on (the test and holdout
splits, ~1,000 records) to halve the noise of the 581-record test split.

    .venv/bin/python bench/sisa_accuracy.py                # full table (~15 min on 2 cores)
    .venv/bin/python bench/sisa_accuracy.py --quick        # S=5 default recipe only
    .venv/bin/python bench/sisa_accuracy.py --recipes default,longer --shards 5 --seeds 3 \
        --out bench/results/sisa_seeds                      # seed spread of the two best recipes
    .venv/bin/python bench/sisa_accuracy.py --recipes default --shards 5 --overlaps 0,0.25,0.5 \
        --datasets mnist5k,digits --out bench/results/sisa_overlap   # overlapping slices (partition.overlap)

Writes bench/results/sisa_accuracy.{md,json}.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unlearnflow.aggregators import aggregate
from unlearnflow.config import DataConfig, PartitionConfig, TrainConfig
from unlearnflow.erasure import load_pseudonymized
from unlearnflow.models import create_model
from unlearnflow.partition import partition
from unlearnflow.records import RecordSet, split_records
from unlearnflow.training import ModelSpec, predict_proba, train_constituent

from record import save_json, save_md  # bench/record.py

RECIPES = {
    # name: (TrainConfig overrides, slices R for the SISA rows)
    "naive (10 ep, no aug, R=1)": (dict(epochs=10, augment=False), 1),
    "sliced (10 ep, no aug, R=4)": (dict(epochs=10, augment=False), 4),
    "more epochs (20 ep, no aug, R=4)": (dict(epochs=20, augment=False), 4),
    "default (20 ep, augment, R=4)": (dict(epochs=20, augment=True), 4),
    "longer (40 ep, augment, R=4)": (dict(epochs=40, augment=True), 4),
}
SHARDS = (1, 2, 5, 10)

_DATA: dict = {}


def data(dataset: str = "mnist5k") -> tuple[RecordSet, RecordSet]:
    if _DATA.get("dataset") != dataset:
        _DATA["dataset"] = dataset
        cfg = DataConfig(dataset=dataset)
        splits = split_records(load_pseudonymized(cfg, b""), cfg)  # synthetic subjects: the public key, as the pipeline
        unseen = splits["test"]
        held = splits["holdout"]
        eval_set = RecordSet(
            np.concatenate([unseen.images, held.images]), np.concatenate([unseen.labels, held.labels]),
            unseen.record_ids + held.record_ids, unseen.subject_ids + held.subject_ids,
            unseen.sources + held.sources, unseen.classes,
        )
        _DATA["train"], _DATA["eval"] = splits["train"], eval_set
    return _DATA["train"], _DATA["eval"]


def run_job(job: tuple[str, int, int, int, float, str]) -> dict:
    """Train one configuration's constituents; return accuracies and seconds."""
    recipe, shards, slices, seed, overlap, dataset = job
    overrides, _ = RECIPES[recipe]
    cfg = replace(TrainConfig(), seed=seed, **overrides)
    train, test = data(dataset)
    parts = partition(train, PartitionConfig(shards=tuple(range(shards)), slices=slices, overlap=overlap))
    probs, seconds, sizes = [], [], []
    for manifest, images in parts:
        spec = ModelSpec(cfg.model, tuple(images.shape[1:]), len(manifest.classes))
        result = train_constituent(manifest, images, spec, cfg)
        model = create_model(spec.name, spec.input_shape, spec.num_classes, seed=0)
        model.load_state_dict(result.state_dict)
        probs.append(predict_proba(model, test.images))
        seconds.append(result.seconds)
        sizes.append(len(manifest))
    probs = np.stack(probs)  # (S, N, K)
    acc = lambda scores: float((scores.argmax(1) == test.labels).mean())  # noqa: E731
    return {
        "recipe": recipe, "shards": shards, "slices": slices, "seed": seed, "overlap": overlap, "dataset": dataset,
        "softmax_mean": acc(aggregate(probs, "softmax_mean")),
        "majority_vote": acc(aggregate(probs, "majority_vote")),
        "single_mean": float(np.mean([acc(p) for p in probs])),
        "train_seconds": float(sum(seconds)),
        "max_shard_seconds": float(max(seconds)),
        "shard_sizes": sizes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the default recipe at S=5 and its monolithic")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per configuration")
    ap.add_argument("--recipes", help="comma-separated recipe name prefixes (default: all), e.g. default,longer")
    ap.add_argument("--shards", help="comma-separated S values (default: 1,2,5,10)")
    ap.add_argument("--overlaps", default="0", help="comma-separated partition.overlap values for the SISA rows")
    ap.add_argument("--datasets", default="mnist5k", help="comma-separated datasets, e.g. mnist5k,digits")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (each trains with 1 torch thread)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sisa_accuracy"))
    args = ap.parse_args()

    recipes = ["default (20 ep, augment, R=4)"] if args.quick else list(RECIPES)
    if args.recipes:
        recipes = [r for r in RECIPES if any(r.startswith(p.strip()) for p in args.recipes.split(","))]
    shard_counts = (5,) if args.quick else SHARDS
    if args.shards:
        shard_counts = tuple(int(s) for s in args.shards.split(","))
    overlaps = [float(o) for o in args.overlaps.split(",")]
    datasets = [d.strip() for d in args.datasets.split(",")]
    jobs = []
    for dataset in datasets:
        for seed in range(args.seeds):
            for r in recipes:
                jobs.append((r, 1, 1, seed, 0.0, dataset))  # monolithic
                jobs += [(r, s, RECIPES[r][1], seed, o, dataset) for s in shard_counts for o in overlaps]
    jobs = list(dict.fromkeys(jobs))
    sizes = {d: tuple(len(x) for x in data(d)) for d in datasets}
    train_n, test_n = ("/".join(str(sizes[d][i]) for d in datasets) for i in (0, 1))  # e.g. "4002/1438"
    print(f"{', '.join(datasets)}: {train_n} train records, {test_n} unseen eval records; {len(jobs)} jobs on "
          f"{args.jobs} processes")
    t0 = time.perf_counter()
    results = []
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for i, res in enumerate(pool.imap_unordered(run_job, jobs)):
            results.append(res)
            print(f"[{i + 1}/{len(jobs)}] {res['dataset']} {res['recipe']:34s} S={res['shards']:2d} R={res['slices']} "
                  f"overlap={res['overlap']} seed={res['seed']}: "
                  f"softmax {res['softmax_mean']:.4f} vote {res['majority_vote']:.4f} "
                  f"single {res['single_mean']:.4f} {res['train_seconds']:.1f}s", flush=True)
    write(results, args, time.perf_counter() - t0, train_n, test_n)


def write(results, args, wall, n_train, n_test) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": mp.cpu_count(),
            "train_records": n_train, "eval_records": n_test, "wall_seconds": round(wall, 1), "seeds": args.seeds}
    save_json(out, {"meta": meta, "results": results})

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    lines = [
        f"# SISA vs monolithic on {args.datasets}",
        "",
        f"Generated by `bench/sisa_accuracy.py` on {meta['date']}, {meta['cpu_count']} cores ({n_train} training records; accuracy on {n_test} records never "
        f"trained on; torch {meta['torch']}, 1 thread per model; {args.seeds} seed(s), mean shown; "
        f"wall time {wall:.0f}s).",
        "",
        "| dataset | recipe | S | R | overlap | softmax mean | majority vote | mean single constituent | "
        "gap to monolithic (softmax) | train time (sum over shards) | slowest shard |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, recipe in dict.fromkeys((r.get("dataset", "mnist5k"), r["recipe"]) for r in results):
        ours = [r for r in results if r.get("dataset", "mnist5k") == dataset and r["recipe"] == recipe]
        mono_acc = mean([r for r in ours if r["shards"] == 1 and r["slices"] == 1], "softmax_mean")
        configs = sorted({(r["shards"], r["slices"], r.get("overlap", 0.0)) for r in ours})
        configs.sort(key=lambda c: (c[:2] != (1, 1), c))
        for s, sl, o in configs:
            rows = [r for r in ours if (r["shards"], r["slices"], r.get("overlap", 0.0)) == (s, sl, o)]
            label = "monolithic" if (s, sl) == (1, 1) else str(s)
            gap = "" if (s, sl) == (1, 1) else f"{100 * (mean(rows, 'softmax_mean') - mono_acc):+.1f} pt"
            lines.append(
                f"| {dataset} | {recipe} | {label} | {sl} | {o:g} | {100 * mean(rows, 'softmax_mean'):.1f}% | "
                f"{100 * mean(rows, 'majority_vote'):.1f}% | {100 * mean(rows, 'single_mean'):.1f}% | {gap} | "
                f"{mean(rows, 'train_seconds'):.1f}s | {mean(rows, 'max_shard_seconds'):.1f}s |"
            )
    save_md(out, lines)
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
