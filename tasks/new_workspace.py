"""Creating a workspace: a git + DVC repository with this checkout's ``params.yaml`` (the
dataset and model set, every other default kept with its comments) and ``dvc.yaml``, the
ledger file, and a ``.gitignore`` for what must never be committed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tasks.lineage import GIT_IDENTITY, dvc, git
from unlearnflow.config import parse_params
from unlearnflow.errors import ConfigError
from unlearnflow.layout import Layout
from unlearnflow.ledger import Ledger
from unlearnflow.preflight import check_names, check_source

TEMPLATE = Path(__file__).resolve().parent.parent  # this checkout: its params.yaml and dvc.yaml
GITIGNORE = "/checkpoints/\n/mlflow.db\n/mlruns/\n/.unlearnflow/\n/ledger/*.lock\n__pycache__/\n"


def create_workspace(target: Path, dataset: str | None = None, model: str | None = None) -> Path:
    """Make ``target`` a workspace (it may exist, but must not hold params.yaml or dvc.yaml).
    An unknown dataset or model fails before anything is created."""
    target = Path(target).resolve()
    if (target / "params.yaml").exists() or (target / "dvc.yaml").exists():
        raise ConfigError(f"{target} already holds params.yaml or dvc.yaml; not overwriting")
    text = (TEMPLATE / "params.yaml").read_text()
    for key, value in (("dataset", dataset), ("model", model)):
        if value:  # the line itself, so its comment stays
            text = re.sub(rf"(?m)^(  {key}: ).*$", lambda m: m.group(1) + value, text, count=1)
    params = parse_params(yaml.safe_load(text))
    check_names(params)
    check_source(params)
    target.mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(text)
    Ledger(Layout(target).ledger).ensure()
    shutil.copy(TEMPLATE / "dvc.yaml", target / "dvc.yaml")
    with open(target / ".gitignore", "a") as f:
        f.write(GITIGNORE)
    if not (target / ".git").exists():
        git(target, "init", "--quiet")
    if not (target / ".dvc").exists():
        dvc(target, "init", "--quiet")
        dvc(target, "config", "core.analytics", "false")
    _make_keys(target, params)
    git(target, "add", "params.yaml", "dvc.yaml", ".gitignore", ".dvc", ".dvcignore", "ledger/requests.jsonl",
        "lineage/keys.json")
    identity = [] if git(target, "config", "user.email", check=False).stdout.strip() else GIT_IDENTITY
    git(target, *identity, "commit", "--quiet", "-m", "unlearnflow init")
    return target


def _make_keys(target: Path, params) -> None:
    """The workspace's keys (the ones in UNLEARNFLOW_SUBJECT_KEY / UNLEARNFLOW_SIGNING_KEY if
    set, else new ones in .unlearnflow/), and what identifies them in lineage/keys.json, which
    every later command checks (``tasks.workspace``). Packaged datasets need no subject key."""
    from tasks.workspace import Workspace

    ws = Workspace(target)
    ws.secret_key(params.data)
    ws.signing_key()
