"""Class specs ``name:RANGES`` and the label shuffle (SPEC §2.2)."""

from __future__ import annotations

import random
import re
from collections import Counter

from hypertransformer.data.base import DatasetError

SPLITS = ("train", "val", "test")
# name -> split -> inclusive class range; glyphs' ranges live in hypertransformer.data.glyphs
SPLIT_PRESETS: dict[str, dict[str, tuple[int, int]]] = {
    "omniglot": {"train": (0, 1149), "val": (1150, 1199), "test": (1200, 1622)},
    "miniimagenet": {"train": (0, 63), "val": (64, 79), "test": (80, 99)},
    "tieredimagenet": {"train": (0, 350), "val": (351, 447), "test": (448, 607)},
}
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_SYNTAX = "name:RANGES with RANGES a comma list of a-b, single ints or train/val/test"


def split_presets(name: str) -> dict[str, tuple[int, int]] | None:
    """The preset split ranges of a dataset, or None if it has none."""
    if name == "glyphs":
        from hypertransformer.data.glyphs import GLYPHS_SPLITS

        return GLYPHS_SPLITS
    return SPLIT_PRESETS.get(name)


def parse_spec(spec: str) -> tuple[str, list[int] | None]:
    """``"omniglot:0-1149"`` -> ``("omniglot", [0, ..., 1149])``; no ranges -> all classes
    (``None``).  Each comma item is an inclusive range ``a-b``, an int, or a split word
    ``train``/``val``/``test`` (the dataset's preset range); classes keep the order given.
    Whether indices exist in the dataset is checked when it is loaded."""
    name, colon, ranges = (part.strip() for part in spec.partition(":"))
    if not name:
        raise DatasetError(f"bad dataset spec {spec!r}: no dataset name ({_SYNTAX})")
    if not colon:
        return name, None
    if not ranges:
        raise DatasetError(f"bad dataset spec {spec!r}: nothing after ':' ({_SYNTAX}; drop "
                           f"the ':' for all classes)")
    indices: list[int] = []
    for item in (i.strip() for i in ranges.split(",")):
        if item in SPLITS:
            presets = split_presets(name)
            if presets is None:
                raise DatasetError(f"bad dataset spec {spec!r}: {name!r} has no preset "
                                   f"splits; give class ranges such as {name}:0-9")
            first, last = presets[item]
        elif m := _RANGE.fullmatch(item):
            first = int(m[1])
            last = int(m[2]) if m[2] is not None else first
            if first > last:
                raise DatasetError(f"bad dataset spec {spec!r}: range {item} is reversed; "
                                   f"write {last}-{first}")
        else:
            raise DatasetError(f"bad dataset spec {spec!r}: cannot read {item!r} ({_SYNTAX})")
        indices.extend(range(first, last + 1))
    twice = sorted(i for i, n in Counter(indices).items() if n > 1)
    if twice:
        raise DatasetError(f"bad dataset spec {spec!r}: class(es) {twice[:5]} listed twice")
    return name, indices


def shuffle_permutation(num_classes: int, seed: int) -> list[int]:
    """``keys`` with ``new_class[i] = old_class[keys[i]]``: the original's
    ``random.seed(seed); random.shuffle(keys)`` on a private ``random.Random`` (no global
    side effect).  ``seed <= 0`` means no shuffle (identity), as in the original."""
    keys = list(range(num_classes))
    if seed > 0:
        random.Random(seed).shuffle(keys)
    return keys
