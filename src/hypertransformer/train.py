"""``python -m hypertransformer.train --flag=value ...``: the original training binary.

Takes the absl-style flags of the authors' ``train.py`` (see :mod:`hypertransformer.flags`;
every Config field is a flag, defaults are the original flag defaults) and trains into
``--train_log_dir`` (resuming a checkpoint there).  ``scripts/*_v1.sh`` call it.
Exit codes: 0 done, 130 stopped by Ctrl-C after saving a checkpoint, 2 bad flags or data, a
diverged run or a failed rank (:mod:`hypertransformer.errors`).

On a CPU it trains data-parallel on every usable core, as ``hypertransformer train`` does
(:mod:`.training.launch`); ``--nproc=N`` (not a Config field: it does not change what is
trained) chooses the processes, 1 for one.  ``torchrun --nproc_per_node=P -m
hypertransformer.train --flag=value ...`` runs this as one of torchrun's P ranks
(``--device=cuda`` for one GPU each; docs/distributed.md).
"""

from __future__ import annotations

import sys

from hypertransformer.errors import require_directory, run


def main(argv: list[str] | None = None) -> int:
    return run("hypertransformer.train", lambda: _main(sys.argv[1:] if argv is None else argv))


def split_nproc(argv: list[str]) -> tuple[int | None, list[str]]:
    """(the value of ``--nproc`` in ``argv``, or None; the other flags), in the absl forms
    ``--nproc=N``, ``--nproc N``, ``-nproc=N``; flags after ``--`` are left alone."""
    rest: list[str] = []
    nproc: int | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rest += argv[i - 1:]
            break
        name, sep, text = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != "nproc":
            rest.append(arg)
            continue
        if not sep:
            if i >= len(argv):
                raise ValueError("flag --nproc needs a value")
            text = argv[i]
            i += 1
        try:
            nproc = int(text)
        except ValueError:
            raise ValueError(f"nproc expects int; got {text!r}") from None
    return nproc, rest


def _main(argv: list[str]) -> int:
    from hypertransformer.flags import parse_flags
    from hypertransformer.training.launch import Job, run_training

    nproc, flags = split_nproc(argv)
    config = parse_flags(flags)
    require_directory(config.train_log_dir, "--train_log_dir")
    return run_training(Job(config), nproc)


if __name__ == "__main__":
    sys.exit(main())
