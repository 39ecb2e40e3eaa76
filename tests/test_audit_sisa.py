"""Known answers on a real SISA ensemble (digits): the exact erasure's forget set looks
like data never seen, and like what a model retrained without it sees.

Recipe: a small CNN trained long without augmentation, so the original model
demonstrably memorises records with flipped labels (the signal the audit must see
disappear). Non-members for the flipped case are holdout records with flipped labels
too, so that "looks unseen" compares like with like.
"""

from dataclasses import replace

import numpy as np
import pytest

from unlearnflow.audit import Outputs
from unlearnflow.audit.lira import train_references
from unlearnflow.audit.report import audit, avg_gap
from unlearnflow.checkpoints import CheckpointStore
from unlearnflow.config import DataConfig, PartitionConfig, TrainConfig
from unlearnflow.erasure import apply_requests, load_pseudonymized, mislabel
from unlearnflow.records import RecordSet, split_records
from unlearnflow.sisa import train_ensemble

PARTITION = PartitionConfig(shards=(0, 1, 2), slices=4)
MEMORISING = TrainConfig(model="cnn", epochs=60, augment=False)




def outputs(ensemble, rs: RecordSet) -> Outputs:
    return Outputs(ensemble.scores(rs.images), rs.labels, rs.record_ids)


@pytest.fixture(scope="module")
def splits():
    cfg = DataConfig(dataset="digits")
    return split_records(load_pseudonymized(cfg, b""), cfg)


@pytest.mark.slow  # trains three SISA ensembles per scenario
@pytest.mark.parametrize("scenario", ["flipped labels (5%)", "random records (10%)"])
def test_exact_erasure_looks_unseen_and_like_the_retrained_reference(splits, scenario, tmp_path):
    rng = np.random.default_rng(0)
    train, test, holdout = splits["train"], splits["test"], splits["holdout"]
    if scenario.startswith("flipped"):
        pick = rng.choice(len(train), len(train) // 20, replace=False)
        train = mislabel(train, pick, rng)
        non_members = mislabel(holdout, range(len(holdout)), rng)  # unseen and flipped: like with like
    else:
        pick = rng.choice(len(train), len(train) // 10, replace=False)
        non_members = test
    forget = train.take(pick)
    retain = apply_requests(train, set(forget.record_ids), {})
    store = CheckpointStore(tmp_path / "checkpoints")

    original, _ = train_ensemble(train, PARTITION, MEMORISING, store=store, workers=2)
    erased, _ = train_ensemble(retain, PARTITION, MEMORISING, store=store, workers=2)  # from checkpoints
    reference, _ = train_ensemble(retain, PARTITION, replace(MEMORISING, seed=1), workers=2)  # other seed

    refs = train_references(RecordSet.concat([train, non_members]), 4, PARTITION, MEMORISING, workers=2)
    report = {name: audit(outputs(m, forget), outputs(m, retain), outputs(m, test), outputs(m, non_members), refs)
              for name, m in [("original", original), ("erased", erased), ("reference", reference)]}
    loss = {k: r["forget_vs_holdout_mia_auc"] for k, r in report.items()}
    lira = {k: r["forget_vs_holdout_lira_auc"] for k, r in report.items()}
    print(scenario, "loss AUC", loss, "LiRA AUC", lira)

    if scenario.startswith("flipped"):  # memorised: both attacks see it before the erasure
        assert loss["original"] > 0.8 and lira["original"] > 0.8, report["original"]
    assert abs(loss["erased"] - 0.5) < 0.1 and abs(lira["erased"] - 0.5) < 0.1, report["erased"]
    assert abs(loss["erased"] - loss["reference"]) < 0.05 and abs(lira["erased"] - lira["reference"]) < 0.1
    assert avg_gap(report["erased"], report["reference"]) < 0.03
