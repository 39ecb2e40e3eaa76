"""synthetic:N: N deterministic 3x32x32 colour digits in 10 classes, for scale tests.

Image i is one of the 5,000 packaged MNIST digits (mnist5k), placed at an offset in a
32x32 canvas and painted in a foreground colour on a background colour, all drawn
from a hash of i alone, so ``synthetic:50000`` is the first 50,000 images of
``synthetic:200000`` and no image depends on N (subjects do: there are ceil(N/5)). Pixels are made when read (nothing
is stored), so the dataset costs only its ids in memory; the ids (hashes of every
image) are computed once per workspace and kept in its ingest cache. Subjects are synthetic, as
for every packaged dataset (``records.synthetic_subjects``). Real data stays the
reference for accuracy; this is for measuring time and memory as N grows.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from unlearnflow.arrays import Rows
from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import ConfigError
from unlearnflow.records import RecordSet, packaged_records, synthetic_subjects

SIZE, PAD = 32, 4  # a 28x28 digit moves up to 4 pixels in each direction


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each value: a fast, well-spread hash of an index."""
    x = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from unlearnflow.datasets.mnist5k import mnist_arrays

    x, y = mnist_arrays()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def labels_of(index: np.ndarray) -> np.ndarray:
    return _digits()[1][mix(index) % np.uint64(5000)]


class SyntheticImages:
    """A row source (see ``arrays.Rows``): row i is made from i on demand."""

    dtype = np.dtype(np.uint8)

    def __init__(self, n: int):
        self.shape = (n, 3, SIZE, SIZE)

    def read(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        digits = _digits()[0]
        h = mix(rows)
        which = (h % np.uint64(5000)).astype(np.int64)
        bits = mix(h)  # a second, independent word for offsets and colours
        dx = ((bits >> np.uint64(0)) % np.uint64(PAD + 1)).astype(np.int64)
        dy = ((bits >> np.uint64(8)) % np.uint64(PAD + 1)).astype(np.int64)
        fg = np.stack([96 + ((bits >> np.uint64(16 + 8 * c)) % np.uint64(160)).astype(np.float32) for c in range(3)], 1)
        bg = np.stack([((bits >> np.uint64(40 + 8 * c)) % np.uint64(80)).astype(np.float32) for c in range(3)], 1)
        alpha = np.zeros((len(rows), SIZE, SIZE), dtype=np.float32)
        for ox in range(PAD + 1):
            for oy in range(PAD + 1):
                hit = (dx == ox) & (dy == oy)
                if hit.any():
                    alpha[hit, oy:oy + 28, ox:ox + 28] = digits[which[hit]]
        pixels = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * alpha[:, None]
        return np.round(pixels).astype(np.uint8)


@lru_cache(maxsize=2)
def _records(n: int, records_per_subject: int, cache_dir: str | None) -> RecordSet:
    index = np.arange(n, dtype=np.int64)
    images, labels = Rows.of(SyntheticImages(n)), labels_of(index)
    ids_file = Path(cache_dir) / f"synthetic-{n}.ids" if cache_dir else None
    if ids_file is not None and ids_file.is_file():
        ids = ids_file.read_text().split()
        if len(ids) == n:  # made once per workspace: the ids hash every image (8 s at N=200,000)
            return RecordSet(images, labels, tuple(ids), tuple(synthetic_subjects(ids, records_per_subject)),
                             tuple(f"synthetic:{i}" for i in range(n)), tuple(str(c) for c in range(10)))
    records = packaged_records("synthetic", images, labels, range(10), records_per_subject)
    if ids_file is not None:
        ids_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = ids_file.with_name(f".tmp-{ids_file.name}")
        tmp.write_text("\n".join(records.record_ids) + "\n")
        tmp.replace(ids_file)
    return records


@register_dataset("synthetic")
def load_synthetic(cfg: DataConfig, arg: str | None, cache_dir=None) -> RecordSet:
    try:
        n = int(arg or "")
    except ValueError:
        n = 0
    if n < 10:
        raise ConfigError(f"data.dataset = 'synthetic:{arg or ''}' needs a record count N >= 10, e.g. synthetic:50000")
    return _records(n, cfg.records_per_subject, str(cache_dir) if cache_dir else None)
