"""NumPy caches in the layout the original code wrote (SPEC §2.1), and the image fitting
(resize + channels) every loader shares.

Two layouts, looked up as ``<data_numpy_dir>/<name>``:

* ``<name>.npy``: one dense array ``[classes, samples, H, W]`` or ``[classes, samples, H, W, C]``.
  Read without unpickling.
* ``<name>/``: a folder of ``.npy`` files read in sorted file-name order; each holds an array
  of per-class image arrays (an object array, so it is read with ``allow_pickle=True``: only
  use folders you trust); classes are numbered consecutively across the files.  A per-class
  array is ``[n, H, W]`` or ``[n, H, W, C]``; ``n`` may differ between classes.

Pixel values become uint8 0..255:

* ``bool``: ``False -> 0``, ``True -> 255`` (computed in uint8, so no overflow: SPEC §8 trap 8).
* integers: used as they are; values outside 0..255 are an error.
* floats: if every value is within [0, 1] the array is read as intensities in [0, 1] and
  scaled by 255; otherwise it must lie within [0, 255] (the scale the original pipeline
  assumed) and is used as is.  Either way values are rounded; NaN/inf or values outside
  [0, 255] are an error.

Images whose size differs from ``image_size`` are resized (see :func:`fit_images`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hypertransformer.data.base import ClassDataset, DatasetError

_RESIZE_CHUNK = 512  # images per interpolate call, bounds the float32 working memory
_NPY_MAGIC = b"\x93NUMPY"  # how every .npy file begins
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's "L"


def check_image_args(image_size: int, channels: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")


def fit_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` (C 1 or 3) -> uint8 ``[N, image_size, image_size, channels]``.

    The one resize of the loaders: bilinear with antialiasing (``F.interpolate(...,
    antialias=True)``, which averages over the source footprint when shrinking, like PIL's
    bilinear resize), rounded to the nearest integer.  Gray -> RGB replicates the channel;
    RGB -> gray uses the ITU-R 601-2 luma weights (as PIL's ``convert("L")``).
    """
    check_image_args(image_size, channels)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise DatasetError(f"expected uint8 images [N, H, W, 1 or 3], got {images.dtype} "
                           f"{tuple(images.shape)}")
    if images.shape[-1] == 3 and channels == 1:
        images = np.rint(images.astype(np.float32) @ _LUMA).astype(np.uint8)[..., None]
    if images.shape[1:3] != (image_size, image_size) and len(images):
        out = np.empty((len(images), image_size, image_size, images.shape[-1]), np.uint8)
        for start in range(0, len(images), _RESIZE_CHUNK):
            x = torch.from_numpy(np.array(images[start:start + _RESIZE_CHUNK]))  # a writable copy
            x = x.permute(0, 3, 1, 2).float()
            y = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                              align_corners=False, antialias=True)
            y = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            out[start:start + len(y)] = y.numpy()
        images = out
    if images.shape[-1] == 1 and channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return images


def to_uint8(arr: np.ndarray, where: str) -> np.ndarray:
    """Pixel values -> uint8 0..255 by the rules in the module docstring."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.size == 0:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: integer pixels must be in 0..255, found {lo}..{hi}")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
            raise DatasetError(f"{where}: float pixels must be finite and in [0, 1] or "
                               f"[0, 255], found {lo}..{hi}")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.rint(arr.astype(np.float32) * scale).astype(np.uint8)
    raise DatasetError(f"{where}: pixel dtype {arr.dtype} is not bool, integer or float")


def find_numpy_cache(data_numpy_dir: str | Path | None, name: str) -> Path | None:
    """``<dir>/<name>.npy`` or ``<dir>/<name>/`` if either exists (the file wins), else None."""
    if not data_numpy_dir:
        return None
    if Path(data_numpy_dir).exists() and not Path(data_numpy_dir).is_dir():
        raise DatasetError(f"data_numpy_dir {data_numpy_dir} is a file, not a folder; give the "
                           f"folder that holds <name>.npy or <name>/")
    dense, folder = Path(data_numpy_dir) / f"{name}.npy", Path(data_numpy_dir) / name
    if dense.is_file():
        return dense
    return folder if folder.is_dir() else None


def load_numpy_cache(path: str | Path, image_size: int = 28, channels: int = 1) -> ClassDataset:
    """A dense ``<name>.npy`` or a ``<name>/`` folder of per-class arrays (module docstring).

    Any file that cannot be read or used raises :class:`DatasetError` naming it.
    """
    check_image_args(image_size, channels)
    path = Path(path)
    if path.is_dir():
        name = path.name
        files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
        if not files:
            raise DatasetError(f"numpy cache folder {path} holds no .npy files")
        classes, names = [], []
        for file in files:
            records = _load(file, allow_pickle=True)
            if records.dtype == object and records.ndim != 1:
                raise DatasetError(f"{file}: expected a 1-d object array of per-class image "
                                   f"arrays, got an object array of shape "
                                   f"{tuple(records.shape)}"
                                   + (" (a single saved object, such as a dict)"
                                      if records.ndim == 0 else ""))
            if records.dtype != object and records.ndim not in (4, 5):
                raise DatasetError(f"{file}: expected an object array of per-class image "
                                   f"arrays, got {records.dtype} {tuple(records.shape)}")
            if len(records) == 0:
                raise DatasetError(f"{file} holds no classes (an empty array)")
            for j, record in enumerate(records):
                where = f"{file}[{j}]"
                try:
                    images = np.asarray(record)
                except (ValueError, TypeError) as e:  # e.g. a ragged list of arrays
                    raise DatasetError(f"{where}: a class is not one array: {e}") from e
                classes.append(_class_images(images, where, image_size, channels))
                names.append(f"{file.name}[{j}]")
    elif path.is_file():
        name = path.stem
        data = _load(path, allow_pickle=False)
        if data.ndim == 4:
            data = data[..., None]
        if data.ndim != 5:
            raise DatasetError(f"{path}: a dense cache is [classes, samples, H, W(, C)], got "
                               f"shape {tuple(data.shape)}")
        if len(data) == 0:
            raise DatasetError(f"{path} holds no classes (shape {tuple(data.shape)})")
        classes = [_class_images(c, f"{path}[{i}]", image_size, channels)
                   for i, c in enumerate(data)]
        names = [str(i) for i in range(len(classes))]
    else:
        raise DatasetError(f"numpy cache {path} does not exist")
    return ClassDataset(name, classes, names)


def _load(file: Path, allow_pickle: bool) -> np.ndarray:
    """The array of one ``.npy`` file; any failure to read it is a ``DatasetError`` naming it."""
    try:
        with open(file, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DatasetError(f"cannot read numpy cache {file}: {e}") from e
    if magic != _NPY_MAGIC:
        raise DatasetError(f"{file} is not a .npy file (it lacks the NumPy header: an .npz "
                           f"archive, a plain pickle, another format or an empty file?)")
    try:
        data = np.load(file, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle and "allow_pickle" in str(e):
            raise DatasetError(f"{file} is an object array; a dense cache must be numeric "
                               f"[classes, samples, H, W(, C)] (put per-class arrays into a "
                               f"folder {file.with_suffix('')}/ instead)") from e
        raise DatasetError(f"cannot read numpy cache {file}: {e}") from e
    except Exception as e:
        # Damaged bytes make the header parser and the unpickler raise nearly any type
        # (UnpicklingError, EOFError, TokenError, AttributeError, ModuleNotFoundError,
        # MemoryError, RuntimeError, ...); each means this one file is unreadable.
        raise DatasetError(f"cannot read numpy cache {file} (truncated or corrupt?): "
                           f"{type(e).__name__}: {e}") from e
    if not isinstance(data, np.ndarray):  # an object header whose pickle is not an array
        raise DatasetError(f"{file} holds a {type(data).__name__}, not a NumPy array")
    return data


def _class_images(arr: np.ndarray, where: str, image_size: int, channels: int) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DatasetError(f"{where}: a class is [n, H, W] or [n, H, W, C] with C 1 or 3, got "
                           f"shape {tuple(arr.shape)}")
    if len(arr) == 0:
        raise DatasetError(f"{where}: class has no images")
    if min(arr.shape[1:3]) == 0:
        raise DatasetError(f"{where}: images of size {arr.shape[1]}x{arr.shape[2]}")
    return fit_images(to_uint8(arr, where), image_size, channels)
