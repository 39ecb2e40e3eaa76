"""A whole SISA ensemble in memory: partition, train every constituent, aggregate.

The pipeline trains constituents as separate stages with files in between
(``stages.py``); this is the same computation for callers that only need the
ensemble, such as an audit's reference models and the benchmarks. With the same
records, configs and checkpoint store it gives the same weights as the pipeline.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import PartitionConfig, TrainConfig
from unlearnflow.ensemble import Ensemble
from unlearnflow.models import create_model
from unlearnflow.partition import partition
from unlearnflow.records import RecordSet
from unlearnflow.training import Callbacks, ModelSpec, TrainResult, train_constituent


def train_ensemble(records: RecordSet, partition_cfg: PartitionConfig, train_cfg: TrainConfig,
                   method: str = "softmax_mean", store: CheckpointStore | None = None, workers: int = 1,
                   callbacks: Callbacks | None = None) -> tuple[Ensemble, list[TrainResult]]:
    """Train one constituent per shard of ``records`` (``workers`` shards at a time, in
    threads; each uses ``train_cfg.threads`` torch threads, so results do not depend on
    ``workers``). With a ``store``, unchanged slice stages are reused."""
    shards = partition(records, partition_cfg)

    def fit(shard) -> TrainResult:
        manifest, images = shard
        spec = ModelSpec(train_cfg.model, tuple(int(d) for d in images.shape[1:]), len(manifest.classes))
        return train_constituent(manifest, images, spec, train_cfg, store, callbacks)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(fit, shards))
    models = []
    for (manifest, images), result in zip(shards, results):
        model = create_model(train_cfg.model, tuple(int(d) for d in images.shape[1:]), len(manifest.classes), seed=0)
        model.load_state_dict(result.state_dict)
        model.eval()
        models.append(model)
    return Ensemble(models, method, records.classes), results
