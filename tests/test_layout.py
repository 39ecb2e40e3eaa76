"""dvc.yaml and unlearnflow.layout name the same files, and each train@k reads only its shard."""

import yaml

from conftest import REPO_ROOT
from unlearnflow.layout import Layout


def test_dvc_yaml_paths_agree_with_the_layout():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    lay = Layout(REPO_ROOT)
    assert stages["prepare"]["outs"] == [lay.rel(lay.prepared)]
    assert stages["partition"]["deps"] == [lay.rel(lay.split_dir("train"))]
    assert lay.rel(lay.split_part("train", 3)[0]) == "data/prepared/train/part-03.npy"
    assert lay.rel(lay.split_dir("test")) in stages["evaluate"]["deps"]
    assert stages["partition"]["outs"] == [lay.rel(lay.shards_dir)]
    train = stages["train"]["do"]
    item = "${item}"
    assert train["deps"] == [f"data/shards/shard_{item}.json", f"data/shards/shard_{item}.npy"]
    assert lay.rel(lay.shard_manifest(3)) == "data/shards/shard_3.json"
    assert train["outs"] == [f"models/shards/shard_{item}.pt"] and lay.rel(lay.model(3)) == "models/shards/shard_3.pt"
    assert train["params"] == ["train"]  # reads nothing else: a data change elsewhere never retrains this shard
    assert stages["aggregate"]["outs"] == [lay.rel(lay.ensemble)]
    assert list(stages["evaluate"]["metrics"][0]) == [lay.rel(lay.metrics)]
