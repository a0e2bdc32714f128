"""``load_dataset("name:RANGES")``: find, load, shuffle and cut a dataset (SPEC §2.1, §2.2).

Resolution of ``name``:

1. ``data_numpy_dir`` holds ``<name>.npy`` or ``<name>/``: that NumPy cache (any name).
2. Otherwise by name: ``omniglot`` (``data_dir``, default ``$HT_OMNIGLOT_DIR``), ``glyphs``
   (built in, offline; ``data_dir`` unused), ``folder`` (``data_dir`` is the image-folder
   root), ``miniimagenet`` / ``tieredimagenet`` (``data_dir`` holds any of their common forms,
   :mod:`hypertransformer.data.imagenet`; decoded once into a memory-mapped cache).

A whole dataset is kept in a small in-process memo, keyed by its resolved source,
``image_size`` and ``channels``, so train and test specs of one dataset decode it once.
The returned datasets share the memo's image arrays: treat them as read-only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.framing import frame_ink
from hypertransformer.data.image_folder import load_image_folder
from hypertransformer.data.imagenet import CHANNELS, FORMS, IMAGE_SIZE, load_imagenet
from hypertransformer.data.numpy_cache import check_image_args, find_numpy_cache, load_numpy_cache
from hypertransformer.data.omniglot import load_omniglot, omniglot_dir
from hypertransformer.data.specs import parse_spec, shuffle_permutation, split_presets

_MEMO_SIZE = 4


def _glyphs(path: Path | None, image_size: int, channels: int) -> ClassDataset:
    from hypertransformer.data.glyphs import load_glyphs

    return load_glyphs(image_size=image_size, channels=channels)


def _folder(path: Path | None, image_size: int, channels: int) -> ClassDataset:
    if path is None:
        raise DatasetError("dataset 'folder' needs data_dir (--data-dir): the root of "
                           "root/<class>/<images>")
    return load_image_folder(path, image_size=image_size, channels=channels)


def _omniglot(path: Path | None, image_size: int, channels: int) -> ClassDataset:
    return load_omniglot(path, image_size=image_size, channels=channels)


def _imagenet(name: str) -> Callable[[Path | None, int, int], ClassDataset]:
    def load(path: Path | None, image_size: int, channels: int) -> ClassDataset:
        return load_imagenet(name, path, image_size=image_size, channels=channels)
    return load


def _numpy(path: Path | None, image_size: int, channels: int) -> ClassDataset:
    assert path is not None
    return load_numpy_cache(path, image_size=image_size, channels=channels)


# name -> loader(resolved path or None, image_size, channels)
_LOADERS: dict[str, Callable[[Path | None, int, int], ClassDataset]] = {
    "omniglot": _omniglot,
    "glyphs": _glyphs,
    "folder": _folder,
    "miniimagenet": _imagenet("miniimagenet"),
    "tieredimagenet": _imagenet("tieredimagenet"),
}
KNOWN_DATASETS = tuple(_LOADERS)


def default_image_args(spec: str) -> tuple[int, int]:
    """``(image_size, channels)`` a dataset is used at unless told otherwise: 84 px RGB for
    miniImageNet and tieredImageNet (their presets), 28 px gray for the rest."""
    name, _ = parse_spec(spec)
    return (IMAGE_SIZE, CHANNELS) if name in FORMS else (28, 1)


def load_dataset(spec: str, *, data_dir: str | Path | None = None,
                 data_numpy_dir: str | Path | None = "", image_size: int = 28, channels: int = 1,
                 shuffle_labels_seed: int = 0) -> ClassDataset:
    """The classes of ``spec`` (``name`` or ``name:RANGES``, see :func:`parse_spec`), after
    permuting all classes of the dataset by ``shuffle_labels_seed`` (SPEC §2.2: the shuffle
    comes first, the ranges then pick from the shuffled order).  The result is named ``spec``."""
    check_image_args(image_size, channels)
    name, indices = parse_spec(spec)
    cache = find_numpy_cache(data_numpy_dir, name)
    if cache is not None:
        kind, path = "numpy", cache.resolve()
    elif name in _LOADERS:
        kind = name
        path = omniglot_dir(data_dir) if name == "omniglot" else data_dir
        path = Path(path).expanduser().resolve() if path else None
    else:
        where = f" and no {name}.npy or {name}/ in {data_numpy_dir}" if data_numpy_dir else ""
        raise DatasetError(f"unknown dataset {name!r}{where}; known: {', '.join(KNOWN_DATASETS)} "
                           f"(or any NumPy cache in data_numpy_dir)")
    full = _load_whole(kind, path, image_size, channels)
    order = shuffle_permutation(full.num_classes, shuffle_labels_seed)
    if indices is not None:
        if indices and max(indices) >= full.num_classes:
            raise DatasetError(f"dataset spec {spec!r}: {name} has classes "
                               f"0..{full.num_classes - 1}; asked for up to {max(indices)}")
        order = [order[i] for i in indices]
    picked = full.subset(order)
    return ClassDataset(spec.strip(), picked.classes, picked.class_names)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _load_whole(kind: str, path: Path | None, image_size: int, channels: int) -> ClassDataset:
    loader = _numpy if kind == "numpy" else _LOADERS[kind]
    return loader(path, image_size, channels)


def clear_memo() -> None:
    """Forget the in-process memo of loaded datasets."""
    _load_whole.cache_clear()


def dataset_info(ds: ClassDataset) -> dict[str, Any]:
    """A JSON-ready summary: name, num_classes, samples_per_class {min, max, total},
    image_shape [H, W, C], and the first class names."""
    counts = ds.samples_per_class
    return {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "samples_per_class": {"min": min(counts), "max": max(counts), "total": sum(counts)},
        "image_shape": list(ds.image_shape),
        "first_class_names": ds.class_names[:5],
    }


def val_spec(cfg: Config) -> str | None:
    """The classes of the ``val`` split: ``cfg.val_dataset`` when set, else the preset val
    range of the training dataset's name (``name:val``); None when there is neither."""
    if cfg.val_dataset:
        return cfg.val_dataset
    name, _ = parse_spec(cfg.train_dataset)
    ranges = split_presets(name)
    return f"{name}:val" if ranges and "val" in ranges else None


def load_split(cfg: Config, split: str) -> ClassDataset:
    """The classes a run uses for ``split``: ``train`` → ``cfg.train_dataset``, ``test`` →
    ``cfg.test_dataset``, ``val`` → :func:`val_spec` (``cfg.val_dataset``, else the preset val
    range of the training dataset's name); read with the config's data paths, image size,
    channels and ``shuffle_labels_seed``; with ``cfg.frame_ink`` every image framed on its
    ink (:mod:`data.framing`)."""
    if split == "train":
        spec = cfg.train_dataset
    elif split == "test":
        spec = cfg.test_dataset
    elif split == "val":
        found = val_spec(cfg)
        if found is None:
            name, _ = parse_spec(cfg.train_dataset)
            raise DatasetError(f"dataset {name!r} has no preset val split; set val_dataset or "
                               "evaluate on --split test or train")
        spec = found
    else:
        raise DatasetError(f"unknown split {split!r}; use train, val or test")
    data = load_dataset(spec, data_dir=cfg.data_dir, data_numpy_dir=cfg.data_numpy_dir,
                        image_size=cfg.image_size, channels=cfg.image_channels,
                        shuffle_labels_seed=cfg.shuffle_labels_seed)
    if cfg.frame_ink:
        return ClassDataset(data.name, [frame_ink(c) for c in data.classes], data.class_names)
    return data
