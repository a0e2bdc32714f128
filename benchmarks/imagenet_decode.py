"""Decode rate of each miniImageNet / tieredImageNet form, measured on small fixtures, for the
time estimates of docs/data.md.

Usage::

    python benchmarks/imagenet_decode.py [--images 2000] [--threads 1]

Writes the test fixtures of every form (tests/imagenet_fixtures.py: the real file formats)
with about ``--images`` images each, 84x84, their pixels textured like photos (smooth random
colour fields plus noise, so that PNG and JPEG have realistic work) instead of the tests' flat
colours; then times the first load (decode into a fresh cache, ``HT_CACHE_DIR`` in a temporary
folder) and the second (memory-maps the cache).  The first load includes unpickling and
reading every source file, so its rate (images per second) is what a full preparation
achieves per core, to the extent the fixture's images resemble the real ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import imagenet_fixtures as fixtures  # noqa: E402 (the tests' writers of the real formats)

FULL_SIZES = {"miniimagenet": 60_000, "tieredimagenet": 779_165}


def photo_like(g: int, j: int, size: int) -> np.ndarray:
    """A smooth random colour field with some noise, seeded by (class, sample)."""
    rng = np.random.default_rng([g, j])
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 6)).astype(np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pixels = field[0].permute(1, 2, 0).numpy() + rng.normal(0, 12, (size, size, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="about this many images per form")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixtures.image = photo_like
    mini_per_class = max(1, args.images // 100)
    tiered_per_class = max(1, round(args.images / 608 / (1 + 1 / 3)))
    forms = [
        ("miniimagenet", "pickles", lambda d: fixtures.write_mini_pickles(d, mini_per_class)),
        ("miniimagenet", "csv", lambda d: fixtures.write_mini_csv(d, mini_per_class)),
        ("tieredimagenet", "npz", lambda d: fixtures.write_tiered(d, "npz", tiered_per_class)),
        ("tieredimagenet", "png", lambda d: fixtures.write_tiered(d, "png", tiered_per_class)),
    ]
    print(f"{'form':<24}{'images':>8}{'first load':>12}{'images/s':>10}{'second load':>13}"
          f"{'full dataset (estimate)':>26}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HT_CACHE_DIR"] = str(Path(tmp) / "cache")
        from hypertransformer.data.imagenet import load_imagenet

        for name, form, write in forms:
            root = write(Path(tmp) / f"{name}_{form}")
            start = time.perf_counter()
            ds = load_imagenet(name, root)
            first = time.perf_counter() - start
            start = time.perf_counter()
            load_imagenet(name, root)
            second = time.perf_counter() - start
            n = sum(ds.samples_per_class)
            estimate = FULL_SIZES[name] / (n / first)
            full = f"{estimate:.0f} s" if estimate < 120 else f"{estimate / 60:.0f} min"
            print(f"{name + ' ' + form:<24}{n:>8}{first:>10.2f} s{n / first:>10.0f}"
                  f"{second:>11.3f} s{full:>26}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
