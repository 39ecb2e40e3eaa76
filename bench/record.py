"""What every benchmark writes: ``bench/results/<name>.json``, its figures stamped with the
date, the git commit they were measured at (``-dirty`` when the checkout had uncommitted
changes) and the machine, and ``<name>.md``, the table a person reads (also printed)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no")
                                                   else "")


def stamp() -> dict:
    return {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "cores": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine()}


def save_json(out: Path, data: dict, recorded: dict | None = None) -> None:
    """``recorded``: the ``stamp()`` taken when the run began (default: now), so a checkout changed
    while a long run went on does not stamp figures the run's code did not make."""
    Path(out).with_suffix(".json").write_text(json.dumps({"recorded": recorded or stamp(), **data}, indent=1,
                                                         default=str) + "\n")


def save_md(out: Path, lines: list[str]) -> None:
    Path(out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
