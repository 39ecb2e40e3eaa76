"""The dataset registry. An adapter is ``fn(cfg: DataConfig, arg: str | None) -> RecordSet``."""

from unlearnflow._registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register
