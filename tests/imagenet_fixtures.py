"""Tiny miniImageNet and tieredImageNet folders in the exact on-disk forms of the real ones
(the same file names, pickle keys, dtypes and protocols; PNG/JPEG bytes; Ravi's real split CSVs
for the miniImageNet class lists), with few and small images.

Every image is one colour that names it: global class ``g`` (in the loaders' documented class
order) and sample ``j`` within the class give ``(g % 256, g // 256, 255 - 40 * j)`` (a constant
image survives any resize), so a test reads class order and sample order off the pixels.
The files store classes and images out of that order, so that the loaders must sort them.
"""

from __future__ import annotations

import csv
import io
import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from realdata import mini_splits_dir

SPLITS = ("train", "val", "test")
MINI_SIZES = {"train": 64, "val": 16, "test": 20}
TIERED_SIZES = {"train": 351, "val": 97, "test": 160}


def colour(g: int, j: int) -> tuple[int, int, int]:
    return g % 256, g // 256, 255 - 40 * j


def image(g: int, j: int, size: int) -> np.ndarray:
    return np.full((size, size, 3), colour(g, j), np.uint8)


def encoded(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ---- Python 2 pickles -----------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table we extend
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), as Python 2 pickled its
    strings and NumPy the raw data of its arrays; pass Python 2 ``str`` values as ``bytes``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def as_py2(obj: Any) -> Any:
    """``obj`` with every ``str`` (keys too) turned into the bytes Python 2 would pickle."""
    if isinstance(obj, str):
        return obj.encode("latin1")
    if isinstance(obj, dict):
        return {as_py2(k): as_py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_py2(v) for v in obj]
    return obj


def dump(path: Path, obj: Any, py2: bool = False) -> Path:
    with open(path, "wb") as f:
        if py2:
            Py2Pickler(f, protocol=2).dump(as_py2(obj))
        else:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


# ---- miniImageNet ---------------------------------------------------------------------------
def mini_wnids() -> dict[str, list[str]]:
    """The classes of each split, from Ravi's real CSVs, in order of first appearance."""
    out = {}
    for split in SPLITS:
        with open(mini_splits_dir() / f"{split}.csv", newline="") as f:
            out[split] = list(dict.fromkeys(row["label"] for row in csv.DictReader(f)))
    return out


def mini_offsets() -> dict[str, int]:
    return {"train": 0, "val": 64, "test": 80}


def write_mini_pickles(root: Path, per_class: int = 2, size: int = 84, py2: bool = False,
                       seed: int = 0) -> Path:
    """``mini-imagenet-cache-{split}.pkl``: image_data shuffled, class_dict in reverse order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, wnids in mini_wnids().items():
        n = len(wnids) * per_class
        slots = rng.permutation(n)  # where image (k, j) is stored
        data = np.empty((n, size, size, 3), np.uint8)
        class_dict: dict[str, list[int]] = {}
        for k in reversed(range(len(wnids))):
            idx = [int(slots[k * per_class + j]) for j in range(per_class)]
            for j, i in enumerate(idx):
                data[i] = image(mini_offsets()[split] + k, j, size)
            class_dict[wnids[k]] = idx
        dump(root / f"mini-imagenet-cache-{split}.pkl",
             {"image_data": data, "class_dict": class_dict}, py2)
    return root


def write_mini_csv(root: Path, per_class: int = 2, size: int = 84) -> Path:
    """Ravi's CSVs cut to ``per_class`` rows per class, with those JPEGs in ``images/`` (the
    first image of each class ``size + 16`` px wide: any size is resized)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(mini_splits_dir() / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        kept: dict[str, list[str]] = {}
        for row in rows:
            names = kept.setdefault(row["label"], [])
            if len(names) < per_class:
                names.append(row["filename"])
        with open(root / f"{split}.csv", "w", newline="") as f:
            f.write("filename,label\n")
            for k, (label, names) in enumerate(kept.items()):
                for j, name in enumerate(names):
                    f.write(f"{name},{label}\n")
                    img = image(mini_offsets()[split] + k, j, size)
                    if j == 0:
                        img = np.concatenate([img, img[:, :16]], axis=1)
                    (root / "images" / name).write_bytes(encoded(img, "JPEG"))
    return root


# ---- tieredImageNet -------------------------------------------------------------------------
def tiered_ids(split: str) -> list[int]:
    """The class ids a split's labels use: not contiguous, not starting at 0."""
    return [3 + 2 * k for k in range(TIERED_SIZES[split])]


def tiered_offsets() -> dict[str, int]:
    return {"train": 0, "val": 351, "test": 448}


def tiered_counts(split: str, per_class: int) -> list[int]:
    """Images per class: ``per_class``, one more for every third class (variable counts)."""
    return [per_class + (k % 3 == 0) for k in range(TIERED_SIZES[split])]


def write_tiered(root: Path, form: str = "npz", per_class: int = 1, size: int = 84,
                 py2: bool = False, label_key: str = "labels", compressed: bool = True,
                 png_arrays: bool = False, seed: int = 0) -> Path:
    """``{split}_images.npz`` (``form="npz"``) or ``{split}_images_png.pkl`` (``"png"``: PNG
    bytes, or with ``png_arrays`` uint8 arrays as ``cv2.imencode`` returns them) with
    ``{split}_labels.pkl``; images stored in a shuffled order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        ids = tiered_ids(split)
        stored = rng.permutation([k for k, n in enumerate(tiered_counts(split, per_class))
                                  for _ in range(n)])  # the class of each stored image
        seen: Counter[int] = Counter()
        items = []  # (class, sample), samples numbered in file order
        for k in stored.tolist():
            items.append((k, seen[k]))
            seen[k] += 1
        images = np.stack([image(tiered_offsets()[split] + k, j, size) for k, j in items])
        labels = np.array([ids[k] for k, _ in items], np.int64)
        names = {i: f"n{i:08d}" for i in ids}
        meta: dict[str, Any] = {label_key: labels}
        if form == "png" or label_key == "label_specific":
            meta.update(label_specific=labels, label_general=labels // 20,
                        label_specific_str=[names.get(i, "") for i in range(max(ids) + 1)],
                        label_general_str=[f"g{i}" for i in range(max(ids) // 20 + 1)])
        dump(root / f"{split}_labels.pkl", meta, py2)
        if form == "npz":
            save = np.savez_compressed if compressed else np.savez
            save(root / f"{split}_images.npz", images=images)
        else:
            pngs = [encoded(img, "PNG") for img in images]
            if png_arrays:
                pngs = [np.frombuffer(p, np.uint8).reshape(-1, 1) for p in pngs]
            dump(root / f"{split}_images_png.pkl", pngs, py2)
    return root


def colours_of(ds_classes: list[np.ndarray]) -> list[list[tuple[int, int, int]]]:
    """The colour of every image of the loaded classes (their pixel 0, 0)."""
    return [[tuple(int(v) for v in img[0, 0]) for img in c] for c in ds_classes]
