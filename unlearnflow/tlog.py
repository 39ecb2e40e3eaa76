"""The erasure log: an append-only Merkle tree (RFC 9162 §2.1) of every request carried out,
with signed checkpoints (C2SP tlog-checkpoint as a signed note) and receipts (C2SP tlog-proof).

One leaf per request an erasure certificate lists, in the certificates' order; the leaf's
data is ``unlearnflow/erasure/v1\\n<request id>\\n<SHA-256 hex of the certificate file>\\n``.
The log is derived from the certificates, so it can always be rebuilt from them (a
workspace older than the log, an erasure interrupted between its certificate and its
checkpoint), and ``verify`` checks that it was. It lives next to them::

    lineage/log/origin                         the log's name (its key name)
    lineage/log/leaves.txt                     "<request id> <certificate sha256> <file>" a line
    lineage/log/checkpoints/<size>-<root>.txt  every checkpoint ever signed, never rewritten

Checkpoints are kept by size *and* root: a history rebuilt later gets new files beside the
old ones, so two checkpoints of one size that differ are there for ``verify`` (and anyone
holding an old receipt) to see.

The verifying half (hashes, proofs' checks, notes) is ``receipt_verify``: one file anyone
can copy; this module adds what only the operator does: building the tree, proofs, signing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from unlearnflow import certificates
from unlearnflow.durable import atomic_write
from unlearnflow.receipt_verify import (ED25519, VerifierKey, VerifyError, erasure_leaf, format_proof, leaf_hash,
                                        node_hash, open_checkpoint, parse_checkpoint, verify_consistency)

EMPTY_ROOT = hashlib.sha256(b"").digest()


# ---- RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1: the tree and its proofs -----------------------

def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def tree_hash(leaves: list[bytes]) -> bytes:
    """MTH over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]): from the leaf's sibling up to the root's child."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_path(index, leaves[:k]) + [tree_hash(leaves[k:])]
    return inclusion_path(index - k, leaves[k:]) + [tree_hash(leaves[:k])]


def consistency_path(size1: int, leaves: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m <= n."""
    def sub(m: int, d: list[bytes], complete: bool) -> list[bytes]:
        if m == len(d):
            return [] if complete else [tree_hash(d)]
        k = _split(len(d))
        if m <= k:
            return sub(m, d[:k], complete) + [tree_hash(d[k:])]
        return sub(m - k, d[k:], False) + [tree_hash(d[:k])]

    if not 0 < size1 <= len(leaves):
        raise ValueError(f"no consistency proof from size {size1} in a tree of {len(leaves)}")
    return sub(size1, leaves, True)


class TreeStore:
    """A Merkle tree kept by level in files, so that a root, an inclusion path or a consistency
    proof reads O(log n) stored hashes instead of rebuilding the tree: ``<k>.bin`` holds the
    hashes of the complete subtrees of 2^k leaves, left to right (level 0: the leaf hashes).
    Appending n leaves writes n + (at most) n more hashes. A derived cache (rebuilt from the
    leaves when missing or torn): what is trusted is the checkpoints' roots."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def _file(self, level: int) -> Path:
        return self.dir / f"{level}.bin"

    def count(self, level: int) -> int:
        path = self._file(level)
        return path.stat().st_size // 32 if path.is_file() else 0

    @property
    def size(self) -> int:
        return self.count(0)

    def node(self, level: int, index: int) -> bytes:
        with open(self._file(level), "rb") as f:
            f.seek(32 * index)
            value = f.read(32)
        if len(value) != 32:
            raise IndexError(f"no node {index} at level {level} of {self.dir}")
        return value

    def repair(self) -> None:
        """Cut what a crash left half-written: a partial hash, parents without both children."""
        level = 0
        while self._file(level).is_file():
            path, limit = self._file(level), (self.count(level - 1) // 2 if level else None)
            keep = self.count(level) if limit is None else min(self.count(level), limit)
            if path.stat().st_size != 32 * keep:
                with open(path, "r+b") as f:
                    f.truncate(32 * keep)
            level += 1

    def append(self, leaf_hashes: list[bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.repair()
        with open(self._file(0), "ab") as f:
            f.write(b"".join(leaf_hashes))
        level = 0
        while self.count(level) >= 2:
            have, want = self.count(level + 1), self.count(level) // 2
            if have < want:
                with open(self._file(level), "rb") as f:
                    f.seek(64 * have)
                    children = f.read(64 * (want - have))
                with open(self._file(level + 1), "ab") as f:
                    f.write(b"".join(node_hash(children[i:i + 32], children[i + 32:i + 64])
                                     for i in range(0, len(children), 64)))
            level += 1

    def subtree(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end); ``start`` a multiple of the largest power of two below
        end - start (what RFC 9162's recursion asks for)."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self.node(n.bit_length() - 1, start // n)
        k = _split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, n: int) -> bytes:
        return self.subtree(0, n) if n else EMPTY_ROOT

    def inclusion(self, index: int, n: int) -> list[bytes]:
        def path(start: int, end: int) -> list[bytes]:
            if end - start <= 1:
                return []
            k = _split(end - start)
            if index < start + k:
                return path(start, start + k) + [self.subtree(start + k, end)]
            return path(start + k, end) + [self.subtree(start, start + k)]

        if not 0 <= index < n <= self.size:
            raise ValueError(f"no leaf {index} in a tree of {n} (stored: {self.size})")
        return path(0, n)

    def consistency(self, m: int, n: int) -> list[bytes]:
        def sub(m: int, start: int, end: int, complete: bool) -> list[bytes]:
            if m == end - start:
                return [] if complete else [self.subtree(start, end)]
            k = _split(end - start)
            if m <= k:
                return sub(m, start, start + k, complete) + [self.subtree(start + k, end)]
            return sub(m - k, start + k, end, False) + [self.subtree(start, start + k)]

        if not 0 < m <= n <= self.size:
            raise ValueError(f"no consistency proof from size {m} to {n} (stored: {self.size})")
        return sub(m, 0, n, True)


# ---- notes and checkpoints: signing -----------------------------------------------------

def log_key(name: str, private: bytes) -> VerifierKey:
    public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return VerifierKey(name, ED25519, public)


def sign_note(text: str, name: str, private: bytes) -> str:
    """A signed note of ``text`` (ending in a newline) by the Ed25519 key ``private``."""
    if not text.endswith("\n"):
        raise ValueError("a note's text ends in a newline")
    key = log_key(name, private)
    signature = Ed25519PrivateKey.from_private_bytes(private).sign(text.encode())
    return f"{text}\n\u2014 {name} {base64.b64encode(key.id + signature).decode()}\n"


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


# ---- the workspace's log ----------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    request_id: str
    certificate_sha256: str
    certificate: str  # the certificate file's name

    @property
    def hash(self) -> bytes:
        return leaf_hash(erasure_leaf(self.request_id, self.certificate_sha256))


def leaves_from_certificates(directory: Path) -> list[Leaf]:
    """What the log must hold: every request each erasure certificate lists, in order."""
    out = []
    for path in certificates.certificate_files(directory):
        cert = json.loads(path.read_text())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        out += [Leaf(r["request_id"], sha, path.name) for r in cert.get("requests", [])]
    return out


def position_problems(directory: Path, origin: str) -> list[str]:
    """Certificates whose ``erasure_log`` (where they say their requests are) is not where the
    log, rebuilt from all certificates in order, puts them."""
    out, n = [], 0
    for path in certificates.certificate_files(directory):
        cert = json.loads(path.read_text())
        k, said = len(cert.get("requests", [])), cert.get("erasure_log")
        if said and (said.get("origin"), said.get("first_index"), said.get("checkpoint_size")) != (origin, n, n + k):
            out.append(f"certificate {path.name} puts its requests at leaves {said.get('first_index')}.. of "
                       f"{said.get('origin')}; the log has them at {n}.. of {origin}")
        n += k
    return out


class ErasureLog:
    def __init__(self, directory: Path, certificates_dir: Path, tree_dir: Path):
        """The log in ``directory`` (git), built from ``certificates_dir``; ``tree_dir``: its
        tree's levels (``TreeStore``), a cache outside git."""
        self.dir = Path(directory)
        self.certificates_dir = Path(certificates_dir)
        self.tree = TreeStore(tree_dir)

    @property
    def origin_file(self) -> Path:
        return self.dir / "origin"

    @property
    def leaves_file(self) -> Path:
        return self.dir / "leaves.txt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    def exists(self) -> bool:
        return self.origin_file.is_file()

    def origin(self) -> str:
        return self.origin_file.read_text().strip()

    def leaves(self) -> list[Leaf]:
        """Every leaf (reads the whole file: ``verify``; the other paths read only its end)."""
        if not self.leaves_file.is_file():
            return []
        return [Leaf(*line.split(" ")) for line in self.leaves_file.read_text().splitlines() if line]

    def _last_leaf(self) -> Leaf | None:
        """The last complete line of the leaves file (a torn last line, from a crash, is cut)."""
        if not self.leaves_file.is_file() or self.leaves_file.stat().st_size == 0:
            return None
        with open(self.leaves_file, "r+b") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 4096))
            tail = f.read()
            if not tail.endswith(b"\n"):
                f.truncate(size - len(tail) + tail.rfind(b"\n") + 1)
                tail = tail[:tail.rfind(b"\n") + 1]
        lines = tail.rstrip(b"\n").split(b"\n")
        return Leaf(*lines[-1].decode().split(" ")) if lines and lines[-1] else None

    def checkpoints(self) -> list[Path]:
        """Every checkpoint file, by size (then name)."""
        def size(p: Path) -> int:
            return int(p.name.split("-", 1)[0])

        return sorted(self.checkpoints_dir.glob("*-*.txt"), key=lambda p: (size(p), p.name))

    def newest_checkpoint(self) -> Path | None:
        """The checkpoint of the largest size; of several of that size (a rewritten history
        leaves the old ones beside the new), the one whose root is the stored tree's."""
        found = self.checkpoints()
        if not found:
            return None
        size = int(found[-1].name.split("-", 1)[0])
        if self.tree.size >= size:
            current = self.checkpoints_dir / f"{size:08d}-{self.tree.root(size).hex()[:16]}.txt"
            if current.is_file():
                return current
        return found[-1]

    def _tree_in_step(self, last: Leaf | None) -> None:
        """The tree cache holds exactly the leaves file's leaves: checked at its end (the last
        leaf's hash), rebuilt from the file when not (a crash between the two appends, a new
        machine)."""
        self.tree.repair()
        n = self.tree.size
        if last is None and n == 0 or last is not None and n and self.tree.node(0, n - 1) == last.hash:
            return
        for f in self.tree.dir.glob("*.bin"):
            f.unlink()
        self.tree.append([x.hash for x in self.leaves()])

    def sync(self, origin: str, private: bytes, after=lambda step: None) -> list[Path]:
        """Bring the log up to the certificates: append the requests of those written after the
        last one it holds, and sign a checkpoint at each such certificate's end (a workspace
        older than the log gets one per certificate). Idempotent and incremental: what an
        interrupted call left is completed, Ed25519 signs the same text to the same bytes, and
        only the new certificates and the leaves file's end are read. ``after(step)`` is called
        once the leaves are on disk (``log_extended``) and once the checkpoints are
        (``checkpoint_signed``): the fault tests' crash points. Returns the checkpoints written."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if not self.exists():
            atomic_write(self.origin_file, (origin + "\n").encode())
        origin = self.origin()
        last = self._last_leaf()
        if last is not None:
            logged = self.certificates_dir / last.certificate
            if not logged.is_file() or hashlib.sha256(logged.read_bytes()).hexdigest() != last.certificate_sha256:
                raise VerifyError("log", f"certificate {last.certificate} is not the one the log holds: the "
                                         "certificates or the log were rewritten; `unlearnflow verify` says where")
        self._tree_in_step(last)
        new = [p for p in certificates.certificate_files(self.certificates_dir)
               if last is None or p.name > last.certificate]
        ends, added = [], []
        for path in new:
            cert, sha = json.loads(path.read_text()), hashlib.sha256(path.read_bytes()).hexdigest()
            requests = [Leaf(r["request_id"], sha, path.name) for r in cert.get("requests", [])]
            added += requests
            if requests:
                ends.append(self.tree.size + len(added))
        if added:
            with open(self.leaves_file, "ab") as f:
                f.write("".join(f"{x.request_id} {x.certificate_sha256} {x.certificate}\n" for x in added).encode())
                f.flush()
                os.fsync(f.fileno())
            after("log_extended")
            self.tree.append([x.hash for x in added])
        newest = self.newest_checkpoint()
        if self.tree.size and (newest is None or int(newest.name.split("-", 1)[0]) < self.tree.size):
            ends = sorted(set(ends) | {self.tree.size})  # an interrupted call's last checkpoint
        written = []
        for size in ends:
            root = self.tree.root(size)
            path = self.checkpoints_dir / f"{size:08d}-{root.hex()[:16]}.txt"
            if not path.is_file():
                atomic_write(path, sign_note(checkpoint_body(origin, size, root), origin, private).encode())
                written.append(path)
        if written:
            after("checkpoint_signed")
        return written

    def index_of(self, request_id: str, certificate: Path) -> int:
        """The leaf index of ``request_id``, carried out by ``certificate``: where the
        certificate says its requests go, else (certificates older than the log) a scan."""
        cert = json.loads(certificate.read_text())
        ids = [r["request_id"] for r in cert.get("requests", [])]
        said = cert.get("erasure_log")
        if said and request_id in ids:
            return said["first_index"] + ids.index(request_id)
        found = [i for i, x in enumerate(self.leaves()) if x.request_id == request_id]
        if not found:
            raise LookupError(f"request {request_id} is not in the erasure log")
        return found[-1]

    def receipt(self, request_id: str, certificate: Path, since: int | None = None) -> str:
        """The tlog-proof bundle of one request against the newest checkpoint; ``since``: with a
        consistency proof from the log of that size."""
        self._tree_in_step(self._last_leaf())
        newest = self.newest_checkpoint()
        if newest is None:
            raise LookupError("the erasure log has no checkpoint yet")
        cp = parse_checkpoint(newest.read_text())
        index = self.index_of(request_id, certificate)
        sha = hashlib.sha256(certificate.read_bytes()).hexdigest()
        if index >= cp.size or self.tree.node(0, index) != Leaf(request_id, sha, certificate.name).hash:
            raise LookupError(f"leaf {index} of the erasure log is not request {request_id} of {certificate.name}: "
                              "run `unlearnflow verify`")
        claims = {"request_id": request_id, "certificate_sha256": sha, "certificate": certificate.read_text()}
        if since is not None:
            if not 0 < since <= cp.size:
                raise ValueError(f"--since {since}: the log has sizes 1..{cp.size}")
            claims["consistency"] = {"old_size": since, "proof": [base64.b64encode(h).decode()
                                                                  for h in self.tree.consistency(since, cp.size)]}
        extra = json.dumps(claims, sort_keys=True).encode()
        return format_proof(index, self.tree.inclusion(index, cp.size), newest.read_text(), extra)

    def problems(self, public_keys: list[bytes]) -> list[str]:
        """What ``verify`` reports: leaves that are not the certificates' requests, checkpoints
        not signed by a workspace key (``public_keys``: every signing key the chain has had),
        a newest root that is not the tree's, two checkpoints of one size that differ, and each
        checkpoint not consistent with the next."""
        if not self.exists():
            return ["no erasure log (lineage/log): run `unlearnflow erase` or `unlearnflow receipt` to build it"]
        out, origin = [], self.origin()
        leaves, want = self.leaves(), leaves_from_certificates(self.certificates_dir)
        if leaves != want:
            first = next((i for i, (a, b) in enumerate(zip(leaves, want)) if a != b), min(len(leaves), len(want)))
            out.append(f"the log's leaves differ from the certificates' requests from leaf {first} "
                       f"(log {len(leaves)} leaves, certificates {len(want)} requests)")
        out += position_problems(self.certificates_dir, origin)
        keys = [VerifierKey(origin, ED25519, k) for k in public_keys]
        opened = []
        for path in self.checkpoints():
            cp = None
            for key in keys:
                try:
                    cp = open_checkpoint(path.read_text(), key)
                    break
                except VerifyError:
                    continue
            if cp is None:
                out.append(f"checkpoint {path.name} is not signed by a workspace key for {origin}")
            else:
                opened.append((path.name, cp))
        by_size: dict[int, str] = {}
        for name, cp in opened:
            if cp.size in by_size and by_size[cp.size] != name:
                out.append(f"checkpoints {by_size[cp.size]} and {name} both have size {cp.size} with different "
                           "roots: the log's history was rewritten")
            by_size.setdefault(cp.size, name)
        hashes = [x.hash for x in want]
        for name1, a in opened:  # each against the next larger one
            nxt = next(((n, b) for n, b in opened if b.size > a.size), None)
            if nxt is None or nxt[1].size > len(hashes):
                continue
            name2, b = nxt
            try:
                verify_consistency(a.size, b.size, consistency_path(a.size, hashes[:b.size]), a.root, b.root)
            except (VerifyError, ValueError) as e:
                out.append(f"checkpoint {name2} is not consistent with the earlier {name1}: {e}")
        if opened:
            name, cp = opened[-1]
            if cp.size != len(want) or cp.root != tree_hash(hashes):
                out.append(f"the newest checkpoint {name} (size {cp.size}) is not the root of the certificates' "
                           f"{len(want)} requests")
        elif want:
            out.append("the log has requests but no checkpoint")
        return out
