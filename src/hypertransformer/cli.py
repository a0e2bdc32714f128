"""The ``hypertransformer`` console command.

Each concern adds its own subcommands from its own module (``register(subparsers)``); this
file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define ``register(subparsers)``; each adds one or more subcommands.
_COMMAND_MODULES = [
    "hypertransformer.data.cli",
    "hypertransformer.training.cli",
    "hypertransformer.model.cli",
    "hypertransformer.evaluation.cli",
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input: a message, not a traceback
        print(f"hypertransformer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
