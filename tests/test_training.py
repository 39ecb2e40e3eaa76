"""Slice-incremental training: checkpoint keys, prefix reuse and bitwise determinism."""

import io
import threading

import numpy as np
import pytest
import torch

from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import PartitionConfig, TrainConfig
from unlearnflow.partition import ShardManifest, partition
from unlearnflow.training import Callbacks, ModelSpec, slice_keys, train_constituent

CFG = TrainConfig(model="mlp", epochs=3, batch_size=32, augment=True)
SPEC = ModelSpec("mlp", (1, 8, 8), 4)


def state_bytes(state_dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


@pytest.fixture
def shard(records):
    manifest, images = partition(records, PartitionConfig(shards=(0, 1), slices=4))[0]
    return manifest, images


def without(manifest: ShardManifest, images, drop: set[str]):
    keep = [i for i, r in enumerate(manifest.record_ids) if r not in drop]
    m = ShardManifest(manifest.shard, manifest.num_slices, tuple(manifest.record_ids[i] for i in keep),
                      tuple(manifest.labels[i] for i in keep), tuple(manifest.subject_ids[i] for i in keep),
                      tuple(manifest.slice_of[i] for i in keep), manifest.classes)
    return m, images[keep]


def test_deleting_a_record_changes_the_keys_of_its_slice_and_later_only(shard):
    manifest, images = shard
    keys = slice_keys(manifest, images, SPEC, CFG)
    a, b = manifest.slice_bounds()[2]
    m2, i2 = without(manifest, images, {manifest.record_ids[a]})  # a record of slice 3
    keys2 = slice_keys(m2, i2, SPEC, CFG)
    assert keys2[:2] == keys[:2] and all(x != y for x, y in zip(keys2[2:], keys[2:]))


def test_keys_depend_on_labels_pixels_and_every_train_param(shard):
    manifest, images = shard
    keys = slice_keys(manifest, images, SPEC, CFG)
    relabelled = ShardManifest(manifest.shard, manifest.num_slices, manifest.record_ids,
                               (manifest.labels[0] + 1,) + manifest.labels[1:], manifest.subject_ids,
                               manifest.slice_of, manifest.classes)
    assert slice_keys(relabelled, images, SPEC, CFG)[0] != keys[0]
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert slice_keys(manifest, changed, SPEC, CFG)[0] != keys[0]
    for field, value in [("lr", 0.01), ("seed", 1), ("threads", 2), ("augment", False), ("batch_size", 16)]:
        other = TrainConfig(**{**CFG.__dict__, field: value})
        assert slice_keys(manifest, images, SPEC, other)[0] != keys[0], field


def test_training_is_bitwise_deterministic(shard):
    manifest, images = shard
    a = train_constituent(manifest, images, SPEC, CFG)
    b = train_constituent(manifest, images, SPEC, CFG)
    assert state_bytes(a.state_dict) == state_bytes(b.state_dict)
    c = train_constituent(manifest, images, SPEC, TrainConfig(**{**CFG.__dict__, "seed": 1}))
    assert state_bytes(a.state_dict) != state_bytes(c.state_dict)


def test_unchanged_prefix_is_reused_and_resuming_equals_training_from_scratch(shard, tmp_path):
    manifest, images = shard
    store = CheckpointStore(tmp_path / "ckpt")
    full = train_constituent(manifest, images, SPEC, CFG, store)
    assert full.resumed_from == -1 and full.trained_stages == [0, 1, 2, 3]
    assert store.keys() == sorted(full.slice_keys)

    again = train_constituent(manifest, images, SPEC, CFG, store)
    assert again.trained_stages == [] and state_bytes(again.state_dict) == state_bytes(full.state_dict)

    # delete a record of slice 3: stages 1-2 come from checkpoints, stages 3-4 retrain
    a, _ = manifest.slice_bounds()[2]
    m2, i2 = without(manifest, images, {manifest.record_ids[a]})
    resumed = train_constituent(m2, i2, SPEC, CFG, store)
    assert resumed.resumed_from == 1 and resumed.trained_stages == [2, 3]
    scratch = train_constituent(m2, i2, SPEC, CFG, CheckpointStore(tmp_path / "empty"))
    assert state_bytes(resumed.state_dict) == state_bytes(scratch.state_dict)
    assert state_bytes(resumed.state_dict) != state_bytes(full.state_dict)


def test_concurrent_shards_in_threads_match_sequential_training(records):
    shards = partition(records, PartitionConfig(shards=(0, 1, 2), slices=2))
    sequential = [state_bytes(train_constituent(m, x, SPEC, CFG).state_dict) for m, x in shards]
    threaded = [None] * len(shards)

    def run(i):
        m, x = shards[i]
        threaded[i] = state_bytes(train_constituent(m, x, SPEC, CFG).state_dict)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert threaded == sequential


def test_callbacks_report_progress_without_the_loop_knowing_who_listens(shard):
    manifest, images = shard
    events = []
    cb = Callbacks().add("on_stage_end", lambda shard, stage, key: events.append(stage))
    cb.add("on_epoch_end", lambda **info: events.append("e"))
    train_constituent(manifest, images, SPEC, CFG, callbacks=cb)
    assert [e for e in events if e != "e"] == [0, 1, 2, 3]
    assert events.count("e") == 4 * CFG.stage_epochs(4)


def test_learning_works_on_real_digits(digits):
    """A sanity check that the loop learns: one constituent of digits beats chance by far."""
    from unlearnflow.training import predict_proba
    from unlearnflow.models import create_model

    manifest, images = partition(digits, PartitionConfig(shards=(0,), slices=2))[0]
    spec = ModelSpec("mlp", (1, 8, 8), 10)
    result = train_constituent(manifest, images, spec, TrainConfig(model="mlp", epochs=10, augment=False))
    model = create_model("mlp", (1, 8, 8), 10, seed=0)
    model.load_state_dict(result.state_dict)
    acc = (predict_proba(model, images).argmax(1) == np.array(manifest.labels)).mean()
    assert acc > 0.9


# ---- overlapping slices (partition.overlap) -------------------------------------------------

def overlapping(records, overlap: float, drop: set[str] = frozenset()):
    """Shard 0 of ``records`` minus ``drop``, partitioned as the pipeline would (S=2, R=3)."""
    kept = records.take([i for i, r in enumerate(records.record_ids) if r not in drop])
    return partition(kept, PartitionConfig(shards=(0, 1), slices=3, overlap=overlap))[0]


def test_overlap_windows_share_the_chosen_part_of_the_previous_slice(records):
    manifest, _ = overlapping(records, 0.5)
    bounds = manifest.slice_bounds()
    assert list(manifest.stage_rows(0)) == list(range(*bounds[0]))
    for k in (1, 2):  # o = 0.5: all of slice k-1, then slice k (windows of size s overlap by s/2)
        assert list(manifest.stage_rows(k)) == list(range(bounds[k - 1][0], bounds[k][1]))
    quarter, _ = overlapping(records, 0.25)  # o/(1-o) = 1/3 of slice k-1 joins window k
    a, b = quarter.slice_bounds()[0]
    assert 0.15 < sum(quarter.shared[a:b]) / (b - a) < 0.55
    assert len(quarter.stage_rows(1)) == sum(quarter.shared[a:b]) + len(range(*quarter.slice_bounds()[1]))
    disjoint, _ = overlapping(records, 0.0)  # 0: stage k sees slices 0..k, and the manifest format is unchanged
    assert list(disjoint.stage_rows(2)) == list(range(len(disjoint)))
    assert "overlap" not in disjoint.to_json() and "shared_forward" not in disjoint.to_json()["records"][0]
    assert ShardManifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize("erased_slice", [0, 1, 2])
def test_overlap_erasure_retrains_from_the_records_first_slice_and_equals_scratch(records, tmp_path, erased_slice):
    cfg = TrainConfig(model="mlp", epochs=4, batch_size=16, augment=True)
    manifest, images = overlapping(records, 0.5)
    store = CheckpointStore(tmp_path / "ckpt")
    first = train_constituent(manifest, images, SPEC, cfg, store)
    assert first.trained_stages == [0, 1, 2]
    a, b = manifest.slice_bounds()[erased_slice]
    victim = manifest.record_ids[a]  # seen by stage erased_slice and (shared forward) the next one
    m2, i2 = overlapping(records, 0.5, {victim})
    resumed = train_constituent(m2, i2, SPEC, cfg, store)
    assert resumed.resumed_from == erased_slice - 1 and resumed.trained_stages == list(range(erased_slice, 3))
    scratch = train_constituent(m2, i2, SPEC, cfg, None)
    assert state_bytes(resumed.state_dict) == state_bytes(scratch.state_dict)
    assert state_bytes(resumed.state_dict) != state_bytes(first.state_dict)


def test_overlap_is_part_of_the_checkpoint_keys(records):
    half, images = overlapping(records, 0.5)
    quarter, images_q = overlapping(records, 0.25)
    assert slice_keys(half, images, SPEC, CFG)[0] != slice_keys(quarter, images_q, SPEC, CFG)[0]
