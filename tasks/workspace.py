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
from unlearnflow.config import Params, parse_params
from unlearnflow.durable import Journal, WorkspaceLock
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.erasure import read_tombstones
from unlearnflow.layout import Layout
from unlearnflow.ledger import Ledger


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

    def secret_key(self) -> bytes:
        """The HMAC key for subject and file pseudonyms: UNLEARNFLOW_SUBJECT_KEY, else
        .unlearnflow/subject.key (git-ignored), created with 32 random bytes on first use."""
        env = os.environ.get("UNLEARNFLOW_SUBJECT_KEY")
        if env:
            return env.encode()
        path = self.layout.private / "subject.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
        return path.read_text().strip().encode()

    def signing_key(self) -> bytes:
        """The Ed25519 key that signs certificates: UNLEARNFLOW_SIGNING_KEY (64 hex digits), else
        .unlearnflow/signing.key (git-ignored), created on first use. Back it up like the subject key."""
        env = os.environ.get("UNLEARNFLOW_SIGNING_KEY")
        if env:
            try:
                key = bytes.fromhex(env.strip())
            except ValueError:
                key = b""
            if len(key) != 32:
                raise ConfigError("UNLEARNFLOW_SIGNING_KEY must be 64 hex digits (a raw Ed25519 private key)")
            return key
        path = self.layout.signing_key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it just now
                return bytes.fromhex(path.read_text().strip())
            with os.fdopen(fd, "w") as f:
                f.write(signing.new_private_key().hex())
                f.flush()
                os.fsync(f.fileno())
        return bytes.fromhex(path.read_text().strip())

    def public_key(self) -> str | None:
        """This workspace's certificate-signing public key, or None if it has no key yet."""
        if not os.environ.get("UNLEARNFLOW_SIGNING_KEY") and not self.layout.signing_key.exists():
            return None
        return signing.public_key(self.signing_key())

    def ledger(self) -> Ledger:
        return Ledger(self.layout.ledger, aside_dir=self.layout.private / "ledger-torn")

    def journal(self) -> Journal:
        return Journal(self.layout.journal)

    def lock(self, command: str, wait: bool = True, notify=None) -> WorkspaceLock:
        """One writer at a time (see ``unlearnflow.durable.WorkspaceLock``)."""
        return WorkspaceLock(self.layout.private / "lock", command, wait=wait, notify=notify)

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
