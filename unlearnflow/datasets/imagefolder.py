"""imagefolder:PATH: a user's own images, one sub-folder per class.

    PATH/referee/Ref_image01.JPG
    PATH/team_away/Away_image03.JPG
    PATH/team_home/...

Images are converted to RGB and resized to ``data.image_size``. A record's id is
the hash of its file's bytes and its class. Subjects come from
``data.subjects_csv`` (columns ``file,subject``; ``file`` is the file name or the
path relative to PATH); a file the CSV does not mention is its own subject.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from unlearnflow.config import DataConfig
from unlearnflow.datasets._registry import register_dataset
from unlearnflow.errors import ConfigError, PrivateDetailError
from unlearnflow.hashing import sha256_hex
from unlearnflow.records import RecordSet


def read_subjects_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"data.subjects_csv = {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "subject"} <= set(reader.fieldnames):
            raise ConfigError(f"{path} must have a header with columns 'file' and 'subject'; got {reader.fieldnames}")
        return {row["file"].strip(): row["subject"].strip() for row in reader}


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig, arg: str | None) -> RecordSet:
    if not arg:
        raise ConfigError("data.dataset = 'imagefolder' needs a path: write 'imagefolder:PATH'")
    root = Path(arg)
    if not root.is_dir():
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {root} is not a directory")
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}': {e}") from e
    subjects = read_subjects_csv(Path(cfg.subjects_csv)) if cfg.subjects_csv else {}
    size = cfg.image_size
    images, labels, ids, subject_ids, sources = [], [], [], [], []
    for n, (path, label) in enumerate(folder.samples):
        path = Path(path)
        rel = path.relative_to(root).as_posix()
        raw = path.read_bytes()
        rid = sha256_hex(f"{label}:".encode() + raw)[:16]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))  # (3, H, W)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, zero-byte
            raise PrivateDetailError(
                f"data.dataset = 'imagefolder:{arg}': file {n + 1} of {len(folder.samples)} (class folder "
                f"{folder.classes[label]!r}, {len(raw)} bytes) is not a readable image ({type(e).__name__}); "
                f"fix or remove it", local_detail=f"the file: {rel}") from None
        labels.append(label)
        ids.append(rid)
        subject_ids.append(subjects.get(rel, subjects.get(path.name, f"file:{rid}")))
        sources.append(rel)
    if not images:
        raise ConfigError(f"data.dataset = 'imagefolder:{arg}' holds no images")
    return RecordSet(
        images=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        record_ids=tuple(ids),
        subject_ids=tuple(subject_ids),
        sources=tuple(sources),
        classes=tuple(folder.classes),
        personal_subjects=cfg.subjects_csv is not None,
    )
