"""A subject-key rotation draws a key under which every split holds someone. Splits are drawn
from pseudonyms, so a random key could leave the test split empty; the rotation's retraining
then failed after the key was switched, and every later command met an unfinished rotation
(seen once in CI: tests/test_keys.py, 60 people, test_fraction 0.1)."""

import random

import pytest

from unlearnflow.config import DataConfig
from unlearnflow.errors import ConfigError
from unlearnflow.keys import usable_subject_key
from unlearnflow.pseudonyms import pseudonym
from unlearnflow.records import split_of

CFG = DataConfig(dataset="imagefolder:/nowhere", test_fraction=0.1, holdout_fraction=0.1)
PEOPLE = [f"person-{i}" for i in range(4)]  # few people: most random keys leave a split empty


def splits(key: str) -> set[str]:
    return {split_of(pseudonym(key.encode(), p), CFG) for p in PEOPLE}


def seeded(seed: int):
    rng = random.Random(seed)
    return lambda: "%064x" % rng.getrandbits(256)


def test_random_keys_often_leave_a_split_empty_and_the_drawn_key_never_does():
    draw = seeded(0)
    assert sum(splits(draw()) != {"train", "test", "holdout"} for _ in range(200)) > 150  # the defect's cause
    for seed in range(5):
        assert splits(usable_subject_key(PEOPLE, CFG, draw=seeded(seed))) == {"train", "test", "holdout"}


def test_no_usable_key_is_one_line_naming_what_to_change():
    with pytest.raises(ConfigError, match=r"no new subject key among 50 drawn puts one of the 1 subject\(s\) in each "
                                          r"of the splits holdout, test, train: add subjects"):
        usable_subject_key(["only-one"], CFG, draw=seeded(1), tries=50)
