"""imagefolder:PATH: a user's own images, one sub-folder per class.

    PATH/referee/Ref_image01.JPG
    PATH/team_away/Away_image03.JPG
    PATH/team_home/...

Images are converted to RGB and resized to ``data.image_size``. A record's id is
the hash of its file's bytes and its class. Subjects come from
``data.subjects_csv`` (columns ``file,subject``; ``file`` is the file name or the
path relative to PATH); a file the CSV does not mention is its own subject.

Ingest is incremental when the workspace hands in its private cache folder
(``.unlearnflow/ingest/``): decoded pixels and record ids are kept there, and only
files whose path, size, mtime or class changed are read again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from unlearnflow.arrays import CHUNK, NpyFile, Rows, write_npy
from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import ConfigError, PrivateDetailError
from unlearnflow.hashing import sha256_hex
from unlearnflow.records import RecordSet

INGEST_FORMAT = "unlearnflow.ingest/1"


def read_subjects_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"data.subjects_csv = {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "subject"} <= set(reader.fieldnames):
            raise ConfigError(f"{path} must have a header with columns 'file' and 'subject'; got {reader.fieldnames}")
        return {row["file"].strip(): row["subject"].strip() for row in reader}


EXPECTED = "a folder with one sub-folder of images per class (PATH/<class>/<image>.jpg, .png, …)"


def list_folder(arg: str | None):
    """torchvision's ``ImageFolder`` over ``arg`` (it lists the files and reads none), or a
    ConfigError naming the path and what was expected."""
    if not arg:
        raise ConfigError("data.dataset = 'imagefolder' needs a path: write 'imagefolder:PATH'")
    root = Path(arg)
    if not root.exists():
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {root} does not exist; expected {EXPECTED}")
    if not root.is_dir():
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {root} is a file, not a folder; expected {EXPECTED}")
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        reason = str(e).split(". Supported extensions")[0].rstrip(".")
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {root} holds no images in class sub-folders "
                          f"({reason}); expected {EXPECTED}") from None
    if not folder.samples:
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {root} holds no images; expected {EXPECTED}")
    return folder


def fill_ingest_cache(cfg: DataConfig, cache_dir: Path, edits: dict) -> int:
    """The workspace's ingest cache with ``edits`` applied to the records they name (``_Cache.fill``)."""
    cache = _Cache(cache_dir, Path(cfg.dataset_arg), cfg.image_size)
    return cache.fill(edits) if cache.pixels.is_file() else 0


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig, arg: str | None, cache_dir: Path | None = None) -> RecordSet:
    return ingest(cfg, arg, cache_dir)[0]


def ingest(cfg: DataConfig, arg: str | None, cache_dir: Path | None = None) -> tuple[RecordSet, dict]:
    """The folder's records and {files, read, reused}. With ``cache_dir`` (a private folder
    of the workspace) decoded pixels and record ids are kept there, and a file whose path,
    size, mtime and class are unchanged is neither read nor hashed again: preparing the
    data after an erasure costs in proportion to what changed. The cache then holds
    exactly the files present now (an erased, deleted file leaves it on the next ingest)."""
    folder = list_folder(arg)
    root = Path(arg)
    subjects = read_subjects_csv(Path(cfg.subjects_csv)) if cfg.subjects_csv else {}
    size = cfg.image_size
    files = []  # (path, rel, label, size, mtime_ns)
    for path, label in folder.samples:
        st = os.stat(path)
        files.append((Path(path), Path(path).relative_to(root).as_posix(), label, st.st_size, st.st_mtime_ns))

    cache = _Cache(cache_dir, root, size) if cache_dir else None
    known = cache.entries() if cache else {}
    ids, new = [None] * len(files), {}  # new: position -> decoded pixels, for files read now

    def decode(n: int) -> np.ndarray:
        path, rel, label, _, _ = files[n]
        raw = path.read_bytes()
        ids[n] = sha256_hex(f"{label}:".encode() + raw)[:16]
        return _pixels(path, raw, size, n, len(files), folder.classes[label], arg, rel)

    reuse = {}  # position -> row in the old cache
    for n, (_, rel, label, nbytes, mtime) in enumerate(files):
        hit = known.get(rel)
        if hit is not None and hit[:3] == [label, nbytes, mtime]:
            ids[n], reuse[n] = hit[3], hit[4]
    if cache is None:
        images = np.stack([decode(n) for n in range(len(files))])
    else:
        images = cache.write(files, ids, reuse, decode)
    stats = {"files": len(files), "read": len(files) - len(reuse), "reused": len(reuse)}
    records = RecordSet(
        images=images,
        labels=np.array([f[2] for f in files], dtype=np.int64),
        record_ids=tuple(ids),
        subject_ids=tuple(subjects.get(rel, subjects.get(path.name, f"file:{rid}"))
                          for (path, rel, *_), rid in zip(files, ids)),
        sources=tuple(f[1] for f in files),
        classes=tuple(folder.classes),
        personal_subjects=cfg.subjects_csv is not None,
    )
    return records, stats


def _pixels(path: Path, raw: bytes, size: int, n: int, total: int, cls: str, arg: str, rel: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (3, H, W)
    except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, zero-byte
        raise PrivateDetailError(
            f"data.dataset = 'imagefolder:{arg}': file {n + 1} of {total} (class folder {cls!r}, {len(raw)} bytes) "
            f"is not a readable image ({type(e).__name__}); fix or remove it", local_detail=f"the file: {rel}") from None


class _Cache:
    """``<cache_dir>/<key>.npy`` (decoded pixels) + ``<key>.json`` (per row: path, class,
    size, mtime, record id), for one folder and image size. Replaced whole, atomically."""

    def __init__(self, cache_dir: Path, root: Path, size: int):
        self.size = size  # every image becomes RGB, size x size
        key = sha256_hex(f"{INGEST_FORMAT}:{root.resolve()}:{size}".encode())[:16]
        self.pixels, self.index = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"

    def entries(self) -> dict[str, list]:
        """rel path -> [class, size, mtime_ns, record id, row]."""
        try:
            rows = json.loads(self.index.read_text())["rows"]
            NpyFile(self.pixels)  # both halves present and readable
        except (OSError, ValueError, KeyError):
            return {}
        return {r[0]: [*r[1:], i] for i, r in enumerate(rows)}

    def fill(self, edits: dict) -> int:
        """Apply feature edits ({record id: [FeatureEdit, ...]}) to the cached pixels of those
        records, so the cache keeps no old content of a filled region (the edits read only
        pixels outside it: applying them again changes nothing). Returns the rows edited."""
        from unlearnflow.features import edited_images

        entries = self.entries()
        id_of = {e[4]: e[3] for e in entries.values()}
        if not any(rid in edits for rid in id_of.values()):
            return 0
        old = NpyFile(self.pixels)

        def blocks():
            for start in range(0, old.shape[0], CHUNK):
                span = np.arange(start, min(start + CHUNK, old.shape[0]))
                yield edited_images(old.read(span), tuple(id_of[i] for i in span), edits)

        pixels = self.pixels.with_name(f".new-{self.pixels.name}")
        write_npy(pixels, old.shape, blocks())  # atomic; same rows, so the index still names them
        pixels.replace(self.pixels)
        return sum(rid in edits for rid in id_of.values())

    def write(self, files: list, ids: list, reuse: dict, decode) -> Rows:
        if len(reuse) == len(files) and list(reuse.values()) == list(range(len(files))) \
                and NpyFile(self.pixels).shape[0] == len(files):
            return Rows.of(NpyFile(self.pixels))  # nothing changed: keep the file as it is
        old = NpyFile(self.pixels) if reuse else None

        def blocks():
            for start in range(0, len(files), CHUNK):
                span = range(start, min(start + CHUNK, len(files)))
                hits = [n for n in span if n in reuse]
                block = {n: row for n, row in zip(hits, old.read([reuse[n] for n in hits]))} if hits else {}
                yield np.stack([block[n] if n in block else decode(n) for n in span])

        pixels = self.pixels.with_name(f".new-{self.pixels.name}")  # the old one is read while this is written
        write_npy(pixels, (len(files), 3, self.size, self.size), blocks())  # atomic
        rows = [[rel, label, nbytes, mtime, rid] for (_, rel, label, nbytes, mtime), rid in zip(files, ids)]
        index_tmp = self.index.with_name(f".tmp-{os.getpid()}-{self.index.name}")
        index_tmp.write_text(json.dumps({"format": INGEST_FORMAT, "rows": rows}))
        self.index.unlink(missing_ok=True)  # never an index that names the wrong pixels
        pixels.replace(self.pixels)
        index_tmp.replace(self.index)
        return Rows.of(NpyFile(self.pixels))
