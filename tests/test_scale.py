"""The paths that let N grow: pixels read on demand, streamed writes, DataLoader
workers, the device setting, the synthetic:N dataset, the audit sample. Small N here;
bench/scale.py measures 5,000 to 200,000."""

import io
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import make_records
from unlearnflow.arrays import NpyFile, Rows, chunks_of, write_npy
from unlearnflow.config import AggregateConfig, DataConfig, PartitionConfig, TrainConfig
from unlearnflow.datasets import DATASETS, load_dataset
from unlearnflow.devices import device_class, resolve
from unlearnflow.errors import ConfigError
from unlearnflow.layout import Layout
from unlearnflow.partition import partition, read_shard, write_shard
from unlearnflow.records import load_records, save_records, stable_sample
from unlearnflow.training import ModelSpec, slice_keys, train_constituent

CFG = TrainConfig(model="cnn", epochs=2, batch_size=16, augment=True)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def weights(result) -> bytes:
    buf = io.BytesIO()
    torch.save(result.state_dict, buf)
    return buf.getvalue()


# ---- arrays ----------------------------------------------------------------------------------

def test_streamed_npy_equals_np_save_and_rows_read_only_what_is_asked(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (1000, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "saved.npy", a)
    write_npy(tmp_path / "streamed.npy", a.shape, chunks_of(a, 97))
    assert (tmp_path / "saved.npy").read_bytes() == (tmp_path / "streamed.npy").read_bytes()
    rows = Rows.of(NpyFile(tmp_path / "streamed.npy"))
    index = np.array([5, 3, 4, 999, 0, 3])  # any order, repeats
    assert np.array_equal(rows[index], a[index]) and np.array_equal(rows[10:20], a[10:20])
    view = Rows.concat([rows.take(np.arange(100, 200)), a[:5]])  # a file and memory, nothing read yet
    assert view.shape == (105, 3, 4, 4) and np.array_equal(np.asarray(view), np.concatenate([a[100:200], a[:5]]))
    assert np.array_equal(pickle.loads(pickle.dumps(rows))[index], a[index])  # what a DataLoader worker gets
    with pytest.raises(ValueError, match="wrote 999 rows but the header says 1000"):
        write_npy(tmp_path / "streamed.npy", a.shape, chunks_of(a[:999]))
    # a failed (or killed) write leaves the old file whole and no temporary behind
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.npy", "streamed.npy"]


def test_saved_splits_and_shards_are_read_lazily_and_round_trip(tmp_path):
    records = make_records(n=300)
    save_records(records, tmp_path / "r.npy", tmp_path / "r.csv")
    back = load_records(tmp_path / "r.npy", tmp_path / "r.csv")
    assert isinstance(back.images, Rows) and np.array_equal(np.asarray(back.images), records.images)
    manifest, images = partition(back, PartitionConfig(shards=(0, 1), slices=2))[0]
    assert isinstance(images, Rows)  # partition reads nothing; write_shard streams
    write_shard(manifest, images, tmp_path / "s.json", tmp_path / "s.npy")
    m2, i2 = read_shard(tmp_path / "s.json", tmp_path / "s.npy")
    index = {r: i for i, r in enumerate(records.record_ids)}
    assert np.array_equal(np.asarray(i2), records.images[[index[r] for r in m2.record_ids]])


# ---- training from disk, loader workers, device ---------------------------------------------

@pytest.fixture
def shard_on_disk(tmp_path):
    records = make_records(n=240, shape=(3, 8, 8))
    manifest, images = partition(records, PartitionConfig(shards=(0, 1), slices=2))[0]
    write_shard(manifest, images, tmp_path / "s.json", tmp_path / "s.npy")
    return manifest, np.asarray(images), tmp_path


def test_training_from_disk_with_loader_workers_is_bitwise_training_in_memory(shard_on_disk):
    manifest, in_memory, folder = shard_on_disk
    spec = ModelSpec("cnn", (3, 8, 8), 4)
    reference = train_constituent(manifest, in_memory, spec, CFG)
    _, on_disk = read_shard(folder / "s.json", folder / "s.npy")
    assert weights(train_constituent(manifest, on_disk, spec, CFG)) == weights(reference)
    workers = TrainConfig(**{**CFG.__dict__, "loader_workers": 2})
    result = train_constituent(manifest, on_disk, spec, workers)
    assert weights(result) == weights(reference)  # workers change the speed, never the batches
    assert result.slice_keys == reference.slice_keys and result.device == "cpu"


def test_the_device_class_is_in_the_checkpoint_key_and_loader_workers_are_not(shard_on_disk):
    manifest, images, _ = shard_on_disk
    spec = ModelSpec("cnn", (3, 8, 8), 4)
    cpu = slice_keys(manifest, images, spec, CFG, "cpu")
    assert slice_keys(manifest, images, spec, CFG, "cuda/NVIDIA H200")[0] != cpu[0]
    assert slice_keys(manifest, images, spec, TrainConfig(**{**CFG.__dict__, "loader_workers": 3}), "cpu") == cpu
    assert slice_keys(manifest, images, spec, TrainConfig(**{**CFG.__dict__, "device": "cpu"}), "cpu") == cpu


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", ""])
def test_a_bad_device_names_the_choices(bad):
    with pytest.raises(ConfigError, match=r"train.device = .* expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        TrainConfig(device=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_one_clear_error():
    assert resolve("auto") == torch.device("cpu") and device_class(resolve("cpu")) == "cpu"
    with pytest.raises(ConfigError, match=r"train.device = 'cuda', but this machine has 0 visible CUDA device\(s\); "
                                          r"valid choices here: auto, cpu"):
        resolve("cuda")


@CUDA
def test_cuda_training_is_bitwise_repeatable_and_keyed_apart_from_cpu(shard_on_disk):
    manifest, images, _ = shard_on_disk
    spec = ModelSpec("cnn", (3, 8, 8), 4)
    gpu = TrainConfig(**{**CFG.__dict__, "device": "cuda"})
    first, second = train_constituent(manifest, images, spec, gpu), train_constituent(manifest, images, spec, gpu)
    assert weights(first) == weights(second)
    assert first.device.startswith("cuda/") and all(v.device.type == "cpu" for v in first.state_dict.values())
    assert first.slice_keys != train_constituent(manifest, images, spec, CFG).slice_keys


@CUDA
def test_cuda_scoring_matches_cpu_scoring_closely(shard_on_disk):
    from unlearnflow.models import create_model
    from unlearnflow.training import predict_proba

    _, images, _ = shard_on_disk
    model = create_model("cnn", (3, 8, 8), 4, seed=0)
    cpu = predict_proba(model, images, device=torch.device("cpu"))
    assert np.allclose(predict_proba(model, images, device=torch.device("cuda")), cpu, atol=1e-5)


# ---- synthetic:N and the audit sample ---------------------------------------------------------

def test_synthetic_is_deterministic_prefix_stable_and_colour():
    small, large = (load_dataset(DataConfig(dataset=f"synthetic:{n}")) for n in (300, 1000))
    assert "synthetic" in DATASETS.names()
    assert small.input_shape == (3, 32, 32) and len(large) == 1000 and isinstance(large.images, Rows)
    assert small.record_ids == large.record_ids[:300]  # subjects are not a prefix: there are ceil(N/5) of them
    assert np.array_equal(np.asarray(small.images), np.asarray(large.images)[:300])
    assert len(set(large.labels)) == 10
    assert len(set(large.record_ids)) == 1000
    pixels = np.asarray(small.images[:20]).astype(int)
    assert (pixels[:, 0] != pixels[:, 1]).any()  # coloured, not grey copies
    with pytest.raises(ConfigError, match="synthetic:abc.*N >= 10"):
        load_dataset(DataConfig(dataset="synthetic:abc"))


def test_the_audit_sample_is_bounded_and_moves_little_when_records_leave():
    records = make_records(n=500)
    sample = stable_sample(records, 100)
    assert len(sample) == 100 and stable_sample(records, 0) is records and stable_sample(records, 900) is records
    gone = set(sample.record_ids[:3])
    after = stable_sample(records.take([i for i, r in enumerate(records.record_ids) if r not in gone]), 100)
    assert len(set(after.record_ids) - set(sample.record_ids)) == 3  # three in, three out; 97 the same


def test_stages_run_on_synthetic_data_from_disk(tmp_path):
    from unlearnflow import stages

    layout = Layout(tmp_path)
    summary = stages.prepare(DataConfig(dataset="synthetic:600"), layout, b"k" * 32)
    assert summary["records"] == 600 and summary["input_shape"] == [3, 32, 32]
    stages.partition_stage(PartitionConfig(shards=(0, 1), slices=2), layout)
    out = stages.train_stage(TrainConfig(epochs=1, augment=False), layout, 0)
    assert out["device"] == "cpu" and out["trained_stages"] == [0, 1]
    stages.train_stage(TrainConfig(epochs=1, augment=False), layout, 1)
    stages.aggregate_stage(AggregateConfig(), PartitionConfig(shards=(0, 1), slices=2), layout)
    metrics = stages.evaluate_stage(layout, "cpu")
    assert metrics["test_records"] == summary["test_records"] and 0 <= metrics["ensemble_accuracy"] <= 1


def test_imagefolder_ingest_reads_only_what_changed_and_drops_deleted_files(tmp_path):
    from PIL import Image
    from test_registries import write_hockey_folder
    from unlearnflow.datasets.imagefolder import ingest

    root, cache = tmp_path / "photos", tmp_path / "ingest"
    write_hockey_folder(root)
    cfg = DataConfig(dataset=f"imagefolder:{root}", image_size=16)
    first, stats = ingest(cfg, str(root), cache)
    assert stats == {"files": 7, "read": 7, "reused": 0}
    plain = load_dataset(cfg)  # no cache: decoded in memory, the same records
    assert np.array_equal(np.asarray(first.images), plain.images) and first.record_ids == plain.record_ids
    again, stats = ingest(cfg, str(root), cache)
    assert stats == {"files": 7, "read": 0, "reused": 7} and again.record_ids == first.record_ids

    erased = np.asarray(first.images[first.sources.index("team_away/Away_image03.JPG")]).tobytes()
    (root / "team_away" / "Away_image03.JPG").unlink()  # what an erasure's purge does
    changed = root / "team_home" / "Home_image01.JPG"
    Image.fromarray(np.full((40, 30, 3), 7, dtype=np.uint8)).save(changed, "JPEG")
    os.utime(changed, ns=(1, 1))
    Image.fromarray(np.full((20, 20, 3), 200, dtype=np.uint8)).save(root / "referee" / "Ref_new.JPG", "JPEG")
    after, stats = ingest(cfg, str(root), cache)
    assert stats == {"files": 7, "read": 2, "reused": 5}
    fresh = load_dataset(cfg)
    assert np.array_equal(np.asarray(after.images), fresh.images) and after.record_ids == fresh.record_ids
    stored = b"".join(p.read_bytes() for p in cache.iterdir())
    assert erased not in stored and b"Away_image03" not in stored  # the cache forgot the erased file


def test_an_erasure_rewrites_one_part_per_split_and_one_shard(tmp_path):
    """What lets DVC hash and cache only what an erasure changed: unchanged parts and
    shards keep their files (same mtime)."""
    from unlearnflow import stages
    layout = Layout(tmp_path)
    cfg = DataConfig(dataset="synthetic:800")
    first = stages.prepare(cfg, layout, b"k" * 32)
    assert first["parts_written"] == 3 * 16
    pcfg = PartitionConfig(shards=(0, 1, 2, 3), slices=2)
    assert stages.partition_stage(pcfg, layout)["shards_written"] == [0, 1, 2, 3]
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert stages.prepare(cfg, layout, b"k" * 32)["parts_written"] == 0  # unchanged data: nothing rewritten
    assert stages.partition_stage(pcfg, layout)["shards_written"] == []

    train = stages.load_split(layout, "train")
    subject = train.subject_ids[0]
    gone = [r for r, s in zip(train.record_ids, train.subject_ids) if s == subject]
    erased = stages.prepare(cfg, layout, b"k" * 32, _erasing(gone))
    assert erased["parts_written"] == 1 and erased["train_records"] == len(train) - len(gone)
    assert len(stages.partition_stage(pcfg, layout)["shards_written"]) == 1
    changed = [p for p in files if p.exists() and p.stat().st_mtime_ns != mtimes[p]]
    assert len([p for p in changed if p.parent.name == "train"]) == 2  # one part: pixels + table
    assert len([p for p in changed if p.parent.name == "shards"]) == 2  # one shard: manifest + pixels
    assert set(stages.load_split(layout, "train").record_ids) == set(train.record_ids) - set(gone)


def _erasing(record_ids):
    """A ledger state in which ``record_ids`` were erased by one request."""
    from unlearnflow.ledger import LedgerState

    class Erased(LedgerState):
        def erased_records(self):
            return set(record_ids)

    return Erased()
