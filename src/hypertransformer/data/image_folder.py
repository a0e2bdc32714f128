"""A user's own images: ``root/<class>/<image files>`` (SPEC §2.1).

* Classes are the sub-folders of ``root`` in sorted name order (hidden ones, starting with
  ``.``, are skipped); class names are the folder names.
* Images are the files with extension png, jpg, jpeg, bmp, gif or webp (any case) directly in
  a class folder, in sorted name order; other files are ignored.  A GIF gives its first frame.
* Any size, gray or colour: converted to ``channels`` (1: PIL ``L``, 3: ``RGB``; an alpha
  channel is dropped) and resized to ``image_size`` x ``image_size`` (the aspect ratio is not
  kept) by :func:`numpy_cache.fit_images`.
* Pixels are used as they are: ink is NOT inverted.  Dark strokes on a light page stay dark;
  invert such images beforehand to match Omniglot's ink-high convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.numpy_cache import check_image_args, fit_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(root: str | Path, image_size: int = 28, channels: int = 1) -> ClassDataset:
    """Every class folder of ``root`` as uint8 ``[n, image_size, image_size, channels]``."""
    check_image_args(image_size, channels)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"image folder {root} is a file, not a folder; expected "
                           f"root/<class>/<images>")
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected root/<class>/<images>")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"image folder {root} has no class sub-folders; expected "
                           f"root/<class>/<images>")
    classes = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"class folder {folder} holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove it")
        classes.append(np.concatenate([read_image(f, image_size, channels) for f in files]))
    return ClassDataset(root.name, classes, [f.name for f in folders])


def read_image(file: Path | BinaryIO, image_size: int, channels: int,
               where: object = None) -> np.ndarray:
    """One image (a path or an open binary file) as uint8 ``[1, image_size, image_size,
    channels]``; an unreadable one raises :class:`DatasetError` naming ``where`` (default
    ``file``)."""
    try:
        with Image.open(file) as im:
            pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        reason = ("not in an image format PIL knows (damaged?)"
                  if isinstance(e, UnidentifiedImageError) else e)
        raise DatasetError(f"cannot read image {file if where is None else where}: "
                           f"{reason}") from e
    return fit_images(pixels.reshape(1, *pixels.shape[:2], channels), image_size, channels)
