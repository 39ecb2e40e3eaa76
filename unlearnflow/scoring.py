"""Each constituent's softmax outputs per record, computed once.

An audit scores every constituent of a version on the retain, test and holdout
records; consecutive versions share all but the constituents an erasure touched,
and consecutive data versions share all but the records it changed. ``OutputCache``
keeps one table per constituent file (by md5) and input shape: each record's output
under its record id, so an unchanged constituent is never scored twice on a record,
across processes too, and an erasure scores only its retrained constituents:

    cache = OutputCache(workspace / ".unlearnflow" / "outputs")
    probs = cache.probabilities(constituent_paths, retain_records, workers=2)  # [(N, K), ...]
    cache.prune(keep_models={md5s still served}, keep_records={ids of current records})

A record id names its content (``records.record_id_for``), and outputs do not depend
on labels, so a stored row stays valid for as long as its constituent file exists.
The outputs describe records (some of them soon erased), so the folder belongs in the
workspace's private state, never in git, and the erase flow prunes it (``prune``) to
the current constituents and records once an erasure is done.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unlearnflow.hashing import md5_file
from unlearnflow.records import RecordSet

BATCH = 128  # records per forward pass: 512 took 2x the memory and no less time (3x32x32, the CNN)


class OutputCache:
    """Per-record constituent outputs keyed by (file md5, input shape, record id): in
    memory, and on disk when ``folder`` is given. Scoring runs on ``device``."""

    def __init__(self, folder: str | Path | None = None, device=None):
        self.folder = Path(folder) if folder else None
        self.device = device
        self._tables: dict[str, tuple[dict[str, int], np.ndarray]] = {}  # name -> (row of id, outputs)
        self._md5: dict[str, str] = {}
        self.computed = 0  # records scored by this object, summed over constituents
        self.reused = 0  # records whose stored output was used

    def md5(self, path: str | Path) -> str:
        path = str(path)
        if path not in self._md5:
            self._md5[path] = md5_file(path)
        return self._md5[path]

    def _file(self, name: str) -> Path | None:
        return self.folder / f"{name}.npz" if self.folder else None

    def _table(self, name: str) -> tuple[dict[str, int], np.ndarray]:
        if name not in self._tables:
            ids, probs = [], np.zeros((0, 0), dtype=np.float32)
            file = self._file(name)
            if file is not None and file.is_file():
                try:
                    with np.load(file, allow_pickle=False) as z:
                        ids, probs = z["ids"].tolist(), z["probs"]
                except (OSError, ValueError, KeyError):  # a torn write: score again
                    file.unlink(missing_ok=True)
            self._tables[name] = ({rid: i for i, rid in enumerate(ids)}, probs)
        return self._tables[name]

    def _store(self, name: str, index: dict[str, int], probs: np.ndarray) -> None:
        self._tables[name] = (index, probs)
        file = self._file(name)
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".tmp-{os.getpid()}-{file.name}")
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(list(index), dtype=str), probs=probs)
        tmp.replace(file)

    def probabilities(self, paths: list[str], records: RecordSet, workers: int = 1,
                      persist: bool = True) -> list[np.ndarray]:
        """Softmax outputs (N, K) of each constituent file in ``paths`` on ``records``.
        Records without a stored output are scored batch by batch on ``workers`` threads
        (each batch the same as one thread would score); ``persist=False`` keeps the new
        ones out of the table (for records that should not be written down, e.g. a forget set)."""
        from unlearnflow.ensemble import load_constituent
        from unlearnflow.training import predict_proba

        shape = "x".join(map(str, records.input_shape))
        names = [f"{self.md5(p)}-{shape}" for p in paths]
        todo = {}  # name -> (model, positions of records to score, their outputs)
        for name, path in dict(zip(names, paths)).items():
            index, _ = self._table(name)
            missing = np.array([i for i, rid in enumerate(records.record_ids) if rid not in index], dtype=np.int64)
            if len(missing):
                model, meta = load_constituent(path)
                # filled in place, batch by batch: outputs kept alive piece by piece fragment the heap
                todo[name] = (model, missing, np.empty((len(missing), meta["spec"]["num_classes"]), np.float32))
        jobs = [(name, start) for name, (_, missing, _) in todo.items() for start in range(0, len(missing), BATCH)]

        def score(job):
            name, start = job
            model, missing, probs = todo[name]
            part = missing[start:start + BATCH]
            probs[start:start + len(part)] = predict_proba(model, records.take(part).images, batch_size=BATCH,
                                                           device=self.device)

        with ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1))) as pool:
            list(pool.map(score, jobs))
        fresh = {name: probs for name, (_, _, probs) in todo.items()}
        for name, (_, missing, _) in todo.items():
            self.computed += len(missing)
            if persist:
                index, probs = self._table(name)
                new_ids = [records.record_ids[i] for i in missing]
                index = {**index, **{rid: len(index) + j for j, rid in enumerate(new_ids)}}
                probs = np.concatenate([probs, fresh[name]]) if len(probs) else fresh[name]
                self._store(name, index, probs)
        out = []
        for name in names:
            index, probs = self._table(name)
            rows = np.array([index.get(rid, -1) for rid in records.record_ids], dtype=np.int64)
            self.reused += len(records) - (len(todo[name][1]) if name in todo else 0)
            if not len(records):
                out.append(np.zeros((0, 0), dtype=np.float32))
            elif (rows >= 0).all():
                out.append(probs[rows])
            else:  # some outputs were not persisted: put them in place
                result = np.empty((len(records), fresh[name].shape[1]), dtype=np.float32)
                if (rows >= 0).any():
                    result[rows >= 0] = probs[rows[rows >= 0]]
                result[todo[name][1]] = fresh[name]
                out.append(result)
        return out

    def drop_records(self, record_ids: set[str]) -> int:
        """Delete every stored output of these records (their content changed); returns how many."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        return sum(self._keep_only(file.name[: -len(".npz")], lambda rid: rid not in record_ids)
                   for file in sorted(self.folder.glob("*.npz")))

    def prune(self, keep_models: set[str], keep_records: set[str]) -> int:
        """Delete stored outputs of any other constituent file or record; returns how many
        records' outputs were deleted (a whole table counts each of its records)."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        removed = 0
        for file in sorted(self.folder.glob("*.npz")):
            name = file.name[: -len(".npz")]
            if name.split("-")[0] not in keep_models:
                removed += len(self._table(name)[0])
                file.unlink()
                self._tables.pop(name, None)
            else:
                removed += self._keep_only(name, keep_records.__contains__)
        return removed

    def _keep_only(self, name: str, keep) -> int:
        """Keep the stored outputs of table ``name`` whose record passes ``keep``; returns how many went."""
        index, probs = self._table(name)
        kept = [rid for rid in index if keep(rid)]
        if len(kept) < len(index):
            self._store(name, {rid: i for i, rid in enumerate(kept)}, probs[[index[r] for r in kept]])
        return len(index) - len(kept)
