"""A user's images as the model's input: read, fitted, ink polarity, normalised.

An image is a file path, a PIL image, a NumPy array ``[H, W]`` or ``[H, W, C]`` (as
``np.asarray(pil_image)``) or a torch tensor ``[H, W]`` or ``[C, H, W]`` (as torchvision's
``to_tensor``), C = 1, 3 or 4 (alpha is dropped); arrays and tensors hold uint8 0..255, or
floats in [0, 1] (or [0, 255]), the rules of :func:`data.numpy_cache.to_uint8`.  A batch is a
sequence of such images, a 4-d array ``[B, H, W, C]`` or a 4-d tensor ``[B, C, H, W]``.

Every image goes through the preprocessing of the training data (:class:`Preprocessing`, from
the checkpoint's config): converted to gray or RGB and resized to ``image_size`` like the
dataset loaders (:func:`data.numpy_cache.fit_images`, any size and aspect ratio), then for
models trained on ink drawings (Omniglot, glyphs: light strokes on a dark background) brought
to that polarity, for models trained with ``frame_ink`` scaled and centred on their ink
(:mod:`data.framing`), then mapped to ``x / 128 - 1`` as the episode sampler does.

Ink polarity (``ink``): ``"light"`` means light strokes on a dark background (used as they
are), ``"dark"`` dark strokes on a light page (inverted), ``"auto"`` decides per image from
the median of its border: a border brighter than mid-gray is a page, so the image is inverted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hypertransformer.config import Config
from hypertransformer.data.augment import Augmenter
from hypertransformer.data.base import DatasetError
from hypertransformer.data.framing import frame_ink
from hypertransformer.data.image_folder import read_image
from hypertransformer.data.numpy_cache import fit_images, to_uint8
from hypertransformer.data.specs import parse_spec

ImageLike = str | os.PathLike | Image.Image | np.ndarray | Tensor
Images = Sequence[ImageLike] | np.ndarray | Tensor

INK_MODES = ("auto", "light", "dark")
# Training data drawn as light ink on a dark background (the loaders invert Omniglot's PNGs).
INK_DATASETS = ("omniglot", "glyphs")


@dataclass(frozen=True)
class Preprocessing:
    """What a model's input images looked like in training: ``image_size`` square,
    ``channels`` (1 gray, 3 RGB), ``ink_high``: drawings with light ink on a dark
    background (Omniglot, glyphs), for which :data:`INK_MODES` apply, and ``frame_ink``:
    each drawing scaled and centred on its ink (:mod:`data.framing`; models trained with
    ``frame_ink``)."""

    image_size: int
    channels: int
    ink_high: bool
    frame_ink: bool = False

    @classmethod
    def from_config(cls, config: Config) -> Preprocessing:
        name, _ = parse_spec(config.train_dataset)
        return cls(config.image_size, config.image_channels, name in INK_DATASETS,
                   config.frame_ink)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "normalization": "x / 128 - 1"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(int(values["image_size"]), int(values["channels"]), bool(values["ink_high"]),
                   bool(values.get("frame_ink", False)))  # exports before frame_ink: False

    def __call__(self, images: Images, ink: str = "auto") -> Tensor:
        """float32 ``[B, channels, image_size, image_size]``, the model's input."""
        check_ink(ink)
        items = as_list(images)
        if not items:
            raise ValueError("no images given")
        raw = [self.read(image, i) for i, image in enumerate(items)]
        size, channels = self.image_size, self.channels
        pixels = np.empty((len(raw), size, size, channels), np.uint8)
        for shape in {r.shape for r in raw}:  # one resize per distinct size
            same = [i for i, r in enumerate(raw) if r.shape == shape]
            pixels[same] = fit_images(np.stack([raw[i] for i in same]), size, channels)
        if self.ink_high:
            pixels = np.where(_invert(pixels, ink)[:, None, None, None], 255 - pixels, pixels)
        if self.frame_ink:
            pixels = frame_ink(pixels)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        return Augmenter.normalize(x[None], self.image_size)[0]

    def read(self, image: ImageLike, index: int = 0) -> np.ndarray:
        """One image as uint8 ``[H, W, 1 or 3]`` (a file: already fitted to the model's
        size); an unreadable file or a bad array raises :class:`DatasetError` naming it
        (``index`` names the others)."""
        if isinstance(image, str | os.PathLike):
            return read_image(Path(image), self.image_size, self.channels)[0]
        where = f"image {index}"
        if isinstance(image, Image.Image):
            pixels = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
        elif isinstance(image, Tensor):
            if image.dim() == 3:
                image = image.permute(1, 2, 0)
            pixels = image.detach().cpu().numpy()
        elif isinstance(image, np.ndarray):
            pixels = image
        else:
            raise DatasetError(f"{where} is a {type(image).__name__}; give a file path, a PIL "
                               f"image, a NumPy array or a torch tensor")
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or 0 in pixels.shape:
            layout = "[C, H, W]" if isinstance(image, Tensor) else "[H, W, C]"
            raise DatasetError(f"{where} has shape {list(pixels.shape)}; expected [H, W] or "
                               f"{layout} with C = 1, 3 or 4")
        return to_uint8(pixels[..., :3], where)


def check_ink(ink: str) -> None:
    if ink not in INK_MODES:
        raise ValueError(f"ink must be one of {', '.join(INK_MODES)}; got {ink!r}")


def as_list(images: Images) -> list[ImageLike]:
    """A batch as a list of images; one path or PIL image is a batch of one."""
    if isinstance(images, str | os.PathLike | Image.Image):
        return [images]
    if isinstance(images, np.ndarray | Tensor) and images.ndim != 4:
        raise DatasetError(f"a batch array or tensor must be 4-d ([B, H, W, C] array, "
                           f"[B, C, H, W] tensor); got shape {list(images.shape)}; pass one "
                           f"image as a list of one")
    return list(images)


def _invert(pixels: np.ndarray, ink: str) -> np.ndarray:
    """bool [B]: which of the uint8 images [B, H, W, C] to invert to light ink on dark."""
    if ink != "auto":
        return np.full(len(pixels), ink == "dark")
    gray = pixels.mean(axis=-1)
    border = np.concatenate([gray[:, 0], gray[:, -1], gray[:, 1:-1, 0], gray[:, 1:-1, -1]],
                            axis=1)
    return np.median(border, axis=1) > 127.5
