"""`unlearnflow keys`: the keys a workspace was built with, and their rotation.

    unlearnflow keys                          what lineage/keys.json records, what this machine holds
    unlearnflow keys rotate subject [--yes]   says what it costs; with --yes, does it
    unlearnflow keys rotate signing [--yes]

A rotation is journaled (``.unlearnflow/journal.json``, kind ``rotate``) step by step, and an
interrupted one is finished by the next writing command (``flows/guard.py:recover``):

  subject   begin (new key in .unlearnflow/subject.key.new) -> rekeyed (every pending request
            filed again under the new key's pseudonyms, mapped through the source's subjects and
            file names) -> switched (lineage/keys.json and .unlearnflow/subject.key hold the new
            key; the old one is gone) -> trained (pseudonyms decide each record's split and shard,
            so every shard retrains: a new version, kind ``key_rotation``, goes to production; the
            old key's data versions leave the DVC cache and remote) -> certified (a signed entry in
            the certificate chain says what serves now, in git and on the version's run)
  signing   begin (.unlearnflow/signing.key.new) -> entry (a key-rotation entry appended to the
            certificate chain, signed by the new key, endorsed by the old one if it is at hand)
            -> switched (lineage/keys.json, .unlearnflow/signing.key) -> recorded (the entry in an
            MLflow run of its own, the registered model's ``certificate_public_key``, git)
"""

from __future__ import annotations

import os

from tasks.erasure import advance, now, state_before
from tasks.workspace import Workspace, create_key_file
from unlearnflow import certificates, signing
from unlearnflow.config import Params
from unlearnflow.durable import fsync_dir
from unlearnflow.erasure import needs_secret_key
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.hashing import hash_json
from unlearnflow.keys import write_record
from unlearnflow.pseudonyms import key_id


def describe(ws: Workspace, params: Params) -> dict:
    """What the workspace records about its keys beside what this machine holds (nothing is
    created or refused): for each key, its identity recorded and held, and whether they agree."""
    record = ws.key_record()
    out = {"record": ws.layout.rel(ws.layout.keys), "rotations": list(record.rotations)}
    if needs_secret_key(params.data):
        text = ws.subject_key_here()
        out["subject"] = _agree(ws.recorded_subject_key_id(), key_id(text.encode()) if text else None,
                                "UNLEARNFLOW_SUBJECT_KEY or .unlearnflow/subject.key")
    else:
        out["subject"] = {"recorded": None, "held": "none needed: the data names nobody (a public key)", "ok": True}
    out["signing"] = _agree(ws.recorded_signer(), ws.public_key(),
                            "UNLEARNFLOW_SIGNING_KEY or .unlearnflow/signing.key")
    return out


def _agree(recorded: str | None, held: str | None, where: str) -> dict:
    if held is None:
        return {"recorded": recorded, "held": f"MISSING (neither {where})", "ok": recorded is None}
    ok = recorded is None or held == recorded
    return {"recorded": recorded, "held": held if ok else f"{held} — WRONG KEY (not the recorded one)", "ok": ok}


def plan(ws: Workspace, params: Params, key: str) -> list[str]:
    """What rotating ``key`` costs and does, before anything is done; refuses what cannot work."""
    _refuse(ws, params, key)
    if key == "signing":
        held = ws.held_signing_key() is not None
        return ["writes a key-rotation entry to the certificate chain, signed by a new key and "
                + ("endorsed by the current one" if held else
                   "NOT endorsed: the current key is not here, so only git and MLflow vouch for the change; say why "
                   "in your records (--reason)"),
                "no model retrains; earlier certificates keep verifying against the keys in force when they were made",
                "the new key is written to .unlearnflow/signing.key: back it up"]
    from tasks.tracking import latest_full_training_seconds

    pending = ws.pending_requests()
    full = latest_full_training_seconds(ws, params.tracking.registered_model) if (ws.root / "dvc.lock").is_file() \
        else None
    return [f"re-keys every subject and file name: each record's split and shard are drawn from its pseudonym, so "
            f"all {params.partition.num_shards} shards retrain from scratch"
            + (f" (the last full training took {full:.1f} s)" if full else "") + " and a new version is registered",
            f"files {len(pending)} pending request(s) again under the new key (the same people, new pseudonyms)",
            "the old key is deleted once the rotation is done; the new one is written to .unlearnflow/subject.key: "
            "back it up"]


def rotate(workspace: str, key: str, params: Params, reason: str = "") -> dict:
    """Rotate ``key`` (subject | signing) under the workspace lock, journaled. If a rotation of the
    same key was interrupted, finishing it (which entering the lock does) is the whole job."""
    from flows.guard import writing

    interrupted = Workspace(workspace).journal().read() or {}
    with writing(workspace, f"unlearnflow keys rotate {key}", params=params, signs=key == "subject") as (ws, params):
        if interrupted.get("kind") == "rotate" and interrupted["key"] == key:
            return {**interrupted, "finished_interrupted": True}
        _refuse(ws, params, key)
        if key == "subject":
            from unlearnflow.datasets import load_dataset
            from unlearnflow.keys import usable_subject_key

            subjects = load_dataset(params.data, ws.layout.ingest_cache).subject_ids  # raw ids, as the source has them
            new_key = _fresh(ws.layout.private / "subject.key.new", usable_subject_key(subjects, params.data))
            fields = {"old_id": ws.recorded_subject_key_id(), "new_id": key_id(new_key.encode()),
                      **state_before(params, str(ws.root))}
        else:
            new_key = _fresh(ws.layout.private / "signing.key.new", signing.new_private_key().hex())
            fields = {"old_public": ws.recorded_signer(), "new_public": signing.public_key(bytes.fromhex(new_key)),
                      "reason": reason}
        rotation_id = "k" + hash_json({"key": key, **fields})[:12]
        state = ws.journal().begin({"kind": "rotate", "key": key, "rotation_id": rotation_id,
                                    "started_at": now(), **fields})
        return finish_rotation(ws, params, state)


def finish_rotation(ws: Workspace, params: Params, state: dict) -> dict:
    """Do the steps of the journaled rotation ``state`` not yet done; each is idempotent."""
    for step, do in STEPS[state["key"]]:
        if step not in state["steps"]:
            state = advance(ws, state, step, **(do(ws, params, state) or {}))
    ws.journal().finish()
    return state


def _refuse(ws: Workspace, params: Params, key: str) -> None:
    from tasks.registry import production_version

    if key not in ("subject", "signing"):
        raise ConfigError(f"unknown key {key!r}; valid choices: subject, signing")
    if key == "subject" and not needs_secret_key(params.data):
        raise ConfigError(f"data.dataset = {params.data.dataset!r} names nobody: its pseudonyms use a public key, "
                          f"so there is no subject key to rotate")
    if key == "subject":
        ws.secret_key(params.data)  # the rotation maps the old key's pseudonyms: it needs the old key
    variable = {"subject": "UNLEARNFLOW_SUBJECT_KEY", "signing": "UNLEARNFLOW_SIGNING_KEY"}[key]
    if os.environ.get(variable):
        raise ConfigError(f"{variable} is set: a rotation writes the new key to .unlearnflow/{key}.key; unset "
                          f"{variable} (with its key in that file, if the workspace needs it), rotate, then put the "
                          f"new key where {variable} comes from")
    if key == "signing" and ws.recorded_signer() is None:
        raise ConfigError("this workspace has no signing key yet: its first erasure makes one; nothing to rotate")
    if key == "signing" and ws.layout.signing_key.is_file() and ws.held_signing_key() is None:
        raise ConfigError(f"{ws.layout.signing_key} holds a key that is not this workspace's; move it away (or "
                          f"restore the right one) before rotating")
    mv = production_version(ws, params.tracking.registered_model)
    if key == "subject" and mv is not None and mv.tags.get("guarantee") == "approximate":
        raise UnlearnflowError(f"production v{mv.version} is an approximate (fast-path) version; run "
                               f"`unlearnflow erase` first, then rotate")


def _fresh(path, text: str) -> str:
    """The new key of a rotation about to begin: written (0600 from the start, durably) before the
    journal names it; a file left by a rotation that never began is replaced."""
    path.unlink(missing_ok=True)
    return create_key_file(path, text)


# ---- the subject key's steps ---------------------------------------------------------------

def _rekey(ws: Workspace, params: Params, state: dict) -> dict:
    from unlearnflow.erasure import rekeying

    old, new = ws.layout.subject_key.read_text().strip().encode(), _new_key(ws, "subject").encode()
    if key_id(old) != state["old_id"] or key_id(new) != state["new_id"]:
        raise UnlearnflowError(f"the keys in {ws.layout.private} are not the ones the rotation began with "
                               f"({state['old_id']} -> {state['new_id']}); restore them from your backup")
    pseudonyms = rekeying(params.data, old, new, ws.layout.ingest_cache)
    return {"rekeyed": ws.ledger().rekey(pseudonyms, certificates.completed_requests(ws.layout.certificates))}


def _switch_subject(ws: Workspace, params: Params, state: dict) -> None:
    record = ws.key_record()
    if record.subject_key_id != state["new_id"]:
        write_record(ws.layout.keys, record.rotated("subject", state["new_id"], at=state["started_at"],
                                                    rotation_id=state["rotation_id"],
                                                    requests_rekeyed=len(state["rekeyed"])))
    _install(ws.layout.private / "subject.key.new", ws.layout.subject_key)


def _retrain(ws: Workspace, params: Params, state: dict) -> dict:
    from flows.train import train_flow
    from tasks.registry import registered_versions
    from tasks.runners import make_task_runner

    if not (ws.root / "dvc.lock").is_file():  # never trained: the first training uses the new key
        return {"version": None}
    rid = state["rotation_id"]
    done = [v for v in registered_versions(ws, params.tracking.registered_model)
            if v.tags.get("key_rotation_id") == rid]
    if done:  # registered by an attempt that was interrupted after that
        return {"version": str(done[0].version), "run_id": done[0].run_id,
                "lineage": {k: done[0].tags[k] for k in ("dvc_lock_md5", "data_version", "git_commit")}}
    rotation = {"rotation_id": rid, "summary": f"subject key {state['old_id']} -> {state['new_id']}, every shard "
                f"retrained", "requests_rekeyed": len(state["rekeyed"])}
    result = train_flow.with_options(task_runner=make_task_runner(params.runner))(
        workspace=str(ws.root), params=params, rotation=rotation)
    return {"version": result["mlflow"]["version"], "run_id": result["mlflow"]["run_id"],
            "promoted": result["mlflow"]["promoted"],
            "lineage": {k: result["lineage"][k] for k in ("dvc_lock_md5", "data_version", "git_commit")},
            "shards_trained": [s["shard"] for s in result["shards"] if s["trained_stages"]]}


def _certify(ws: Workspace, params: Params, state: dict) -> dict:
    """The rotation's signed entry in the certificate chain (what serves now and what changed,
    like an erasure's certificate), logged to its version's run and committed to git."""
    from tasks import lineage, store
    from tasks.erasure import snapshot

    if not state.get("version"):
        return {}
    folder, rid = ws.layout.certificates, state["rotation_id"]
    path = certificates.find(folder, rid)
    if path is None:
        after = snapshot(params.partition, str(ws.root))
        body = certificates.subject_rotation_body(
            rotation_id=rid, created_at=state["started_at"], old_id=state["old_id"], new_id=state["new_id"],
            rekeyed=state["rekeyed"], affected=certificates.affected_shards(state["before"], after), after=after,
            lineage=state["lineage"], previous_version=state["previous_version"], new_version=state["version"],
            registered_model=params.tracking.registered_model)
        path = certificates.write_subject_rotation(folder, body, ws.signing_key())
    store.log_artifact(ws, state["run_id"], str(path), "certificate")
    lineage.git_commit_lineage(ws.root, f"unlearnflow keys rotate subject {rid}: {path.name}")
    return {"entry": str(path)}


# ---- the signing key's steps ---------------------------------------------------------------

def _entry(ws: Workspace, params: Params, state: dict) -> dict:
    folder, rid = ws.layout.certificates, state["rotation_id"]
    path = certificates.find(folder, rid)
    if path is None:
        new, old = bytes.fromhex(_new_key(ws, "signing")), ws.held_signing_key()
        reason = state["reason"] or ("rotation" if old else "the previous signing key was lost")
        path = certificates.write_signing_rotation(folder, rid, state["started_at"], state["old_public"], new, old,
                                                   reason)
    return {"entry": str(path)}


def _switch_signing(ws: Workspace, params: Params, state: dict) -> None:
    record = ws.key_record()
    if record.signing_public_key != state["new_public"]:
        write_record(ws.layout.keys, record.rotated("signing", state["new_public"], at=state["started_at"],
                                                    rotation_id=state["rotation_id"]))
    _install(ws.layout.private / "signing.key.new", ws.layout.signing_key)


def _record(ws: Workspace, params: Params, state: dict) -> dict:
    from tasks import lineage, tracking

    run_id = tracking.log_key_rotation(ws, params, state["rotation_id"], state["entry"], state["new_public"])
    head = lineage.git_commit_lineage(ws.root, f"unlearnflow keys rotate signing {state['rotation_id']}")
    return {"run_id": run_id, "git_commit": head}


def _new_key(ws: Workspace, key: str) -> str:
    """The rotation's new key: in ``<key>.key.new`` until it is installed, then the key file."""
    pending = ws.layout.private / f"{key}.key.new"
    return (pending if pending.is_file() else ws.layout.private / f"{key}.key").read_text().strip()


def _install(pending, target) -> None:
    """The new key replaces the old one (atomic rename); the old key is gone."""
    if pending.is_file():
        os.replace(pending, target)
        fsync_dir(target.parent)


STEPS = {"subject": (("rekeyed", _rekey), ("switched", _switch_subject), ("trained", _retrain),
                     ("certified", _certify)),
         "signing": (("entry", _entry), ("switched", _switch_signing), ("recorded", _record))}
