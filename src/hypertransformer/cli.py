"""The ``hypertransformer`` console command.

Each concern adds its own subcommands from its own module (``register(subparsers)``); this
file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hypertransformer.errors import run
from hypertransformer.memory import keep_freed_memory

# Modules that define ``register(subparsers)``; each adds one or more subcommands.
_COMMAND_MODULES = [
    "hypertransformer.data.cli",
    "hypertransformer.training.cli",
    "hypertransformer.model.cli",
    "hypertransformer.evaluation.cli",
    "hypertransformer.inference.cli",
    "hypertransformer.inference.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypertransformer",
        description="HyperTransformer: generate a small CNN from a few labelled images.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The exit code: 0 done, 2 an expected error (one line on stderr), 130 Ctrl-C
    (:mod:`hypertransformer.errors`)."""
    args = build_parser().parse_args(argv)
    words = [args.command, getattr(args, f"{args.command}_command", None)]  # "data info"
    prog = " ".join(["hypertransformer", *filter(None, words)])
    keep_freed_memory()  # the commands reuse freed buffers (memory.py)
    return run(prog, lambda: int(args.func(args) or 0))


if __name__ == "__main__":
    sys.exit(main())
