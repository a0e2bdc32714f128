"""``hypertransformer demo``: trains glyphs_demo offline for a time budget, then evaluates."""

from __future__ import annotations

import json
import re

from hypertransformer.cli import main as cli_main
from hypertransformer.evaluation import cli as evaluation_cli
from hypertransformer.evaluation.cli import DEMO_BATCHES
from hypertransformer.training import latest_checkpoint

WARMUP = 4  # fewer warm-up steps than the demo's 20, to keep the test short


def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation_cli, "DEMO_WARMUP_STEPS", WARMUP)
    log_dir = tmp_path / "demo"
    assert cli_main(["demo", "--minutes", "0.2", "--log-dir", str(log_dir), "--tasks", "4"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"test accuracy (\d+\.\d\d)% ± (\d+\.\d\d)% \(95% CI\) at step (\d+); "
                     r"chance 20\.00% \(1/5\); 4 tasks × 4 batches × 100 queries of "
                     r"glyphs:test", out)
    assert line, out
    step = int(line[3])
    assert step >= WARMUP
    assert 0 <= float(line[1]) <= 100 and float(line[2]) >= 0
    assert latest_checkpoint(log_dir).name == f"ckpt-{step:08d}.pt"
    record = json.loads((log_dir / "eval" / f"test-{step:08d}.json").read_text())
    assert record["dataset"] == "glyphs:test" and record["num_batches"] == DEMO_BATCHES
    assert abs(record["accuracy"] * 100 - float(line[1])) <= 0.005 + 1e-9  # printed rounded
    assert (log_dir / "metrics.jsonl").read_text().strip()
    assert f"hypertransformer plot {log_dir}" in out and "tensorboard --logdir" in out


def test_demo_rejects_bad_budget(capsys):
    assert cli_main(["demo", "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err
