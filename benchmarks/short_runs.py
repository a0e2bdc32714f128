"""Short diagnostic training runs, shared by cht_diagnosis.py and chance_departure.py.

A run trains a preset with ``--set`` overrides for a fixed number of steps in one 1-thread
process (``--nproc 1``), so that two runs can share the 2 cores and their figures (held-out
accuracy by step) do not depend on the machine's load.  Its config, metrics and log are copied
to an output folder kept in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
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


def command_line(doc: str, known: Collection[str], run: Callable[[str, argparse.Namespace], str],
                 table: Callable[[], str], out: Path,
                 more: Callable[[argparse.ArgumentParser], object] | None = None) -> None:
    """A diagnosis script's command line: trains the named runs (default: all ``known``),
    ``--jobs`` at a time, unless ``--table-only``; then writes ``table()`` to
    ``out/table.md`` and prints it.  ``more`` adds the script's own options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="runs (default: all)")
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--table-only", action="store_true")
    if more is not None:
        more(p)
    a = p.parse_args()
    unknown = set(a.names) - set(known)
    if unknown:
        sys.exit(f"unknown run(s) {sorted(unknown)}; choose from {sorted(known)}")
    if not a.table_only:
        with ThreadPoolExecutor(a.jobs) as pool:
            for line in pool.map(lambda n: run(n, a), a.names or list(known)):
                print(line, flush=True)
    text = table()
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print(text)
