"""The workspace's key identity: which subject key and which signing key it was built with.

    lineage/keys.json  (git)  {"format", "subject_key_id", "signing_public_key", "rotations": [...]}

Pseudonyms (``pseudonyms.py``) and certificate signatures (``signing.py``) rest on two
secrets that never enter git. This committed record names them without revealing them: the
subject key's fingerprint (``pseudonyms.key_id``, an HMAC of a fixed text under the key) and
the signing key's public key. Before a command pseudonymises or signs, it compares the key
it would use with the record (``tasks.workspace``) and refuses a missing or different key
instead of making a new one: a new subject key silently re-keys every person, so no request
matches and every shard moves; a new signing key breaks the certificate chain. The record
changes only through a rotation (``unlearnflow keys rotate``), which it lists.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from unlearnflow.durable import atomic_write
from unlearnflow.errors import UnlearnflowError

FORMAT = "unlearnflow.keys/1"
KINDS = ("subject", "signing")


class KeyMissing(UnlearnflowError):
    """The key the workspace was built with is not available to this process."""


class WrongKey(UnlearnflowError):
    """The key available is not the one the workspace was built with."""


@dataclass(frozen=True)
class KeyRecord:
    subject_key_id: str | None = None  # pseudonyms.key_id of the subject key; None: not bound yet
    signing_public_key: str | None = None  # base64 Ed25519 public key; None: not bound yet
    rotations: tuple[dict, ...] = field(default_factory=tuple)  # {"key", "from", "to", "at", ...}, oldest first

    def recorded(self, kind: str) -> str | None:
        """What the record holds for ``kind`` (subject | signing)."""
        return self.subject_key_id if kind == "subject" else self.signing_public_key

    def bound(self, kind: str, identity: str) -> "KeyRecord":
        """This record with ``kind``'s key identity set (a first binding, not a rotation)."""
        return dataclasses.replace(self, **{_FIELD[kind]: identity})

    def rotated(self, kind: str, identity: str, **details) -> "KeyRecord":
        """This record after a rotation of ``kind``'s key to ``identity``, listed in ``rotations``."""
        entry = {"key": kind, "from": self.recorded(kind), "to": identity, **details}
        return dataclasses.replace(self, **{_FIELD[kind]: identity}, rotations=(*self.rotations, entry))

    def to_json(self) -> dict:
        return {"format": FORMAT, "subject_key_id": self.subject_key_id,
                "signing_public_key": self.signing_public_key, "rotations": list(self.rotations)}


_FIELD = {"subject": "subject_key_id", "signing": "signing_public_key"}


def read_record(path: str | Path) -> KeyRecord:
    """The record in ``path``; an empty one if the file does not exist (a workspace made before
    keys were recorded, or one whose keys are not bound yet)."""
    path = Path(path)
    if not path.is_file():
        return KeyRecord()
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, expected {FORMAT!r}")
        return KeyRecord(obj["subject_key_id"], obj["signing_public_key"], tuple(obj.get("rotations", ())))
    except (ValueError, KeyError, AttributeError) as e:
        raise UnlearnflowError(f"{path} is damaged ({e}); restore it from git: "
                               f"`git checkout -- {path.parent.name}/{path.name}`") from None


def write_record(path: str | Path, record: KeyRecord) -> None:
    atomic_write(path, (json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n").encode())


def usable_subject_key(subjects, cfg, draw=None, tries: int = 200) -> str:
    """A new subject key (64 hex digits) under which every split ``cfg`` asks for (train, test,
    and holdout when ``data.holdout_fraction`` > 0) holds at least one of ``subjects`` (raw
    ids). Splits are drawn from pseudonyms, so a fresh random key can leave the test split
    empty on a small dataset (about 1 key in 600 for 60 people at 10%), and the rotation's
    retraining would then fail after the key was switched. ``draw``: where candidate keys come
    from (default ``secrets.token_hex(32)``)."""
    import secrets

    from unlearnflow.errors import ConfigError
    from unlearnflow.pseudonyms import pseudonym, subject_key
    from unlearnflow.records import split_of

    draw = draw or (lambda: secrets.token_hex(32))
    wanted = {"train", "test"} | ({"holdout"} if cfg.holdout_fraction > 0 else set())
    subjects = sorted(set(subjects))
    for _ in range(tries):
        key = draw()
        skey = subject_key(True, key.encode())
        if wanted <= {split_of(pseudonym(skey, s), cfg) for s in subjects}:
            return key
    raise ConfigError(f"no new subject key among {tries} drawn puts one of the {len(subjects)} subject(s) in each of "
                      f"the splits {', '.join(sorted(wanted))}: add subjects, or raise data.test_fraction / "
                      f"data.holdout_fraction")
