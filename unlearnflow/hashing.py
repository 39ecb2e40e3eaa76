"""Content hashes: every artifact is named by the hash of what made it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    """JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def hash_json(obj) -> str:
    return sha256_hex(canonical_json(obj))


def md5_file(path: str | Path) -> str:
    """The md5 DVC records for a single file (DVC hashes files' raw bytes)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unit_interval(*parts) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts.

    Used for assignments that must never move when other records are added or
    removed: the value depends on the parts alone.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_bucket(n: int, *parts) -> int:
    """A stable bucket in range(n) from the given parts."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % n
