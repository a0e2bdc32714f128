"""Learning curves of a log directory as PNG files (matplotlib, Agg backend).

Reads ``<log_dir>/metrics.jsonl`` (the trainer's lines: ``step, episodes, wall_time, loss,
accuracy, heldout_accuracy`` ...) and any evaluation records ``<log_dir>/eval/*.json`` and
writes two figures, each with a loss panel and an accuracy panel (training accuracy, held-out
accuracy, the evaluated checkpoints with their 95% intervals, and the chance level ``1/N``
when ``<log_dir>/config.json`` gives ``N``):

* ``curves_episodes.png``: against training episodes,
* ``curves_time.png``: against training wall-clock time (seconds spent training);

and, for the last continual (CHT/ProtoNet) record of each split (and evaluation variant),
``continual_<split>-<step>[-<variant>].png``
(:func:`plot_continual`: the accuracy matrix as a heatmap and the curves of A[t, τ] over t).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hypertransformer.evaluation.evaluator import EVAL_DIR

PLOT_DIR = "plots"


# Keys the figures need on every metrics line.
METRICS_KEYS = ("step", "episodes", "wall_time")


def read_metrics(log_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``<log_dir>/metrics.jsonl``.  A half-written last line (a run in progress,
    or killed) is left out with a warning on stderr; a bad line before it is a ValueError."""
    path = Path(log_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {log_dir} a training log dir?)")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip()]
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except ValueError as e:
            if n == lines[-1][0]:
                print(f"warning: {path}: line {n} is incomplete (a run in progress?); "
                      f"plotting the {len(rows)} lines before it", file=sys.stderr)
                break
            raise ValueError(f"{path}: line {n} is not JSON ({e}); delete or repair that "
                             f"line") from e
        if not (isinstance(row, dict) and all(k in row for k in METRICS_KEYS)):
            raise ValueError(f"{path}: line {n} is not a metrics line (it lacks one of "
                             f"{', '.join(METRICS_KEYS)}); delete or repair that line")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no metrics yet")
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not JSON ({e}); delete it or write it again") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object; delete it or write it again")
    return value


def read_records(log_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation records of ``log_dir``, sorted by split and step."""
    records = []
    for path in sorted((Path(log_dir) / EVAL_DIR).glob("*.json")):
        record = _read_json(path)
        if not all(k in record for k in ("split", "step", "accuracy", "ci95")):
            raise ValueError(f"{path} is not an evaluation record; delete it or evaluate "
                             f"that checkpoint again")
        records.append(record)
    return sorted(records, key=lambda r: (r["split"], r["step"]))


def _series(rows: list[dict[str, Any]], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    have = [r for r in rows if r.get(key) is not None]
    return (np.array([r[x] for r in have], dtype=float),
            np.array([r[key] for r in have], dtype=float))


def _smooth(y: np.ndarray) -> np.ndarray:
    """Moving average over ~1/50 of the points (edges averaged over fewer points)."""
    width = max(1, len(y) // 50)
    if width == 1:
        return y
    kernel = np.ones(width)
    return np.convolve(y, kernel, "same") / np.convolve(np.ones_like(y), kernel, "same")


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds > 3 * 3600:
        return "hours", 3600.0
    if seconds > 180:
        return "minutes", 60.0
    return "seconds", 1.0


def plot_log_dir(log_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Writes the figures of the module docstring to ``out_dir`` (default
    ``<log_dir>/plots``); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    rows = read_metrics(log_dir)
    records = read_records(log_dir)
    out = Path(out_dir) if out_dir is not None else Path(log_dir) / PLOT_DIR
    out.mkdir(parents=True, exist_ok=True)
    steps = np.array([r["step"] for r in rows], dtype=float)
    config_path = Path(log_dir) / "config.json"
    num_labels = _read_json(config_path).get("num_labels") if config_path.is_file() else None

    unit, scale = _time_unit(max(r["wall_time"] for r in rows))
    paths = []
    for x, label, name in [("episodes", "training episodes", "curves_episodes.png"),
                           ("wall_time", f"training time ({unit})", "curves_time.png")]:
        div = scale if x == "wall_time" else 1.0
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        xs, loss = _series(rows, "loss", x)
        marker = "." if len(rows) < 30 else None
        ax_loss.plot(xs / div, loss, color="C0", alpha=0.3 if len(loss) > 50 else 1.0,
                     marker=marker)
        if len(loss) > 50:
            ax_loss.plot(xs / div, _smooth(loss), color="C0", label="smoothed")
            ax_loss.legend()
        ax_loss.set(xlabel=label, ylabel="training loss", title="Loss")

        for key, name_, color in [("accuracy", "train (query)", "C0"),
                                  ("heldout_accuracy", "held-out episodes", "C1")]:
            xs, acc = _series(rows, key, x)
            if len(acc):
                ax_acc.plot(xs / div, acc, color=color, label=name_, marker=marker)
        xs_all = np.array([r[x] for r in rows], dtype=float)
        for i, split in enumerate(sorted({r["split"] for r in records})):
            mine = [r for r in records if r["split"] == split]
            at = np.interp([r["step"] for r in mine], steps, xs_all) / div
            ax_acc.errorbar(at, [r["accuracy"] for r in mine], yerr=[r["ci95"] for r in mine],
                            fmt="o", capsize=3, color=f"C{2 + i}",
                            label=f"{split} evaluation (95% CI)")
        if num_labels:
            ax_acc.axhline(1.0 / num_labels, color="gray", linestyle="--",
                           label=f"chance (1/{num_labels})")
        ax_acc.set(xlabel=label, ylabel="accuracy", title="Accuracy")
        if x == "episodes":  # 150k, 1.5M: long tick labels would run into each other
            for ax in (ax_loss, ax_acc):
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax_acc.grid(alpha=0.3)
        ax_acc.legend()
        ax_loss.grid(alpha=0.3)
        fig.suptitle(str(log_dir))
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    latest: dict[tuple[str, str], dict[str, Any]] = {}  # per split and variant: the last
    for record in records:
        if "accuracy_matrix" in record:
            latest[record["split"], record.get("variant", "")] = record
    for (split, variant), record in sorted(latest.items()):
        suffix = f"-{variant}" if variant else ""
        paths.append(plot_continual(
            record, out / f"continual_{split}-{record['step']:08d}{suffix}.png"))
    return paths


def plot_continual(record: dict[str, Any], path: Path) -> Path:
    """A continual evaluation record as two panels, in the style of the CHT paper's figures:
    the accuracy matrix A[t, τ] as a heatmap (row t: after learning task t), and the curves
    of A[t, τ] over t for each task τ with their 95% intervals (the trained sequence length
    marked)."""
    import matplotlib.pyplot as plt

    rows, cis = record["accuracy_matrix"], record["ci95_matrix"]
    n = len(rows)
    matrix = np.full((n, n), np.nan)
    for t, row in enumerate(rows):
        matrix[t, :t + 1] = row
    fig, (ax_map, ax_curves) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    image = ax_map.imshow(100 * matrix, cmap="viridis", origin="upper")
    if n <= 12:
        for t in range(n):
            for tau in range(t + 1):
                ax_map.text(tau, t, f"{100 * matrix[t, tau]:.0f}", ha="center", va="center",
                            fontsize=8, color="white")
    ax_map.set(xlabel="task τ (queries)", ylabel="after learning task t",
               title="accuracy A[t, τ] (%)", xticks=range(n), yticks=range(n))
    fig.colorbar(image, ax=ax_map, shrink=0.8)
    cmap = plt.get_cmap("viridis")
    for tau in range(n):
        ts = np.arange(tau, n)
        acc = np.array([rows[t][tau] for t in ts])
        ci = np.array([cis[t][tau] for t in ts])
        color = cmap(tau / max(1, n - 1))
        ax_curves.plot(ts, 100 * acc, marker="o", color=color, label=f"task {tau}")
        ax_curves.fill_between(ts, 100 * (acc - ci), 100 * (acc + ci), color=color, alpha=0.15)
    trained = record.get("trained_tasks_per_sequence")
    if trained and trained < n:
        ax_curves.axvline(trained - 0.5, color="gray", linestyle=":",
                          label=f"trained length ({trained})")
    ax_curves.axhline(100 * record["chance"], color="gray", linestyle="--", label="chance")
    ax_curves.set(xlabel="tasks learned (t)", ylabel="accuracy on task τ (%)",
                  title="A[t, τ] as tasks arrive", xticks=range(n))
    ax_curves.grid(alpha=0.3)
    ax_curves.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{record['model_type']} {record['scenario']}-incremental, "
                 f"{record['dataset']}, step {record['step']}: final "
                 f"{100 * record['final_accuracy']:.1f}%")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
