"""Time to generate a classifier from 20 images and classify 100 queries through the API.

Usage::

    python benchmarks/classifier_speed.py [--preset omniglot_1shot] [--repeats 20]

A freshly initialised model of the preset (the time does not depend on the weights);
``ht.fit(support, labels)`` on 20 images of 20 classes (N-way 1-shot for omniglot_1shot; more
with ``--support``), the generated CNN alone (``tune_steps=0``) and fine-tuned on the support
set (``tune_steps=TUNE_STEPS``), then ``clf.predict_proba(queries)`` on 100 images, all from
uint8 arrays: at the model's size (28x28) and at Omniglot's original size (105x105, resized by
the preprocessing).  Median of
``--repeats`` timed runs after three untimed warm-ups, with one torch thread and with the
default count.  (docs/use.md reports the figures; the CPU may be shared.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from hypertransformer import presets
from hypertransformer.inference import FewShotModel
from hypertransformer.inference.classifier import TUNE_STEPS
from hypertransformer.model import HyperTransformer


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="omniglot_1shot")
    p.add_argument("--support", type=int, default=20, help="support images (one per class "
                                                           "up to N, then more shots)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    config = presets.load(args.preset)
    torch.manual_seed(0)
    ht = FewShotModel(HyperTransformer(config))
    labels = [i % config.num_labels for i in range(args.support)]
    rng = np.random.default_rng(0)
    print(f"{args.preset}: fit on {args.support} images, predict_proba on {args.queries}; "
          f"median of {args.repeats} (ms)")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for size in (config.image_size, 105):
            support = list(rng.integers(0, 256, (args.support, size, size), np.uint8))
            queries = list(rng.integers(0, 256, (args.queries, size, size), np.uint8))
            clf = ht.fit(support, labels)
            fit = {k: median_ms(lambda s=support, k=k: ht.fit(s, labels, tune_steps=k),
                                args.repeats) for k in (0, TUNE_STEPS)}
            predict = median_ms(lambda c=clf, q=queries: c.predict_proba(q), args.repeats)
            print(f"  {threads} thread(s), {size}x{size} uint8: fit {fit[0]:6.1f}  "
                  f"fit tuned ({TUNE_STEPS} steps) {fit[TUNE_STEPS]:6.1f}  "
                  f"predict {predict:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
