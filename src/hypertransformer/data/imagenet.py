"""miniImageNet and tieredImageNet from their common on-disk forms (SPEC §2.1), decoded once
into a memory-mapped cache (:mod:`hypertransformer.data.memmap`).

``data_dir`` holds one of these forms; the files present pick it (all three splits needed):

miniImageNet, 100 classes: train 64, val 16, test 20 = classes 0-63, 64-79, 80-99.

* ``pickles``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
  (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (WordNet id -> list of indices into
  ``image_data``).  Classes: the WordNet ids in sorted order; a class's images in the order of
  its index list.
* ``csv``: Ravi & Larochelle's ``{train,val,test}.csv`` (header ``filename,label``) with the
  images in ``images/<filename>`` (JPEG or any format PIL reads, any size).  Classes: the
  labels (WordNet ids) in sorted order, which in Ravi's CSVs is also their order of first
  appearance, so both forms number the classes alike; a class's images in row order.

tieredImageNet, 608 classes: train 351, val 97, test 160 = classes 0-350, 351-447, 448-607.

* ``npz``: ``{split}_images.npz`` (key ``images``, uint8 ``[N, 84, 84, 3]``) with
  ``{split}_labels.pkl`` (a dict whose ``label_specific``, else ``labels``, holds one class id
  per image).
* ``png``: Ren et al.'s ``{split}_images_png.pkl`` (a list of PNG-encoded images: bytes, or
  uint8 arrays of the bytes as ``cv2.imencode`` returns them) with the same labels pickle
  (keys ``label_specific``, ``label_general``, ``label_specific_str``, ``label_general_str``).
  PNGs are decoded by PIL in the PNG's own RGB order.

  Classes of a split: its class ids in ascending order; a class's images in file order.
  Class names: ``label_specific_str[id]`` when the labels pickle has it, else ``<split>:<id>``.

Checked, each failure a :class:`DatasetError` naming the file: every split has the right
number of classes; pickles unpickle (truncated or corrupt ones do not) into the structure
above; images are uint8 ``[N, H, W, 3]``; there is one label per image; index lists stay in
range; every image decodes.  Pickles are read with ``encoding="latin1"``, so files written by
Python 2 load too (their NumPy arrays need it; their byte strings arrive as ``str`` and are
encoded back).  Unpickling runs code: only use pickles from a source you trust.

Images are converted to ``channels`` and resized to ``image_size`` by
:func:`numpy_cache.fit_images`, like every loader.  The result is cached under
:func:`cache_dir` as ``<name>_<form>_<size>px_<channels>ch_<key>.npy`` + ``.json``, ``key``
hashing the source files (path, size, mtime) and the settings; a first load decodes (with a
progress bar), later loads memory-map the cache.  ``hypertransformer data prepare`` builds it
ahead of a run (:func:`prepare`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.cache import cache_dir
from hypertransformer.data.image_folder import read_image
from hypertransformer.data.memmap import RowWriter, read_classes, write_classes
from hypertransformer.data.numpy_cache import check_image_args, fit_images
from hypertransformer.data.specs import SPLIT_PRESETS, SPLITS

IMAGE_SIZE, CHANNELS = 84, 3  # the datasets' own images; the default of their presets
_CACHE_VERSION = 1  # bump when the decoded pixels change
_CHUNK = 512  # images decoded, resized and written at a time

Chunk = tuple[np.ndarray, np.ndarray]  # (rows within the split, uint8 images [n, s, s, c])


@dataclass
class SplitSource:
    """One split of a source: its classes (names, images per class) and, read lazily, its
    images with their rows (class after class, in class order) within the split."""

    class_names: list[str]
    counts: list[int]
    chunks: Callable[[int, int], Iterator[Chunk]]  # (image_size, channels) -> chunks


@dataclass(frozen=True)
class Form:
    """An on-disk form: its files per split (``{split}`` in a pattern), extra folders, and a
    reader ``(root, split, expected classes) -> SplitSource``."""

    name: str
    patterns: tuple[str, ...]
    folders: tuple[str, ...]
    read: Callable[[Path, str, int], SplitSource]

    def files(self, root: Path) -> list[Path]:
        return [root / p.format(split=s) for s in SPLITS for p in self.patterns]

    def describe(self) -> str:
        files = " + ".join(p.format(split="{" + ",".join(SPLITS) + "}") for p in self.patterns)
        return files + "".join(f" with {f}/" for f in self.folders)

    def present(self, root: Path) -> bool:
        return (all(p.is_file() for p in self.files(root))
                and all((root / f).is_dir() for f in self.folders))

    def fingerprint(self, root: Path) -> list[str]:
        """``path|size|mtime`` of every file of the form and of every file in its folders."""
        lines = [f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
                 for p, st in ((p, p.stat()) for p in self.files(root))]
        for folder in self.folders:
            with os.scandir(root / folder) as entries:
                lines += sorted(f"{folder}/{e.name}|{st.st_size}|{st.st_mtime_ns}"
                                for e in entries if e.is_file() for st in [e.stat()])
        return lines


# ---- shared readers -------------------------------------------------------------------------
def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # damaged pickles raise nearly any type (EOFError, KeyError, ...)
        raise DatasetError(f"cannot read {path} (a truncated or corrupt pickle?): "
                           f"{type(e).__name__}: {e}") from e


def _check_classes(found: int, expected: int, where: Path, split: str) -> None:
    if found != expected:
        raise DatasetError(f"{where}: the {split} split has {found} classes, expected "
                           f"{expected}; is it the standard {split} file?")


def _check_images(images: object, where: Path) -> np.ndarray:
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] != 3 or 0 in images.shape):
        what = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise DatasetError(f"{where}: images must be uint8 [N, H, W, 3] with N, H, W > 0; "
                           f"got {what}")
    return images


def _grouped_rows(labels: np.ndarray) -> np.ndarray:
    """The row of each image when images are grouped by label (ascending), keeping their order
    within a label."""
    order = np.argsort(labels, kind="stable")
    rows = np.empty(len(labels), np.int64)
    rows[order] = np.arange(len(labels))
    return rows


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


# ---- miniImageNet ---------------------------------------------------------------------------
def _mini_pickle(root: Path, split: str, expected: int) -> SplitSource:
    path = root / f"mini-imagenet-cache-{split}.pkl"
    data = _load_pickle(path)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= data.keys():
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path}: expected a dict with keys 'image_data' and 'class_dict', "
                           f"got {keys}")
    images = _check_images(data["image_data"], path)
    class_dict = data["class_dict"]
    if not isinstance(class_dict, dict):
        raise DatasetError(f"{path}: class_dict is a {type(class_dict).__name__}, not a dict")
    _check_classes(len(class_dict), expected, path, split)
    wnids = sorted(class_dict, key=_text)
    indices = []
    for wnid in wnids:
        idx = np.asarray(class_dict[wnid])
        if (idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer)
                or idx.min() < 0 or idx.max() >= len(images)):
            raise DatasetError(f"{path}: class_dict[{_text(wnid)!r}] must be a non-empty list "
                               f"of indices into image_data (0..{len(images) - 1})")
        indices.append(idx)

    def chunks(image_size: int, channels: int) -> Iterator[Chunk]:
        start = 0
        for idx in indices:
            yield start + np.arange(len(idx)), fit_images(images[idx], image_size, channels)
            start += len(idx)

    return SplitSource([_text(w) for w in wnids], [len(i) for i in indices], chunks)


def _mini_csv(root: Path, split: str, expected: int) -> SplitSource:
    path = root / f"{split}.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DatasetError(f"{path}: expected the header 'filename,label' (Ravi's split CSVs)")
    body = rows[1:]
    bad = next((i for i, r in enumerate(body, 2) if len(r) != 2 or not all(r)), None)
    if bad is not None:
        raise DatasetError(f"{path}, line {bad}: expected 'filename,label'")
    if not body:
        raise DatasetError(f"{path} lists no images")
    names, labels = np.unique([r[1] for r in body], return_inverse=True)
    _check_classes(len(names), expected, path, split)
    rows_of = _grouped_rows(labels)
    files = [root / "images" / r[0] for r in body]

    def chunks(image_size: int, channels: int) -> Iterator[Chunk]:
        for start in range(0, len(files), _CHUNK):
            batch = files[start:start + _CHUNK]
            yield rows_of[start:start + len(batch)], np.concatenate(
                [read_image(f, image_size, channels) for f in batch])

    return SplitSource(names.tolist(), np.bincount(labels).tolist(), chunks)


# ---- tieredImageNet -------------------------------------------------------------------------
def _tiered_labels(root: Path, split: str, expected: int) -> tuple[np.ndarray, list[str]]:
    """(class of each image, 0..expected-1 by ascending id; the class names)."""
    path = root / f"{split}_labels.pkl"
    data = _load_pickle(path)
    key = next((k for k in ("label_specific", "labels") if isinstance(data, dict) and k in data),
               None)
    if key is None:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path}: expected a dict with 'label_specific' or 'labels', got "
                           f"{keys}")
    labels = np.asarray(data[key])
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {key} must be a non-empty list of integer class ids, got "
                           f"{labels.dtype} {tuple(labels.shape)}")
    ids, classes = np.unique(labels, return_inverse=True)
    _check_classes(len(ids), expected, path, split)
    strs = data.get("label_specific_str")
    if isinstance(strs, (list, tuple, np.ndarray)) and len(strs) > ids.max() >= ids.min() >= 0:
        names = [_text(strs[i]) for i in ids]
    else:
        names = [f"{split}:{i}" for i in ids]
    return classes, names


@contextlib.contextmanager
def _npz_images(path: Path) -> Iterator[tuple[IO[bytes], tuple[int, ...]]]:
    """The open ``images`` member of the npz, positioned after its header, and its shape."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise DatasetError(f"{path} is not a readable .npz (zip) archive (truncated or "
                           f"corrupt?): {e}") from e
    with archive:
        names = archive.namelist()
        if "images.npy" not in names:
            raise DatasetError(f"{path} has no array 'images' (it holds "
                               f"{sorted(n.removesuffix('.npy') for n in names)})")
        try:
            member = archive.open("images.npy")
        except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError,
                ValueError) as e:
            raise DatasetError(f"{path}: cannot open its 'images' array: {e}") from e
        with member:
            yield member, _read_npy_header(member, path)


def _read_npy_header(f: IO[bytes], path: Path) -> tuple[int, ...]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as e:  # garbled headers raise several types
        raise DatasetError(f"{path}: cannot read the header of 'images': {e}") from e
    if dtype != np.uint8 or fortran or len(shape) != 4 or shape[-1] != 3 or 0 in shape:
        raise DatasetError(f"{path}: 'images' must be uint8 [N, H, W, 3] with N, H, W > 0 "
                           f"(C order); got {dtype} {shape}"
                           + (" in Fortran order" if fortran else ""))
    return shape


def _tiered_npz(root: Path, split: str, expected: int) -> SplitSource:
    path = root / f"{split}_images.npz"
    classes, names = _tiered_labels(root, split, expected)
    with _npz_images(path) as (_, shape):
        n = shape[0]
    if n != len(classes):
        raise DatasetError(f"{path} holds {n} images but {split}_labels.pkl has "
                           f"{len(classes)} labels")
    rows_of = _grouped_rows(classes)

    def chunks(image_size: int, channels: int) -> Iterator[Chunk]:
        row_bytes = int(np.prod(shape[1:]))
        try:
            with _npz_images(path) as (f, _):
                for start in range(0, n, _CHUNK):
                    count = min(_CHUNK, n - start)
                    data = f.read(count * row_bytes)
                    if len(data) != count * row_bytes:
                        raise DatasetError(f"{path}: 'images' ends after {start} images "
                                           f"(truncated?); expected {n}")
                    images = np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
                    yield rows_of[start:start + count], fit_images(images, image_size,
                                                                   channels)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DatasetError(f"{path}: cannot read 'images' (truncated or corrupt?): "
                               f"{e}") from e

    return SplitSource(names, np.bincount(classes).tolist(), chunks)


def _png_bytes(item: object, where: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):  # a Python 2 byte string, read as latin1
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:  # cv2.imencode's buffer
        return item.tobytes()
    raise DatasetError(f"{where}: expected PNG bytes, got {type(item).__name__}")


def _tiered_png(root: Path, split: str, expected: int) -> SplitSource:
    path = root / f"{split}_images_png.pkl"
    classes, names = _tiered_labels(root, split, expected)
    rows_of = _grouped_rows(classes)

    def chunks(image_size: int, channels: int) -> Iterator[Chunk]:
        pngs = _load_pickle(path)
        if not isinstance(pngs, (list, tuple, np.ndarray)) or len(pngs) != len(classes):
            what = (f"{len(pngs)} images" if isinstance(pngs, (list, tuple, np.ndarray))
                    else f"a {type(pngs).__name__}")
            raise DatasetError(f"{path}: expected a list of {len(classes)} PNG images (one per "
                               f"label of {split}_labels.pkl), got {what}")
        for start in range(0, len(pngs), _CHUNK):
            batch = range(start, min(start + _CHUNK, len(pngs)))
            yield rows_of[batch.start:batch.stop], np.concatenate([read_image(
                io.BytesIO(_png_bytes(pngs[i], f"{path}[{i}]")), image_size, channels,
                where=f"{path}[{i}]") for i in batch])

    return SplitSource(names, np.bincount(classes).tolist(), chunks)


FORMS: dict[str, tuple[Form, ...]] = {
    "miniimagenet": (Form("pickles", ("mini-imagenet-cache-{split}.pkl",), (), _mini_pickle),
                     Form("csv", ("{split}.csv",), ("images",), _mini_csv)),
    "tieredimagenet": (Form("npz", ("{split}_images.npz", "{split}_labels.pkl"), (), _tiered_npz),
                       Form("png", ("{split}_images_png.pkl", "{split}_labels.pkl"), (),
                            _tiered_png)),
}


def split_sizes(name: str) -> dict[str, int]:
    """Classes per split, from the preset ranges (SPEC §2.2)."""
    return {s: last - first + 1 for s, (first, last) in SPLIT_PRESETS[name].items()}


def detect_form(name: str, data_dir: str | Path | None) -> tuple[Path, Form]:
    """The folder and the form of its files (module docstring)."""
    forms = FORMS[name]
    expected = " or ".join(f.describe() for f in forms)
    if not data_dir:
        raise DatasetError(f"dataset {name!r} needs data_dir (--data-dir): a folder with "
                           f"{expected}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{name} directory {root} {what}; give the folder with {expected}")
    for form in forms:
        if form.present(root):
            return root, form
    partial = [(f, [p.name for p in f.files(root) if not p.is_file()]
                + [f"{d}/" for d in f.folders if not (root / d).is_dir()])
               for f in forms if any(p.exists() for p in f.files(root))]
    found = "".join(f"; found {form.name} files but not {', '.join(missing)}"
                    for form, missing in partial)
    raise DatasetError(f"no {name} in {root}: looked for {expected}{found}")


def prepare(name: str, data_dir: str | Path | None, image_size: int = IMAGE_SIZE,
            channels: int = CHANNELS, cache_root: Path | None = None) -> tuple[ClassDataset, Path]:
    """The dataset (classes: views of the memory-mapped cache) and the cache's ``.npy``;
    decodes the sources into the cache first when it is absent or damaged.  ``cache_root``
    defaults to :func:`cache_dir`."""
    check_image_args(image_size, channels)
    root, form = detect_form(name, data_dir)
    key = hashlib.sha256("\n".join([f"v{_CACHE_VERSION}", name, form.name, str(image_size),
                                    str(channels), *form.fingerprint(root)]).encode())
    stem = (cache_root or cache_dir()) / (f"{name}_{form.name}_{image_size}px_{channels}ch_"
                                          f"{key.hexdigest()[:20]}")
    shape = (image_size, image_size, channels)
    num_classes = sum(split_sizes(name).values())
    dataset = read_classes(stem, name, shape, num_classes)
    if dataset is None:
        _decode(name, form, root, stem, shape)
        dataset = read_classes(stem, name, shape, num_classes)
        if dataset is None:
            raise DatasetError(f"the cache {stem}.npy just written cannot be read back; check "
                               f"the disk (free space?) and try again")
    return dataset, stem.with_suffix(".npy")


def load_imagenet(name: str, data_dir: str | Path | None, image_size: int = IMAGE_SIZE,
                  channels: int = CHANNELS) -> ClassDataset:
    """All classes of ``name`` (``miniimagenet`` or ``tieredimagenet``) from ``data_dir``, in
    the class order of the module docstring, uint8 ``[n, image_size, image_size, channels]``
    each (views of the memory-mapped cache)."""
    return prepare(name, data_dir, image_size, channels)[0]


def _decode(name: str, form: Form, root: Path, stem: Path, shape: tuple[int, int, int]) -> None:
    """Reads every split of the source and writes the cache (:func:`memmap.write_classes`)."""
    sources = [form.read(root, split, n) for split, n in split_sizes(name).items()]

    def fill(writer: RowWriter) -> None:
        first = 0
        with tqdm(total=writer.shape[0], desc=f"decoding {name} ({form.name}), once",
                  unit="img") as bar:
            for source in sources:
                for rows, images in source.chunks(shape[0], shape[2]):
                    writer.write(first + rows, images)
                    bar.update(len(rows))
                first += sum(source.counts)

    write_classes(stem, [n for s in sources for n in s.class_names],
                  [c for s in sources for c in s.counts], shape, fill)
