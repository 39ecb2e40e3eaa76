"""DVC and git: record which data version fed which constituent.

The Prefect flow produces the stage outputs itself (same core code as
``dvc repro``), then ``dvc commit`` writes their hashes into ``dvc.lock`` and
the DVC cache, and git commits ``dvc.lock``. DVC calls are serialised per
workspace (``--wait-for-lock``): two DVC commands at once would fail on DVC's lock.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.workspace import tool_env

GIT_IDENTITY = ["-c", "user.name=unlearnflow", "-c", "user.email=unlearnflow@localhost"]


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], root, check)


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["git", *args], root, check)


def dvc_commit(root: Path) -> None:
    """Record the outputs now in the workspace in dvc.lock and the DVC cache."""
    dvc(root, "commit", "--force", "--quiet")


def dvc_gc_workspace(root: Path) -> None:
    """Drop every DVC cache object the current workspace does not use (erased data included)."""
    dvc(root, "gc", "--workspace", "--force", "--quiet")


def dvc_status_clean(root: Path) -> tuple[bool, str]:
    out = dvc(root, "status").stdout.strip()
    return ("up to date" in out, out)


def lock_info(root: Path) -> dict:
    """md5 of dvc.lock and, per stage, the md5 of each output and each dependency."""
    lock = Path(root) / "dvc.lock"
    stages = yaml.safe_load(lock.read_text()).get("stages", {})

    def md5s(key: str) -> dict:
        return {stage: {e["path"]: e.get("md5") for e in body.get(key, [])} for stage, body in stages.items()}

    return {"dvc_lock_md5": hashlib.md5(lock.read_bytes()).hexdigest(), "outs": md5s("outs"), "deps": md5s("deps")}


def git_head(root: Path) -> str | None:
    proc = git(root, "rev-parse", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_is_dirty(root: Path) -> bool:
    return bool(git(root, "status", "--porcelain", "--untracked-files=no").stdout.strip())


def lineage_paths(root: Path) -> list[str]:
    """Files the pipeline owns in git: dvc.lock, the .gitignore DVC writes beside each
    cached output, and uncached outputs (metrics)."""
    root = Path(root)
    data = yaml.safe_load((root / "dvc.lock").read_text())
    paths = {"dvc.lock"}
    for body in data.get("stages", {}).values():
        for out in body.get("outs", []):
            ignore = (root / out["path"]).parent / ".gitignore"
            if ignore.is_file():
                paths.add(ignore.relative_to(root).as_posix())
    for extra in ("ledger/requests.jsonl", "lineage/certificates", "lineage/audits", "lineage/approximations"):
        if (root / extra).exists():
            paths.add(extra)
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    for stage in dvc_yaml.get("stages", {}).values():
        for entry in stage.get("metrics", []):
            for path, opts in (entry.items() if isinstance(entry, dict) else [(entry, {})]):
                if (root / path).is_file() and opts.get("cache", True) is False:
                    paths.add(path)
    return sorted(paths)


def git_commit_lineage(root: Path, message: str) -> str | None:
    """Commit the pipeline's lineage files (``lineage_paths``); nothing else of the user's."""
    paths = lineage_paths(root)
    git(root, "add", "--", *paths)
    staged = git(root, "diff", "--cached", "--name-only", "--", *paths).stdout.split()
    if staged:
        identity = [] if git(root, "config", "user.email", check=False).stdout.strip() else GIT_IDENTITY
        git(root, *identity, "commit", "--quiet", "-m", message, "--", *paths)
    return git_head(root)


def clear_stale_git_locks(root: Path) -> list[str]:
    """Remove git's lock files (``.git/index.lock`` …) left by a git process that was killed
    mid-commit, if no git process runs in this workspace now. Call it holding the workspace
    lock (so no other unlearnflow command is committing). Returns what was removed."""
    import psutil

    git_dir = Path(root) / ".git"
    stale = [p for p in [git_dir / "index.lock", git_dir / "HEAD.lock", *git_dir.glob("refs/heads/*.lock")]
             if p.is_file()]
    if not stale:
        return []
    for proc in psutil.process_iter(["name", "cwd"]):
        try:
            if proc.info["name"] == "git" and proc.info["cwd"] and Path(proc.info["cwd"]).resolve() == Path(root):
                return []  # a git command is at work here: its locks are not stale
        except (psutil.Error, OSError):
            continue
    for p in stale:
        p.unlink(missing_ok=True)
    return [p.relative_to(root).as_posix() for p in stale]
