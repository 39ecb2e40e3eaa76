"""Erasure certificates: one JSON file per erasure, hash-chained and signed.

``lineage/certificates/0001-<erasure_id>.json`` holds what was erased (request ids,
pseudonymous record ids), what changed (shards, first retrained slice, the
checkpoint each shard resumed from, model md5 before and after: ``affected_shards``
derives these from the constituents before and after, never from what one process
happened to train), and what now serves (manifest and model md5s, dvc.lock md5, git
commit, model versions). ``previous_sha256`` is the SHA-256 of the previous
certificate file's bytes, so editing or removing any certificate breaks every later
link; ``signature`` is the workspace key's Ed25519 signature over the rest
(``signing.py``), so even the newest one cannot be rewritten unseen. The same file is
committed to git and logged to MLflow; ``verify`` compares all three.

Key rotations are entries of the same chain (``NNNN-k<id>.json``, ``kind: key_rotation``).
A subject-key rotation re-partitions every record, so its entry, signed like a certificate,
says what serves after it (constituents, versions, the requests it re-keyed). The signing
key changes only by a signing-key rotation entry: it names the key it replaces and the new
one, is signed by the new key and, when the old key was still at hand, endorsed by it
(``endorsement``). Every entry must be signed by the key in force at its place.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearnflow import signing
from unlearnflow.durable import atomic_write
from unlearnflow.hashing import canonical_json, sha256_hex

FORMAT = "unlearnflow.erasure_certificate/2"  # /1: unsigned (before signatures)


def numbered_files(directory: Path, name: str = "*") -> list[Path]:
    """``NNNN-<name>.json`` files in sequence order. The number has four digits or more (the
    10,000th entry is ``10000-….json``), so files are ordered by its value, not by their names."""
    def number(path: Path) -> int | None:
        head, _, tail = path.name.partition("-")
        return int(head) if len(head) >= 4 and head.isdigit() and (name == "*" or tail == f"{name}.json") else None

    hits = [p for p in Path(directory).glob(f"[0-9]*-{name}.json") if number(p) is not None]
    return sorted(hits, key=lambda p: (number(p), p.name))


def certificate_files(directory: Path) -> list[Path]:
    return numbered_files(directory)


ROTATION = "key_rotation"  # the ``kind`` of a key-rotation entry (erasure certificates have none)


def serving_files(directory: Path) -> list[Path]:
    """The entries that say what serves after them: erasure certificates and subject-key
    rotations (a signing-key rotation changes no model)."""
    return [p for p in certificate_files(directory) if "constituents" in json.loads(p.read_text())]


def latest(directory: Path) -> dict | None:
    files = serving_files(directory)
    return json.loads(files[-1].read_text()) if files else None


def find(directory: Path, erasure_id: str) -> Path | None:
    """The certificate of ``erasure_id``, if it was written."""
    hits = numbered_files(directory, erasure_id)
    return hits[0] if hits else None


def affected_shards(before: dict, after: dict) -> dict:
    """Shards whose constituent changed, from {shard: {"slice_keys", "model_md5", "manifest_md5"}}
    before and after: the first slice whose key changed (1-based), the checkpoint training
    resumed from (the key of the slice before it; None = from scratch), both model md5s."""
    out = {}
    for shard, new in sorted(after.items(), key=lambda kv: int(kv[0])):
        old = before.get(shard) or {}
        if old.get("model_md5") == new["model_md5"]:
            continue
        old_keys, new_keys = old.get("slice_keys") or [], new["slice_keys"]
        first = next((i for i, key in enumerate(new_keys) if i >= len(old_keys) or old_keys[i] != key), len(new_keys))
        out[shard] = {
            "first_retrained_slice": first + 1,
            "resumed_from_checkpoint": new_keys[first - 1] if first > 0 else None,
            "previous_model_md5": old.get("model_md5"),
            "model_md5": new["model_md5"],
            "manifest_md5": new.get("manifest_md5"),
        }
    return out


def write_certificate(directory: Path, body: dict, private_key: bytes) -> Path:
    """Append the next certificate to the chain, signed; returns its path. Atomic: a crash
    leaves either no certificate or the whole one."""
    return _append(directory, body["erasure_id"], body, private_key)


def write_signing_rotation(directory: Path, rotation_id: str, created_at: str, previous_public_key: str | None,
                           new_key: bytes, old_key: bytes | None = None, reason: str = "") -> Path:
    """Append a signing-key rotation entry: signed by ``new_key`` and, if ``old_key`` is given (it
    must be the key in force), endorsed by it."""
    body = {"kind": ROTATION, "key": "signing", "rotation_id": rotation_id, "created_at": created_at,
            "reason": reason, "previous_signer_public_key": previous_public_key,
            "endorsed_by_previous_key": old_key is not None}
    return _append(directory, rotation_id, body, new_key, old_key)


def write_subject_rotation(directory: Path, body: dict, private_key: bytes) -> Path:
    """Append a subject-key rotation entry (``subject_rotation_body``), signed by the key in force."""
    return _append(directory, body["rotation_id"], {"kind": ROTATION, "key": "subject", **body}, private_key)


def _append(directory: Path, name: str, body: dict, private_key: bytes, endorsing_key: bytes | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = certificate_files(directory)
    cert = {
        "format": FORMAT,
        "sequence": len(files) + 1,
        "previous_sha256": sha256_hex(files[-1].read_bytes()) if files else None,
        "signer_public_key": signing.public_key(private_key),
        **body,
    }
    if endorsing_key is not None:
        cert["endorsement"] = signing.sign(endorsing_key, cert)
    cert["signature"] = signing.sign(private_key, cert)
    path = directory / f"{cert['sequence']:04d}-{name}.json"
    atomic_write(path, canonical_json(cert) + b"\n")
    return path


def verify_chain(directory: Path, public_key: str | None = None) -> list[str]:
    """Problems with the chain (empty list = intact): sequence, links, canonical form and,
    for signed certificates, the signature by the key in force there (the first signer's, then
    each key-rotation entry's); the key in force at the end must be ``public_key`` when given."""
    problems = []
    previous, in_force = None, None
    for n, path in enumerate(certificate_files(directory), 1):
        try:
            cert = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"{path.name}: not valid JSON ({e})")
            previous = path
            continue
        if cert.get("sequence") != n:
            problems.append(f"{path.name}: sequence {cert.get('sequence')} where {n} was expected")
        expected = sha256_hex(previous.read_bytes()) if previous else None
        if cert.get("previous_sha256") != expected:
            problems.append(f"{path.name}: previous_sha256 does not match {previous.name if previous else 'nothing'}")
        if path.read_bytes() != canonical_json(cert) + b"\n":
            problems.append(f"{path.name}: not in canonical form (edited by hand?)")
        if cert.get("format") != "unlearnflow.erasure_certificate/1":
            signer = cert.get("signer_public_key")
            if not signer or not signing.verify(signer, cert):
                problems.append(f"{path.name}: signature does not match its content")
            elif _changes_signer(cert):
                problems += _rotation_problems(path.name, cert, in_force)
                in_force = signer
            elif in_force and signer != in_force:
                problems.append(f"{path.name}: signed by key {signer[:12]}…, not {in_force[:12]}…, the key in force "
                                f"there (a key changes only by a key-rotation entry)")
            in_force = in_force or signer
        previous = path
    if public_key and in_force and in_force != public_key:
        problems.append(f"the chain's key {in_force[:12]}… is not this workspace's {public_key[:12]}…")
    return problems


def _changes_signer(cert: dict) -> bool:
    return cert.get("kind") == ROTATION and cert.get("key") == "signing"


def _rotation_problems(name: str, cert: dict, in_force: str | None) -> list[str]:
    """A key-rotation entry must replace the key in force, and its endorsement (if it claims one)
    must be that key's signature over the entry."""
    previous = cert.get("previous_signer_public_key")
    if in_force and previous != in_force:
        return [f"{name}: rotates away from key {str(previous)[:12]}…, but the key in force there is {in_force[:12]}…"]
    if cert.get("endorsed_by_previous_key"):
        endorsed = {k: v for k, v in cert.items() if k not in ("signature", "endorsement")}
        if not previous or not signing.verify(previous, {**endorsed, "signature": cert.get("endorsement")}):
            return [f"{name}: its endorsement is not the previous key's signature"]
    return []


def rotations(directory: Path) -> list[dict]:
    """The key-rotation entries of the chain (subject and signing), oldest first."""
    entries = (json.loads(p.read_text()) for p in certificate_files(directory))
    return [e for e in entries if e.get("kind") == ROTATION]


def completed_requests(directory: Path) -> set[str]:
    """Ids of every request some certificate lists: these are done."""
    return {r["request_id"] for path in certificate_files(directory)
            for r in json.loads(path.read_text()).get("requests", [])}


def subject_rotation_body(*, rotation_id: str, created_at: str, old_id: str, new_id: str, rekeyed: dict,
                          affected: dict, after: dict, lineage: dict, previous_version: str, new_version: str,
                          registered_model: str) -> dict:
    """What a subject-key rotation's entry says: the fingerprints before and after, the requests it
    filed again under the new key, and, like a certificate, what changed and what serves now."""
    return {
        "rotation_id": rotation_id,
        "created_at": created_at,
        "previous_subject_key_id": old_id,
        "subject_key_id": new_id,
        "requests_rekeyed": rekeyed,
        **_serving(affected, after, lineage, previous_version, new_version, registered_model),
    }


def _serving(affected: dict, after: dict, lineage: dict, previous_version: str, new_version: str,
             registered_model: str) -> dict:
    """What changed and what serves after an entry: the part a certificate and a subject-key
    rotation share, which ``verify`` compares with the files, dvc.lock and the registry."""
    return {
        "affected_shards": affected,
        "constituents": {k: {"manifest_md5": c["manifest_md5"], "model_md5": c["model_md5"]} for k, c in after.items()},
        "dvc_lock_md5": lineage["dvc_lock_md5"],
        "data_version": lineage["data_version"],
        "git_commit": lineage["git_commit"],
        "previous_version": previous_version,
        "new_version": new_version,
        "registered_model": registered_model,
    }


def body(*, erasure_id: str, created_at: str, resolved: dict, affected: dict, after: dict, lineage: dict,
         previous_version: str, new_version: str, registered_model: str, metrics: dict, audit: dict,
         purged: dict, superseded: str, train_device: str = "cpu", erasure_log: dict | None = None) -> dict:
    """What a certificate says, from the state before and after the erasure (``after``:
    ``snapshot`` of the constituents now; ``affected``: ``affected_shards``)."""
    return {
        "erasure_id": erasure_id,
        "created_at": created_at,
        "requests": resolved["requests"],
        "unmatched_requests": resolved["unmatched"],
        "erased_record_ids": resolved["erased_records"],
        # feature requests: each changed record, its request and its pixels' SHA-256 before and after
        **({"feature_changes": resolved["feature_changes"]} if resolved.get("feature_changes") else {}),
        "train_device": train_device,  # the device class the constituents were computed on
        **_serving(affected, after, lineage, previous_version, new_version, registered_model),
        "metrics": metrics,
        "purged": purged,
        "audit": audit,
        "superseded_versions": superseded,
        # where its requests go in the erasure log (``tlog.py``): leaves first_index.. of the checkpoint of size
        **({"erasure_log": erasure_log} if erasure_log else {}),
    }
