"""The audit's output cache: the same numbers as scoring directly, reused across
processes (objects) by content hash, never stale when a model or the records change,
and pruned to what is current."""

import numpy as np

from conftest import make_records
from unlearnflow.ensemble import constituent_bytes, load_constituent
from unlearnflow.models import create_model
from unlearnflow.scoring import OutputCache, records_digest
from unlearnflow.training import ModelSpec, predict_proba


def constituent(path, seed: int, shape=(1, 8, 8), classes: int = 4) -> str:
    spec = ModelSpec("cnn", shape, classes)
    model = create_model("cnn", shape, classes, seed=seed)
    path.write_bytes(constituent_bytes(spec, model.state_dict(), [f"key{seed}"], shard=seed))
    return str(path)


def test_cached_outputs_equal_direct_scoring_and_are_reused_from_disk(tmp_path):
    records = make_records(n=1100)  # three batches of 512, the last one short
    paths = [constituent(tmp_path / f"m{i}.pt", seed=i) for i in range(3)]
    first = OutputCache(tmp_path / "cache")
    probs = first.probabilities(paths, records, workers=2)
    assert first.computed == 3 and first.reused == 0
    for path, p in zip(paths, probs):  # batch by batch on two threads = one call on one thread, bit for bit
        assert np.array_equal(p, predict_proba(load_constituent(path)[0], records.images))
    again = OutputCache(tmp_path / "cache")  # a new process: read from disk, nothing scored
    assert all(np.array_equal(a, b) for a, b in zip(again.probabilities(paths, records), probs))
    assert again.computed == 0 and again.reused == 3


def test_a_changed_model_or_changed_records_is_scored_again(tmp_path):
    records = make_records(n=50)
    path = tmp_path / "m.pt"
    cache = OutputCache(tmp_path / "cache")
    cache.probabilities([constituent(path, seed=0)], records)
    cache = OutputCache(tmp_path / "cache")
    new_weights = cache.probabilities([constituent(path, seed=1)], records)[0]  # same path, other weights
    assert cache.computed == 1
    assert np.array_equal(new_weights, predict_proba(load_constituent(path)[0], records.images))
    relabelled = records.take(np.arange(len(records)))
    relabelled.labels[0] = (relabelled.labels[0] + 1) % 4
    assert records_digest(relabelled) != records_digest(records)
    cache.probabilities([str(path)], relabelled)
    assert cache.computed == 2


def test_memory_only_outputs_and_pruning(tmp_path):
    records, other = make_records(n=30, seed=0), make_records(n=30, seed=1)
    a, b = constituent(tmp_path / "a.pt", seed=0), constituent(tmp_path / "b.pt", seed=1)
    cache = OutputCache(tmp_path / "cache")
    cache.probabilities([a, b], records)
    cache.probabilities([a], other, persist=False)  # e.g. a forget set: never written down
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert cache.prune({cache.md5(a)}, {records_digest(records)}) == 1  # b's outputs go
    assert [f.name.split("-")[0] for f in (tmp_path / "cache").glob("*.npy")] == [cache.md5(a)]
    empty = cache.probabilities([a], records.take([]))[0]
    assert empty.shape[0] == 0
