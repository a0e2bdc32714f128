"""Has a run converged?  The rule of issue 23: its held-out accuracy has not improved over the
last 25 % of the run (the best logged held-out accuracy was reached before 75 % of its steps).

    python benchmarks/convergence.py RUN_DIR_OR_METRICS [...]

Prints, per run, the best held-out accuracy, its step, the last step, the mean held-out
accuracy of the last quarter against the quarter before it, and the verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def verdict(path: Path) -> str:
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "heldout_accuracy" in r]
    if not rows:
        return f"{path}: no held-out accuracy logged"
    last = rows[-1]["step"]
    best = max(rows, key=lambda r: r["heldout_accuracy"])

    def mean(lo: float, hi: float) -> float:
        part = [r["heldout_accuracy"] for r in rows if lo < r["step"] <= hi]
        return 100 * sum(part) / max(1, len(part))

    converged = best["step"] <= 0.75 * last
    late, before = mean(0.75 * last, last), mean(0.5 * last, 0.75 * last)
    return (f"{path}: best held-out {100 * best['heldout_accuracy']:.2f} % at step "
            f"{best['step']} of {last} ({best['step'] / last:.0%}); mean of the last quarter "
            f"{late:.2f} %, of the quarter before {before:.2f} %: "
            f"{'converged' if converged else 'NOT converged'} by the 25 % rule")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        print(verdict(Path(arg)))
