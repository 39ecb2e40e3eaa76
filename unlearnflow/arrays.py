"""Image rows read on demand, so memory follows the batch, not the dataset.

A record set's pixels live in ``.npy`` files (prepared splits, shard pixels) or are
generated per index (``synthetic:N``). ``Rows`` is a view of such sources: it knows
the shape of what it holds and reads only the rows it is asked for.

    rows = Rows.of(NpyFile("data/shards/shard_0.npy"))   # nothing read yet
    batch = rows[np.array([7, 3, 9])]                    # (3, C, H, W) uint8, 3 rows read
    shard = rows.take(index)                             # a view: still nothing read
    write_npy(path, shard.shape, shard.chunks())         # streamed, same bytes as np.save

Reads go through ``os.pread`` rather than a memory map: mapped pages of a file count
in the process's resident memory once touched, so reading a whole split through a map
would make peak memory grow with N again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

CHUNK = 4096  # rows per streamed read or write


class NpyFile:
    """A C-ordered ``.npy`` file whose rows are read with ``pread``; picklable (the file
    is opened lazily in each process, e.g. a DataLoader worker)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid")} | {"_fd": None, "_pid": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed), as one array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # runs of consecutive rows are one read each
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        fd = self._file()
        in_order = bool((order == np.arange(len(rows))).all())
        for run in np.split(np.arange(len(rows)), breaks):
            first, n = int(sorted_rows[run[0]]), len(run)
            # straight into ``out`` when the rows were asked for in order: no buffer per read
            # (buffers of this size, freed at once, fragment the heap and RSS creeps up)
            target = flat[run[0]:run[0] + n] if in_order else np.empty((n, self.row_bytes), np.uint8)
            got = os.preadv(fd, [memoryview(target).cast("B")], self.offset + first * self.row_bytes)
            if got != n * self.row_bytes:
                raise ValueError(f"{self.path} is shorter than its header says (rows {first}..{first + n - 1})")
            if not in_order:
                flat[order[run]] = target
        return out


class InMemory:
    """An array already in memory, as a row source."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, tuple(array.shape), array.dtype

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64)]


class Rows:
    """Rows of one or more sources (``NpyFile``, ``InMemory``, or anything with ``shape``,
    ``dtype`` and ``read(rows)``), in a chosen order. Indexing reads; ``take`` does not."""

    def __init__(self, sources: tuple, source_of: np.ndarray, row: np.ndarray):
        self.sources, self.source_of, self.row = tuple(sources), source_of, row
        shapes = {tuple(s.shape[1:]) for s in self.sources}
        if len(shapes) > 1:
            raise ValueError(f"rows of different shapes cannot be combined: {sorted(shapes)}")
        inner = shapes.pop() if shapes else ()
        self.shape = (len(row), *inner)
        self.dtype = self.sources[0].dtype if self.sources else np.dtype(np.uint8)
        self.ndim = len(self.shape)

    @classmethod
    def of(cls, source) -> "Rows":
        source = InMemory(source) if isinstance(source, np.ndarray) else source
        n = source.shape[0]
        return cls((source,), np.zeros(n, dtype=np.int16), np.arange(n, dtype=np.int64))

    @classmethod
    def concat(cls, parts: list) -> "Rows":
        parts = [p if isinstance(p, Rows) else Rows.of(p) for p in parts]
        sources, source_of, row = [], [], []
        for p in parts:
            source_of.append(p.source_of + len(sources))
            sources.extend(p.sources)
            row.append(p.row)
        return cls(tuple(sources), np.concatenate(source_of).astype(np.int16), np.concatenate(row))

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index) -> "Rows":
        index = np.asarray(index, dtype=np.int64)
        return Rows(self.sources, self.source_of[index], self.row[index])

    def read(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        src, row = self.source_of[index], self.row[index]
        for s in np.unique(src):
            hit = src == s
            out[hit] = self.sources[s].read(row[hit])
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read([key])[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        return self.read(key)

    def __array__(self, dtype=None, copy=None):
        out = self.read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield self[start:start + size]


def chunks_of(images, size: int = CHUNK) -> Iterator[np.ndarray]:
    """Consecutive blocks of ``images`` (an array or ``Rows``), each read when reached."""
    for start in range(0, len(images), size):
        yield np.asarray(images[start:start + size])


def write_npy(path: str | Path, shape: tuple, chunks: Iterable[np.ndarray], dtype=np.uint8) -> None:
    """Write an ``.npy`` file block by block; the bytes equal ``np.save`` of the whole array.
    Atomic: a reader (or a rerun after kill -9) sees the old file or the whole new one, never
    a header that promises rows the file lacks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(d) for d in shape)}
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    written = 0
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)  # what np.save writes for such shapes
            for block in chunks:
                block = np.ascontiguousarray(block, dtype=dtype)
                f.write(block.tobytes())
                written += len(block)
        if written != shape[0]:
            raise ValueError(f"{path}: wrote {written} rows but the header says {shape[0]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
