"""The dataset registry. An adapter is ``fn(cfg: DataConfig, arg: str | None, cache_dir: Path | None)
-> RecordSet``; ``cache_dir`` is a private folder of the workspace where it may keep what it
derived from the source (imagefolder keeps decoded pixels there), or None."""

from unlearnflow._registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register
