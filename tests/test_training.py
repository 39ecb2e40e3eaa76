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
