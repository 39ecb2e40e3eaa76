"""Checks that run before any work: a bad value fails here, with the valid choices,
instead of after minutes of training."""

from __future__ import annotations

from unlearnflow.aggregators import AGGREGATORS
from unlearnflow.config import Params
from unlearnflow.datasets import DATASETS, load_dataset
from unlearnflow.errors import ConfigError
from unlearnflow.models import MODELS
from unlearnflow.records import split_records


def check_names(params: Params) -> None:
    DATASETS.get(params.data.dataset_name)
    MODELS.get(params.train.model)
    AGGREGATORS.get(params.aggregate.method)


def check_source(params: Params) -> None:
    """The data's source is there: an image folder exists and holds images in class sub-folders
    (what ``init`` checks before it creates anything). Other datasets ship with the code."""
    if params.data.dataset_name == "imagefolder":
        from unlearnflow.datasets.imagefolder import list_folder

        list_folder(params.data.dataset_arg)


def preflight(params: Params, cache_dir=None) -> dict:
    """Validate names, load the data once and check the partition can be made.
    ``cache_dir``: the workspace's ingest cache, if any."""
    check_names(params)
    records = load_dataset(params.data, cache_dir)
    train = split_records(records, params.data)["train"]
    keys = train.subject_ids if params.partition.key == "subject" else train.record_ids
    n_keys = len(set(keys))
    if params.partition.num_shards > n_keys:
        raise ConfigError(
            f"partition.shards asks for S={params.partition.num_shards} shards but the training split of "
            f"{params.data.dataset!r} has only {len(train)} records from {n_keys} {params.partition.key}s; "
            f"use at most {n_keys} shards"
        )
    if params.train.model == "resnet18" and min(records.input_shape[1:]) < 32:
        raise ConfigError(
            f"train.model = 'resnet18' needs images of at least 32x32, but {params.data.dataset!r} has "
            f"{records.input_shape[1]}x{records.input_shape[2]}; valid choices for it: 'cnn', 'mlp'"
        )
    return {"records": len(records), "train_records": len(train), "partition_keys": n_keys}
