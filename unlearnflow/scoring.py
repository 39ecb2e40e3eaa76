"""Each constituent's softmax outputs on a record set, computed once.

An audit scores every constituent of a version on the retain, test and holdout
records; consecutive versions share all but the constituents an erasure touched.
``OutputCache`` keeps each (constituent, record set) output under the content hashes
of both, ``<folder>/<constituent md5>-<records digest>.npy``, so an unchanged
constituent is never scored twice on unchanged records, across processes too:

    cache = OutputCache(workspace / ".unlearnflow" / "outputs")
    probs = cache.probabilities(constituent_paths, retain_records, workers=2)  # [(N, K), ...]
    cache.prune(keep_models={md5s still served}, keep_records={digests of current splits})

The outputs describe records (some of them soon erased), so the folder belongs in the
workspace's private state, never in git, and the erase flow prunes it (``prune``)
to the current constituents and splits once an erasure is done.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unlearnflow.hashing import md5_file
from unlearnflow.records import RecordSet


BATCH = 512  # records per forward pass (predict_proba's default)


def records_digest(records: RecordSet) -> str:
    """A content hash of the records a model is scored on (pixels, labels, ids)."""
    h = hashlib.sha256()
    h.update(str(records.images.shape).encode())
    h.update(np.ascontiguousarray(records.images).tobytes())
    h.update(np.asarray(records.labels, dtype=np.int64).tobytes())
    h.update("\n".join(records.record_ids).encode())
    return h.hexdigest()[:32]


class OutputCache:
    """Constituent outputs keyed by (file md5, records digest): in memory, and on disk
    when ``folder`` is given."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self._md5: dict[str, str] = {}
        self.computed = 0  # (constituent, record set) pairs scored by this object
        self.reused = 0

    def md5(self, path: str | Path) -> str:
        path = str(path)
        if path not in self._md5:
            self._md5[path] = md5_file(path)
        return self._md5[path]

    def _file(self, key: tuple[str, str]) -> Path | None:
        return self.folder / f"{key[0]}-{key[1]}.npy" if self.folder else None

    def _lookup(self, key: tuple[str, str]) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        file = self._file(key)
        if file is not None and file.is_file():
            try:
                self._memory[key] = np.load(file, allow_pickle=False)
                return self._memory[key]
            except (OSError, ValueError):  # a torn write: score again
                file.unlink(missing_ok=True)
        return None

    def probabilities(self, paths: list[str], records: RecordSet, workers: int = 1,
                      persist: bool = True) -> list[np.ndarray]:
        """Softmax outputs (N, K) of each constituent file in ``paths`` on ``records``.
        Missing ones are computed batch by batch on ``workers`` threads (the same batches as
        one thread would use, so the same numbers); ``persist=False`` keeps them in memory
        only (for records that should not be written down, e.g. a forget set)."""
        from unlearnflow.ensemble import load_constituent
        from unlearnflow.training import predict_proba

        digest = records_digest(records)
        keys = [(self.md5(p), digest) for p in paths]
        missing = {k: load_constituent(p)[0] for k, p in zip(keys, paths) if self._lookup(k) is None}
        starts = range(0, len(records), BATCH)
        jobs = [(key, i) for key in missing for i in starts]

        def score(job):
            key, i = job
            return predict_proba(missing[key], records.images[i : i + BATCH], batch_size=BATCH)

        with ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1))) as pool:
            batches = list(pool.map(score, jobs))
        for n, key in enumerate(missing):
            probs = (np.concatenate(batches[n * len(starts) : (n + 1) * len(starts)]) if len(records)
                     else predict_proba(missing[key], records.images))  # no records: an empty array
            self._memory[key] = probs
            file = self._file(key)
            if persist and file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_suffix(".tmp.npy")
                np.save(tmp, probs, allow_pickle=False)
                tmp.replace(file)
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        return [self._memory[k] for k in keys]

    def prune(self, keep_models: set[str], keep_records: set[str]) -> int:
        """Delete stored outputs of any other constituent or record set; returns how many."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        removed = 0
        for file in self.folder.glob("*.npy"):
            model, _, digest = file.stem.partition("-")
            if model not in keep_models or digest not in keep_records:
                file.unlink()
                removed += 1
        self._memory = {k: v for k, v in self._memory.items() if k[0] in keep_models and k[1] in keep_records}
        return removed
