"""Kill -9 drill: a training run SIGKILLed right after a checkpoint is written, and in the
middle of writing one, resumes (the same command into the same log dir) to the same model,
optimiser state, RNG states and metrics as an uninterrupted run, bit for bit; no checkpoint
file is ever half-written or missing.

The subprocesses run the real CLI (``hypertransformer.cli.main``) under ``python -c`` with a
hook (:data:`HOOK`) that pauses at the chosen moment of one checkpoint write and writes a
marker file; the test then SIGKILLs the process.  The product has no test-only switch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runcheck import assert_identical, metrics

from hypertransformer.training.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc are Linux")

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300.0  # seconds; generous, a subprocess takes a few on an idle machine

# glyphs_demo made tiny: 8 steps of 2 episodes, dropout (the RNG state must be restored), AdamW
# (optimiser state), a fast-decaying schedule, a metrics line every step (so every line's loss
# is that of one step and must match exactly) and a checkpoint every 2 steps (so a resume from
# the previous checkpoint redoes steps and trims metrics lines).
STEPS = 8
TRAIN_ARGS = [  # one process (--nproc 1): the hook lives in it
    "train", "--preset", "glyphs_demo", "--steps", str(STEPS), "--episodes-per-step", "2",
    "--nproc", "1", "--log-every", "1", "--no-progress",
    *(arg for kv in ("samples_cnn=10", "default_num_channels=4", "num_layerwise_features=4",
                     "embedding_dim=8", "num_layers=1", "heads=1", "dropout_rate=0.2",
                     "learning_rate_decay_rate=0.5", "learning_rate_decay_steps=4.0",
                     "steps_between_saves=2", "num_task_evals=4")
      for arg in ("--set", kv)),
]

# argv: MODE STEP MARKER CLI-ARGS...; MODE is "run" (no hook), "after-write" (pause once
# ckpt-STEP.pt has been renamed into place) or "mid-write" (write half of ckpt-STEP.pt's bytes
# into its temporary file, then pause).  Pausing writes MARKER and sleeps until killed.
HOOK = """
import io, os, sys, time
import torch
from hypertransformer.cli import main

mode, step, marker, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
target = f"ckpt-{step:08d}.pt"

def pause():
    with open(marker, "w") as f:
        f.write(mode)
    time.sleep(3600)

real_replace, real_save = os.replace, torch.save

def replace(src, dst, *a, **k):
    real_replace(src, dst, *a, **k)
    if os.path.basename(dst) == target:
        pause()

def save(obj, f, *a, **k):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
    if not name.startswith(".tmp-" + target):
        return real_save(obj, f, *a, **k)
    buffer = io.BytesIO()
    real_save(obj, buffer, *a, **k)
    data = buffer.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    pause()

if mode == "after-write":
    os.replace = replace
elif mode == "mid-write":
    torch.save = save
sys.exit(main(args))
"""


def _start(log_dir: Path, mode: str = "run", step: int = 0,
           marker: Path | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(
        [sys.executable, "-c", HOOK, mode, str(step), str(marker or os.devnull),
         *TRAIN_ARGS, "--log-dir", str(log_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> str:
    """Waits for a normal run; its stdout."""
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    return out


def _kill_at(log_dir: Path, mode: str, step: int, marker: Path) -> None:
    """Runs training until the hook pauses at ``step``'s checkpoint, then SIGKILLs it."""
    proc = _start(log_dir, mode, step, marker)
    try:
        deadline = time.monotonic() + DEADLINE
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{mode} hook never reached step {step}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _temporary_files(log_dir: Path) -> list[Path]:
    return sorted(p for p in checkpoint_dir(log_dir).iterdir() if p.name.startswith("."))


def _assert_all_load(log_dir: Path) -> None:
    """Every file in checkpoints/ but the writer's temporary files is a whole checkpoint."""
    for path in checkpoint_dir(log_dir).iterdir():
        if not path.name.startswith("."):
            load_checkpoint(path)


def _assert_same_state(path: Path, reference: Path) -> None:
    got, want = load_checkpoint(path), load_checkpoint(reference)
    for key in ("step", "episodes_seen", "best_accuracy", "model", "optimizer", "scheduler",
                "rng", "rank_rng"):
        assert_identical(got[key], want[key], f"{path.name}:{key}")


def test_sigkill_after_and_during_a_checkpoint_write_resumes_exactly(tmp_path: Path) -> None:
    reference, drilled = tmp_path / "reference", tmp_path / "drilled"
    uninterrupted = _start(reference)  # runs alongside the drill

    # (b) Killed halfway through writing ckpt-4: ckpt-2 is the latest, the half-written
    # temporary file is not a checkpoint.
    _kill_at(drilled, "mid-write", 4, tmp_path / "mid-write")
    assert [p.name for p in list_checkpoints(drilled)] == ["ckpt-00000002.pt"]
    assert load_checkpoint(latest_checkpoint(drilled))["step"] == 2
    [partial] = _temporary_files(drilled)
    assert partial.name.startswith(".tmp-ckpt-00000004.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(partial)
    _assert_all_load(drilled)
    assert [r["step"] for r in metrics(drilled)] == [1, 2, 3, 4]  # 3, 4 are past ckpt-2

    # (a) Resumed, then killed right after ckpt-6 is renamed into place (before the
    # directory fsync and the pruning): ckpt-6 is the latest and whole.
    _kill_at(drilled, "after-write", 6, tmp_path / "after-write")
    assert [p.name for p in list_checkpoints(drilled)] == [
        "ckpt-00000002.pt", "ckpt-00000004.pt", "ckpt-00000006.pt"]
    assert load_checkpoint(latest_checkpoint(drilled))["step"] == 6
    assert _temporary_files(drilled) == []  # the first save of the resume removed the partial
    _assert_all_load(drilled)

    # Resumed to the end: the same files, states and metrics as the uninterrupted run.
    assert f"finished at step {STEPS}" in _finish(_start(drilled))
    _finish(uninterrupted)
    names = sorted(p.name for p in checkpoint_dir(reference).iterdir())
    assert names == ["best.pt", "ckpt-00000004.pt", "ckpt-00000006.pt", "ckpt-00000008.pt"]
    assert sorted(p.name for p in checkpoint_dir(drilled).iterdir()) == names
    for name in names:
        _assert_same_state(checkpoint_dir(drilled) / name, checkpoint_dir(reference) / name)
    assert metrics(drilled) == metrics(reference)
    assert [r["step"] for r in metrics(reference)] == list(range(1, STEPS + 1))
    assert json.loads((drilled / "done.json").read_text()) == {"step": STEPS, "finished": True}
