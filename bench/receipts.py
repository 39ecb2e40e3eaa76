"""Benchmark: receipts on a large erasure log. A log of 1,000,000 synthetic leaves (one
certificate stands for all but the last erasures', which are real certificates of 3 requests
each, appended one by one as the erase flow does: ``ErasureLog.sync``), then receipts of
the last erasure's requests produced (``ErasureLog.receipt``) and checked
(``receipt_verify.verify_receipt``, what the person runs). Reported: the proof's size (the
receipt without its ``extra`` line) and its path length, and medians of the times to
append one erasure, produce one receipt and verify one. Targets (issue 25): proof <= 2 KB
and <= 20 path hashes; receipt and verification < 50 ms each; appending < 100 ms.

    .venv/bin/python bench/receipts.py                   # -> bench/results/receipts.{md,json}
    .venv/bin/python bench/receipts.py --leaves 100000 --out /tmp/receipts   # a quick look
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save_json, save_md, stamp  # noqa: E402

from unlearnflow import receipt_verify  # noqa: E402
from unlearnflow.tlog import ErasureLog, Leaf, log_key  # noqa: E402

ORIGIN = "unlearnflow.local/bench/receipts"
PRIVATE = hashlib.sha256(b"bench/receipts signing key").digest()


def certificate(directory: Path, n: int, first_index: int, requests: list[str]) -> Path:
    """A certificate-shaped file (what the log reads of one: its requests, where they go)."""
    path = directory / f"{n:04d}-e{n:012x}.json"
    path.write_text(json.dumps({"erasure_id": f"e{n:012x}", "requests": [
        {"request_id": r, "kind": "forget", "records": 1} for r in requests],
        "erasure_log": {"origin": ORIGIN, "first_index": first_index, "checkpoint_size": first_index + len(requests)}},
        sort_keys=True, separators=(",", ":")) + "\n")
    return path


def build(root: Path, leaves: int, erasures: int, per: int) -> tuple[ErasureLog, list[float], list[Path]]:
    certs, logdir = root / "certificates", root / "log"
    certs.mkdir()
    log = ErasureLog(logdir, certs, root / "tree")
    base = leaves - erasures * per
    first = certificate(certs, 1, 0, [f"r{0:016x}"])  # stands for the synthetic leaves' certificates
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    logdir.mkdir()
    (logdir / "origin").write_text(ORIGIN + "\n")
    t0 = time.perf_counter()
    with open(log.leaves_file, "w") as f:
        f.writelines(f"r{i:016x} {sha} {first.name}\n" for i in range(base))
    log.tree.append([Leaf(f"r{i:016x}", sha, first.name).hash for i in range(base)])
    log.sync(ORIGIN, PRIVATE)  # the checkpoint of the synthetic part
    print(f"built a log of {base:,} leaves in {time.perf_counter() - t0:.1f}s")
    appends, written = [], []
    for e in range(erasures):
        n = base + e * per
        path = certificate(certs, e + 2, n, [f"r{n + j:016x}" for j in range(per)])
        t = time.perf_counter()
        log.sync(ORIGIN, PRIVATE)
        appends.append(time.perf_counter() - t)
        written.append(path)
    return log, appends, written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--erasures", type=int, default=5, help="real erasures appended at the end (timed)")
    ap.add_argument("--per", type=int, default=3, help="requests per erasure")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "receipts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="unlearnflow-receipts-") as tmp:
        log, appends, certs = build(Path(tmp), args.leaves, args.erasures, args.per)
        cert = certs[-1]
        rid = json.loads(cert.read_text())["requests"][0]["request_id"]
        vkey = log_key(ORIGIN, PRIVATE).text
        made, checked = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            text = log.receipt(rid, cert)
            made.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = receipt_verify.verify_receipt(text, vkey)
            checked.append(time.perf_counter() - t)
        t = time.perf_counter()
        deepest = log.tree.inclusion(0, result["log_size"])  # leaf 0: the longest path of this tree
        deepest_ms = (time.perf_counter() - t) * 1000
        proof = receipt_verify.parse_proof(text)
        size = len(text.encode()) - len(next(line for line in text.split("\n") if line.startswith("extra ")) + "\n")
        figures = {"leaves": result["log_size"], "index": proof.index, "path_hashes": len(proof.path),
                   "proof_bytes": size, "append_ms": [round(a * 1000, 2) for a in appends],
                   "append_median_ms": round(statistics.median(appends) * 1000, 2),
                   "receipt_median_ms": round(statistics.median(made) * 1000, 2),
                   "verify_median_ms": round(statistics.median(checked) * 1000, 2), "repeats": args.repeats,
                   "per_erasure": args.per, "deepest_path_hashes": len(deepest),
                   "deepest_path_bytes": sum(len(base64.b64encode(h)) + 1 for h in deepest),
                   "deepest_path_ms": round(deepest_ms, 2)}
    save_json(args.out, figures)
    s = stamp()
    longest = figures["proof_bytes"] + figures["deepest_path_bytes"] - 45 * figures["path_hashes"]
    ok = {"proof": longest <= 2048 and figures["deepest_path_hashes"] <= 20,
          "receipt": figures["receipt_median_ms"] < 50, "verify": figures["verify_median_ms"] < 50,
          "append": figures["append_median_ms"] < 100}

    def mark(key: str) -> str:
        return "**met**" if ok[key] else "**missed**"

    save_md(args.out, [
        "# Receipts on a large erasure log", "",
        f"Generated by `bench/receipts.py` on {s['date']} (commit {s['commit']}), {s['machine']}, {s['cores']} cores, "
        f"Python {s['python']}: a log of {figures['leaves']:,} leaves (the last {args.erasures} erasures of "
        f"{args.per} requests each appended one by one with `ErasureLog.sync`, the tree's levels stored in files), "
        f"receipts of leaf {figures['index']:,}; medians of {args.repeats} runs.", "",
        "| figure | measured | target |", "|---|---:|---|",
        f"| receipt's proof (without its `extra` line) | {figures['proof_bytes']} bytes | <= 2048: {mark('proof')} |",
        f"| the same for leaf 0 (this tree's longest path: {figures['deepest_path_hashes']} hashes, computed in "
        f"{figures['deepest_path_ms']} ms) | {longest} bytes | <= 2048: {mark('proof')} |",
        f"| inclusion path | {figures['path_hashes']} hashes (leaf 0: {figures['deepest_path_hashes']}) | "
        f"<= 20: {mark('proof')} |",
        f"| produce one receipt | {figures['receipt_median_ms']} ms | < 50 ms: {mark('receipt')} |",
        f"| verify one receipt (`receipt_verify.verify_receipt`) | {figures['verify_median_ms']} ms | "
        f"< 50 ms: {mark('verify')} |",
        f"| append one erasure's {args.per} leaves and sign its checkpoint | {figures['append_median_ms']} ms "
        f"(each: {', '.join(str(a) for a in figures['append_ms'])}) | < 100 ms: {mark('append')} |", "",
        "A receipt's `extra` line carries the certificate itself (here a small certificate-shaped file; a real "
        "certificate is 2-4 KB), which the person needs to recompute the leaf; the proof is the rest.",
    ])


if __name__ == "__main__":
    main()
