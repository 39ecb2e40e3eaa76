"""digits: scikit-learn's bundled 1,797 8x8 handwritten digits (fast, for tests)."""

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.records import RecordSet, assign_record_ids, synthetic_subjects


@register_dataset("digits")
def load_digits(cfg: DataConfig, arg: str | None = None) -> RecordSet:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    sources = [f"digits:{i}" for i in range(len(labels))]
    ids = assign_record_ids(images, labels, sources)
    return RecordSet(
        images=images,
        labels=labels,
        record_ids=tuple(ids),
        subject_ids=tuple(synthetic_subjects(ids, cfg.records_per_subject)),
        sources=tuple(sources),
        classes=tuple(str(c) for c in range(10)),
    )
