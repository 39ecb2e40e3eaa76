"""The audit's output cache: the same numbers as scoring directly, reused across
processes (objects) per record by content hash, never stale when a model changes,
scoring only the records it has not seen, and pruned to what is current."""

import numpy as np

from conftest import make_records
from unlearnflow.ensemble import constituent_bytes, load_constituent
from unlearnflow.models import create_model
from unlearnflow.scoring import OutputCache
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
    assert first.computed == 3 * 1100 and first.reused == 0
    for path, p in zip(paths, probs):  # batch by batch on two threads = one call on one thread, bit for bit
        assert np.array_equal(p, predict_proba(load_constituent(path)[0], records.images))
    again = OutputCache(tmp_path / "cache")  # a new process: read from disk, nothing scored
    assert all(np.array_equal(a, b) for a, b in zip(again.probabilities(paths, records), probs))
    assert again.computed == 0 and again.reused == 3 * 1100


def test_a_changed_model_is_scored_again_and_changed_records_only_where_new(tmp_path):
    records = make_records(n=50)
    path = tmp_path / "m.pt"
    cache = OutputCache(tmp_path / "cache")
    cache.probabilities([constituent(path, seed=0)], records)
    cache = OutputCache(tmp_path / "cache")
    new_weights = cache.probabilities([constituent(path, seed=1)], records)[0]  # same path, other weights
    assert cache.computed == 50
    assert np.array_equal(new_weights, predict_proba(load_constituent(path)[0], records.images))
    # an erasure: five records leave, three new ones arrive -> only the three are scored
    extra = make_records(n=3, seed=7)
    changed = records.concat([records.take(np.arange(5, 50)), extra])
    got = cache.probabilities([str(path)], changed)[0]
    assert cache.computed == 53
    assert np.array_equal(got[:45], new_weights[5:])
    assert np.allclose(got[45:], predict_proba(load_constituent(path)[0], extra.images), atol=1e-6)


def test_memory_only_outputs_and_pruning(tmp_path):
    records, other = make_records(n=30, seed=0), make_records(n=30, seed=1)
    a, b = constituent(tmp_path / "a.pt", seed=0), constituent(tmp_path / "b.pt", seed=1)
    cache = OutputCache(tmp_path / "cache")
    cache.probabilities([a, b], records)
    kept_out = cache.probabilities([a], other, persist=False)[0]  # e.g. a forget set: never written down
    assert np.array_equal(kept_out, predict_proba(load_constituent(a)[0], other.images))
    c = constituent(tmp_path / "c.pt", seed=2)  # a model with no stored outputs at all
    assert np.array_equal(OutputCache(tmp_path / "cache").probabilities([c], other, persist=False)[0],
                          predict_proba(load_constituent(c)[0], other.images))
    assert len(OutputCache(tmp_path / "cache").probabilities([a], other, persist=False)) == 1
    fresh = OutputCache(tmp_path / "cache")
    fresh.probabilities([a], other, persist=False)
    assert fresh.computed == 30  # the first call stored none of them
    # b's table goes; a's keeps the records still current (10 of 30 are erased)
    keep = set(records.record_ids[10:])
    assert cache.prune({cache.md5(a)}, keep) == 30 + 10
    assert [f.name.split("-")[0] for f in (tmp_path / "cache").glob("*.npz")] == [cache.md5(a)]
    again = OutputCache(tmp_path / "cache")
    again.probabilities([a], records)
    assert again.computed == 10 and again.reused == 20
    empty = cache.probabilities([a], records.take([]))[0]
    assert empty.shape[0] == 0
