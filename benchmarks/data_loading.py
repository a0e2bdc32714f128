"""First (rendering / decoding) and cached load times of the built-in glyphs and of Omniglot.

Usage::

    python benchmarks/data_loading.py [--omniglot-dir ../shared/data/omniglot] [--threads 1]

Uses a fresh, temporary cache folder (``HT_CACHE_DIR``), so the first loads do the full work.
The episode sampler's speed: ``benchmarks/sampler_speed.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch


def timed(label: str, load: Callable[[], object]) -> None:
    start = time.perf_counter()
    load()
    print(f"{label:<38}{time.perf_counter() - start:8.2f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--omniglot-dir", default=None, help="also time Omniglot from this folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HT_CACHE_DIR"] = cache
        from hypertransformer.data.glyphs import glyph_classes, load_glyphs
        from hypertransformer.data.omniglot import load_omniglot

        timed("glyphs: class list", glyph_classes)
        timed("glyphs: first load (renders the rest)", load_glyphs)
        timed("glyphs: second load (cache)", load_glyphs)
        if args.omniglot_dir:
            timed("omniglot: first load (decodes)", lambda: load_omniglot(args.omniglot_dir))
            timed("omniglot: second load (cache)", lambda: load_omniglot(args.omniglot_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
