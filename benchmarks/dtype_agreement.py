"""How far bf16 predictions are from fp32 ones: a shipped model's ``fit`` and logits in both.

Usage::

    python benchmarks/dtype_agreement.py [--data-dir ../shared/data/omniglot]
        [--model omniglot_1shot] [--tasks 20] [--queries 5]

For each of ``--tasks`` tasks of the model's N test classes (one support image per class,
``--queries`` query images per class, drawn with seed 0), the classifier is fitted and run
with ``dtype="fp32"`` and with ``dtype="bf16"`` (requested: on a CPU without native bf16 it
is emulated, slowly, with the same result).  Printed: the largest absolute logit difference
per task (median and maximum over tasks) and the share of queries whose predicted class
agrees.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import hypertransformer
from hypertransformer.data.registry import load_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None,
                   help="the model's dataset, e.g. the Omniglot zips (default: its config's)")
    p.add_argument("--model", default="omniglot_1shot")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--queries", type=int, default=5)
    args = p.parse_args(argv)
    models = {d: hypertransformer.load(args.model, dtype=d) for d in ("fp32", "bf16")}
    config = models["fp32"].config
    if args.data_dir is not None:
        config = config.replace(data_dir=args.data_dir)
    test = load_split(config, "test")
    rng = np.random.default_rng(0)
    diffs, agree = [], []
    for _ in range(args.tasks):
        support, labels, queries = [], [], []
        for c in rng.choice(test.num_classes, config.num_labels, replace=False):
            images = test.classes[c][rng.permutation(len(test.classes[c]))]
            support.append(images[0])
            labels.append(int(c))
            queries.extend(images[1:1 + args.queries])
        logits = {d: m.fit(support, labels)(queries) for d, m in models.items()}
        diffs.append((logits["fp32"] - logits["bf16"]).abs().max().item())
        agree.append((logits["fp32"].argmax(-1) == logits["bf16"].argmax(-1)).float().mean())
    print(f"{args.model}, {args.tasks} tasks of {config.num_labels} classes x {args.queries} "
          f"queries: largest |fp32 - bf16| logit per task: median {statistics.median(diffs):.3f}"
          f", max {max(diffs):.3f}; predicted class agrees on {100 * np.mean(agree):.2f} % of "
          f"the queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
