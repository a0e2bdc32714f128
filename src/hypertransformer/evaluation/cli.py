"""``hypertransformer evaluate | plot | demo``.

* ``evaluate``: the SPEC §5 protocol on a checkpoint (or, with ``--watch``, on every checkpoint
  of a running training as it appears); prints accuracy ± 95% CI next to the chance level and
  writes ``<log_dir>/eval/<split>-<step:08d>.json`` (the split is part of the name so that
  several splits of one checkpoint can be kept).
* ``plot``: PNG learning curves of a log directory (:mod:`.plot`).
* ``demo``: trains the ``glyphs_demo`` preset on the built-in glyphs data (offline) for about
  ``--minutes``, then evaluates it on the held-out test glyph classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hypertransformer.errors import require_directory, require_positive
from hypertransformer.precision import add_dtype_argument

# Default protocol of the demo: the glyphs_demo preset's 256 tasks, 4 query batches of 100.
DEMO_TASKS = 256
DEMO_BATCHES = 4
# Warm-up steps; the throughput is measured over the second half (the first steps are slow).
DEMO_WARMUP_STEPS = 20
DEMO_LOG_EVERY = 50
# Held-out evaluations, checkpoints and start-up take this much more time than the steps.
DEMO_OVERHEAD = 1.2
DEMO_MIN_ROUND_SECONDS = 10.0  # no training round for less time than this


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint with the paper's protocol (SPEC §5)",
        description="Evaluate a checkpoint: per task N classes, one support set and one "
                    "augmentation state, --batches query batches of --batch-size; prints the "
                    "mean task accuracy ± 95% CI (1.96·std/√tasks, population std) and "
                    "writes <log_dir>/eval/<split>-<step>.json. --watch evaluates each new "
                    "checkpoint of a running training until it writes done.json.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--log-dir", help="a training log dir (its latest checkpoint)")
    source.add_argument("--checkpoint", help="a checkpoint file, e.g. <log_dir>/checkpoints/"
                                             "best.pt")
    source.add_argument("--model", help="a pretrained model by name (hypertransformer.load); "
                                        "its record is printed, not written")
    p.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="classes to evaluate on (default: test)")
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks (default: the config's num_task_evals, 1024 for the paper "
                        "presets)")
    p.add_argument("--batches", type=int, default=None,
                   help="query batches per task (default: num_eval_batches, 16)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="queries per batch (default: eval_batch_size, 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation tasks")
    p.add_argument("--data-dir", default=None, help="raw dataset folder (sets data_dir)")
    p.add_argument("--scenario", choices=("task", "class", "minibatch"), default=None,
                   help="Continual HT / ProtoNet: the scenario to evaluate (default: the "
                        "checkpoint's cht_scenario)")
    p.add_argument("--sequence-length", type=int, default=None,
                   help="Continual HT / ProtoNet: tasks per evaluation sequence (default: "
                        "cht_eval_tasks, or 2 × the trained cht_tasks)")
    p.add_argument("--recompute-prototypes", action="store_true",
                   help="Continual HT: the upper bound that keeps every support set and "
                        "recomputes all prototypes with the current weights")
    p.add_argument("--unlabeled", type=int, default=None,
                   help="unlabelled support samples per class beside the same labelled shots "
                        "(default: the checkpoint's unlabeled_samples_per_class)")
    add_dtype_argument(p)
    p.add_argument("--json", action="store_true",
                   help="print the result record as JSON on the last line")
    p.add_argument("--watch", action="store_true",
                   help="with --log-dir: evaluate every checkpoint as it appears, until "
                        "done.json exists and all are evaluated")
    p.add_argument("--poll-seconds", type=float, default=10.0,
                   help="--watch: seconds between looks at the log dir (default 10)")
    p.add_argument("--timeout", type=float, default=None,
                   help="--watch: give up (exit 1) after this many seconds")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "plot", help="PNG learning curves of a training log dir",
        description="Plot loss, training and held-out accuracy (and evaluation results) "
                    "against episodes and against training time.")
    p.add_argument("log_dir", help="a training log dir (with metrics.jsonl)")
    p.add_argument("--out", default=None, help="output folder (default: <log_dir>/plots)")
    p.set_defaults(func=_plot)

    p = subparsers.add_parser(
        "demo", help="train a small HyperTransformer offline for a few minutes and evaluate it",
        description="Train the glyphs_demo preset (5-way 1-shot on the built-in glyphs data, "
                    "no download) for about --minutes on the CPU, then evaluate it on glyph "
                    "classes held out from training. A log dir with a checkpoint is resumed "
                    "and trained for --minutes more.")
    p.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    p.add_argument("--log-dir", default="runs/demo", help="default: runs/demo")
    p.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    p.add_argument("--tasks", type=int, default=DEMO_TASKS,
                   help=f"evaluation tasks (default {DEMO_TASKS}, each with {DEMO_BATCHES} "
                        f"query batches of 100)")
    p.set_defaults(func=_demo)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def describe(record: dict[str, Any]) -> str:
    """One line: accuracy ± CI, chance level, protocol and time (a continual record: also its
    accuracy matrix and summaries, :func:`describe_continual`)."""
    if "accuracy_matrix" in record:
        return describe_continual(record)
    return (f"{record['split']} accuracy {_pct(record['accuracy'])} ± {_pct(record['ci95'])} "
            f"(95% CI) at step {record['step']}; chance {_pct(record['chance'])} "
            f"(1/{record['num_labels']}); {record['num_tasks']} tasks × "
            f"{record['num_batches']} batches × {record['batch_size']} queries of "
            f"{record['dataset']} in {record['seconds']:.1f} s")


def describe_continual(record: dict[str, Any]) -> str:
    """The accuracy matrix A[t, τ] (rows t: weights after task t; columns τ: tasks), then the
    final accuracy, forgetting and backward transfer."""
    rows = record["accuracy_matrix"]
    lines = [f"{record['split']} {record['model_type']} {record['scenario']}-incremental at "
             f"step {record['step']}: {record['num_sequences']} sequences of "
             f"{record['tasks_per_sequence']} tasks (trained on "
             f"{record['trained_tasks_per_sequence']}) × {record['num_batches']} batches × "
             f"{record['batch_size']} queries of {record['dataset']}"
             + (", prototypes recomputed (upper bound)" if record["recompute_prototypes"]
                else "") + f" in {record['seconds']:.1f} s",
             "A[t, τ] (%): row t = after learning task t, column τ = task τ's queries"]
    lines += [f"  t={t:<3d}" + " ".join(f"{100 * a:5.1f}" for a in row)
              for t, row in enumerate(rows)]
    lines.append(f"final accuracy {_pct(record['final_accuracy'])} ± "
                 f"{_pct(record['final_accuracy_ci95'])} (95% CI; chance "
                 f"{_pct(record['chance'])})")
    if record["forgetting"] is not None:
        lines.append(f"forgetting {_pct(record['forgetting'])}; backward transfer "
                     f"{_pct(record['backward_transfer'])} ± "
                     f"{_pct(record['backward_transfer_ci95'])}")
    return "\n".join(lines)


def _report(record: dict[str, Any], path: Path | None, as_json: bool) -> None:
    print(describe(record))
    if path is not None:
        print(f"wrote {path}")
    if as_json:
        print(json.dumps(record))
    sys.stdout.flush()


def _evaluate(args: argparse.Namespace) -> int:
    from hypertransformer.evaluation.evaluator import (
        evaluate_checkpoint,
        log_dir_of,
        save_record,
        watch,
    )

    require_positive(tasks=args.tasks, batches=args.batches, batch_size=args.batch_size,
                     sequence_length=args.sequence_length)
    overrides = {k: v for k, v in [("num_task_evals", args.tasks),
                                   ("num_eval_batches", args.batches),
                                   ("eval_batch_size", args.batch_size),
                                   ("data_dir", args.data_dir),
                                   ("cht_scenario", args.scenario),
                                   ("cht_eval_tasks", args.sequence_length),
                                   ("unlabeled_samples_per_class", args.unlabeled),
                                   ("cht_recompute_prototypes",
                                    args.recompute_prototypes or None),
                                   ("dtype", args.dtype)] if v is not None}
    if args.watch:
        if args.log_dir is None:
            raise ValueError("--watch needs --log-dir")
        try:
            watch(args.log_dir, args.split, seed=args.seed, overrides=overrides,
                  poll_seconds=args.poll_seconds, timeout=args.timeout,
                  on_record=lambda record, path: _report(record, path, args.json))
        except TimeoutError as e:
            print(f"hypertransformer evaluate: {e}", file=sys.stderr)
            return 1
        return 0
    if args.model is not None:
        from hypertransformer.inference.pretrained import pretrained_path

        record = evaluate_checkpoint(pretrained_path(args.model), args.split, seed=args.seed,
                                     overrides=overrides)
        record["checkpoint"] = args.model  # a name, not this installation's path
        _report(record, None, args.json)
        return 0
    record = evaluate_checkpoint(args.checkpoint or args.log_dir, args.split, seed=args.seed,
                                 overrides=overrides)
    _report(record, save_record(log_dir_of(record["checkpoint"]), record), args.json)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from hypertransformer.evaluation.plot import plot_log_dir

    if args.out is not None:
        require_directory(args.out, "--out")
    for path in plot_log_dir(args.log_dir, args.out):
        print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hypertransformer import presets
    from hypertransformer.evaluation.evaluator import evaluate_checkpoint, save_record, step_of
    from hypertransformer.evaluation.plot import read_metrics
    from hypertransformer.training import latest_checkpoint, train

    if args.minutes <= 0:
        raise ValueError(f"--minutes must be positive; got {args.minutes:g}")
    require_positive(tasks=args.tasks)
    require_directory(args.log_dir, "--log-dir")
    start = time.monotonic()
    log_dir = Path(args.log_dir)
    config = presets.load("glyphs_demo", seed=args.seed, train_log_dir=str(log_dir))
    latest = latest_checkpoint(log_dir)
    first = 0 if latest is None else step_of(latest)
    print(f"demo: training a {config.num_labels}-way {config.shots}-shot HyperTransformer on "
          f"the built-in glyphs data for about {args.minutes:g} min in {log_dir}"
          + (f" (resuming step {first})" if first else ""), flush=True)

    # A short run gives the throughput (its last metrics line covers the last half of the
    # steps); then rounds of training fill the rest of the budget, each planned from the
    # throughput of the previous one (the machine's speed may change while we run).
    step = first + DEMO_WARMUP_STEPS
    train(config.replace(train_steps=step), log_dir, progress=False,
          log_every=DEMO_WARMUP_STEPS // 2)
    steps_per_s = read_metrics(log_dir)[-1]["episodes_per_s"] / config.episodes_per_step
    steps_per_s /= DEMO_OVERHEAD  # held-out evaluations, checkpoints, start-up
    while (left := 60 * args.minutes - (time.monotonic() - start)) >= DEMO_MIN_ROUND_SECONDS:
        more = int(left * steps_per_s)
        if more < 1:
            break
        print(f"demo: {steps_per_s:.1f} steps/s; training to step {step + more} "
              f"({left / 60:.1f} min left)", flush=True)
        round_start = time.monotonic()
        step = train(config.replace(train_steps=step + more), log_dir,
                     log_every=DEMO_LOG_EVERY).step
        steps_per_s = more / (time.monotonic() - round_start)
    trained = time.monotonic() - start

    print(f"demo: trained to step {step} in {trained / 60:.1f} min; evaluating on the "
          f"test glyph classes (never seen in training)", flush=True)
    record = evaluate_checkpoint(log_dir, "test", seed=args.seed,
                                 overrides={"num_task_evals": args.tasks,
                                            "num_eval_batches": DEMO_BATCHES})
    path = save_record(log_dir, record)
    print(describe(record))
    print(f"wrote {path}")
    print(f"log dir: {log_dir}\n"
          f"  learning curves:  hypertransformer plot {log_dir}\n"
          f"  TensorBoard:      tensorboard --logdir {log_dir}\n"
          f"  full protocol:    hypertransformer evaluate --log-dir {log_dir} --tasks 1024 "
          f"--batches 16")
    return 0
