"""Operator profile of one training step (``torch.profiler``), self CPU time per operator.

Usage::

    python benchmarks/profile_step.py --preset omniglot_1shot [--episodes-per-step 16]
        [--threads 1] [--steps 5] [--rows 15]

Built-in glyphs data; the step is the one ``throughput.py`` times (sampling, forward,
backward, optimiser step); times are per step, averaged over ``--steps`` after 3 warm-up steps.
"""

from __future__ import annotations

import argparse
import sys

import torch
from throughput import build_config, training_step
from torch.profiler import ProfilerActivity, profile

from hypertransformer import presets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=presets.names())
    p.add_argument("--episodes-per-step", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.data_dir, args.seed = None, 0
    step, *_ = training_step(build_config(args), seed=0)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    averages = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in averages) / 1000 / args.steps
    print(f"{args.preset}, {args.episodes_per_step} episodes/step, {args.threads} thread(s): "
          f"self CPU time {total_ms:.1f} ms per step")
    print(f"{'operator':<48}{'ms/step':>10}{'calls/step':>12}")
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        print(f"{e.key[:47]:<48}{e.self_cpu_time_total / 1000 / args.steps:>10.1f}"
              f"{e.count / args.steps:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
