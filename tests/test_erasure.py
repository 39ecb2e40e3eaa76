"""Erasure on the data side: ledger, pseudonyms, resolution, tombstones, certificates."""

import json

import pytest

from conftest import make_records
from unlearnflow import certificates
from unlearnflow.config import DataConfig, PartitionConfig, TrainConfig
from unlearnflow.errors import ConfigError
from unlearnflow.erasure import (ErasedDataError, add_tombstones, apply_requests, check_tombstones, make_request,
                                 read_tombstones, resolve)
from unlearnflow.hashing import sha256_hex
from unlearnflow.ledger import Ledger, Request
from unlearnflow.partition import partition
from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
from unlearnflow.training import ModelSpec, train_constituent

KEY = b"test-secret"
SIGNER = bytes(range(32))  # a fixed Ed25519 private key for the tests
T = "2026-01-01T00:00:00+00:00"


def test_filing_the_same_request_twice_has_no_second_effect(tmp_path):
    ledger = Ledger(tmp_path / "ledger" / "requests.jsonl")
    req = Request("forget", subjects=("pA", "pB"))
    rid, new = ledger.file(req, T)
    rid2, new2 = ledger.file(Request("forget", subjects=("pB", "pA", "pA")), T)
    assert new and not new2 and rid == rid2
    assert len(ledger.path.read_text().splitlines()) == 1
    assert [r.request.request_id for r in ledger.read().pending(set())] == [rid]
    assert ledger.read().pending({rid}) == []


def test_an_acknowledged_request_is_on_disk_and_a_torn_last_line_is_ignored(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    rid, _ = ledger.file(Request("forget", records=("abc",)), T)
    with open(ledger.path, "a") as f:
        f.write('{"event": "filed", "request_id": "rX", "req')  # a crash mid-write
    assert list(Ledger(ledger.path).read().requests) == [rid]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="delete", records=("a",)), "request kind 'delete' is invalid; valid choices: forget, rectify"),
    (dict(kind="forget"), "at least one subject, record or file"),
    (dict(kind="rectify", records=("a",)), "one corrected label"),
    (dict(kind="forget", records=("a",), label=3), "takes no label"),
])
def test_bad_requests_are_refused_before_anything_is_written(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Request(**kwargs)


def test_raw_subjects_and_file_names_never_reach_the_ledger(tmp_path):
    cfg = DataConfig(dataset="digits")
    req = make_request("forget", cfg, KEY, subjects=["s042"], files=["Away_image03.JPG"])
    Ledger(tmp_path / "l.jsonl").file(req, T)
    text = (tmp_path / "l.jsonl").read_text()
    assert "s042" not in text and "Away_image03" not in text
    assert pseudonym(SYNTHETIC_KEY, "s042") in text  # synthetic subjects: public key, reproducible anywhere
    personal = make_request("forget", DataConfig(dataset="imagefolder:/x", subjects_csv="s.csv"), KEY,
                            subjects=["player-17"])
    assert personal.subjects == (pseudonym(KEY, "player-17"),) != (pseudonym(SYNTHETIC_KEY, "player-17"),)


def test_resolve_matches_subjects_records_and_files_and_reports_nothing_when_nothing_matches():
    recs = make_records(60)
    subject = recs.subject_ids[0]
    by_subject = resolve(Request("forget", subjects=(subject,)), recs, KEY)
    assert set(by_subject) == {r for r, s in zip(recs.record_ids, recs.subject_ids) if s == subject}
    assert resolve(Request("forget", records=(recs.record_ids[5],)), recs, KEY) == (recs.record_ids[5],)
    by_file = resolve(Request("forget", files=(pseudonym(KEY, recs.sources[7]),)), recs, KEY)
    assert by_file == (recs.record_ids[7],)
    assert resolve(Request("forget", subjects=("p-nobody",)), recs, KEY) == ()


def test_apply_requests_drops_erased_records_and_corrects_labels_keeping_ids():
    recs = make_records(50)
    gone, fixed = set(recs.record_ids[:3]), {recs.record_ids[10]: (int(recs.labels[10]) + 1) % 4}
    out = apply_requests(recs, gone, fixed)
    assert len(out) == 47 and not gone & set(out.record_ids)
    i = out.record_ids.index(recs.record_ids[10])
    assert out.labels[i] == fixed[recs.record_ids[10]]


def test_tombstones_refuse_to_rebuild_erased_records(tmp_path):
    recs = make_records(20)
    add_tombstones(tmp_path / "t.jsonl", {recs.record_ids[4]: "r123"})
    add_tombstones(tmp_path / "t.jsonl", {recs.record_ids[4]: "r123"})  # idempotent
    assert read_tombstones(tmp_path / "t.jsonl") == {recs.record_ids[4]: "r123"}
    with pytest.raises(ErasedDataError, match="erased under request\\(s\\) r123"):
        check_tombstones(recs, read_tombstones(tmp_path / "t.jsonl"))


def test_erasing_a_subject_retrains_its_shard_from_its_slice_and_equals_training_from_scratch(tmp_path):
    """Core exactness: resume-from-checkpoint after erasure == from scratch on what remains."""
    from unlearnflow.checkpoints import CheckpointStore
    import io
    import torch

    recs = make_records(300)
    cfg, spec = TrainConfig(model="mlp", epochs=3), ModelSpec("mlp", (1, 8, 8), 4)
    pcfg = PartitionConfig(shards=(0, 1, 2), slices=4)
    store = CheckpointStore(tmp_path / "ckpt")
    before = [train_constituent(m, x, spec, cfg, store) for m, x in partition(recs, pcfg)]
    victim = recs.subject_ids[0]
    remaining = apply_requests(recs, {r for r, s in zip(recs.record_ids, recs.subject_ids) if s == victim}, {})
    after = [train_constituent(m, x, spec, cfg, store) for m, x in partition(remaining, pcfg)]
    scratch = [train_constituent(m, x, spec, cfg) for m, x in partition(remaining, pcfg)]

    def b(r):
        buf = io.BytesIO()
        torch.save(r.state_dict, buf)
        return buf.getvalue()

    retrained = [k for k, r in enumerate(after) if r.trained_stages]
    assert len(retrained) == 1  # one person, one shard
    k = retrained[0]
    assert after[k].trained_stages[0] == after[k].resumed_from + 1
    assert [b(r) for r in after] == [b(r) for r in scratch]
    assert b(after[k]) != b(before[k])


def test_certificate_chain_detects_edits_and_removals(tmp_path):
    d = tmp_path / "certs"
    for i in range(3):
        certificates.write_certificate(d, {"erasure_id": f"e{i}", "requests": [{"request_id": f"r{i}"}]}, SIGNER)
    assert certificates.verify_chain(d) == []
    assert certificates.completed_requests(d) == {"r0", "r1", "r2"}
    files = certificates.certificate_files(d)
    cert = json.loads(files[1].read_text())
    cert["requests"] = []
    files[1].write_text(json.dumps(cert))
    problems = certificates.verify_chain(d)
    assert any("0002" in p for p in problems) and any("0003" in p and "previous_sha256" in p for p in problems)
    files[1].unlink()
    assert any("sequence" in p for p in certificates.verify_chain(d))


def test_the_10000th_certificate_is_seen_and_the_chain_goes_on_after_it(tmp_path):
    """Sequence numbers are written with four digits or more: 10000-<id>.json must be listed,
    after 9999, found by its id and linked to by the next one (a four-digit glob lost it and
    every later certificate was written as 10000 again, linked to 9999)."""
    d = tmp_path / "certs"
    d.mkdir()
    for n in range(1, 10000):  # stand-ins for 9,999 earlier certificates: only their names are read
        (d / f"{n:04d}-pad{n}.json").write_text("{}\n")
    first = certificates.write_certificate(d, {"erasure_id": "e1", "requests": [{"request_id": "r1"}]}, SIGNER)
    second = certificates.write_certificate(d, {"erasure_id": "e2", "requests": [{"request_id": "r2"}]}, SIGNER)
    assert (first.name, second.name) == ("10000-e1.json", "10001-e2.json")
    files = certificates.certificate_files(d)
    assert len(files) == 10001 and files[-3:] == [d / "9999-pad9999.json", first, second]
    assert json.loads(second.read_text())["previous_sha256"] == sha256_hex(first.read_bytes())
    assert certificates.find(d, "e1") == first and certificates.find(d, "e") is None
    assert certificates.completed_requests(d) == {"r1", "r2"}
