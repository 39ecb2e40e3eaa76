"""A workspace: a git + DVC repository holding params.yaml, dvc.yaml and the artifacts.

This is the edge where files and environment are read: ``params.yaml`` is parsed
here, once, into ``unlearnflow.config.Params``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from unlearnflow import signing
from unlearnflow.config import DataConfig, Params, parse_params
from unlearnflow.durable import Journal, WorkspaceLock
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.erasure import needs_secret_key, read_tombstones
from unlearnflow.keys import KeyMissing, KeyRecord, WrongKey, read_record, write_record
from unlearnflow.layout import Layout
from unlearnflow.ledger import Ledger
from unlearnflow.pseudonyms import SYNTHETIC_KEY, key_id


class NotAWorkspace(UnlearnflowError):
    pass


class WorkspaceMoved(UnlearnflowError):
    """The workspace's MLflow store still points into the folder it was copied or moved from."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path = "."):
        object.__setattr__(self, "root", Path(root).resolve())

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def check(self) -> None:
        missing = [n for n in ("params.yaml", "dvc.yaml", ".dvc", ".git") if not (self.root / n).exists()]
        if missing:
            raise NotAWorkspace(
                f"{self.root} is not an unlearnflow workspace (missing: {', '.join(missing)}); "
                f"create one with `unlearnflow init DIR`"
            )

    def load_params(self) -> Params:
        if not self.params_path.is_file():
            raise NotAWorkspace(f"no params.yaml in {self.root}")
        try:
            raw = yaml.safe_load(self.params_path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.params_path} is not valid YAML: {e}") from e
        params = parse_params(raw)
        self._check_stage_params(raw or {})
        return params

    def _check_stage_params(self, raw: dict) -> None:
        """Every params.yaml key a dvc.yaml stage reads must be written out (DVC does not know
        our defaults): name the missing one instead of letting `dvc commit` fail later."""
        dvc_yaml = self.root / "dvc.yaml"
        if not dvc_yaml.is_file():
            return
        try:
            stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
        except yaml.YAMLError as e:
            raise ConfigError(f"{dvc_yaml} is not valid YAML: {e}") from e
        for stage, body in stages.items():
            body = body.get("do", body) if isinstance(body, dict) else {}  # foreach stages: the template
            for key in (e for e in body.get("params", []) if isinstance(e, str)):
                node = raw
                for part in key.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise ConfigError(
                            f"{self.params_path} has no `{key}` (dvc.yaml's stage {stage} reads it); add it: "
                            f"`unlearnflow init` writes a params.yaml with every section")
                    node = node[part]

    # ---- keys: see unlearnflow/keys.py; what identifies them is committed in lineage/keys.json

    def key_record(self) -> KeyRecord:
        return read_record(self.layout.keys)

    def secret_key(self, cfg: DataConfig) -> bytes:
        """The HMAC key for subject and file pseudonyms. Data that names nobody needs none (the
        public ``SYNTHETIC_KEY``). An image folder's is UNLEARNFLOW_SUBJECT_KEY, else
        .unlearnflow/subject.key, and must have the fingerprint lineage/keys.json records: a missing
        or different key is refused (``KeyMissing``, ``WrongKey``), never replaced, once the
        workspace holds pseudonymised data; a key is created only before that."""
        if not needs_secret_key(cfg):
            return SYNTHETIC_KEY
        text, recorded = self.subject_key_here(), self.recorded_subject_key_id()
        if text is None:
            if recorded is not None or self._holds_pseudonymised_data():
                raise KeyMissing(_SUBJECT_KEY_HELP.format(
                    problem=f"the subject key is missing (this workspace's pseudonyms were made with key "
                            f"{recorded or '(not recorded)'}, lineage/keys.json)", path=self.layout.subject_key))
            text = create_key_file(self.layout.subject_key, secrets.token_hex(32))
        key = text.encode()
        if recorded is not None and key_id(key) != recorded:
            source = "UNLEARNFLOW_SUBJECT_KEY" if os.environ.get("UNLEARNFLOW_SUBJECT_KEY") else self.layout.subject_key
            raise WrongKey(_SUBJECT_KEY_HELP.format(
                problem=f"the subject key in {source} (fingerprint {key_id(key)}) is not the one this workspace's "
                        f"pseudonyms were made with ({recorded}, lineage/keys.json)", path=self.layout.subject_key))
        record = self.key_record()
        if record.subject_key_id is None:
            write_record(self.layout.keys, record.bound("subject", key_id(key)))
        return key

    def subject_key_here(self) -> str | None:
        """The subject key this process would use (not checked): UNLEARNFLOW_SUBJECT_KEY, else the file."""
        return os.environ.get("UNLEARNFLOW_SUBJECT_KEY") or _read_key_file(self.layout.subject_key)

    def recorded_subject_key_id(self) -> str | None:
        """The fingerprint of the key the workspace's pseudonyms were made with: lineage/keys.json's,
        or in a workspace made before that file, the one its prepared data records (None: not yet)."""
        return self.key_record().subject_key_id or self._subject_key_id_of_prepared_data()

    def signing_key(self) -> bytes:
        """The Ed25519 key that signs certificates: UNLEARNFLOW_SIGNING_KEY (64 hex digits), else
        .unlearnflow/signing.key. Its public key must be the one lineage/keys.json records (or, in
        a workspace made before that file, the one the certificates were signed with); a missing
        or different key is refused, never replaced: `unlearnflow keys rotate signing` does that."""
        key, recorded = self._signing_key_here(), self.recorded_signer()
        if key is None:
            if recorded is not None:
                raise KeyMissing(_SIGNING_KEY_HELP.format(
                    problem=f"the signing key is missing (this workspace's certificates are signed by "
                            f"{recorded[:12]}…, lineage/keys.json)", path=self.layout.signing_key))
            key = bytes.fromhex(create_key_file(self.layout.signing_key, signing.new_private_key().hex()))
        public = signing.public_key(key)
        if recorded is not None and public != recorded:
            source = "UNLEARNFLOW_SIGNING_KEY" if os.environ.get("UNLEARNFLOW_SIGNING_KEY") else self.layout.signing_key
            raise WrongKey(_SIGNING_KEY_HELP.format(
                problem=f"the signing key in {source} (public key {public[:12]}…) is not the one this workspace's "
                        f"certificates are signed with ({recorded[:12]}…, lineage/keys.json)",
                path=self.layout.signing_key))
        record = self.key_record()
        if record.signing_public_key is None:
            write_record(self.layout.keys, record.bound("signing", public))
        return key

    def held_signing_key(self) -> bytes | None:
        """The signing key here if it is the workspace's (nothing is created or refused)."""
        key, recorded = self._signing_key_here(), self.recorded_signer()
        return key if key is not None and signing.public_key(key) == recorded else None

    def public_key(self) -> str | None:
        """The public key of the signing key available here (not checked), or None if there is none."""
        key = self._signing_key_here()
        return signing.public_key(key) if key else None

    def recorded_signer(self) -> str | None:
        """The public key the workspace's certificates must be signed with: lineage/keys.json's, or in
        a workspace made before that file, the one its newest certificate names (None: no key yet)."""
        record = self.key_record()
        if record.signing_public_key:
            return record.signing_public_key
        from unlearnflow.certificates import certificate_files

        files = certificate_files(self.layout.certificates)
        return json.loads(files[-1].read_text()).get("signer_public_key") if files else None

    def _signing_key_here(self) -> bytes | None:
        return _signing_key_from_env() or _hex_key(_read_key_file(self.layout.signing_key), self.layout.signing_key)

    def _subject_key_id_of_prepared_data(self) -> str | None:
        """A workspace made before lineage/keys.json: the fingerprint its prepared data records."""
        summary = self.layout.prepared_summary
        if summary.is_file():
            prepared = json.loads(summary.read_text())
            if prepared.get("subject_key") == "secret":
                return prepared.get("subject_key_id")
        return None

    def _holds_pseudonymised_data(self) -> bool:
        """Requests filed, or data prepared (here or, for a clone, in dvc.lock)."""
        ledger = self.layout.ledger
        return (ledger.is_file() and ledger.stat().st_size > 0) or self.layout.prepared_summary.is_file() \
            or (self.root / "dvc.lock").is_file()

    def refuse_during_rotation(self) -> None:
        """A request filed while a key is being rotated could be pseudonymised under the old key
        after the rotation re-keyed the ledger: filing (the one writer that does not take the
        workspace lock) waits for the rotation instead."""
        state = self.journal().read()
        if state and state.get("kind") == "rotate":
            raise UnlearnflowError(
                f"the {state['key']} key of this workspace is being rotated (or a rotation was interrupted); "
                f"nothing was filed. Run again when `unlearnflow keys rotate` has finished (after an interruption, "
                f"`unlearnflow keys rotate {state['key']} --yes` finishes it)")

    def ledger(self) -> Ledger:
        return Ledger(self.layout.ledger, aside_dir=self.layout.private / "ledger-torn",
                      committed=self._committed_ledger, depends=self._relies_on_ledger)

    def _committed_ledger(self) -> bytes | None:
        """The ledger as git's HEAD holds it (None: not committed, or not a git repository)."""
        import subprocess

        proc = subprocess.run(["git", "show", f"HEAD:{self.layout.rel(self.layout.ledger)}"], cwd=self.root,
                              capture_output=True)
        return proc.stdout if proc.returncode == 0 else None

    def _relies_on_ledger(self, state) -> str | None:
        """What durable state relies on an event ``state`` lacks (see ``Ledger``): a certificate
        listing a request the ledger does not show done, or a step the journal records as done."""
        from unlearnflow.certificates import certificate_files

        for path in certificate_files(self.layout.certificates):
            for rid in (r["request_id"] for r in json.loads(path.read_text()).get("requests", [])):
                known = state.requests.get(rid)
                if known is None or known.status == "pending":
                    return (f"certificate {path.name} lists request {rid}, which the ledger "
                            f"{'lacks' if known is None else 'does not show resolved'}")
        journal = self.journal().read() or {}
        for rid in journal.get("request_ids", []) if journal.get("kind") == "erase" else []:
            known = state.requests.get(rid)
            if known is None:
                return f"the interrupted erasure {journal['erasure_id']} (journal) includes request {rid}, " \
                       f"which the ledger lacks"
            if "resolved" in journal["steps"] and known.status == "pending":
                return f"the journal records the resolution of request {rid} (erasure {journal['erasure_id']}) as done"
        if journal.get("kind") == "rotate" and "rekeyed" in journal["steps"]:
            for rid in journal.get("rekeyed", {}):
                if getattr(state.requests.get(rid), "status", None) != "rekeyed":
                    return f"the journal records request {rid} as re-keyed by the key rotation, the ledger does not"
        return None

    def journal(self) -> Journal:
        return Journal(self.layout.journal)

    def lock(self, command: str, wait: bool = True, notify=None) -> WorkspaceLock:
        """One writer at a time (see ``unlearnflow.durable.WorkspaceLock``)."""
        return WorkspaceLock(self.layout.workspace_lock, command, wait=wait, notify=notify)

    def check_location(self) -> None:
        """Refuse to write in a copy (or a move) of a workspace whose SQLite MLflow store still
        keeps artifacts in the original folder: its model files would land there."""
        if self.remote_tracking or not (self.root / "mlflow.db").is_file():
            return
        import sqlite3
        import urllib.parse

        try:
            with sqlite3.connect(f"file:{self.root / 'mlflow.db'}?mode=ro", uri=True) as db:
                rows = db.execute("select artifact_location from experiments where lifecycle_stage = 'active' "
                                  "and artifact_location like 'file:%'").fetchall()
        except sqlite3.Error:
            return  # not our store (or not yet created): MLflow itself will say more
        expected = self.root / "mlruns"
        for (location,) in rows:
            path = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
            if path.name == "mlruns" and path != expected:
                raise WorkspaceMoved(
                    f"this workspace was copied or moved from {path.parent}: its MLflow store (mlflow.db) keeps "
                    f"model files in {path}, so writing here would change the other workspace. Nothing was "
                    f"written. Work in {path.parent}, or make a new workspace with `unlearnflow init` "
                    f"(read-only commands still work here)")

    def pending_requests(self) -> list:
        from unlearnflow.certificates import completed_requests

        return self.ledger().read().pending(completed_requests(self.layout.certificates))

    def approximated_requests(self) -> set[str]:
        """Requests a fast-path (approximate) version has handled (``lineage/approximations``)."""
        folder = self.layout.approximations
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
        return {rid for rec in records for rid in rec["requests"]}

    def training_subjects(self, params: Params) -> list[str]:
        """Raw ids (in order) of the synthetic subjects that still have records in the training
        split: who the demo, the benchmarks and the tests ask to be forgotten."""
        from unlearnflow.datasets import load_dataset
        from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
        from unlearnflow.stages import load_split

        in_training = set(load_split(self.layout, "train").subject_ids)
        return sorted({raw for raw in load_dataset(params.data).subject_ids if pseudonym(SYNTHETIC_KEY, raw) in in_training})

    def tombstones(self) -> dict[str, str]:
        return read_tombstones(self.layout.tombstones)

    @property
    def tracking_uri(self) -> str:
        """UNLEARNFLOW_TRACKING_URI (e.g. an MLflow server) if set, else the workspace's SQLite store.

        Not MLFLOW_TRACKING_URI: ``mlflow.set_tracking_uri`` rewrites that variable in the
        process, so a second workspace in the same process would inherit the first one's."""
        return os.environ.get("UNLEARNFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts: the workspace's ``mlruns/`` with its own SQLite
        store; None with a tracking server, which decides (proxied: ``mlflow-artifacts:/``)."""
        return None if self.remote_tracking else (self.root / "mlruns").as_uri()

    @property
    def remote_tracking(self) -> bool:
        return bool(os.environ.get("UNLEARNFLOW_TRACKING_URI"))

    def check_tracking_server(self) -> None:
        """A tracking server (an http(s) UNLEARNFLOW_TRACKING_URI) must answer; checked once per process."""
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")) and uri not in _ANSWERED:
            require_server(uri.rstrip("/") + "/health", "MLflow tracking server", uri, "UNLEARNFLOW_TRACKING_URI")
            _ANSWERED.add(uri)


_ANSWERED: set[str] = set()  # tracking servers that answered once in this process

_SUBJECT_KEY_HELP = (
    "{problem}: requests cannot be matched to people without it, and a new key would re-key every person "
    "and retrain every shard. Nothing was filed or trained. Restore the key from your backup into {path} "
    "or set UNLEARNFLOW_SUBJECT_KEY to it (`unlearnflow keys` shows what this workspace expects)")
_SIGNING_KEY_HELP = (
    "{problem}: a new key would break the certificate chain. Nothing was filed or trained. Restore the key "
    "from your backup into {path} or set UNLEARNFLOW_SIGNING_KEY to it; if it is lost for good, "
    "`unlearnflow keys rotate signing --yes` records a new one in the chain")


def _read_key_file(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def create_key_file(path: Path, text: str) -> str:
    """Write a new key file (0600, durable); if another process just made one, that one wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return text


def _hex_key(text: str | None, where) -> bytes | None:
    """A raw Ed25519 private key written as 64 hex digits (None stays None)."""
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{where} must hold 64 hex digits (a raw Ed25519 private key)")
    return key


def _signing_key_from_env() -> bytes | None:
    return _hex_key(os.environ.get("UNLEARNFLOW_SIGNING_KEY") or None, "UNLEARNFLOW_SIGNING_KEY")


class ServerUnavailable(UnlearnflowError):
    """A server the environment names (MLflow, Prefect) does not answer."""


def require_server(health_url: str, what: str, base: str, setting: str) -> None:
    """Fail at once, naming ``what`` at ``base``, unless ``health_url`` answers within 5 s:
    MLflow's and Prefect's clients would otherwise retry for minutes before a traceback."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(health_url, timeout=5).close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnavailable(
            f"the {what} at {base} ({setting}) does not answer ({reason}); start it (`deploy/stack.sh up` "
            f"starts the whole stack) or unset {setting} to work with the workspace's own") from None


def tool_env() -> dict:
    """Environment for child processes (dvc, unlearnflow stage): this venv's bin first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env
