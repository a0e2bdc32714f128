"""Short diagnostic training runs, shared by cht_diagnosis.py and chance_departure.py.

A run trains a preset with ``--set`` overrides for a fixed number of steps in one 1-thread
process (``--nproc 1``), so that two runs can share the 2 cores and their figures (held-out
accuracy by step) do not depend on the machine's load.  Its config, metrics and log are copied
to an output folder kept in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


def train(preset: str, stages: list[tuple[int, list[str]]], data_dir: str, log_dir: Path,
          out: Path, log_every: int = 100) -> int:
    """Trains ``preset`` in ``log_dir`` through ``stages`` (``(until_step, overrides)``, each
    resuming the previous), logging to ``out/train.log``; copies config and metrics to ``out``.
    Returns the first non-zero exit code (0: every stage finished)."""
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = 0
    with open(out / "train.log", "w") as log:
        for until, sets in stages:
            cmd = ["hypertransformer", "train", "--preset", preset, "--data-dir", data_dir,
                   "--log-dir", str(log_dir), "--steps", str(until), "--nproc", "1",
                   "--no-progress", "--log-every", str(log_every), "--dtype", "fp32"]
            for o in sets:
                cmd += ["--set", o]
            log.write(" ".join(cmd) + "\n")
            log.flush()
            code = code or subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    for f in ("config.json", "metrics.jsonl"):
        if (log_dir / f).exists():
            shutil.copy(log_dir / f, out / f)
    return code


def records(metrics: Path) -> list[dict]:
    """The lines of a ``metrics.jsonl`` (missing file: none)."""
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def curve(metrics: Path, key: str = "heldout_accuracy") -> dict[int, float]:
    """``key`` by step of a ``metrics.jsonl``."""
    return {r["step"]: r[key] for r in records(metrics) if key in r}
