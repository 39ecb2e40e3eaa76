"""DP-SGD constituents (train.dp): exact unlearning still holds under DP, and the privacy
accounting equals Opacus' own accountant stepped once per optimizer step actually taken."""

import io
import json

import pytest
import torch

from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import DPConfig, PartitionConfig, TrainConfig
from unlearnflow.dp import constituent_epsilon, stage_history
from unlearnflow.errors import ConfigError
from unlearnflow.partition import partition
from unlearnflow.training import ModelSpec, train_constituent

SPEC = ModelSpec("mlp", (1, 8, 8), 4)
DP = TrainConfig(model="mlp", epochs=3, batch_size=16, augment=False, dp=DPConfig(noise_multiplier=1.1))


def state_bytes(state_dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def shard(records, drop=frozenset(), overlap=0.0):
    kept = records.take([i for i, r in enumerate(records.record_ids) if r not in drop])
    return partition(kept, PartitionConfig(shards=(0, 1), slices=3, overlap=overlap))[0]


def test_dp_training_is_private_deterministic_and_resumes_bitwise_like_scratch(records, tmp_path):
    manifest, images = shard(records)
    store = CheckpointStore(tmp_path / "ckpt")
    first = train_constituent(manifest, images, SPEC, DP, store)
    again = train_constituent(manifest, images, SPEC, DP, None)
    assert state_bytes(first.state_dict) == state_bytes(again.state_dict)
    plain = train_constituent(manifest, images, SPEC, TrainConfig(**{**DP.__dict__, "dp": None}), None)
    assert state_bytes(plain.state_dict) != state_bytes(first.state_dict)  # clipping and noise changed the weights
    assert first.slice_keys != plain.slice_keys  # and the checkpoint keys: a DP checkpoint never serves plain training

    a, _ = manifest.slice_bounds()[1]
    m2, i2 = shard(records, {manifest.record_ids[a]})  # erase a record of slice 2
    resumed = train_constituent(m2, i2, SPEC, DP, store)
    assert resumed.resumed_from == 0 and resumed.trained_stages == [1, 2]
    assert state_bytes(resumed.state_dict) == state_bytes(train_constituent(m2, i2, SPEC, DP, None).state_dict)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_accounting_equals_opacus_accountant_over_the_steps_taken(records, monkeypatch, overlap):
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer

    manifest, images = shard(records, overlap=overlap)
    taken = []
    original = DPOptimizer.step
    monkeypatch.setattr(DPOptimizer, "step", lambda self, *a, **k: (taken.append(1), original(self, *a, **k))[1])
    train_constituent(manifest, images, SPEC, DP, None)
    history = stage_history(manifest, DP)
    assert len(taken) <= sum(h[2] for h in history) and len(taken) >= 0.99 * sum(h[2] for h in history)

    # the worst-off records are the first slice's: with disjoint slices every stage sees them;
    # with overlap 0.5 (all of slice k-1 shared into window k) the first two stages
    accountant = RDPAccountant()
    for k in ((0, 1, 2) if overlap == 0 else (0, 1)):
        n = len(manifest.stage_rows(k))
        for _ in range(history[k][2]):
            accountant.step(noise_multiplier=DP.dp.noise_multiplier, sample_rate=DP.batch_size / n)
    assert constituent_epsilon(manifest, DP) == pytest.approx(accountant.get_epsilon(delta=DP.dp.delta), rel=1e-9)


def test_more_noise_means_a_smaller_epsilon_and_batchnorm_models_are_refused(records):
    manifest, images = shard(records)
    quiet = TrainConfig(**{**DP.__dict__, "dp": DPConfig(noise_multiplier=4.0)})
    assert 0 < constituent_epsilon(manifest, quiet) < constituent_epsilon(manifest, DP)
    resnet = TrainConfig(**{**DP.__dict__, "model": "resnet18", "epochs": 1})
    with pytest.raises(ConfigError, match="train.dp cannot train model 'resnet18'"):
        train_constituent(manifest, images, ModelSpec("resnet18", (1, 8, 8), 4), resnet, None)


@pytest.mark.slow
def test_a_dp_workspace_records_epsilon_per_constituent_and_version(prefect_server, tmp_path, capsys):
    import yaml

    from conftest import cli
    from tasks import lineage
    from tasks.registry import production_version
    from tasks.store import client_for
    from tasks.workspace import Workspace

    root = tmp_path / "ws"
    assert cli("init", str(root), "--dataset", "digits", "--model", "mlp") == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["partition"].update({"shards": [0, 1], "slices": 2})
    params["train"].update({"epochs": 2, "augment": False,
                            "dp": {"noise_multiplier": 1.2, "max_grad_norm": 1.0, "delta": 1.0e-5}})
    params["promote"]["min_test_accuracy"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lineage.git(root, *lineage.GIT_IDENTITY, "commit", "-qam", "dp params")
    capsys.readouterr()
    assert cli("train", "-C", str(root), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    ws = Workspace(root)
    eps = [s["dp_epsilon"] for s in result["shards"]]
    assert all(e > 0 for e in eps)
    mv = production_version(ws, "unlearnflow-sisa")
    assert mv.tags["dp_epsilon"] == f"{max(eps):.4f}" and mv.tags["dp_delta"] == "1e-05"
    client = client_for(ws)
    children = client.search_runs([client.get_run(mv.run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{mv.run_id}'")
    assert sorted(c.data.metrics["dp_epsilon"] for c in children) == sorted(eps)
    assert cli("lineage", "-C", str(root)) == 0
    assert f"DP-SGD: (epsilon {max(eps):.4f}, delta 1e-05)" in capsys.readouterr().out
