"""Check an erasure receipt offline: one file, the standard library and ``cryptography``.

A person who asked to be forgotten gets a receipt (``unlearnflow receipt``): a C2SP
tlog-proof bundle (c2sp.org/tlog-proof@v1) saying that their request is leaf ``index`` of
the workspace's erasure log, an append-only Merkle tree (RFC 9162 §2.1), whose root the
log's checkpoint (c2sp.org/tlog-checkpoint) commits to, signed by the operator's key as a
C2SP signed note and cosigned by witnesses (c2sp.org/tlog-cosignature). Copy this file
anywhere and run::

    python receipt_verify.py verify RECEIPT --key "<the log's verifier key>" \\
        [--witness VKEY ... --quorum K] [--since OLD_RECEIPT_OR_CHECKPOINT]

It prints PASS (exit 0) or FAIL naming the check (exit 1). It needs no workspace, no
MLflow and no network. The receipt's ``extra`` line is not authenticated: everything in it
is recomputed or checked here (the certificate's SHA-256, the leaf, the consistency proof).

What PASS proves: the request was committed, with the certificate it names, to a signed,
append-only record of erasures (and, with ``--since``, that today's record extends the one
seen before; with witnesses, that they saw the same record). It is not a proof about a
model's weights: that is what ``unlearnflow verify --retrain`` and the audit are for.

unlearnflow's own code (``unlearnflow/tlog.py``) builds logs with these same functions, so
what the operator checks and what the person checks is one implementation.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PROOF_HEADER = "c2sp.org/tlog-proof@v1"
LEAF_PREFIX = "unlearnflow/erasure/v1"
ED25519, COSIGNATURE = 0x01, 0x04  # signed-note signature types
MAX_SIGNATURES = 64


class VerifyError(Exception):
    """A failed check; ``check`` names it (``inclusion``, ``signature``, ``certificate`` …)."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check


# ---- RFC 9162 §2.1: the tree ------------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def erasure_leaf(request_id: str, certificate_sha256: str) -> bytes:
    """The leaf data of one request carried out: anyone can recompute it."""
    return f"{LEAF_PREFIX}\n{request_id}\n{certificate_sha256}\n".encode()


def _hashes(*values: bytes) -> None:
    for v in values:
        if not isinstance(v, bytes) or len(v) != 32:
            raise VerifyError("proof", f"a hash of {len(v) if isinstance(v, bytes) else '?'} bytes, not 32")


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: ``leaf`` (a leaf hash) is entry ``index`` of the tree of ``size``."""
    _hashes(leaf, root, *proof)
    if not 0 <= index < size:
        raise VerifyError("inclusion", f"index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerifyError("inclusion", "the path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerifyError("inclusion", "the path is shorter than the tree is deep")
    if r != root:
        raise VerifyError("inclusion", "the path does not lead to the checkpoint's root")


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: the tree of ``size2`` with ``root2`` extends the one of ``size1``."""
    if size2 < size1:
        raise VerifyError("consistency", f"the newer tree ({size2}) is smaller than the older ({size1})")
    if size1 == size2:
        if proof:
            raise VerifyError("consistency", "trees of one size need an empty proof")
        if root1 != root2:
            raise VerifyError("consistency", f"two different roots for the same size {size1}")
        if size1 == 0:
            raise VerifyError("consistency", "an empty tree proves nothing")
        return
    _hashes(root1, root2, *proof)
    if size1 == 0:
        raise VerifyError("consistency", "a consistency proof from the empty tree proves nothing")
    if not proof:
        raise VerifyError("consistency", "the proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerifyError("consistency", "the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerifyError("consistency", "the proof is shorter than the tree is deep")
    if fr != root1:
        raise VerifyError("consistency", f"the proof does not rebuild the older root (size {size1})")
    if sr != root2:
        raise VerifyError("consistency", f"the proof does not rebuild the newer root (size {size2})")


# ---- C2SP signed-note, tlog-checkpoint, tlog-cosignature --------------------------------

def key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    name: str
    kind: int  # ED25519 (a log) or COSIGNATURE (a witness)
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.public)

    @property
    def text(self) -> str:
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(bytes([self.kind]) + self.public).decode()}"


def parse_vkey(text: str) -> VerifierKey:
    """``<name>+<key id hex>+<base64(type || public key)>``, the signed-note verifier key."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not parts[0] or len(parts[1]) != 8:
        raise VerifyError("key", f"{text!r} is not a verifier key (name+keyid+base64)")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        wanted = bytes.fromhex(parts[1])
    except (binascii.Error, ValueError):
        raise VerifyError("key", f"{text!r} is not a verifier key (bad hex or base64)") from None
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE):
        raise VerifyError("key", f"{text!r} is not an Ed25519 key (type 0x01 or 0x04, 32 bytes)")
    key = VerifierKey(parts[0], raw[0], raw[1:])
    if key.id != wanted:
        raise VerifyError("key", f"{text!r}: its key id does not match its name and public key")
    return key


@dataclass(frozen=True)
class Note:
    text: str  # what the signatures sign, its final newline included
    signatures: tuple[tuple[str, bytes], ...]  # (key name, key id || signature)


def parse_note(data: str) -> Note:
    if any(ord(c) < 0x20 and c != "\n" for c in data):
        raise VerifyError("note", "control characters in the note")
    if not data.endswith("\n"):
        raise VerifyError("note", "the note does not end in a newline")
    cut = data.rfind("\n\n")
    if cut < 0:
        raise VerifyError("note", "no blank line before the signatures")
    text, lines = data[:cut + 1], data[cut + 2:].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise VerifyError("note", f"{len(lines)} signature lines")
    signatures = []
    for line in lines:
        name, _, sig = line.removeprefix("\u2014 ").partition(" ")
        if not line.startswith("\u2014 ") or not name or "+" in name or not sig:
            raise VerifyError("note", f"a malformed signature line {line[:60]!r}")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise VerifyError("note", f"a signature of {name} that is not base64") from None
        if len(raw) < 5:
            raise VerifyError("note", f"a signature of {name} too short to hold a key id")
        signatures.append((name, raw))
    return Note(text, tuple(signatures))


def _ed25519(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


def verify_note(note: Note, key: VerifierKey) -> None:
    """The note carries a valid signature by ``key`` (a log key, type 0x01). Signatures by
    unknown keys are ignored; a signature by ``key`` that fails rejects the note."""
    ours = [raw for name, raw in note.signatures if name == key.name and raw[:4] == key.id]
    if not ours:
        raise VerifyError("signature", f"no signature by {key.name} ({key.id.hex()})")
    if not all(_ed25519(key.public, raw[4:], note.text.encode()) for raw in ours):
        raise VerifyError("signature", f"the signature by {key.name} does not verify")


def cosigners(note: Note, witnesses: list[VerifierKey]) -> list[str]:
    """Names of ``witnesses`` whose cosignature (type 0x04) on the checkpoint verifies; a
    cosignature by a listed witness that fails rejects the checkpoint."""
    good = []
    for w in witnesses:
        for name, raw in note.signatures:
            if name != w.name or raw[:4] != w.id:
                continue
            if len(raw) != 4 + 8 + 64:
                raise VerifyError("cosignature", f"the cosignature by {w.name} has {len(raw)} bytes")
            timestamp = int.from_bytes(raw[4:12], "big")
            if not _ed25519(w.public, raw[12:], cosigned_message(note.text, timestamp)):
                raise VerifyError("cosignature", f"the cosignature by {w.name} does not verify")
            good.append(w.name)
    return good


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: Note


def parse_checkpoint(data: str) -> Checkpoint:
    note = parse_note(data)
    lines = note.text.split("\n")[:-1]
    if len(lines) < 3:
        raise VerifyError("checkpoint", "fewer than three lines (origin, size, root)")
    origin, size, root = lines[:3]
    if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise VerifyError("checkpoint", f"a bad origin or size line ({origin[:40]!r}, {size[:20]!r})")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise VerifyError("checkpoint", "the root line is not base64") from None
    if len(root_hash) != 32:
        raise VerifyError("checkpoint", f"a root of {len(root_hash)} bytes")
    return Checkpoint(origin, int(size), root_hash, note)


def open_checkpoint(data: str, key: VerifierKey) -> Checkpoint:
    """A checkpoint signed by the log ``key``, whose origin is that key's name."""
    cp = parse_checkpoint(data)
    verify_note(cp.note, key)
    if cp.origin != key.name:
        raise VerifyError("checkpoint", f"origin {cp.origin!r} is not the log {key.name!r}")
    return cp


# ---- the receipt: c2sp.org/tlog-proof@v1 ------------------------------------------------

@dataclass(frozen=True)
class Proof:
    extra: bytes | None
    index: int
    path: list[bytes]
    checkpoint: str  # the signed checkpoint note, verbatim


def parse_proof(data: str) -> Proof:
    lines = data.split("\n")
    if lines[0] != PROOF_HEADER:
        raise VerifyError("format", f"the first line is not {PROOF_HEADER}")
    i, extra = 1, None
    if i < len(lines) and lines[i].startswith("extra "):
        try:
            extra = base64.b64decode(lines[i][6:], validate=True)
        except binascii.Error:
            raise VerifyError("extra", "the extra line is not base64") from None
        i += 1
    if i >= len(lines) or not lines[i].startswith("index "):
        raise VerifyError("index", "no index line")
    text = lines[i][6:]
    if not text.isdigit() or (text != "0" and text.startswith("0")):
        raise VerifyError("index", f"index {text[:20]!r} is not a decimal")
    index, path = int(text), []
    i += 1
    while i < len(lines) and lines[i]:
        try:
            path.append(base64.b64decode(lines[i], validate=True))
        except binascii.Error:
            raise VerifyError("inclusion", f"path line {len(path) + 1} is not base64") from None
        i += 1
    if i >= len(lines):
        raise VerifyError("format", "no blank line before the checkpoint")
    return Proof(extra, index, path, "\n".join(lines[i + 1:]))


def format_proof(index: int, path: list[bytes], checkpoint: str, extra: bytes | None = None) -> str:
    lines = [PROOF_HEADER] + ([f"extra {base64.b64encode(extra).decode()}"] if extra is not None else [])
    lines += [f"index {index}"] + [base64.b64encode(h).decode() for h in path] + [""]
    return "\n".join(lines) + "\n" + checkpoint


def receipt_claims(proof: Proof) -> dict:
    """The extra line's JSON: request_id, certificate_sha256, certificate (untrusted input)."""
    try:
        claims = json.loads(proof.extra.decode()) if proof.extra is not None else None
    except (UnicodeDecodeError, ValueError):
        claims = None
    if not isinstance(claims, dict) or not all(isinstance(claims.get(k), str) for k in
                                               ("request_id", "certificate_sha256", "certificate")):
        raise VerifyError("extra", "the extra line does not hold request_id, certificate_sha256 and certificate")
    return claims


def verify_receipt(data: str, log_key: str, witnesses: tuple[str, ...] = (), quorum: int = 0,
                   since: str | None = None) -> dict:
    """Every check of one receipt; raises ``VerifyError`` naming the first that fails."""
    key = parse_vkey(log_key)
    if key.kind != ED25519:
        raise VerifyError("key", "the log key must be of type 0x01 (Ed25519)")
    proof = parse_proof(data)
    claims = receipt_claims(proof)
    certificate_sha = hashlib.sha256(claims["certificate"].encode()).hexdigest()
    if certificate_sha != claims["certificate_sha256"]:
        raise VerifyError("certificate", "the certificate's SHA-256 is not the one the receipt names")
    try:
        cert = json.loads(claims["certificate"])
    except ValueError:
        raise VerifyError("certificate", "the certificate is not JSON") from None
    if claims["request_id"] not in [r.get("request_id") for r in cert.get("requests", [])
                                    if isinstance(r, dict)]:
        raise VerifyError("certificate", f"the certificate does not list request {claims['request_id']}")
    cp = open_checkpoint(proof.checkpoint, key)
    leaf = leaf_hash(erasure_leaf(claims["request_id"], certificate_sha))
    verify_inclusion(proof.index, cp.size, leaf, proof.path, cp.root)
    keys = [parse_vkey(w) for w in witnesses]
    if any(w.kind != COSIGNATURE for w in keys):
        raise VerifyError("key", "witness keys must be of type 0x04 (cosignature/v1)")
    cosigned = cosigners(cp.note, keys)
    if len(set(cosigned)) < quorum:
        raise VerifyError("witnesses", f"{len(set(cosigned))} of the {len(keys)} named witnesses cosigned; "
                                       f"the policy asks for {quorum}")
    out = {"request_id": claims["request_id"], "erasure_id": cert.get("erasure_id"), "index": proof.index,
           "log_size": cp.size, "origin": cp.origin, "cosigned_by": sorted(set(cosigned))}
    if since is not None:
        old = open_checkpoint(_checkpoint_of(since), key)
        consistency = claims.get("consistency") or {}
        try:
            old_size, path = int(consistency["old_size"]), [base64.b64decode(h, validate=True)
                                                             for h in consistency["proof"]]
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise VerifyError("consistency", "the receipt carries no consistency proof (`unlearnflow receipt "
                                             "--since N` makes one)") from None
        if old_size != old.size:
            raise VerifyError("consistency", f"the receipt's proof starts at size {old_size}, the older "
                                             f"checkpoint has size {old.size}")
        verify_consistency(old.size, cp.size, path, old.root, cp.root)
        out["consistent_with_size"] = old.size
    return out


def _checkpoint_of(data: str) -> str:
    """An older receipt's checkpoint, or a checkpoint given by itself."""
    return parse_proof(data).checkpoint if data.startswith(PROOF_HEADER + "\n") else data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="receipt_verify.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check a receipt: PASS (exit 0) or FAIL naming the check (exit 1)")
    v.add_argument("receipt", help="the receipt file (c2sp.org/tlog-proof@v1)")
    v.add_argument("--key", required=True, help="the log's verifier key, as the operator publishes it")
    v.add_argument("--witness", action="append", default=[], help="a witness's verifier key (repeatable)")
    v.add_argument("--quorum", type=int, help="how many named witnesses must have cosigned (default: all)")
    v.add_argument("--since", help="an older receipt or checkpoint: today's log must extend it")
    args = ap.parse_args(argv)
    quorum = len(args.witness) if args.quorum is None else args.quorum
    try:
        with open(args.receipt, encoding="utf-8") as f:
            data = f.read()
        since = None
        if args.since:
            with open(args.since, encoding="utf-8") as f:
                since = f.read()
        out = verify_receipt(data, args.key, tuple(args.witness), quorum, since)
    except VerifyError as e:
        print(f"FAIL {e}")
        return 1
    except (OSError, UnicodeDecodeError) as e:
        print(f"FAIL read: {e}")
        return 1
    print(f"PASS request {out['request_id']} is entry {out['index']} of the erasure log {out['origin']} "
          f"(size {out['log_size']}), signed by its key"
          + (f", cosigned by {', '.join(out['cosigned_by'])}" if out["cosigned_by"] else "")
          + (f"; the log extends the one of size {out['consistent_with_size']}" if "consistent_with_size" in out
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
