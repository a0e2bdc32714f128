"""``python -m hypertransformer.train --flag=value ...``: the original training binary.

Takes the absl-style flags of the authors' ``train.py`` (see :mod:`hypertransformer.flags`;
every Config field is a flag, defaults are the original flag defaults) and trains into
``--train_log_dir`` (resuming a checkpoint there).  ``scripts/omniglot_*shot_v1.sh`` call it.
Exit codes: 0 done, 130 stopped by Ctrl-C after saving a checkpoint, 2 bad flags or data, or a
diverged run (:mod:`hypertransformer.errors`).

``torchrun --nproc_per_node=P -m hypertransformer.train --flag=value ...`` trains data-parallel
over P processes (``--device=cuda`` for one GPU each; docs/distributed.md).
"""

from __future__ import annotations

import sys

from hypertransformer.errors import require_directory, run


def main(argv: list[str] | None = None) -> int:
    return run("hypertransformer.train", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    from hypertransformer.flags import parse_flags
    from hypertransformer.training.cli import aborted, report
    from hypertransformer.training.trainer import train

    config = parse_flags(argv)
    require_directory(config.train_log_dir, "--train_log_dir")
    try:
        return report(train(config, config.train_log_dir))
    except KeyboardInterrupt:
        return aborted()


if __name__ == "__main__":
    sys.exit(main())
