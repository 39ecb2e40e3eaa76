"""Crash safety of the core: the ledger never loses or garbles an acknowledged request,
certificates are signed so that even the newest cannot be rewritten unseen, what a
certificate says about shards comes from the state, one writer holds a workspace."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unlearnflow import certificates, signing
from unlearnflow.durable import Journal, WorkspaceBusy, WorkspaceLock, atomic_write
from unlearnflow.hashing import canonical_json
from unlearnflow.ledger import Ledger, LedgerDamaged, LedgerError, Request

T = "2026-01-01T00:00:00+00:00"
KEY = bytes(range(32))


def filed(n: int) -> Request:
    return Request("forget", records=(f"rec{n}",))


# ---- issue 10, defect 1: a torn ledger line ------------------------------------------------

def test_a_torn_last_line_is_set_aside_and_never_glued_onto_or_lost(tmp_path):
    ledger = Ledger(tmp_path / "ledger" / "requests.jsonl", aside_dir=tmp_path / "aside")
    acknowledged = [ledger.file(filed(i), T)[0] for i in range(3)]
    data = ledger.path.read_bytes()
    cut = data[: len(data) - 25]  # a crash (or a full disk) mid-append leaves half a line
    ledger.path.write_bytes(cut)
    state = ledger.read()  # readers skip the torn line, and say so
    assert list(state.requests) == acknowledged[:2] and state.torn
    later = [ledger.file(filed(i), T)[0] for i in (3, 4)]  # the next filings are not glued onto it
    assert ledger.set_aside is None  # (the first of them set it aside already)
    state = ledger.read()
    assert list(state.requests) == acknowledged[:2] + later and not state.torn
    aside = list((tmp_path / "aside").iterdir())
    assert len(aside) == 1 and aside[0].read_bytes() == cut.split(b"\n")[-1]
    assert all(json.loads(line)["sum"] for line in ledger.path.read_text().splitlines())


def test_the_filing_that_repairs_a_torn_ledger_says_where_the_torn_line_went(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl", aside_dir=tmp_path / "aside")
    ledger.file(filed(0), T)
    with open(ledger.path, "a") as f:
        f.write('{"event": "filed", "request_id": "rX", "req')
    ledger.file(filed(1), T)
    assert ledger.set_aside is not None and ledger.set_aside.read_bytes().startswith(b'{"event": "filed"')


def test_a_complete_last_event_missing_only_its_newline_is_kept(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    first = ledger.file(filed(0), T)[0]
    second = ledger.file(filed(1), T)[0]
    ledger.path.write_bytes(ledger.path.read_bytes()[:-1])  # the crash hit between the line and its newline
    assert list(ledger.read().requests) == [first, second]
    third = ledger.file(filed(2), T)[0]
    assert list(ledger.read().requests) == [first, second, third] and ledger.set_aside is None


def test_a_damaged_line_in_the_middle_is_an_error_that_names_it(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    for i in range(3):
        ledger.file(filed(i), T)
    lines = ledger.path.read_text().splitlines()
    lines[1] = lines[1].replace("rec1", "rec9")  # valid JSON, wrong checksum: edited by hand
    ledger.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError, match=r"requests.jsonl:2 is not an intact ledger event"):
        ledger.read()


# ---- issue 23: a damaged acknowledged line is not a torn write ---------------------------------

def resolve_all(ledger: Ledger) -> bytes:
    """Three requests filed and resolved: what git committed after their erasure."""
    for i in range(3):
        rid = ledger.file(filed(i), T)[0]
        ledger.record([{"event": "resolved", "request_id": rid, "records": [f"rec{i}"]}])
    return ledger.path.read_bytes()


def certified(state) -> str | None:
    """A certificate lists every request filed so far: each must show resolved."""
    waiting = [rid for rid, r in state.requests.items() if r.status != "resolved"]
    return f"certificate 0001-e.json lists request {waiting[0]}" if waiting else None


def test_a_damaged_acknowledged_line_is_restored_from_the_committed_copy(tmp_path):
    ledger = Ledger(tmp_path / "ledger" / "requests.jsonl", aside_dir=tmp_path / "aside")
    committed = resolve_all(ledger)
    ledger = Ledger(ledger.path, aside_dir=tmp_path / "aside", committed=lambda: committed, depends=certified)
    ledger.path.write_bytes(committed[:-12])  # the last `resolved` line cut after the fact
    rid = ledger.file(filed(7), T)[0]
    assert ledger.restored == (6,) and ledger.set_aside is None and not (tmp_path / "aside").exists()
    assert ledger.path.read_bytes().startswith(committed)
    assert ledger.read().requests[rid].status == "pending" and len(ledger.read().erased_records()) == 3


def test_a_damaged_acknowledged_line_git_does_not_hold_is_refused_and_left_as_it_is(tmp_path):
    ledger = Ledger(tmp_path / "ledger" / "requests.jsonl", aside_dir=tmp_path / "aside")
    data = resolve_all(ledger)
    ledger = Ledger(ledger.path, aside_dir=tmp_path / "aside", committed=lambda: None, depends=certified)
    ledger.path.write_bytes(data[:-12])
    rid = json.loads(data.splitlines()[-1])["request_id"]
    with pytest.raises(LedgerDamaged, match=rf"requests.jsonl line 6 \(request {rid}\) is damaged, and certificate "
                                            r"0001-e.json lists request .* `git checkout -- ledger/requests.jsonl`"):
        ledger.file(filed(7), T)
    assert ledger.path.read_bytes() == data[:-12] and not (tmp_path / "aside").exists()
    assert ledger.problems() == [f"the ledger and the lineage disagree: certificate 0001-e.json lists request {rid}"]


def test_a_damaged_middle_line_is_restored_from_git_and_a_copy_that_disagrees_is_not_used(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    data = resolve_all(ledger)
    lines = data.splitlines(keepends=True)
    damaged = b"".join(lines[:2] + [lines[2][:-30] + b"\n"] + lines[3:])
    ledger.path.write_bytes(damaged)
    other = b"".join(lines[:1] + [lines[0]] + lines[2:])  # not this ledger: its line 2 differs from ours
    with pytest.raises(LedgerDamaged, match="line 3"):
        Ledger(ledger.path, committed=lambda: other).file(filed(7), T)
    assert ledger.path.read_bytes() == damaged
    mended = Ledger(ledger.path, committed=lambda: data)
    mended.file(filed(7), T)
    assert mended.restored == (3,) and mended.path.read_bytes().startswith(data)


def test_filing_is_acknowledged_only_with_the_complete_line_on_disk(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    rid, new = ledger.file(filed(0), T)
    line = ledger.path.read_bytes()
    assert new and line.endswith(b"\n") and line.count(b"\n") == 1 and rid.encode() in line


# ---- issue 10, defect 5: signed certificates --------------------------------------------

def write_chain(d, n=3):
    for i in range(n):
        certificates.write_certificate(d, {"erasure_id": f"e{i}", "erased_record_ids": [f"x{i}", f"y{i}"],
                                           "requests": [{"request_id": f"r{i}"}]}, KEY)


def test_rewriting_the_newest_certificate_in_canonical_form_breaks_its_signature(tmp_path):
    write_chain(tmp_path)
    assert certificates.verify_chain(tmp_path, signing.public_key(KEY)) == []
    newest = certificates.certificate_files(tmp_path)[-1]
    cert = json.loads(newest.read_text())
    cert["erased_record_ids"].remove("y2")  # one erased record id removed, canonical form kept
    newest.write_bytes(canonical_json(cert) + b"\n")
    assert certificates.verify_chain(tmp_path) == [f"{newest.name}: signature does not match its content"]


def test_a_chain_signed_by_another_key_is_reported(tmp_path):
    write_chain(tmp_path, 1)
    other = signing.public_key(signing.new_private_key())
    assert "not this workspace's" in certificates.verify_chain(tmp_path, other)[0]


def test_a_key_changes_only_by_a_rotation_entry_endorsed_by_the_key_it_replaces(tmp_path):
    new = signing.new_private_key()
    write_chain(tmp_path, 2)
    certificates.write_signing_rotation(tmp_path, "k1", T, signing.public_key(KEY), new, old_key=KEY, reason="rotation")
    certificates.write_certificate(tmp_path, {"erasure_id": "e9", "requests": [{"request_id": "r9"}]}, new)
    assert certificates.verify_chain(tmp_path, signing.public_key(new)) == []
    assert "is not this workspace's" in certificates.verify_chain(tmp_path, signing.public_key(KEY))[0]
    assert [r["endorsed_by_previous_key"] for r in certificates.rotations(tmp_path)] == [True]


def test_a_key_changed_without_a_rotation_entry_or_with_a_forged_endorsement_is_reported(tmp_path):
    new = signing.new_private_key()
    write_chain(tmp_path, 1)
    certificates.write_certificate(tmp_path, {"erasure_id": "e9", "requests": []}, new)  # a new key, silently
    assert "the key in force there" in certificates.verify_chain(tmp_path)[0]
    forged = tmp_path / "forged"
    write_chain(forged, 1)
    thief = signing.new_private_key()  # claims the old key endorsed it, signing the endorsement itself
    path = certificates._append(forged, "k1", {"kind": certificates.ROTATION, "key": "signing", "rotation_id": "k1",
                                               "created_at": T,
                                               "reason": "", "previous_signer_public_key": signing.public_key(KEY),
                                               "endorsed_by_previous_key": True}, thief, endorsing_key=thief)
    assert certificates.verify_chain(forged) == [f"{path.name}: its endorsement is not the previous key's signature"]


# ---- issue 10, defect 2: what a certificate says comes from the state -------------------

def test_affected_shards_are_derived_from_the_constituents_before_and_after():
    before = {"0": {"slice_keys": ["a", "b", "c"], "model_md5": "m0"},
              "1": {"slice_keys": ["d", "e", "f"], "model_md5": "m1"},
              "2": {"slice_keys": ["g", "h", "i"], "model_md5": "m2"}}
    after = {"0": {"slice_keys": ["a", "b", "c"], "model_md5": "m0", "manifest_md5": "q0"},
             "1": {"slice_keys": ["d", "E", "F"], "model_md5": "M1", "manifest_md5": "q1"},
             "2": {"slice_keys": ["G", "H", "I"], "model_md5": "M2", "manifest_md5": "q2"}}
    affected = certificates.affected_shards(before, after)
    assert list(affected) == ["1", "2"]
    assert affected["1"] == {"first_retrained_slice": 2, "resumed_from_checkpoint": "d", "previous_model_md5": "m1",
                             "model_md5": "M1", "manifest_md5": "q1"}
    assert affected["2"]["first_retrained_slice"] == 1 and affected["2"]["resumed_from_checkpoint"] is None
    # whichever process trained them: the same state gives the same answer
    assert certificates.affected_shards(before, after) == affected


# ---- journal and lock ---------------------------------------------------------------

def test_the_journal_names_the_last_step_done_and_is_gone_when_finished(tmp_path):
    journal = Journal(tmp_path / "journal.json")
    state = journal.begin({"kind": "erase", "erasure_id": "e1"})
    state = journal.update(state, "resolved")
    state = journal.update(state, "computed", version="3")
    assert journal.read() == {"kind": "erase", "erasure_id": "e1", "steps": ["resolved", "computed"], "version": "3"}
    journal.finish()
    assert journal.read() is None


def test_atomic_write_leaves_old_or_new_bytes(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


HOLD = """
import sys, time
from unlearnflow.durable import WorkspaceLock
with WorkspaceLock(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_writer_at_a_time_and_a_dead_holders_lock_is_free(tmp_path):
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusy, match=r"`holder` \(pid \d+"):
            with WorkspaceLock(path, "second", wait=False):
                pass
        messages = []
        with pytest.raises(WorkspaceBusy, match="gave up after"):
            with WorkspaceLock(path, "third", notify=messages.append, timeout=0.5):
                pass
        assert messages and "waiting for `holder`" in messages[0]
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: no clean-up runs
        holder.wait()
        t0 = time.monotonic()
        with WorkspaceLock(path, "after", wait=False):  # the kernel dropped the dead holder's lock
            with WorkspaceLock(path, "nested", wait=False):  # re-entrant in one process
                pass
        assert time.monotonic() - t0 < 1
    finally:
        holder.kill()
