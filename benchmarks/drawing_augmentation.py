"""Which training choices make an Omniglot HT generalise to other drawings (issue 25)?

Short runs of ``omniglot_1shot_cpu`` (``--steps`` steps, the learning rate decaying tenfold
over them, one 1-thread process each: ``short_runs.py``), with and without the drawing
augmentations (``stroke_*``, ``warp_*``: data.augment.augment_drawings) and ink framing
(``frame_ink``: data.framing).  Each run's last checkpoint is then measured on the
**validation** part of the cross-domain benchmark (``cross_domain.py --part val``: glyphs,
Omniglot validation classes as drawn and redrawn, scikit-learn digits), never its test part.

    python benchmarks/drawing_augmentation.py --data-dir ../shared/data/omniglot [--jobs 2] \\
        [--steps 3000] [--tasks 100] [NAME ...]
    python benchmarks/drawing_augmentation.py --table-only

Output: docs/results/drawing_augmentation/<name>/{config.json,metrics.jsonl,train.log,
cross_domain_val.md} and docs/results/drawing_augmentation/table.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cross_domain
import short_runs
import torch

OUT = Path("docs/results/drawing_augmentation")
STROKE = ["stroke_probability=0.5", "stroke_max_width=2.0"]
WARP = ["warp_probability=0.5", "warp_scale=0.3", "warp_shift=0.1", "warp_elastic=1.5"]
FRAME = ["frame_ink=true"]
RUNS: dict[str, list[str]] = {
    "plain": [],
    "stroke+warp": STROKE + WARP,
    "frame": FRAME,
    "frame+stroke+warp": FRAME + STROKE + WARP,
}
SHOTS = [1, 5, 10]


def run(name: str, a: argparse.Namespace) -> str:
    sets = [*RUNS[name], f"learning_rate_decay_steps={a.steps}"]
    log_dir = Path("runs/drawing_augmentation") / name
    code = short_runs.train("omniglot_1shot_cpu", [(a.steps, sets)], a.data_dir, log_dir,
                            OUT / name, log_every=500)
    if code:
        return f"{name}: training exit {code}"
    table = cross_domain.run("val", a.data_dir, a.tasks, 10, 10, SHOTS,
                             [str(log_dir / "checkpoints" / f"ckpt-{a.steps:08d}.pt")],
                             ["omniglot", *cross_domain.DOMAINS], baselines=False)
    (OUT / name / "cross_domain_val.md").write_text(table)
    return f"{name}: done"


def cells(name: str) -> dict[str, list[float]]:
    """domain -> accuracy % at each shot count, from a run's saved cross_domain_val.md."""
    path = OUT / name / "cross_domain_val.md"
    if not path.exists():
        return {}
    rows = [line.split("|")[1:-1] for line in path.read_text().splitlines()[2:]]
    return {r[0].strip(): [float(re.match(r"\s*([\d.]+)", c).group(1)) for c in r[2:]]
            for r in rows}


def table() -> str:
    runs = {n: cells(n) for n in RUNS}
    domains = next((list(c) for c in runs.values() if c), [])
    head = "| run | " + " | ".join(domains) + " | mean of the other domains |"
    lines = [f"10-way val-part accuracy (%) at {'/'.join(map(str, SHOTS))} shots; the last "
             "column averages every domain but `omniglot` (Omniglot's validation classes as "
             "drawn).", "", head, "|" + "---|" * (len(domains) + 2)]
    for name, c in runs.items():
        if not c:
            continue
        other = [c[d] for d in domains if d != "omniglot"]
        mean = [sum(col) / len(col) for col in zip(*other, strict=True)]
        lines.append(f"| {name} | " + " | ".join("/".join(f"{v:.1f}" for v in c[d])
                                                  for d in domains)
                     + " | " + "/".join(f"{v:.1f}" for v in mean) + " |")
    return "\n".join(lines) + "\n"


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--tasks", type=int, default=100, help="cross-domain tasks per cell")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the evaluations share the cores with the other job
    short_runs.command_line(__doc__, RUNS, run, table, OUT, options)
