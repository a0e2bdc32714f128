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

from pathlib import Path

import short_runs

OUT = Path("docs/results/cht_diagnosis")
TASK = "cht_omniglot_task"
# The CHT recipe before this diagnosis (the presets' then): no residual, no warm start, the
# original schedule (0.95 per 100k steps); every candidate of TASK starts from it.
BEFORE = ["cht_residual=false", "init_checkpoint=", "learning_rate_decay_rate=0.95",
          "learning_rate_decay_steps=100000", "cht_residual_scale=0"]
# The converged ConstPN that residual_from_constpn starts from (docs/results.md, "Converged
# baselines": its training command).
CONSTPN = "runs/constpn_omniglot"

# The presets' residual CHT from the shipped ConstPN (undoing BEFORE), on one-task sequences,
# the learning rate decaying tenfold over 2,000 steps.
_FROM_CONSTPN = ["cht_residual=true", "init_checkpoint=constpn_omniglot", "cht_tasks=1",
                 "learning_rate_decay_rate=0.1", "learning_rate_decay_steps=2000"]

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
    # Is there any headroom for generation over the converged ConstPN?  One-task sequences
    # (no chain, nothing to forget): the residual CHT started from constpn_omniglot, α from
    # 0.01 or 0.1; compared with ConstPN on 2,048 validation tasks (docs/continual.md).
    **{f"headroom_L1{suffix}": (TASK, [*_FROM_CONSTPN, f"cht_residual_scale={alpha}"],
                               f"one-task sequences from the converged ConstPN, α from {alpha}")
       for suffix, alpha in (("", 0.01), ("_alpha0.1", 0.1))},
    # The same at 32 channels, from a 32-channel ConstPN (its command: results/cht_diagnosis/
    # constpn32/train.log)
    "headroom32_L1_alpha0.1": (TASK, [*_FROM_CONSTPN, "cht_residual_scale=0.1",
                                      "default_num_channels=32",
                                      "init_checkpoint=runs/constpn32_omniglot/checkpoints/"
                                      "best.pt", "learning_rate_decay_steps=1000"],
                               "one-task sequences from a 32-channel ConstPN, α from 0.1"),
}
# Candidates trained in two stages in one log dir (resumed): the overrides of the first half.
FIRST_HALF: dict[str, list[str]] = {"warm_start_L1": ["cht_tasks=1"]}


def run(name: str, steps: int, data_dir: str) -> str:
    preset, overrides, _ = CANDIDATES[name]
    overrides = (BEFORE if preset == TASK else []) + overrides
    stages = [(steps, overrides)]
    if name in FIRST_HALF:
        stages.insert(0, (steps // 2, overrides + FIRST_HALF[name]))
    code = short_runs.train(preset, stages, data_dir, Path("runs/cht_diagnosis") / name,
                            OUT / name)
    return f"{name}: exit {code}"


# Saved beside the candidates but trained by the presets' commands (docs/continual.md): the
# first ~1,100 steps of the warm-started presets with α starting at exactly 0.
PRESET_RUNS: dict[str, str] = {
    f"alpha0_warm_{s}": f"`cht_omniglot_{s}` with `cht_residual_scale=0` (α = 0 at the start), "
                        f"{s}-incremental" for s in ("task", "class", "minibatch")}
TABLE_STEPS = range(100, 900, 100)


def table() -> str:
    what = {n: c[2] for n, c in CANDIDATES.items()} | PRESET_RUNS
    curves = {n: short_runs.curve(OUT / n / "metrics.jsonl") for n in what}
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
    short_runs.command_line(
        __doc__, CANDIDATES, lambda name, a: run(name, a.steps, a.data_dir), table, OUT,
        lambda p: p.add_argument("--steps", type=int, default=600))


if __name__ == "__main__":
    main()
