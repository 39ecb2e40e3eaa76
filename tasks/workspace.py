"""A workspace: a git + DVC repository holding params.yaml, dvc.yaml and the artifacts.

This is the edge where files and environment are read: ``params.yaml`` is parsed
here, once, into ``unlearnflow.config.Params``.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from unlearnflow.config import Params, parse_params
from unlearnflow.errors import ConfigError, UnlearnflowError
from unlearnflow.erasure import read_tombstones
from unlearnflow.layout import Layout
from unlearnflow.ledger import Ledger


class NotAWorkspace(UnlearnflowError):
    pass


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
        return parse_params(raw)

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

    def ledger(self) -> Ledger:
        return Ledger(self.layout.ledger)

    def pending_requests(self) -> list:
        from unlearnflow.certificates import completed_requests

        return self.ledger().read().pending(completed_requests(self.layout.certificates))

    def tombstones(self) -> dict[str, str]:
        return read_tombstones(self.layout.tombstones)

    @property
    def tracking_uri(self) -> str:
        """UNLEARNFLOW_TRACKING_URI (e.g. an MLflow server) if set, else the workspace's SQLite store.

        Not MLFLOW_TRACKING_URI: ``mlflow.set_tracking_uri`` rewrites that variable in the
        process, so a second workspace in the same process would inherit the first one's."""
        return os.environ.get("UNLEARNFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.root / "mlruns").as_uri()


def tool_env() -> dict:
    """Environment for child processes (dvc, unlearnflow stage): this venv's bin first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env
