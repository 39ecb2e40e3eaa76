"""Subject pseudonyms: raw subject identifiers are never written anywhere.

On load, every ``subject_id`` is replaced by ``HMAC-SHA256(key, subject_id)``;
splits, shards, manifests, the request ledger, MLflow and certificates only ever
see the pseudonym. An erasure request naming a subject is matched by computing
the same HMAC.

Which key: datasets whose subjects are real people (``imagefolder`` with a
``subjects_csv``) use the workspace's secret key, which lives outside git
(``UNLEARNFLOW_SUBJECT_KEY`` or ``.unlearnflow/subject.key``, read by
``tasks.workspace``). Packaged datasets have synthetic subjects that are not
personal data; they use the public ``SYNTHETIC_KEY`` so that anyone can
reproduce their pipeline from a clone without a secret.
"""

from __future__ import annotations

import hashlib
import hmac

SYNTHETIC_KEY = b"unlearnflow/synthetic-subjects/v1"


def pseudonym(key: bytes, value: str) -> str:
    """'p' + 24 hex digits of HMAC-SHA256(key, value)."""
    return "p" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]


def key_id(key: bytes) -> str:
    """A fingerprint that names a key without revealing it (to detect a wrong key)."""
    return hmac.new(key, b"unlearnflow/key-id", hashlib.sha256).hexdigest()[:12]


def subject_key(personal: bool, secret_key: bytes) -> bytes:
    return secret_key if personal else SYNTHETIC_KEY
