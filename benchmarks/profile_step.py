"""Operator profile of one training step, or of the evaluation (``torch.profiler``), self CPU
time per operator.

Usage::

    python benchmarks/profile_step.py --preset omniglot_1shot [--episodes-per-step 16]
        [--threads 1] [--steps 5] [--rows 15] [--data-dir D] [--dtype fp32|bf16|auto]
        [--bf16-transformer]
    python benchmarks/profile_step.py --preset omniglot_1shot --eval-tasks 64 [--threads 2]

Built-in glyphs data unless ``--data-dir``.  The step is the one ``throughput.py`` times
(sampling, forward, backward, optimiser step); times are per step, averaged over ``--steps``
after 3 warm-up steps.  With ``--eval-tasks N``: the evaluation's calls (SPEC §5: sampling,
``generate`` per task batch, ``classify`` per query batch) of the untrained model on N test tasks,
serially in this thread (the profiler does not see ``evaluate_model``'s worker threads), after
one untimed task batch; times are per task.  ``--dtype`` (default fp32) as ``train`` and
``evaluate`` take it (:mod:`hypertransformer.precision`); ``--bf16-transformer`` removes the
transformers' float32 island (the experiment that kept it, docs/performance.md).

The profiler's own overhead is not uniform: on some hosts it inflates the operators that
write large fresh tensors (``fill_``, the first convolution) several times over, so compare
profiles with each other, and with ``throughput.py``'s unprofiled times, not with wall time.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from throughput import build_config, training_step
from torch.profiler import ProfilerActivity, profile

from hypertransformer import presets
from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeSampler
from hypertransformer.evaluation.evaluator import CLASSIFY_IMAGES
from hypertransformer.evaluation.protocol import sample_tasks
from hypertransformer.memory import keep_freed_memory
from hypertransformer.model import HyperTransformer, transformer
from hypertransformer.precision import resolve_precision


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=presets.names())
    p.add_argument("--episodes-per-step", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default="fp32")
    p.add_argument("--bf16-transformer", action="store_true",
                   help="the transformers under bf16 autocast too (without their fp32 island)")
    p.add_argument("--eval-tasks", type=int, default=0,
                   help="profile the evaluation of this many tasks instead of training steps")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the commands do (memory.py)
    if args.bf16_transformer:
        for module in (transformer.Encoder, transformer.Decoder):
            module.forward = module.forward.__wrapped__  # type: ignore[method-assign]
    torch.set_num_threads(args.threads)
    args.seed = 0
    cfg = build_config(args).replace(dtype=args.dtype)
    precision = resolve_precision(cfg.dtype, training=not args.eval_tasks)
    if args.eval_tasks:
        # The evaluator's work (SPEC §5) done serially in this thread, which the profiler sees
        # (it does not record the evaluator's worker threads): tasks drawn as many at a time
        # as the evaluator's generate calls take, one classify call per query batch.
        torch.manual_seed(0)
        model = HyperTransformer(cfg).eval()
        sampler = EpisodeSampler.from_config(
            load_split(cfg, "test"), cfg.replace(samples_cnn=cfg.eval_batch_size), train=False,
            seed=0)
        size = cfg.eval_batch_size
        per_call = max(1, CLASSIFY_IMAGES // size)

        def run(tasks: int) -> None:
            for first in range(0, tasks, per_call):
                batch = sample_tasks(sampler, first, min(per_call, tasks - first),
                                     cfg.num_eval_batches, seed=0)
                with torch.no_grad(), precision.autocast("cpu"):
                    weights = model.generate(batch.support_x, batch.support_y,
                                             batch.support_mask)
                    for b in range(cfg.num_eval_batches):
                        model.classify(batch.query_x[:, b * size:(b + 1) * size], weights)

        run(per_call)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(args.eval_tasks)
        seconds = time.perf_counter() - start
        per, unit = args.eval_tasks, "task"
        what = (f"evaluation of {args.eval_tasks} tasks × {cfg.num_eval_batches} × {size} "
                f"in one thread of calls, {seconds:.1f} s")
    else:
        step, *_ = training_step(cfg, seed=0)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        per, unit = args.steps, "step"
        what = f"{args.episodes_per_step} episodes/step"
    averages = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in averages) / 1000 / per
    print(f"{args.preset} on {args.data_dir or 'glyphs'}, {what}, {args.threads} thread(s), "
          f"{precision.name}: self CPU time {total_ms:.1f} ms per {unit}")
    print(f"{'operator':<48}{f'ms/{unit}':>10}{f'calls/{unit}':>12}")
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        print(f"{e.key[:47]:<48}{e.self_cpu_time_total / 1000 / per:>10.1f}"
              f"{e.count / per:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
