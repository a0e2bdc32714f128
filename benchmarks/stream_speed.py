"""Time of a Continual HT stream through the API: ``learn`` one 5-way 1-shot task, ``predict``
100 images.

Usage::

    python benchmarks/stream_speed.py [--preset cht_omniglot_class | --model NAME_OR_PATH]
                                      [--repeats 20] [--tasks 1,10] [--threads 1,2]

A freshly initialised model of the preset (the time does not depend on the weights), or the
trained model ``--model`` (what ``hypertransformer.load`` takes).  Images are uint8 arrays of
``--size`` pixels (28: the model's size, no resize).  For each k of ``--tasks``: ``learn`` of
task k (N classes, one image each) on a stream that has learned k − 1 tasks, and
``predict`` of ``--queries`` images after k tasks, among all k·N classes (one CNN pass per
task learned, docs/use.md).  Median of ``--repeats`` timed calls after three untimed
warm-ups, for each thread count.  Prints the figures with the torch version and CPU model;
docs/use.md reports them (measure on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hypertransformer
from hypertransformer import presets
from hypertransformer.inference import ContinualModel, Stream
from hypertransformer.model import build_model


def median_ms(fn: Callable[[Any], object], repeats: int,
              setup: Callable[[], Any] = lambda: None) -> float:
    """The median time of ``fn(setup())`` in ms; ``setup`` is not timed."""
    for _ in range(3):  # warm-up
        fn(setup())
    times = []
    for _ in range(repeats):
        arg = setup()
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give positive integers separated by commas; got "
                                         f"{text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cht_omniglot_class", choices=presets.names())
    p.add_argument("--model", default=None,
                   help="a trained continual model instead (name, log dir or checkpoint)")
    p.add_argument("--size", type=int, default=28, help="image size in pixels (28)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--tasks", type=counts, default=[1, 10],
                   help="tasks learned when timing (1,10)")
    p.add_argument("--threads", type=counts, default=[1, 2], help="torch threads (1,2)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.model is None:
        model = ContinualModel(build_model(presets.load(args.preset)))
        name = f"{args.preset} (freshly initialised)"
    else:
        loaded = hypertransformer.load(args.model)
        if not isinstance(loaded, ContinualModel):
            raise SystemExit(f"{args.model} is not a continual model (model_type cht or "
                             f"protonet)")
        model, name = loaded, args.model
    n = model.config.num_labels
    rng = np.random.default_rng(0)
    queries = list(rng.integers(0, 256, (args.queries, args.size, args.size), np.uint8))
    tasks = max(args.tasks)
    supports = [list(rng.integers(0, 256, (n, args.size, args.size), np.uint8))
                for _ in range(tasks)]
    names = [[f"t{t}c{c}" for c in range(n)] for t in range(tasks)]

    def stream_of(k: int) -> Stream:
        stream = model.stream()
        for t in range(k):
            stream.learn(supports[t], names[t])
        return stream

    print(f"{name}: {n}-way 1-shot tasks of {args.size}x{args.size} uint8 images, scenario "
          f"{model.config.cht_scenario}; median of {args.repeats} (ms)")
    print(f"torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads "
          f"by default")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for k in args.tasks:
            learn = median_ms(lambda s, k=k: s.learn(supports[k - 1], names[k - 1]),
                              args.repeats, lambda k=k: stream_of(k - 1))
            stream = stream_of(k)
            predict = median_ms(lambda _, s=stream: s.predict(queries), args.repeats)
            print(f"  {threads} thread(s), task {k:3d}: learn {learn:7.1f}   predict "
                  f"{args.queries} among {k * n:3d} classes {predict:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
