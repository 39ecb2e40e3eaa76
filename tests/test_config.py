import pytest
import yaml

from conftest import REPO_ROOT
from unlearnflow.config import Params, parse_params
from unlearnflow.errors import ConfigError


def test_repo_params_yaml_parses_and_matches_the_dataclass_defaults():
    params = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    assert params.data == Params().data
    assert params.partition == Params().partition
    assert params.train == Params().train


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "unknown key(s) trian in params; valid keys: aggregate, audit, data"),
        ({"train": {"epochz": 3}}, "unknown key(s) epochz in train; valid keys: augment"),
        ({"train": {"lr": "fast"}}, "train.lr = 'fast' is invalid: expected a number"),
        ({"train": {"epochs": 0}}, "train.epochs = 0 is invalid"),
        ({"train": {"augment": "yes"}}, "train.augment = 'yes' is invalid: expected true or false"),
        ({"partition": {"shards": [0, 2]}}, "partition.shards = [0, 2] is invalid"),
        ({"partition": {"shards": 5}}, "partition.shards = 5 is invalid: expected a list"),
        ({"partition": {"key": "email"}}, "partition.key = 'email' is invalid: expected 'record' or 'subject'"),
        ({"runner": {"kind": "gpu"}}, "runner.kind = 'gpu' is invalid: expected 'dask', 'processes' or 'threads'"),
        ({"data": {"test_fraction": 0.6, "holdout_fraction": 0.5}}, "less than 1"),
        ({"data": "mnist5k"}, "data must be a mapping"),
        ({"retention": {"keep_superseded": True}}, "retention.reason = None is invalid: expected a reason"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_stage_epochs_follow_sisa_calibration():
    # 2E/(R+1) epochs per stage: R=4, E=20 -> 8; R=1 -> E
    train = parse_params({"train": {"epochs": 20}}).train
    assert train.stage_epochs(4) == 8
    assert train.stage_epochs(1) == 20
    assert parse_params({"train": {"epochs": 1}}).train.stage_epochs(10) == 1


def test_config_is_frozen():
    with pytest.raises(Exception):
        Params().train.lr = 1.0
