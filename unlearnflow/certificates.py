"""Erasure certificates: one JSON file per erasure, hash-chained to the previous one.

``lineage/certificates/0001-<erasure_id>.json`` holds what was erased (request ids,
pseudonymous record ids), what changed (shards, first retrained slice, the
checkpoint each shard resumed from), and what now serves (manifest and model
md5s, dvc.lock md5, git commit, model versions). ``previous_sha256`` is the
SHA-256 of the previous certificate file's bytes, so editing or removing any
certificate breaks every later link. The same file is logged to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearnflow.hashing import canonical_json, sha256_hex

FORMAT = "unlearnflow.erasure_certificate/1"


def certificate_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("[0-9][0-9][0-9][0-9]-*.json"))


def latest(directory: Path) -> dict | None:
    files = certificate_files(directory)
    return json.loads(files[-1].read_text()) if files else None


def write_certificate(directory: Path, body: dict) -> Path:
    """Append the next certificate to the chain; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = certificate_files(directory)
    cert = {
        "format": FORMAT,
        "sequence": len(files) + 1,
        "previous_sha256": sha256_hex(files[-1].read_bytes()) if files else None,
        **body,
    }
    path = directory / f"{cert['sequence']:04d}-{body['erasure_id']}.json"
    path.write_bytes(canonical_json(cert) + b"\n")
    return path


def verify_chain(directory: Path) -> list[str]:
    """Problems with the chain (empty list = intact)."""
    problems = []
    previous = None
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
        previous = path
    return problems


def completed_requests(directory: Path) -> set[str]:
    """Ids of every request some certificate lists: these are done."""
    return {r["request_id"] for path in certificate_files(directory)
            for r in json.loads(path.read_text()).get("requests", [])}
