"""Episodes per second of the episode sampler alone, in the Omniglot 1-shot training shape.

Usage::

    python benchmarks/sampler_speed.py [--batches 10] [--episodes 16]

20-way, S=20, Q=60, 28x28 gray images of 1150 random classes (the size of the Omniglot training
split), T = ``--episodes`` episodes per ``sample`` call, without augmentation and with per-label
rot90 (the Omniglot training augmentation), with one torch thread and with the default count.
One untimed call warms up each configuration.  (The tests check what the sampler draws, not how
fast: the CPU may be shared.)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from hypertransformer.data.augment import AugmentationConfig
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.sampler import EpisodeSampler


def episodes_per_second(sampler: EpisodeSampler, episodes: int, batches: int) -> float:
    sampler.sample(episodes)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        sampler.sample(episodes)
    return episodes * batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=10, help="timed sample() calls")
    p.add_argument("--episodes", type=int, default=16, help="episodes per sample() call")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    ds = ClassDataset("speed", [rng.integers(0, 256, (20, 28, 28, 1), np.uint8)
                                for _ in range(1150)], [str(i) for i in range(1150)])
    rot90 = AugmentationConfig(random_rotate_by_90=True, per_label=True)
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for name, augmentation in [("no augmentation", None), ("rot90 per label", rot90)]:
            sampler = EpisodeSampler(ds, num_labels=20, support_size=20, query_size=60,
                                     augmentation=augmentation)
            rate = episodes_per_second(sampler, args.episodes, args.batches)
            print(f"sampler, T={args.episodes} N=20 S=20 Q=60 28x28, {name:<15}, "
                  f"{threads} thread(s): {rate:8.0f} episodes/s")
    torch.set_num_threads(default_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
