"""The workspace's erasure log (``unlearnflow.tlog``): kept up to the certificates by the
erase flow (its ``logged`` step), receipts for the people who asked, and its verifier key.

The log's key is the workspace's signing key (the one that signs certificates); its name,
the checkpoints' origin, is fixed when the log is first built: ``unlearnflow.local/<model>/
<12 hex of the first signing key's SHA-256>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.faults import crash_point, fail_point
from tasks.workspace import Workspace
from unlearnflow import certificates
from unlearnflow.config import Params
from unlearnflow.durable import atomic_write
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.receipt_verify import ED25519, VerifierKey, parse_checkpoint
from unlearnflow.tlog import ErasureLog


def erasure_log(ws: Workspace) -> ErasureLog:
    return ErasureLog(ws.layout.erasure_log, ws.layout.certificates, ws.layout.erasure_log_tree)


def log_origin(ws: Workspace, params: Params) -> str:
    log = erasure_log(ws)
    if log.exists():
        return log.origin()
    first = next((json.loads(p.read_text()).get("signer_public_key") for p in
                  certificates.certificate_files(ws.layout.certificates)), None) or ws.public_key()
    model = re.sub(r"[^A-Za-z0-9._-]", "-", params.tracking.registered_model)
    return f"unlearnflow.local/{model}/{hashlib.sha256(first.encode()).hexdigest()[:12]}"


def signing_keys(ws: Workspace) -> list[bytes]:
    """Every signing key the workspace has had (the certificates' signers and today's): a
    checkpoint signed before a signing-key rotation stays valid under the key of its time."""
    found = [json.loads(p.read_text()).get("signer_public_key") for p in
             certificates.certificate_files(ws.layout.certificates)] + [ws.public_key()]
    return [base64.b64decode(k) for k in dict.fromkeys(k for k in found if k)]


def publish(ws: Workspace, params: Params) -> dict:
    """Bring the log up to the certificates (building it, for a workspace older than it) and
    sign a checkpoint for each certificate that has none; what the newest checkpoint says."""
    log = erasure_log(ws)
    written = log.sync(log_origin(ws, params), ws.signing_key(), after=crash_point)
    newest = log.newest_checkpoint()
    cp = parse_checkpoint(newest.read_text()) if newest else None
    return {"origin": log.origin(), "log_size": cp.size if cp else 0, "root": cp.root.hex() if cp else None,
            "checkpoint": str(newest) if newest else None, "written": [str(p) for p in written]}


class WitnessRefused(UnlearnflowError):
    """A witness refused the log's new checkpoint: the history differs from what it cosigned."""


def witness_state(ws: Workspace) -> dict:
    path = ws.layout.erasure_log / "witnesses.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _post(url: str, body: str, timeout: float) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/add-checkpoint", data=body.encode(), method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def cosign(ws: Workspace, params: Params, checkpoint: Path) -> dict:
    """Ask each witness of ``lineage.witnesses`` to cosign ``checkpoint`` (the newest), sending
    a consistency proof from the size it last cosigned; its cosignature is added to the
    checkpoint file. One that cannot be reached (or answers 400/403/404) is a gap, recorded in
    ``lineage/log/witnesses.json`` and closed by the next checkpoint; one that refuses (409 for
    a size it cannot be brought to, 422) raises ``WitnessRefused``."""
    from unlearnflow.receipt_verify import cosigners, parse_vkey
    from unlearnflow.witness import request_body

    log = erasure_log(ws)
    state, out = witness_state(ws), {"cosigned": [], "missed": []}
    for w in params.lineage.witnesses:
        key = parse_vkey(w.key)
        text = checkpoint.read_text()
        cp = parse_checkpoint(text)
        if key.name in cosigners(cp.note, [key]):
            out["cosigned"].append(key.name)
            continue
        old, answer = state.get(key.name, {}).get("size", 0), None
        for _ in range(2):  # a 409 names the size it holds: send the proof from there once
            proof = log.tree.consistency(old, cp.size) if 0 < old < cp.size else []
            try:
                answer = _post(w.url, request_body(old, proof, text), params.lineage.witness_timeout_seconds)
                crash_point("witness_call")  # it has cosigned and recorded the size; we have not
            except OSError as e:
                answer = (None, f"unreachable ({e.__class__.__name__}: {e})")
                break
            if answer[0] != 409 or not answer[1].strip().isdigit() or int(answer[1]) == old:
                break
            if int(answer[1]) > cp.size:
                break
            old = int(answer[1])
        status, body = answer
        if status == 200:
            signed = parse_checkpoint(text + body)
            if key.name not in cosigners(signed.note, [key]):
                out["missed"].append({"witness": key.name, "reason": "its answer holds no valid cosignature"})
                continue
            atomic_write(checkpoint, (text + "".join(line + "\n" for line in body.splitlines()
                                                     if line.startswith(f"\u2014 {key.name} "))).encode())
            state[key.name] = {"size": cp.size, "url": w.url}
            out["cosigned"].append(key.name)
        elif status in (409, 422):
            raise WitnessRefused(f"witness {key.name} ({w.url}) refused the erasure log's checkpoint of size "
                                 f"{cp.size}: HTTP {status} {body.strip()[:120]} (it cosigned a history this log does "
                                 f"not extend); production was not moved, and the erasure stays unfinished until "
                                 f"the log's history is restored (git) or the witness leaves lineage.witnesses")
        else:
            out["missed"].append({"witness": key.name, "reason": f"HTTP {status}: {body.strip()[:160]}"
                                  if status else body})
            state.setdefault(key.name, {"size": old, "url": w.url})["missed_size"] = cp.size
    atomic_write(ws.layout.erasure_log / "witnesses.json", json.dumps(state, indent=1, sort_keys=True).encode())
    return out


def ensure_log(ws: Workspace, params: Params) -> bool:
    """Build the log of a workspace whose certificates predate it (the first signing command
    after the upgrade does), committed to git. True when it was built."""
    if erasure_log(ws).exists() or not certificates.completed_requests(ws.layout.certificates):
        return False
    from tasks import lineage

    publish(ws, params)
    lineage.git_commit_lineage(ws.root, "unlearnflow erasure log: built from the certificates")
    return True


@task(name="publish-erasure-log", cache_policy=NO_CACHE)
def publish_log(root: str, params: Params, run_id: str, commit: bool, certificate: str | None = None,
                histogram: str | None = None, version: str | None = None) -> dict:
    """The erase flow's ``logged`` step: the log's new leaves and checkpoint, cosigned by the
    witnesses that answer, committed to git and logged to the erase run (artifacts ``log/``,
    metric ``log_size``, tags ``log_*``). A witness's refusal stops here, before production."""
    from tasks import lineage, store, tracking

    fail_point("log")
    ws = Workspace(root)
    published = publish(ws, params)
    published["witnesses"] = cosign(ws, params, Path(published["checkpoint"])) \
        if published["checkpoint"] and params.lineage.witnesses else {"cosigned": [], "missed": []}
    if published["checkpoint"]:
        store.log_artifact(ws, run_id, published["checkpoint"], "log")
        tracking.log_metrics(ws, run_id, {"log_size": published["log_size"]})
        client = store.client_for(ws)
        for tag, value in (("log_origin", published["origin"]), ("log_root", published["root"]),
                           ("log_checkpoint", Path(published["checkpoint"]).name),
                           ("log_witnesses", ", ".join(published["witnesses"]["cosigned"]) or "none"),
                           ("log_witnesses_missed", ", ".join(m["witness"] for m in published["witnesses"]["missed"])
                            or "none")):
            client.set_tag(run_id, tag, value)
    if certificate and version:  # the version's lineage card, now with its checkpoint and cosigners
        from dataclasses import replace

        from tasks import cards, registry

        card = cards.erasure_card(ws, json.loads(Path(certificate).read_text()), run_id, certificate, histogram)
        registry.write_card(ws, params.tracking.registered_model, version, replace(card, erasure_log=published))
    if commit:
        lineage.git_commit_lineage(ws.root, f"unlearnflow erasure log: size {published['log_size']}")
    return published


def verifier_key(ws: Workspace, params: Params) -> str:
    """The log's verifier key as the signed-note format writes it, for the operator to publish."""
    return VerifierKey(log_origin(ws, params), ED25519, base64.b64decode(ws.public_key())).text


def find_requests(ws: Workspace, params: Params, subject: str | None = None, request: str | None = None,
                  file: str | None = None) -> list[str]:
    """Request ids on file for one subject, request id or file name (pseudonymised as filed)."""
    from unlearnflow.erasure import make_request

    state = ws.ledger().read()
    if request:
        return [request] if request in state.requests else []
    probe = make_request("forget", params.data, ws.secret_key(params.data), subjects=[subject] if subject else (),
                         files=[file] if file else ())
    wanted = set(probe.subjects) | set(probe.files)
    return [rid for rid, r in state.requests.items()
            if r.status != "rekeyed" and wanted & (set(r.request.subjects) | set(r.request.files))]


def receipt(ws: Workspace, params: Params, request_id: str, since: int | None = None) -> str:
    """One person's receipt (c2sp.org/tlog-proof@v1) for a request carried out. A request not
    yet carried out is a one-line error."""
    if request_id not in certificates.completed_requests(ws.layout.certificates):
        status = ws.ledger().read().requests[request_id].status
        raise ConfigError(f"request {request_id} is {status}: no erasure has carried it out yet, so there is no "
                          f"receipt; run `unlearnflow erase` (or wait for the served flow) and ask again")
    if publish(ws, params)["written"]:  # a workspace older than the log, or an erasure stopped before it
        from tasks import lineage

        lineage.git_commit_lineage(ws.root, "unlearnflow erasure log: built from the certificates")
    certificate = next(p for p in certificates.certificate_files(ws.layout.certificates)
                       if request_id in {r["request_id"] for r in json.loads(p.read_text()).get("requests", [])})
    try:
        return erasure_log(ws).receipt(request_id, certificate, since)
    except (ValueError, LookupError) as e:
        raise ConfigError(str(e)) from None
