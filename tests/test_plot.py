"""``hypertransformer plot``: PNG learning curves from metrics.jsonl (and eval records)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from hypertransformer.cli import main as cli_main
from hypertransformer.evaluation.plot import plot_log_dir, read_metrics, read_records


def fake_log_dir(root: Path, rows: int = 120) -> Path:
    """metrics.jsonl as the trainer writes it (held-out accuracy on every 10th line), a
    config.json and two evaluation records."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metrics.jsonl", "w") as f:
        for i in range(1, rows + 1):
            row = {"step": 10 * i, "episodes": 20 * i, "wall_time": 3.0 * i,
                   "loss": 2.0 * math.exp(-i / 40), "accuracy": 1 - 0.8 * math.exp(-i / 40),
                   "lr": 0.02, "episodes_per_s": 6.7}
            if i % 10 == 0:
                row["heldout_accuracy"] = 0.9 - 0.7 * math.exp(-i / 40)
            f.write(json.dumps(row) + "\n")
    (root / "config.json").write_text(json.dumps({"num_labels": 5}))
    (root / "eval").mkdir()
    for step, acc in [(500, 0.6), (1200, 0.8)]:
        record = {"split": "test", "step": step, "accuracy": acc, "ci95": 0.02}
        (root / "eval" / f"test-{step:08d}.json").write_text(json.dumps(record))
    return root


def test_plot_writes_pngs(tmp_path):
    log_dir = fake_log_dir(tmp_path / "run")
    paths = plot_log_dir(log_dir)
    assert [p.name for p in paths] == ["curves_episodes.png", "curves_time.png"]
    for path in paths:
        assert path.parent == log_dir / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200
            # not a blank canvas: the curves put many distinct colours on it
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20


def test_plot_command_prints_paths(tmp_path, capsys):
    log_dir = fake_log_dir(tmp_path / "run", rows=3)
    assert cli_main(["plot", str(log_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "curves_episodes.png"),
                       str(tmp_path / "out" / "curves_time.png")]
    assert all(Path(p).is_file() for p in printed)


def test_readers(tmp_path):
    log_dir = fake_log_dir(tmp_path / "run", rows=12)
    rows = read_metrics(log_dir)
    assert len(rows) == 12 and rows[-1]["step"] == 120
    assert sum("heldout_accuracy" in r for r in rows) == 1
    assert [r["step"] for r in read_records(log_dir)] == [500, 1200]


def test_plot_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_log_dir(tmp_path)
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metrics"):
        plot_log_dir(tmp_path)
