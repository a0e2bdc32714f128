"""The dataset type every loader returns: a list of classes of uint8 images (SPEC §2.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """A dataset cannot be found, read or used as asked; the message says what to change."""


@dataclass
class ClassDataset:
    """``classes[i]`` is a uint8 array ``[n_i, H, W, C]`` with pixels 0..255.

    All classes share ``H, W, C``; the number of samples may differ per class.
    ``class_names[i]`` names class ``i`` (a character path, a WordNet id, a folder name).
    """

    name: str
    classes: list[np.ndarray]
    class_names: list[str]

    def __post_init__(self) -> None:
        if not self.classes:
            raise DatasetError(f"dataset {self.name!r} has no classes")
        if len(self.class_names) != len(self.classes):
            raise DatasetError(f"dataset {self.name!r}: {len(self.class_names)} names for "
                               f"{len(self.classes)} classes")
        shape = self.classes[0].shape[1:]
        for i, c in enumerate(self.classes):
            if c.dtype != np.uint8 or c.ndim != 4 or c.shape[1:] != shape:
                raise DatasetError(
                    f"dataset {self.name!r}: class {i} is {c.dtype} {c.shape}; expected uint8 "
                    f"[n, {', '.join(map(str, shape))}] like class 0")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        h, w, c = self.classes[0].shape[1:]
        return int(h), int(w), int(c)

    @property
    def samples_per_class(self) -> list[int]:
        return [int(c.shape[0]) for c in self.classes]

    def subset(self, indices: Sequence[int]) -> ClassDataset:
        """The classes ``indices``, in that order, renumbered 0..len-1."""
        bad = [i for i in indices if not 0 <= i < self.num_classes]
        if bad:
            raise DatasetError(f"dataset {self.name!r} has classes 0..{self.num_classes - 1}; "
                               f"asked for {bad[:5]}")
        return ClassDataset(self.name, [self.classes[i] for i in indices],
                            [self.class_names[i] for i in indices])
