"""digits: scikit-learn's bundled 1,797 8x8 handwritten digits (fast, for tests)."""

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.records import RecordSet, packaged_records


@register_dataset("digits")
def load_digits(cfg: DataConfig, arg: str | None = None, cache_dir=None) -> RecordSet:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return packaged_records("digits", images, bunch.target, range(10), cfg.records_per_subject)
