"""The SPEC §5 evaluation in one process against one process per core, interleaved.

Usage::

    python benchmarks/eval_processes.py --preset omniglot_1shot [--data-dir D] [--tasks 1024]
        [--rounds 3]

``evaluate_model`` of the untrained model on the test split (built-in glyphs data unless
``--data-dir``), ``--rounds`` rounds of: ``processes=1`` (this process, torch's default
threads, concurrent ``classify`` threads) then ``processes=None`` (the default: one forked
1-thread process per usable core). Prints each run, the medians, and the tasks whose accuracy
differs between the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from throughput import build_config

from hypertransformer import presets
from hypertransformer.data.registry import load_split
from hypertransformer.evaluation.evaluator import evaluate_model
from hypertransformer.model import HyperTransformer
from hypertransformer.training.launch import usable_cores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=presets.names())
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tasks", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    args.episodes_per_step, args.seed = None, 0
    cfg = build_config(args)
    torch.manual_seed(0)
    model = HyperTransformer(cfg)
    data = load_split(cfg, "test")
    seconds: dict[str, list[float]] = {"1 process": [], f"{usable_cores()} processes": []}
    results = {}
    for r in range(args.rounds):
        for name, processes in zip(seconds, (1, None), strict=True):
            out = evaluate_model(model, cfg, data, num_tasks=args.tasks,
                                 num_batches=cfg.num_eval_batches,
                                 batch_size=cfg.eval_batch_size, processes=processes)
            seconds[name].append(out.seconds)
            results[name] = out.task_accuracies
            print(f"round {r + 1} {name:<12} {out.seconds:7.1f} s  accuracy {out.accuracy:.4f}",
                  flush=True)
    a, b = results.values()
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    print(f"tasks whose accuracy differs: {len(differ)} of {args.tasks} {differ[:10]}; "
          f"largest difference {max((abs(a[i] - b[i]) for i in differ), default=0.0)}")
    for name, values in seconds.items():
        print(f"median {name:<12} {statistics.median(values):7.1f} s for {args.tasks} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
