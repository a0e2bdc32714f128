"""Why the Continual HT does not learn (issue 23): short runs on the VALIDATION classes.

Each candidate trains its preset with its overrides for a fixed number of steps in one
1-thread process (``--nproc 1``), so that two candidates can share the 2 cores (``--jobs 2``)
and the figures, held-out accuracy by step, do not depend on the machine's load.  The held-out
accuracy is the trainer's: the mean over every (t, τ ≤ t) pair of 32 fixed validation
sequences of L tasks (omniglot:1150-1199, never the test classes).

    python benchmarks/cht_diagnosis.py --data-dir ../shared/data/omniglot --steps 600 \\
        [--jobs 2] [NAME ...]          # train the candidates (default: all), then the table
    python benchmarks/cht_diagnosis.py --table-only     # the table from the saved metrics

Output: docs/results/cht_diagnosis/<name>/{config.json,metrics.jsonl,train.log} and
docs/results/cht_diagnosis/table.md (held-out accuracy at every 100 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path("docs/results/cht_diagnosis")
TASK = "cht_omniglot_task"
# The CHT recipe before this diagnosis (the presets' then): no residual, no warm start, the
# original schedule (0.95 per 100k steps); every candidate of TASK starts from it.
BEFORE = ["cht_residual=false", "init_checkpoint=", "learning_rate_decay_rate=0.95",
          "learning_rate_decay_steps=100000", "cht_residual_scale=0"]
# The converged ConstPN that residual_from_constpn starts from (docs/results.md, "Converged
# baselines": its training command).
CONSTPN = "runs/constpn_omniglot"

# name: (preset, overrides, what it tests)
CANDIDATES: dict[str, tuple[str, list[str], str]] = {
    "cht": (TASK, [], "the CHT as it was (raw blocks fed back, zeros at t = 0)"),
    "cht_L1": (TASK, ["cht_tasks=1"],
               "sequences of one task: the CHT's first task alone (no chain)"),
    "merged_ht": ("merged_ht_omniglot_task", [], "MergedHT: the union, nothing fed back"),
    "constpn": ("protonet_omniglot_continual", [], "ConstPN: the same CNN, every weight trained"),
    "no_feedback": (TASK, ["cht_feedback=none"],
                    "nothing fed back: each task's weights from its own support only"),
    "normalized": (TASK, ["cht_feedback=normalized"],
                   "the previous blocks layer-normalised before they enter the tokens"),
    "residual": (TASK, ["cht_residual=true"],
                 "θ_t = θ_{t−1} + α·G(S_t, θ_{t−1}), learned θ_{−1}, α = 0 at the start"),
    "residual_normalized": (TASK, ["cht_residual=true", "cht_feedback=normalized"],
                            "residual, the fed-back blocks layer-normalised"),
    "residual_none": (TASK, ["cht_residual=true", "cht_feedback=none"],
                      "residual, nothing in the tokens (updates from S_t alone)"),
    "cht_L1_scaled": (TASK, ["cht_tasks=1", "cht_embedding_scale=true"],
                      "one-task sequences, the generated embedding divided by √F"),
    "scaled": (TASK, ["cht_embedding_scale=true"],
               "the CHT as it was, the generated embedding divided by √F"),
    "residual_scaled": (TASK, ["cht_residual=true", "cht_embedding_scale=true"],
                        "residual, the embedding divided by √F"),
    "merged_ht_scaled": ("merged_ht_omniglot_task", ["cht_embedding_scale=true"],
                         "MergedHT, the generated embedding divided by √F"),
    "residual_from_constpn": (TASK, ["cht_residual=true",
                                     f"init_checkpoint={CONSTPN}/checkpoints/best.pt"],
                              "residual, θ_{−1} the converged ConstPN's CNN (α = 0: ConstPN "
                              "at step 0)"),
    "warm_start_L1": (TASK, [], "the first half of the steps on one-task sequences (a trained "
                      "single-task prototype HT), then L = 5: a warm start / curriculum"),
}
# Candidates trained in two stages in one log dir (resumed): the overrides of the first half.
FIRST_HALF: dict[str, list[str]] = {"warm_start_L1": ["cht_tasks=1"]}


def run(name: str, steps: int, data_dir: str) -> str:
    preset, overrides, _ = CANDIDATES[name]
    overrides = (BEFORE if preset == TASK else []) + overrides
    log_dir = Path("runs/cht_diagnosis") / name
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    stages = [(steps, overrides)]
    if name in FIRST_HALF:
        stages.insert(0, (steps // 2, overrides + FIRST_HALF[name]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    code = 0
    with open(out / "train.log", "w") as log:
        for until, sets in stages:
            cmd = ["hypertransformer", "train", "--preset", preset, "--data-dir", data_dir,
                   "--log-dir", str(log_dir), "--steps", str(until), "--nproc", "1",
                   "--no-progress", "--log-every", "100"]
            for o in sets:
                cmd += ["--set", o]
            log.write(" ".join(cmd) + "\n")
            log.flush()
            code = code or subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    for f in ("config.json", "metrics.jsonl"):
        if (log_dir / f).exists():
            shutil.copy(log_dir / f, out / f)
    return f"{name}: exit {code}"


# Saved beside the candidates but trained by the presets' commands (docs/continual.md): the
# first ~1,100 steps of the warm-started presets with α starting at exactly 0.
PRESET_RUNS: dict[str, str] = {
    f"alpha0_warm_{s}": f"`cht_omniglot_{s}` with `cht_residual_scale=0` (α = 0 at the start), "
                        f"{s}-incremental" for s in ("task", "class", "minibatch")}
TABLE_STEPS = range(100, 900, 100)


def curve(name: str) -> dict[int, float]:
    path = OUT / name / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["heldout_accuracy"] for r in rows}


def table() -> str:
    what = {n: c[2] for n, c in CANDIDATES.items()} | PRESET_RUNS
    curves = {n: curve(n) for n in what}
    steps = list(TABLE_STEPS)
    head = "| candidate | " + " | ".join(str(s) for s in steps) + " | what it tests |"
    lines = [head, "|" + "---|" * (len(steps) + 2)]
    for n, c in curves.items():
        if not c:
            continue
        cells = [f"{100 * c[s]:.1f}" if s in c else "–" for s in steps]
        lines.append(f"| `{n}` | " + " | ".join(cells) + f" | {what[n]} |")
    return ("Held-out accuracy (%) on the validation classes by training step (32 sequences, "
            "mean over the (t, τ ≤ t) pairs); `python benchmarks/cht_diagnosis.py`\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="candidates (default: all)")
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    unknown = set(a.names) - set(CANDIDATES)
    if unknown:
        sys.exit(f"unknown candidate(s) {sorted(unknown)}; choose from {sorted(CANDIDATES)}")
    if not a.table_only:
        with ThreadPoolExecutor(a.jobs) as pool:
            for line in pool.map(lambda n: run(n, a.steps, a.data_dir), a.names or CANDIDATES):
                print(line, flush=True)
    text = table()
    (OUT / "table.md").parent.mkdir(parents=True, exist_ok=True)
    (OUT / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
