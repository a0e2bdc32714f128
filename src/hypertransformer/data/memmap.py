"""Decoded datasets as one memory-mapped uint8 array on disk, and how episodes gather from it.

A dataset too large to hold decoded in memory (tieredImageNet: 779,165 images of 84×84×3,
16.5 GB) is decoded once into two cache files:

* ``<stem>.npy``: uint8 ``[total images, H, W, C]``, the images of class 0, then those of
  class 1, ... (each class is a run of consecutive rows);
* ``<stem>.json``: ``{"class_names": [...], "counts": [...]}``, images per class.

:func:`read_classes` maps the ``.npy`` with ``np.load(mmap_mode="r")``: every class of the
returned :class:`ClassDataset` is a view (a row slice) of that one read-only ``np.memmap``, so
a load reads nothing but the header, and the operating system pages pixels in as episodes
touch them (clean file pages, which it can drop again under memory pressure).
:func:`pack_classes` lets :class:`~hypertransformer.data.sampler.EpisodeSampler` gather an
episode's rows straight from that memmap instead of copying the split into memory.

Writing (:func:`write_classes`) is atomic: the ``.npy`` goes to a temporary file beside it,
filled by positioned writes (not through a memory map, so a build holds one chunk of images
in memory), then renamed into place; the ``.json`` follows the same way.  A load checks the
header, dtype and shape, that the file is long enough to be mapped (a truncated file is not),
and the ``.json`` against the array; any mismatch returns ``None`` so that the caller rebuilds.
(A changed pixel inside an intact file is not detected: nothing short of hashing 16 GB could.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hypertransformer.data.base import ClassDataset
from hypertransformer.data.cache import atomic_path, atomic_write


class RowWriter:
    """A uint8 ``.npy`` of ``shape`` whose rows are written in any order (seek + write)."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._row_bytes = int(np.prod(shape[1:]))
        self._written = np.zeros(shape[0], bool)
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._start = self._file.tell()
        self._file.truncate(self._start + shape[0] * self._row_bytes)  # sparse until written

    def write(self, rows: np.ndarray, images: np.ndarray) -> None:
        """``images[i]`` (uint8, shaped like a row) becomes row ``rows[i]``."""
        if images.shape != (len(rows), *self.shape[1:]) or images.dtype != np.uint8:
            raise ValueError(f"rows of {self.shape[1:]} uint8 expected, got {images.dtype} "
                             f"{images.shape} for {len(rows)} rows")
        rows = np.asarray(rows, np.int64)
        self._written[rows] = True
        runs = np.flatnonzero(np.diff(rows) != 1) + 1  # consecutive rows: one write each run
        for first, last in zip(np.r_[0, runs], np.r_[runs, len(rows)], strict=True):
            self._file.seek(self._start + int(rows[first]) * self._row_bytes)
            self._file.write(np.ascontiguousarray(images[first:last]).data)

    def close(self) -> None:
        self._file.close()

    @property
    def complete(self) -> bool:
        return bool(self._written.all())


def write_classes(stem: Path, class_names: list[str], counts: list[int],
                  image_shape: tuple[int, int, int], fill: Callable[[RowWriter], None]) -> None:
    """Writes ``<stem>.npy`` (rows filled by ``fill(writer)``, class after class as ``counts``
    says) and ``<stem>.json``, each atomically."""
    with atomic_path(stem.with_suffix(".npy")) as tmp:
        writer = RowWriter(tmp, (sum(counts), *image_shape))
        try:
            fill(writer)
        finally:
            writer.close()
        if not writer.complete:
            raise RuntimeError(f"{stem}.npy: the decoder left rows unwritten")  # a bug
    text = json.dumps({"class_names": class_names, "counts": counts})
    atomic_write(stem.with_suffix(".json"), lambda f: f.write(text.encode()))


def read_classes(stem: Path, name: str, image_shape: tuple[int, int, int],
                 num_classes: int) -> ClassDataset | None:
    """The cached dataset, its classes views of one memmap; ``None`` if absent or damaged."""
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(npy, mmap_mode="r")  # a truncated file cannot be mapped: ValueError
    except Exception:  # damaged bytes raise many types (e.g. TokenError from the header)
        return None
    names, counts = (info.get("class_names"), info.get("counts")) if isinstance(info, dict) \
        else (None, None)
    if (not isinstance(array, np.memmap) or array.dtype != np.uint8 or array.ndim != 4
            or array.shape[1:] != image_shape or not isinstance(names, list)
            or not isinstance(counts, list) or len(names) != num_classes
            or len(counts) != num_classes or not all(isinstance(n, str) for n in names)
            or not all(isinstance(c, int) and c > 0 for c in counts)
            or sum(counts) != len(array)):
        return None
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    return ClassDataset(name, [array[s:s + n] for s, n in zip(starts, counts, strict=True)],
                        names)


class MemmapRows:
    """Rows of a memory-mapped ``[total, H, W, C]`` array indexed like a tensor: ``rows[index]``
    (``index`` a LongTensor of any shape) is a new uint8 tensor ``[*index.shape, H, W, C]``."""

    def __init__(self, array: np.memmap) -> None:
        self.array = array

    def __getitem__(self, index: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(self.array[index.numpy()]))


def _memmap_rows(classes: list[np.ndarray]) -> tuple[np.memmap, list[int]] | None:
    """The memmap every class is a row slice of and each class's first row, or ``None``."""
    root: np.memmap | None = None
    starts = []
    for c in classes:
        base = c
        while isinstance(base.base, np.ndarray):
            base = base.base
        if root is None and isinstance(base, np.memmap) and base.flags.c_contiguous:
            root = base
        if (base is not root or not c.flags.c_contiguous or c.dtype != root.dtype
                or c.shape[1:] != root.shape[1:]):
            return None
        offset = c.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        row, rest = divmod(offset, root.strides[0])
        if rest or not 0 <= row <= len(root) - len(c):
            return None
        starts.append(row)
    return None if root is None else (root, starts)


def pack_classes(classes: list[np.ndarray]) -> tuple[Tensor, Tensor | MemmapRows]:
    """``(offsets, images)``: sample ``j`` of class ``c`` is ``images[offsets[c] + j]``.

    Classes that are row slices of one memmap (:func:`read_classes`) stay there: ``images``
    gathers from it and nothing is copied.  Any other classes are concatenated into one
    in-memory uint8 tensor ``[total, H, W, C]`` (a copy), the offsets being cumulative counts.
    """
    mapped = _memmap_rows(classes)
    if mapped is not None:
        root, starts = mapped
        return torch.tensor(starts, dtype=torch.long), MemmapRows(root)
    counts = [len(c) for c in classes]
    return (torch.tensor(np.cumsum([0] + counts[:-1]), dtype=torch.long),
            torch.from_numpy(np.concatenate(classes, axis=0)))
