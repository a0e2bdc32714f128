"""The paired difference of two evaluations of the same tasks (same split, seed and number of
tasks): mean of the per-task accuracy differences B − A with its 95 % interval, far tighter
than comparing two intervals when both models see the same tasks.

    python benchmarks/paired.py A.txt B.txt [C.txt ...]   # each: `evaluate --json` output

Every file after the first is compared with the first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def record(path: Path) -> dict:
    """The JSON record: the last line of an ``evaluate --json`` output (or a record file)."""
    return json.loads(path.read_text().strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base_path, *others = map(Path, sys.argv[1:])
    base = record(base_path)
    a = np.asarray(base["task_accuracies"])
    print(f"A = {base_path}: {100 * a.mean():.2f} % over {len(a)} tasks")
    for path in others:
        other = record(path)
        if (other["split"], other["seed"], other["num_tasks"]) != (
                base["split"], base["seed"], base["num_tasks"]):
            sys.exit(f"{path} was evaluated on other tasks than {base_path} (split, seed, "
                     f"number of tasks differ)")
        b = np.asarray(other["task_accuracies"])
        diff = b - a
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"B = {path}: {100 * b.mean():.2f} %; B − A = {100 * diff.mean():+.2f} ± "
              f"{100 * half:.2f} points (95 %, paired over the same tasks)")


if __name__ == "__main__":
    main()
