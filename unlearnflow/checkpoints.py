"""A content-addressed store of slice checkpoints (model + optimizer state).

A checkpoint's key is the hash of everything that determined it (see
``training.slice_keys``): the training config, the model spec, the shard, and
the ordered records (ids, labels, pixels) of slices 1..k. An unchanged prefix
therefore has an unchanged key and is reused; a deletion in slice k changes the
keys of slices k..R and of nothing before.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch


class CheckpointStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, state: dict) -> Path:
        """Write atomically: a reader never sees half a checkpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, self.path(key))
        return self.path(key)

    def load(self, key: str) -> dict:
        return torch.load(self.path(key), map_location="cpu", weights_only=True)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.pt") if not p.name.startswith(".tmp-"))

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
            return True
        except FileNotFoundError:
            return False
