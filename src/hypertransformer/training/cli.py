"""``hypertransformer train``: train (or resume) a preset, with field overrides.

On a CPU the command trains data-parallel on every usable core (``--nproc N`` to choose, 1 for
one process; :mod:`.launch`, docs/distributed.md); ``episodes_per_step`` is the global batch,
split across the processes.  Under ``torchrun --nproc_per_node=P --no-python hypertransformer
train ...`` this process is one of torchrun's P ranks.  Only rank 0 prints the summary.

Exit codes: 0 when ``train_steps`` are done; 130 when stopped by Ctrl-C (a checkpoint was
saved, see :mod:`.trainer`; run the same command to resume); 2 for bad input, a diverged run
or a failed rank (:mod:`hypertransformer.errors`).
"""

from __future__ import annotations

import argparse

from hypertransformer import presets
from hypertransformer.errors import require_directory, require_positive
from hypertransformer.precision import add_dtype_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a HyperTransformer, a Continual HT or a baseline (resumes a log "
                      "dir with a checkpoint)",
        description="Train the preset's model (model_type: ht, cht, merged_ht, protonet). "
                    "A log directory that holds a "
                    "checkpoint is resumed. Ctrl-C saves a checkpoint and exits with 130.")
    p.add_argument("--preset", required=True, choices=presets.names(),
                   help="the configuration to start from (SPEC §6 scripts, glyphs_demo)")
    p.add_argument("--data-dir", default=None,
                   help="raw dataset folder (e.g. the Omniglot zips); sets data_dir")
    p.add_argument("--log-dir", default=None,
                   help="checkpoints, metrics and TensorBoard events (default: the config's "
                        "train_log_dir)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (train_steps)")
    p.add_argument("--episodes-per-step", type=int, default=None,
                   help="episodes averaged per optimiser step (episodes_per_step), in "
                        "total over the processes")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel CPU processes, one thread each (default: the usable "
                        "cores, at most the episodes per step; 1: one process)")
    p.add_argument("--seed", type=int, default=None, help="random seed (seed)")
    p.add_argument("--device", default=None,
                   help="cpu (default), cuda or cuda:<index> (device); under torchrun each "
                        "rank takes cuda:LOCAL_RANK")
    add_dtype_argument(p)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set learning_rate=0.01 (repeatable;"
                        " the named options above win)")
    p.add_argument("--log-every", type=int, default=None,
                   help="steps between metrics lines and held-out evaluations (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from hypertransformer.flags import apply_overrides
    from hypertransformer.training.launch import Job, run_training
    from hypertransformer.training.trainer import LOG_EVERY

    require_positive(log_every=args.log_every, episodes_per_step=args.episodes_per_step)
    config = apply_overrides(presets.load(args.preset), args.overrides)
    named = {"data_dir": args.data_dir, "train_log_dir": args.log_dir,
             "train_steps": args.steps, "episodes_per_step": args.episodes_per_step,
             "seed": args.seed, "device": args.device,
             "dtype": args.dtype}
    config = config.replace(**{k: v for k, v in named.items() if v is not None})
    require_directory(config.train_log_dir, "--log-dir")
    job = Job(config, progress=not args.no_progress,
              log_every=LOG_EVERY if args.log_every is None else args.log_every)
    return run_training(job, args.nproc)
