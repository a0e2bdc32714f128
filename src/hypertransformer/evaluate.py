"""``python -m hypertransformer.evaluate --flag=value ...``: the original evaluation binary.

Takes the absl-style flags of the authors' ``evaluate_model.py`` (every Config field is a flag,
see :mod:`hypertransformer.flags`; scripts may pass the same flags as to training) and
evaluates the latest checkpoint of ``--train_log_dir`` with the SPEC §5 protocol
(``--num_task_evals`` tasks × ``--num_eval_batches`` batches × ``--eval_batch_size`` queries).
As the original, it evaluates the ``train``, ``val`` (when the dataset has one) and ``test``
splits of the collection ``--eval_datasets`` (``<name>:train`` ...; without it, the
checkpoint's ``train_dataset`` / ``test_dataset``), each with the test-time augmentation
flags, writing ``<train_log_dir>/eval/<split>-<step>.json`` and the ``eval_accuracy/<split>``
TensorBoard scalar in ``<train_log_dir>/eval``.

The model is the checkpoint's: flags are applied over the checkpoint's config, and a flag that
changes the model (e.g. ``--num_labels``) differently from the checkpoint is an error.  Data
flags (``--data_dir``, ``--data_numpy_dir``), protocol and ``test_*`` augmentation flags apply.
``--seed`` picks the evaluation tasks (default 0).  Unlike the original, which keeps waiting
for new checkpoints, this evaluates once; ``hypertransformer evaluate --watch`` follows a
running training.  Exit codes: 0 done, 2 bad flags, data or checkpoint, 130 Ctrl-C
(:mod:`hypertransformer.errors`).
"""

from __future__ import annotations

import sys

from hypertransformer.config import Config, field_names
from hypertransformer.data.base import DatasetError
from hypertransformer.errors import run
from hypertransformer.evaluation.cli import describe
from hypertransformer.evaluation.evaluator import (
    SPLITS,
    evaluate_checkpoint,
    log_dir_of,
    save_record,
)
from hypertransformer.flags import parse_flags
from hypertransformer.training.checkpoint import load_checkpoint, resolve_checkpoint


def main(argv: list[str] | None = None) -> int:
    return run("hypertransformer.evaluate",
               lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    given = parse_flags(argv)
    checkpoint = resolve_checkpoint(given.train_log_dir)
    saved = load_checkpoint(checkpoint)["config"]
    base = Config.from_dict({k: v for k, v in saved.items() if k in set(field_names())})
    config = parse_flags(argv, base=base)
    if config.eval_datasets:
        config = config.replace(train_dataset=f"{config.eval_datasets}:train",
                                test_dataset=f"{config.eval_datasets}:test")
    overrides = {name: getattr(config, name) for name in field_names()
                 if getattr(config, name) != getattr(base, name)}
    for split in SPLITS:
        try:
            record = evaluate_checkpoint(checkpoint, split, seed=given.seed,
                                         overrides=overrides)
        except DatasetError as e:
            if split != "val":
                raise
            print(f"no val split ({e}); skipped")
            continue
        path = save_record(log_dir_of(checkpoint), record)
        print(describe(record))
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
