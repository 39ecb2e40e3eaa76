"""Ed25519 signatures for erasure certificates.

A workspace has one signing key (kept like the subject key, outside git: see
``tasks.workspace``). Each certificate carries the signer's public key and a
signature over its canonical JSON without the ``signature`` field, so editing any
byte of a certificate, even rewriting it in canonical form, breaks its signature
unless the signer's private key is used again. The public key is also recorded in
MLflow (registered model tag) so a swapped key is seen.
"""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unlearnflow.hashing import canonical_json


def new_private_key() -> bytes:
    """32 raw bytes of a fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(private: bytes) -> str:
    """The public key of ``private`` as base64 text."""
    pub = Ed25519PrivateKey.from_private_bytes(private).public_key()
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def sign(private: bytes, document: dict) -> str:
    """Base64 signature over ``document`` without its ``signature`` field."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return base64.b64encode(Ed25519PrivateKey.from_private_bytes(private).sign(canonical_json(body))).decode()


def verify(public: str, document: dict) -> bool:
    """True if ``document['signature']`` is ``public``'s signature over the rest of it."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
        body = {k: v for k, v in document.items() if k != "signature"}
        key.verify(base64.b64decode(document.get("signature") or ""), canonical_json(body))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
