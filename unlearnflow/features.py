"""Feature requests (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023):
remove what a rectangle of pixels shows (a name tag, a face, a licence plate, a poisoning
trigger) from the named records, keeping the records.

    region  X0,Y0,X1,Y1   pixel coordinates of the prepared images, end exclusive
    fill    a number      every pixel of the region set to it (0..255, the images' uint8 scale)
            mean          each channel's mean over the pixels outside the region
            blur          each pixel a Gaussian-weighted mean of the pixels outside the region

Every fill is computed from pixels outside the region only: nothing of the old content
survives the edit (a blur of the region itself would keep it), and applying the same edit
twice changes nothing more. Edits apply in the ledger's filing order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unlearnflow.arrays import InMemory, Rows
from unlearnflow.errors import ConfigError
from unlearnflow.hashing import sha256_hex

FILLS = ("a number 0..255", "mean", "blur")


@dataclass(frozen=True)
class FeatureEdit:
    region: tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)
    fill: str  # canonical: "mean", "blur" or a number as text ("0", "127.5")

    def to_json(self) -> dict:
        return {"region": list(self.region), "fill": self.fill}

    @classmethod
    def from_json(cls, obj: dict) -> "FeatureEdit":
        return cls(tuple(int(v) for v in obj["region"]), str(obj["fill"]))

    def __str__(self) -> str:
        return f"region {','.join(map(str, self.region))} fill {self.fill}"


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``X0,Y0,X1,Y1`` as four integers with X0 < X1 and Y0 < Y1 (one-line error otherwise)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x0, y0, x1, y1 = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--region {text!r} is not X0,Y0,X1,Y1 (four integers, pixel coordinates, end "
                          f"exclusive), e.g. --region 0,0,3,3") from None
    if x0 < 0 or y0 < 0:
        raise ConfigError(f"--region {text!r} starts outside the image: coordinates are 0 or more")
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"--region {text!r} is empty: X1 must exceed X0 and Y1 must exceed Y0 (end exclusive)")
    return x0, y0, x1, y1


def parse_fill(text: str) -> str:
    """``mean``, ``blur`` or a number 0..255, as the canonical text stored in the request."""
    word = str(text).strip().lower()
    if word in ("mean", "blur"):
        return word
    try:
        value = float(word)
    except ValueError:
        value = math.nan
    if not (0.0 <= value <= 255.0):  # NaN fails too
        raise ConfigError(f"--fill {text!r} is invalid; valid choices: {', '.join(FILLS)}")
    return format(value, "g")


def check_fits(edit: FeatureEdit, shape: tuple[int, ...]) -> None:
    """Refuse a region outside images of ``shape`` (C, H, W), or a fill with nothing to read."""
    _, h, w = shape[-3:]
    x0, y0, x1, y1 = edit.region
    if x1 > w or y1 > h:
        raise ConfigError(f"--region {','.join(map(str, edit.region))} reaches outside the {w}x{h} images "
                          f"(width x height): X1 may be at most {w} and Y1 at most {h}")
    if edit.fill in ("mean", "blur") and (x1 - x0) * (y1 - y0) == w * h:
        raise ConfigError(f"--region {','.join(map(str, edit.region))} covers the whole image: --fill "
                          f"{edit.fill} reads the pixels outside the region; give a number instead")


def apply(images: np.ndarray, edit: FeatureEdit) -> np.ndarray:
    """A copy of uint8 ``images`` (N, C, H, W) with the region filled."""
    out = np.array(images, dtype=np.uint8, copy=True)
    x0, y0, x1, y1 = edit.region
    if edit.fill not in ("mean", "blur"):
        out[:, :, y0:y1, x0:x1] = np.uint8(round(float(edit.fill)))
        return out
    n, c, h, w = out.shape
    inside = np.zeros((h, w), dtype=bool)
    inside[y0:y1, x0:x1] = True
    outside = out.reshape(n, c, h * w)[:, :, ~inside.ravel()].astype(np.float64)  # (N, C, P)
    if edit.fill == "mean":
        values = np.broadcast_to(outside.mean(axis=2)[:, :, None, None], (n, c, y1 - y0, x1 - x0))
    else:
        weights = _blur_weights(h, w, inside, edit.region)  # (Q, P): region pixel <- outside pixels
        values = (outside @ weights.T).reshape(n, c, y1 - y0, x1 - x0)
    out[:, :, y0:y1, x0:x1] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def _blur_weights(h: int, w: int, inside: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """Normalised Gaussian weights of every outside pixel for each region pixel (row-major),
    with a width of half the region's longer side (at least one pixel)."""
    x0, y0, x1, y1 = region
    sigma = max(1.0, max(x1 - x0, y1 - y0) / 2)
    yy, xx = np.mgrid[0:h, 0:w]
    out_y, out_x = yy[~inside], xx[~inside]
    ry, rx = np.mgrid[y0:y1, x0:x1]
    d2 = (ry.ravel()[:, None] - out_y[None]) ** 2 + (rx.ravel()[:, None] - out_x[None]) ** 2
    weights = np.exp(-d2 / (2 * sigma ** 2))
    return weights / weights.sum(axis=1, keepdims=True)


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of one record's pixel bytes (uint8, C x H x W), as certificates state it."""
    return sha256_hex(np.ascontiguousarray(image, dtype=np.uint8).tobytes())


def edited_images(images, record_ids, edits: dict[str, list[FeatureEdit]]):
    """``images`` (an array or ``Rows``) with each record's edits applied, in order; the
    records no edit names are not read. Rows stay Rows (the edited ones held in memory)."""
    positions = np.array([i for i, rid in enumerate(record_ids) if rid in edits], dtype=np.int64)
    if not len(positions):
        return images
    block = np.asarray(images[positions])
    groups: dict[tuple, list[int]] = {}  # records with the same edits are filled together
    for j, i in enumerate(positions):
        groups.setdefault(tuple(edits[record_ids[i]]), []).append(j)
    for sequence, members in groups.items():
        for edit in sequence:
            block[members] = apply(block[members], edit)
    if isinstance(images, np.ndarray):
        out = images.copy()
        out[positions] = block
        return out
    rows = images if isinstance(images, Rows) else Rows.of(images)
    source_of, row = rows.source_of.copy(), rows.row.copy()
    source_of[positions], row[positions] = len(rows.sources), np.arange(len(positions))
    return Rows((*rows.sources, InMemory(block)), source_of.astype(np.int16), row)
