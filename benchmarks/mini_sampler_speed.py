"""Seconds per ``sample`` call of the miniImageNet episode sampler (docs/performance.md).

Usage::

    python benchmarks/mini_sampler_speed.py --data-dir /tmp/minifix

One thread; an evaluation task (train=False, 16 query batches of 100: 1,600 images) and
training batches of T = 1, 8, 16 episodes with the natural-image augmentations; each after one
untimed call.  Data: e.g. ``tests/imagenet_fixtures.py::write_mini_pickles(root, per_class=30)``.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from hypertransformer import presets
from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeSampler


def seconds(call) -> float:
    call()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = presets.load("miniimagenet_1shot", data_dir=args.data_dir)
    test = EpisodeSampler.from_config(load_split(cfg, "test"), cfg.replace(samples_cnn=100),
                                      train=False, seed=0)
    print(f"evaluation task (1,600 queries): "
          f"{seconds(lambda: test.sample(1, query_batches=16)):.3f} s")
    train = EpisodeSampler.from_config(load_split(cfg, "train"), cfg, train=True, seed=0)
    for t in (1, 8, 16):
        s = seconds(functools.partial(train.sample, t))
        print(f"training T = {t:2d}: {s:.3f} s, {t / s:.1f} episodes/s")


if __name__ == "__main__":
    main()
