"""DVC and git: record which data version fed which constituent.

The Prefect flow produces the stage outputs itself (same core code as
``dvc repro``), then ``dvc commit`` writes their hashes into ``dvc.lock`` and
the DVC cache, and git commits ``dvc.lock``. DVC calls are serialised per
workspace (``--wait-for-lock``): two DVC commands at once would fail on DVC's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from unlearnflow.layout import Layout

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


def dvc_gc_workspace(root: Path, remote: str | None = None) -> None:
    """Drop every DVC cache object the current workspace does not use (erased data included);
    with ``remote``, from that DVC remote too (``--cloud``)."""
    cloud = ["--cloud", "--remote", remote] if remote else []
    dvc(root, "gc", "--workspace", *cloud, "--force", "--quiet")


def dvc_record(root: Path, remote: str | None, gc: bool, clock) -> tuple[bool, str]:
    """What ``dvc commit --force``, ``dvc push --remote R``, ``dvc gc --workspace [--cloud]
    --force`` and ``dvc status`` do, in this process through DVC's Python API (one Repo: no
    interpreter start-up per command, the index read once), each part marked on ``clock``.
    Returns (status clean, status as text)."""
    import logging

    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.ERROR)  # as --quiet: its handlers hold the stream of when DVC set them up
    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves some paths against the cwd
        repo.commit(None, force=True)
        clock.mark("dvc_commit")
        if remote:
            repo.push(remote=remote)
            clock.mark("dvc_push")
        if gc:
            repo.gc(workspace=True, cloud=bool(remote), remote=remote, force=True)
            clock.mark("dvc_gc")
        changed = repo.status()
    return not changed, json.dumps(changed) if changed else "Data and pipelines are up to date."


# ---- the DVC remote ----------------------------------------------------------------------

REMOTE = "unlearnflow"  # the remote UNLEARNFLOW_DVC_REMOTE configures (in .dvc/config.local)


def dvc_remote(root: Path) -> str | None:
    """The DVC remote this workspace's data versions go to, or None (data stays in the workspace).

    ``UNLEARNFLOW_DVC_REMOTE`` (a directory or ``s3://bucket/path``; for an S3-compatible
    server also ``UNLEARNFLOW_DVC_REMOTE_ENDPOINT``) becomes remote ``unlearnflow`` in the
    git-ignored ``.dvc/config.local``, under a folder named after the workspace's first git
    commit: ``gc --cloud`` deletes whatever the workspace does not use, so two workspaces must
    never share one folder. Without it, the repository's default remote (``dvc remote add -d``).
    """
    url = os.environ.get("UNLEARNFLOW_DVC_REMOTE")
    if url:
        if "://" not in url:  # a directory: DVC would read a relative path against .dvc/
            url = str(Path(url).expanduser().resolve())
        first = git(root, "rev-list", "--max-parents=0", "HEAD").stdout.split()[-1][:12]
        settings = {"url": f"{url.rstrip('/')}/{first}"}
        if os.environ.get("UNLEARNFLOW_DVC_REMOTE_ENDPOINT"):
            settings["endpointurl"] = os.environ["UNLEARNFLOW_DVC_REMOTE_ENDPOINT"]
        if _remote_settings(root, REMOTE) != settings:
            dvc(root, "remote", "add", "--local", "--force", REMOTE, settings["url"])
            for key, value in settings.items():
                if key != "url":
                    dvc(root, "remote", "modify", "--local", REMOTE, key, value)
        return REMOTE
    return _config(root).get("core", {}).get("remote")


def dvc_push(root: Path, remote: str) -> None:
    dvc(root, "push", "--remote", remote, "--quiet")


def remote_objects(root: Path, remote: str) -> tuple[set[str], set[str]]:
    """(objects the DVC remote holds, objects the workspace's dvc.lock uses), as md5 object ids
    (a directory's listing as ``<md5>.dir``, then each of its files)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stored = set(repo.cloud.get_remote_odb(remote, "verify").all())
        cache = repo.cache.local
        used = set()
        for out in repo.index.outs:  # as dvc.lock records them; `cache: false` outs are never pushed
            oid = out.hash_info.value if out.use_cache and out.hash_info else None
            if oid:
                used.add(oid)
            if oid and oid.endswith(".dir"):
                used |= {e["md5"] for e in json.loads(Path(cache.oid_to_path(oid)).read_text())}
    return stored, used


def _config(root: Path) -> dict:
    """.dvc/config with .dvc/config.local over it, as {section: {key: value}}."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read([Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"])
    return {name.strip("'"): dict(parser[name]) for name in parser.sections()}


def _remote_settings(root: Path, name: str) -> dict:
    return _config(root).get(f'remote "{name}"', {})


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
    lock = root / "dvc.lock"  # absent before the first training (a key rotation may commit first)
    data = yaml.safe_load(lock.read_text()) if lock.is_file() else {}
    paths = {"dvc.lock"} if lock.is_file() else set()
    for body in data.get("stages", {}).values():
        for out in body.get("outs", []):
            ignore = (root / out["path"]).parent / ".gitignore"
            if ignore.is_file():
                paths.add(ignore.relative_to(root).as_posix())
    for extra in Layout(root).git_tracked:
        if extra.exists():
            paths.add(extra.relative_to(root.resolve()).as_posix())
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
