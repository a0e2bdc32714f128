"""When does each Omniglot HT preset leave chance (issue 24)?  Short runs, validation classes.

Each preset trains with ``label_aligned_init`` on and off for a fixed number of steps in one
1-thread process (``short_runs.py``: step-based figures, independent of the machine's load).
The held-out accuracy is the trainer's (the preset's validation classes, omniglot:1150-1199;
Lake's: Tifinagh), never the test classes.

    python benchmarks/chance_departure.py --data-dir ../shared/data/omniglot [--jobs 2] \\
        [NAME ...]                     # train the runs (default: all), then the table
    python benchmarks/chance_departure.py --table-only

Output: docs/results/chance_departure/<name>/{config.json,metrics.jsonl,train.log} and
docs/results/chance_departure/table.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import short_runs

OUT = Path("docs/results/chance_departure")
# name: (preset, label_aligned_init, steps): the random (original) initialisation for the 300
# steps of the criterion, the aligned one a little further where a step is cheap.
ALIGNED_STEPS = {"omniglot_1shot_cpu": 500, "omniglot_1shot_logits_cpu": 600,
                 "omniglot_1shot_semi_cpu": 600, "omniglot_5shot_cpu": 300,
                 "omniglot_1shot_16ch_cpu": 300, "omniglot_lake": 500}
RUNS: dict[str, tuple[str, bool, int]] = {}
for _p, _steps in ALIGNED_STEPS.items():
    RUNS[f"{_p}-aligned"] = (_p, True, _steps)
    RUNS[f"{_p}-random"] = (_p, False, 300)
TABLE_STEPS = (100, 200, 300, 400, 500)


def run(name: str, data_dir: str) -> str:
    preset, aligned, steps = RUNS[name]
    code = short_runs.train(preset, [(steps, [f"label_aligned_init={str(aligned).lower()}"])],
                            data_dir, Path("runs/chance_departure") / name, OUT / name,
                            log_every=50)
    return f"{name}: exit {code}"


def left_chance(name: str) -> str:
    """The first logged step whose training loss is 0.1 below ln N and whose held-out accuracy
    is twice chance, or "–"."""
    rows = short_runs.records(OUT / name / "metrics.jsonl")
    if not rows:
        return "–"
    labels = json.loads((OUT / name / "config.json").read_text())["num_labels"]
    for r in rows:
        if r["loss"] < math.log(labels) - 0.1 and r["heldout_accuracy"] >= 2 / labels:
            return str(r["step"])
    return f"> {rows[-1]['step']}"


def table() -> str:
    head = ("| preset | init | " + " | ".join(str(s) for s in TABLE_STEPS)
            + " | left chance at step |")
    lines = [head, "|" + "---|" * (len(TABLE_STEPS) + 3)]
    for name, (preset, aligned, _) in RUNS.items():
        c = short_runs.curve(OUT / name / "metrics.jsonl")
        if not c:
            continue
        cells = [f"{100 * c[s]:.1f}" if s in c else "–" for s in TABLE_STEPS]
        lines.append(f"| `{preset}` | {'aligned' if aligned else 'random'} | "
                     + " | ".join(cells) + f" | {left_chance(name)} |")
    return ("Held-out accuracy (%) on the validation classes by training step (1-thread runs, "
            "fp32); 'left chance': the first logged step (every 50) with the training loss "
            "0.1 below ln N and the held-out accuracy at least twice chance. "
            "`python benchmarks/chance_departure.py`\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    short_runs.command_line(__doc__, RUNS, lambda name, a: run(name, a.data_dir), table, OUT)


if __name__ == "__main__":
    main()
