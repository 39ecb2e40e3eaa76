"""`unlearnflow verify`: check an erasure's promises from the workspace and MLflow alone.

1. no record of any filed request (erased, or still pending) is in any manifest that fed
   a current constituent, and the ledger holds every event the certificates rely on;
2. manifest and model md5s agree across the files, dvc.lock, the latest certificate
   and the registered production version (its tags and its stored model files), and
   production is not older than the latest certificate's version;
3. the certificate chain is intact and signed by this workspace's key (the one MLflow
   recorded), and every certificate equals its committed git blob and its copy in its
   MLflow run; no certificate that git or MLflow knows is missing;
4. MLflow's artifact store holds no file of a purged version and the DVC remote, if the
   workspace pushes to one, exactly the objects the current dvc.lock uses;
1c. with feature requests carried out: every record they changed is, in the shards, the
   source's pixels with the filed edits applied (the SHA-256 the newest certificate naming
   it states), and each constituent's checkpoint chain is keyed by its shard's current pixels;
5. with ``retrain``: the constituents the latest erasure retrained, trained again from
   scratch on their manifests, are bitwise identical to the served ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasks import lineage
from tasks.registry import model_files_dir, production_version, registered_versions, stored_artifacts
from tasks.store import client_for
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.config import Params
from unlearnflow.hashing import md5_file


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def verify(ws: Workspace, params: Params, retrain: bool = False, retrain_all: bool = False) -> list[Check]:
    chain = certificates.certificate_files(ws.layout.certificates)  # erasure certificates and key rotations
    certs = certificates.serving_files(ws.layout.certificates)  # those that say what serves after them
    latest = json.loads(certs[-1].read_text()) if certs else None
    name = params.tracking.registered_model
    checks = [_no_filed_record_in_manifests(ws, params, certs), _ledger_agrees(ws)]
    features = ws.ledger().read().rectified_features()
    if features:
        checks.append(_no_constituent_on_old_content(ws, params, features, certs))
    mv = production_version(ws, name)
    if mv is not None and mv.tags.get("guarantee") == "approximate":
        # the fast path serves an approximate version: the exactness promises cannot hold yet
        checks.append(Check("production carries the exact guarantee", False,
                            f"v{mv.version} is approximate ({mv.tags.get('unlearn_method')}) for request(s) "
                            f"{mv.tags.get('approximated_requests')}; run `unlearnflow erase` to certify them"))
        mv = _latest_exact_version(ws, name)
    checks.append(_hashes_agree(ws, params, mv, certs, latest))
    checks += _certificates_intact(ws, params, mv, chain)
    checks.append(_erasure_log_intact(ws, chain))
    checks += _store_checks(ws, name)
    if retrain:
        shards = list(params.partition.shards) if retrain_all or not latest else [int(k) for k in latest["affected_shards"]]
        checks.append(_retrained_equals_served(ws, params, shards))
    return checks


def _no_filed_record_in_manifests(ws: Workspace, params: Params, certs: list) -> Check:
    """1. erased records, and records of requests still pending"""
    ledger = ws.ledger().read()
    erased = set(ws.tombstones()) | ledger.erased_records()
    for path in certs:
        erased |= set(json.loads(path.read_text()).get("erased_record_ids", []))
    pending = _pending_records(ws, params, ledger)
    found = {}
    for k in params.partition.shards:
        manifest = json.loads(ws.layout.shard_manifest(k).read_text())
        hits = [r["record_id"] for r in manifest["records"] if r["record_id"] in erased or r["record_id"] in pending]
        if hits:
            found[k] = hits
    waiting = sorted({pending[r] for h in found.values() for r in h if r in pending})
    return Check("no record of a filed request in a current manifest", not found,
                 f"{len(erased)} erased and {len(pending)} pending record ids checked against "
                 f"{len(params.partition.shards)} manifests"
                 + (f"; FOUND in shards {sorted(found)}: {list(found.values())[0][:3]}"
                    + (f" (pending: {', '.join(waiting)}; run `unlearnflow erase`)" if waiting else "")
                    if found else ""))


def _no_constituent_on_old_content(ws: Workspace, params: Params, features: dict, certs: list) -> Check:
    """1c. feature-edited records hold their filled pixels, and the constituents were trained on them"""
    import numpy as np

    from unlearnflow.ensemble import load_constituent  # torch: only where feature requests were carried out
    from unlearnflow.erasure import load_pseudonymized
    from unlearnflow.features import content_hash, edited_images
    from unlearnflow.partition import read_shard
    from unlearnflow.training import ModelSpec, slice_keys

    source = load_pseudonymized(params.data, ws.secret_key(params.data), ws.layout.ingest_cache)
    at = {rid: i for i, rid in enumerate(source.record_ids) if rid in features}
    ids = sorted(at)
    pixels = edited_images(np.asarray(source.images[[at[r] for r in ids]]), tuple(ids), features)
    expected = {rid: content_hash(p) for rid, p in zip(ids, pixels)}
    stated, devices = {}, {"cpu"}  # devices: the classes the constituents were trained on (keys depend on it)
    for path in certs:  # the newest certificate naming a record says what it became
        body = json.loads(path.read_text())
        stated.update({c["record_id"]: c["after_sha256"] for c in body.get("feature_changes", [])})
        devices.update(d for d in body.get("train_device", "").split(", ") if d)
    problems = [f"record {r}: the certificate says {stated[r][:12]}, the source with its edits is {h[:12]}"
                for r, h in expected.items() if r in stated and stated[r] != h]
    found = 0
    for k in params.partition.shards:
        manifest, images = read_shard(ws.layout.shard_manifest(k), ws.layout.shard_images(k))
        rows = [i for i, r in enumerate(manifest.record_ids) if r in expected]
        if not rows:
            continue
        found += len(rows)
        held = np.asarray(images[rows])
        problems += [f"shard {k}: record {manifest.record_ids[i]} holds other pixels than its edited content"
                     for i, p in zip(rows, held) if content_hash(p) != expected[manifest.record_ids[i]]]
        meta = load_constituent(ws.layout.model(k))[1]
        spec = ModelSpec.from_json(meta["spec"])
        if all(meta["slice_keys"] != slice_keys(manifest, images, spec, params.train, device) for device in devices):
            problems.append(f"shard {k}: its constituent's checkpoints are keyed by other pixels than the shard's")
    return Check("no current constituent was trained on a record's old content", not problems,
                 f"{len(expected)} feature-edited record(s), {found} in the shards: "
                 + ("; ".join(problems[:3]) if problems else "each holds its edited pixels, each constituent keyed by them"))


def _ledger_agrees(ws: Workspace) -> Check:
    """1b. the ledger holds every event the certificates and the journal rely on"""
    problem = ws.ledger().disagreement()
    return Check("ledger agrees with the certificates and the journal", problem is None,
                 problem or "every request a certificate lists is resolved in the ledger")


def _hashes_agree(ws: Workspace, params: Params, mv, certs: list, latest: dict | None) -> Check:
    """2. manifest and model md5s agree across the files, dvc.lock, the certificate, the version"""
    layout, lock = ws.layout, lineage.lock_info(ws.root)
    registered = json.loads(mv.tags.get("constituent_md5s", "{}")) if mv else {}
    stored = _stored_model_md5s(ws, mv) if mv else {}
    problems = []
    for k in params.partition.shards:
        stage = f"train@{k}"
        files = {"manifest": md5_file(layout.shard_manifest(k)), "model": md5_file(layout.model(k))}
        sources = {"dvc.lock": (lock["deps"].get(stage, {}).get(layout.rel(layout.shard_manifest(k))),
                                lock["outs"].get(stage, {}).get(layout.rel(layout.model(k))))}
        if latest:
            c = latest["constituents"].get(str(k), {})
            sources["certificate"] = (c.get("manifest_md5"), c.get("model_md5"))
        if mv:
            sources[f"registered v{mv.version} tags"] = (files["manifest"], registered.get(str(k)))
            sources[f"registered v{mv.version} model files"] = (files["manifest"], stored.get(str(k)))
        for where, (m_md5, model_md5) in sources.items():
            if m_md5 != files["manifest"]:
                problems.append(f"shard {k}: manifest md5 {files['manifest']} but {where} says {m_md5}")
            if model_md5 != files["model"]:
                problems.append(f"shard {k}: model md5 {files['model']} but {where} says {model_md5}")
    problems += _version_problems(mv, lock, certs, latest)
    return Check("hashes agree across files, dvc.lock, certificate and registered model", not problems,
                 "; ".join(problems[:4]) or f"{len(params.partition.shards)} constituents, "
                 f"production v{mv.version if mv else '-'}, certificate {certs[-1].name if certs else '-'}")


def _version_problems(mv, lock: dict, certs: list, latest: dict | None) -> list[str]:
    if mv is None:
        return ["no production model version in MLflow"]
    problems = []
    if mv.tags.get("dvc_lock_md5") != lock["dvc_lock_md5"]:
        problems.append(f"dvc.lock md5 {lock['dvc_lock_md5']} but production v{mv.version} records "
                        f"{mv.tags.get('dvc_lock_md5')}")
    if latest and latest.get("new_version") and int(mv.version) < int(latest["new_version"]):
        problems.append(f"production v{mv.version} is older than v{latest['new_version']}, the version the latest "
                        f"certificate ({certs[-1].name}) made: it was trained before that erasure")
    if mv.tags.get("purged"):
        problems.append(f"production v{mv.version}'s model files were purged ({mv.tags['purged']})")
    return problems


def _certificates_intact(ws: Workspace, params: Params, mv, chain: list) -> list[Check]:
    """3. the chain, its signatures by the key in force, the workspace's key, and the copies in git
    and MLflow"""
    name = params.tracking.registered_model
    pinned = client_for(ws).get_registered_model(name).tags.get("certificate_public_key") if mv is not None else None
    recorded, key = ws.key_record().signing_public_key, ws.public_key()
    expected = recorded or pinned or key
    problems = certificates.verify_chain(ws.layout.certificates, expected)
    if pinned and pinned != expected:
        problems.append(f"MLflow records signing key {pinned[:12]}…, lineage/keys.json {expected[:12]}…")
    if key and key != expected:
        problems.append(f"this workspace's signing key {key[:12]}… is not the one it records ({expected[:12]}…)")
    rotated = [f"{r['key']} key rotated by {r['rotation_id']} (" + (
        f"every shard retrained, v{r['new_version']}" if r["key"] == "subject" else
        "endorsed by the previous key" if r["endorsed_by_previous_key"] else
        "NOT endorsed: the previous key was not at hand") + ")" for r in certificates.rotations(ws.layout.certificates)]
    copies = _certificate_copies(ws, params, chain)
    return [Check("certificate chain intact and signed", not problems,
                  "; ".join(problems) or "; ".join([f"{len(chain)} certificate(s)", *rotated])),
            Check("certificates equal their git and MLflow copies; none missing", not copies,
                  "; ".join(copies[:4]) or f"{len(chain)} certificate(s) = committed blob = MLflow copy")]


def _erasure_log_intact(ws: Workspace, chain: list) -> Check:
    """4. the erasure log: its leaves are the certificates' requests in order, every checkpoint
    is signed by a workspace key, none of one size differs from another, each is consistent
    with the next, and the newest is the root of all of them (``unlearnflow.tlog``)."""
    from tasks import transparency

    log = transparency.erasure_log(ws)
    if not log.exists() and not any("requests" in json.loads(p.read_text()) for p in chain):
        return Check("erasure log: leaves = certificates' requests, checkpoints signed and consistent", True,
                     "no erasure yet: the log starts with the first")
    problems = log.problems(transparency.signing_keys(ws))
    return Check("erasure log: leaves = certificates' requests, checkpoints signed and consistent", not problems,
                 "; ".join(problems[:4]) or f"{len(log.leaves())} leaves, {len(log.checkpoints())} checkpoint(s), "
                 f"origin {log.origin()}")


def _retrained_equals_served(ws: Workspace, params: Params, shards: list[int]) -> Check:
    """5. the constituents, trained again from scratch on their manifests, equal the served ones"""
    from unlearnflow.ensemble import constituent_bytes  # torch: only for the retrain check
    from unlearnflow.partition import read_shard
    from unlearnflow.training import ModelSpec, train_constituent

    mismatched = []
    for k in shards:
        manifest, images = read_shard(ws.layout.shard_manifest(k), ws.layout.shard_images(k))
        spec = ModelSpec(params.train.model, tuple(int(d) for d in images.shape[1:]), len(manifest.classes))
        result = train_constituent(manifest, images, spec, params.train, store=None)
        if constituent_bytes(spec, result.state_dict, result.slice_keys, k) != ws.layout.model(k).read_bytes():
            mismatched.append(k)
    return Check("retrained from scratch = served, bitwise", not mismatched,
                 f"shards {shards} retrained without checkpoints"
                 + (f"; DIFFERENT: {mismatched}" if mismatched else "; identical"))


def _pending_records(ws: Workspace, params: Params, ledger) -> dict[str, str]:
    """record_id -> request_id for forget requests not yet carried out, matched against the
    current training split (what the manifests were made from)."""
    todo = [r for r in ledger.requests.values() if r.request.kind == "forget" and r.status == "pending"]
    if not todo or not ws.layout.split_dir("train").is_dir():
        return {}
    from unlearnflow.erasure import resolve
    from unlearnflow.stages import load_split  # torch, through the stages: only when requests are pending

    train, key = load_split(ws.layout, "train"), ws.secret_key(params.data)
    return {rid: r.request.request_id for r in todo for rid in resolve(r.request, train, key)}


def _certificate_copies(ws: Workspace, params: Params, certs: list) -> list[str]:
    """Each certificate against the blob git committed and the copy its MLflow run holds (a key
    rotation's: its own run); certificates that git's HEAD or an MLflow erase run has but the
    folder lacks."""
    from tasks.tracking import logged_certificate, rotation_run

    problems = []
    rel = ws.layout.rel(ws.layout.certificates)
    committed = set(lineage.git(ws.root, "ls-tree", "--name-only", "HEAD", f"{rel}/", check=False).stdout.split())
    on_disk = {f"{rel}/{p.name}" for p in certs}
    for path in sorted(committed - on_disk):
        problems.append(f"{path} is committed to git but missing from the workspace")
    runs = {v.tags["erasure_id"]: v.run_id for v in registered_versions(ws, params.tracking.registered_model)
            if v.tags.get("erasure_id")}
    known = set()
    for path in certs:
        data = path.read_bytes()
        cert = json.loads(data)
        eid = cert.get("erasure_id")
        known.add(eid)
        key = f"{rel}/{path.name}"
        if key in committed:
            blob = lineage.git(ws.root, "show", f"HEAD:{key}", check=False).stdout.encode()
            if blob != data:
                problems.append(f"{path.name} differs from the blob committed to git")
        else:
            problems.append(f"{path.name} is not committed to git")
        run = runs.get(eid) if eid else rotation_run(ws, params.tracking.experiment, cert.get("rotation_id"))
        copy = logged_certificate(ws, run) if run else None
        if copy is None:
            problems.append(f"{path.name}: its MLflow run holds no copy")
        elif copy != data:
            problems.append(f"{path.name} differs from the copy logged to its MLflow run")
    for eid in sorted(set(runs) - known):
        if logged_certificate(ws, runs[eid]) is not None:
            problems.append(f"MLflow holds the certificate of erasure {eid}, the workspace does not")
    return problems


def _latest_exact_version(ws: Workspace, name: str):
    """The newest registered version with guarantee exact (what the workspace's files are)."""
    return next((v for v in registered_versions(ws, name) if v.tags.get("guarantee", "exact") == "exact"), None)


def _stored_model_md5s(ws: Workspace, mv) -> dict[str, str]:
    """md5 of each constituent file inside the registered version's stored model."""
    files = model_files_dir(ws, mv, fresh=True) / "artifacts"
    return {p.stem.split("_", 1)[1]: md5_file(p) for p in files.glob("shard_*.pt")}


def _store_checks(ws: Workspace, name: str) -> list[Check]:
    """What the stores outside the workspace hold: MLflow's artifact store keeps no file of a
    purged version; the DVC remote (if the workspace has one) no object the current data
    version does not use, so no prepared file, shard or model that held an erased record."""
    left = {}
    purged = [v for v in registered_versions(ws, name) if v.tags.get("purged")]
    for v in purged:
        files = stored_artifacts(ws, v)
        if files:
            left[v.version] = files
    checks = [Check("purged versions hold no model file in MLflow's artifact store", not left,
                    f"{len(purged)} purged version(s) asked of the store"
                    + ("; STILL STORED: " + "; ".join(f"v{v}: {len(f)} files ({f[0]}…)" for v, f in left.items())
                       if left else ": 0 files"))]
    remote = lineage.dvc_remote(ws.root)
    if remote:
        stored, used = lineage.remote_objects(ws.root, remote)
        extra, missing = stored - used, used - stored
        checks.append(Check(f"DVC remote '{remote}' holds exactly the current data version", not extra and not missing,
                            f"{len(stored)} objects on the remote, {len(used)} used by dvc.lock"
                            + (f"; {len(extra)} NOT USED (older data versions, erased records possible: run "
                               f"`unlearnflow erase` or `dvc gc -w -c -r {remote}`)" if extra else "")
                            + (f"; {len(missing)} MISSING (run `dvc push -r {remote}`)" if missing else "")))
    return checks
