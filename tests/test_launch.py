"""Training on every core: the ``train`` commands start their own ranks (training/launch.py).

The runs go through the real commands (in a subprocess where the test signals the command, in
this process otherwise; the ranks are always processes of their own), on a tiny
``glyphs_demo`` with 3 episodes per step on 2 processes (shares of 2 and 1, so that the
weighting of uneven shares is tested): a step equals, to float rounding, one process's step on
the union of the ranks' episodes; Ctrl-C to the command saves one checkpoint and every rank
exits with 130; the resumed run equals an uninterrupted one bit for bit; a rank killed with
SIGKILL, or failing, ends the run with one error line and no process left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ranks import UnionSampler
from runcheck import assert_identical, metrics

from hypertransformer import cli
from hypertransformer import train as train_module
from hypertransformer.config import Config
from hypertransformer.training import (
    latest_checkpoint,
    launch,
    list_checkpoints,
    load_checkpoint,
    train,
)
from hypertransformer.training import trainer as trainer_module
from hypertransformer.training.distributed import shard_sizes

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform != "linux", reason="/proc lists a process's children"),
]

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300.0  # seconds; generous, starting the ranks takes a few on an idle machine
T, NPROC = 3, 2
# glyphs_demo made tiny; no dropout and plain SGD, so that one process on the union of the
# ranks' episodes makes the same updates up to rounding (docs/distributed.md); fp32 on every
# host (bf16 rounding depends on the batch shapes, which differ between the two).
TINY = ["--episodes-per-step", str(T), "--nproc", str(NPROC), "--log-every", "1",
        "--no-progress", "--dtype", "fp32",
        *(arg for kv in ("samples_cnn=10", "default_num_channels=4", "num_layerwise_features=4",
                         "embedding_dim=8", "num_layers=1", "heads=1", "optimizer=sgd",
                         "learning_rate=0.05", "steps_between_saves=1000")
          for arg in ("--set", kv))]



def arguments(log_dir: Path, steps: int) -> list[str]:
    return ["train", "--preset", "glyphs_demo", "--log-dir", str(log_dir), "--steps",
            str(steps), *TINY]


def command(log_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "hypertransformer.cli", *arguments(log_dir, steps)]


def start(argv: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def ranks_of(proc: subprocess.Popen[str], log_dir: Path) -> dict[int, int]:
    """``{rank: pid}`` of the command's ranks, once the first metrics line is written."""
    deadline = time.monotonic() + DEADLINE
    while not ((log_dir / "metrics.jsonl").exists()
               and (log_dir / "metrics.jsonl").read_text().endswith("\n")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    ranks = {}
    for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks[int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])] = int(pid)
    assert sorted(ranks) == list(range(NPROC))
    return ranks


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_step_on_two_processes_is_a_step_of_one_process_on_the_union(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which episodes each rank draws, and the weighting of the uneven shares (2 and 1): the
    first step's parameters are those of one process on the ranks' episodes.  (One step: later
    on, a rounding difference can flip a discrete choice, e.g. of a max-pool between nearly
    equal values, and the runs drift apart by more than rounding; docs/distributed.md.)"""
    two, union_dir = tmp_path / "two", tmp_path / "union"
    assert cli.main(arguments(two, 1)) == 0  # the command in this process, its ranks not
    config = Config.from_dict(json.loads((two / "config.json").read_text()))
    assert config.episodes_per_step == T

    monkeypatch.setattr(trainer_module, "rank_sampler",
                        lambda data, cfg, rank: UnionSampler(data, cfg, NPROC))
    union_config = config.replace(train_log_dir=str(union_dir))
    train(union_config, union_dir, progress=False, log_every=1, max_steps=0)  # the start
    initial = load_checkpoint(latest_checkpoint(union_dir))["model"]
    train(union_config, union_dir, progress=False, log_every=1)
    union = load_checkpoint(latest_checkpoint(union_dir))["model"]
    first = load_checkpoint(latest_checkpoint(two))
    assert first["step"] == 1 and len(first["rank_rng"]) == NPROC - 1
    moved = 0.0
    for k, v in union.items():
        torch.testing.assert_close(first["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, (v - initial[k]).abs().max().item())
    assert moved > 1e-3  # the step moved the parameters well beyond the tolerance
    [a], [b] = metrics(two), metrics(union_dir)
    assert a["episodes"] == b["episodes"] == T  # T episodes per step in total
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # weighted over the ranks
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)


def test_ctrl_c_saves_once_and_the_resumed_run_is_exact(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    stopped_dir, straight_dir = tmp_path / "stopped", tmp_path / "straight"

    # 1. Ctrl-C reaches the command alone (the ranks have sessions of their own): it passes it
    # on, the ranks finish the step, rank 0 saves one checkpoint, every process exits with 130.
    proc = start(command(stopped_dir, 1000))
    ranks = ranks_of(proc, stopped_dir)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "Traceback" not in err and ": error: " not in err, err
    assert out.startswith(f"training on {NPROC} processes"), out
    assert out.count("interrupted at step") == 1, out  # rank 0 alone reports
    assert all(gone(pid) for pid in ranks.values())
    state = load_checkpoint(latest_checkpoint(stopped_dir))
    stopped = state["step"]
    assert f"interrupted at step {stopped}" in out
    assert [p.name for p in list_checkpoints(stopped_dir)] == [f"ckpt-{stopped:08d}.pt"]
    assert state["episodes_seen"] == T * stopped  # T episodes per step in total
    assert len(state["rank_rng"]) == NPROC - 1 and set(state["rank_rng"][0]) == {
        "torch", "python", "numpy", "train_sampler"}

    # 2. Resumed to two steps further, it equals an uninterrupted run bit for bit (this time
    # the command runs in the test's process; its ranks write to the same stdout).
    end = stopped + 2
    assert cli.main(arguments(stopped_dir, end)) == 0
    assert f"finished at step {end}" in capfd.readouterr().out
    assert cli.main(arguments(straight_dir, end)) == 0
    resumed = load_checkpoint(latest_checkpoint(stopped_dir))
    straight = load_checkpoint(latest_checkpoint(straight_dir))
    for key in ("model", "optimizer", "scheduler", "rng", "rank_rng", "episodes_seen"):
        assert_identical(resumed[key], straight[key], key)
    assert metrics(stopped_dir) == metrics(straight_dir)


def test_a_finished_run_and_a_finished_resumed_run_exit_cleanly(tmp_path: Path) -> None:
    """Every rank of a run that reaches ``train_steps`` (with a held-out evaluation at the last
    step) exits cleanly, resumed or not, and so the command exits with 0.  (Regression: a
    rank's thread watching the launcher blocked in ``sys.stdin.buffer.read()``, holding the
    reader's lock; the interpreter's exit, which closes ``sys.stdin``, could not take it and
    aborted every rank with SIGABRT after the run had finished.)"""
    log_dir = tmp_path / "run"
    for steps in (1, 2):  # 2 resumes the checkpoint of step 1
        code, out, err = finish(start(command(log_dir, steps)))
        assert code == 0, (out, err)
        assert f"finished at step {steps}" in out, out
        assert "Fatal Python error" not in err and "SIGABRT" not in err, err
        assert "killed" not in err and ": error: " not in err, err
        assert load_checkpoint(latest_checkpoint(log_dir))["step"] == steps


def test_a_killed_rank_ends_the_run_with_one_error_line(tmp_path: Path) -> None:
    log_dir = tmp_path / "run"
    proc = start(command(log_dir, 100_000))
    ranks = ranks_of(proc, log_dir)
    os.kill(ranks[1], signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 2, (out, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert [line for line in lines if ": error: " in line] == lines[-1:], err
    assert lines[-1] == (
        f"hypertransformer train: error: rank 1 of 2 (pid {ranks[1]}) was killed by SIGKILL; "
        f"the other ranks were stopped. The last checkpoint in {log_dir} is kept: run the same "
        f"command to resume")
    assert all(gone(pid) for pid in ranks.values())  # rank 0 does not hang in a collective


def test_an_error_on_the_ranks_is_one_line(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """The ranks of ``python -m hypertransformer.train --nproc=2`` diverge together: the
    command prints the error once."""
    log_dir = tmp_path / "run"
    flags = [f"--train_log_dir={log_dir}", "--train_dataset=glyphs:train",
             "--test_dataset=glyphs:test", "--num_labels=5", "--samples_transformer=5",
             "--samples_cnn=10", "--embedding_dim=8", "--num_layers=1", "--heads=1",
             "--default_num_channels=4", "--num_layerwise_features=4",
             "--shared_feature_extractor=2-layer", "--shared_features_dim=8",
             "--episodes_per_step=2", "--train_steps=5", "--learning_rate=1e30", "--nproc=2"]
    code = train_module.main(flags)
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err, err
    assert "training on 2 processes" in out
    lines = err.splitlines()
    assert [line for line in lines if ": error: " in line] == lines[-1:], err
    assert lines[-1].startswith("hypertransformer.train: error: the loss is nan at step ")


def test_a_rank_that_aborts_after_its_message_reports_the_message(tmp_path: Path) -> None:
    """A rank may write its error message and then abort while its process exits (once in CI:
    gloo's ``terminate called without an active exception``, SIGABRT): the command's error is
    still the message, not the abort."""
    ranks = launch._Ranks(launch.Job(Config(train_log_dir=str(tmp_path / "run"))), 2, tmp_path)
    ranks.procs = [SimpleNamespace(poll=lambda c=c: c, returncode=c, pid=100 + r)
                   for r, c in enumerate([None, -signal.SIGABRT])]
    assert ranks._watch() == (1, None)
    assert ranks._describe(1, None).startswith("rank 1 of 2 (pid 101) was killed by SIGABRT;")
    (tmp_path / "rank1.error").write_text("the loss is nan at step 1; lower learning_rate")
    assert ranks._describe(1, None) == "the loss is nan at step 1; lower learning_rate"


def test_shard_sizes() -> None:
    assert shard_sizes(8, 2) == [4, 4]
    assert shard_sizes(3, 2) == [2, 1]
    assert shard_sizes(7, 3) == [3, 2, 2]
    assert shard_sizes(5, 1) == [5]
    with pytest.raises(ValueError, match="1 episode.s. per step cannot be split over 2 "
                                         "processes"):
        shard_sizes(1, 2)


@pytest.fixture()
def launched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many processes :func:`launch.run_training` would train on (1: in this
    process), without training."""
    seen: list[int] = []

    class Ranks:
        def __init__(self, job: launch.Job, n: int, run_dir: Path) -> None:
            seen.append(n)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(launch, "_Ranks", Ranks)
    monkeypatch.setattr(launch, "load_split", lambda config, split: None)
    monkeypatch.setattr(launch.Job, "run", lambda self: seen.append(1) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return seen


def test_how_many_processes(launched: list[int], monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    job = launch.Job(Config(episodes_per_step=8))
    monkeypatch.setattr(launch, "usable_cores", lambda: 4)
    for nproc, episodes, expected in [(None, 8, 4), (None, 2, 2), (None, 1, 1), (1, 8, 1),
                                      (3, 8, 3), (6, 8, 6)]:
        launch.run_training(dataclasses.replace(
            job, config=job.config.replace(episodes_per_step=episodes)), nproc)
        assert launched.pop() == expected, (nproc, episodes)
    assert "8 episodes per step, 2 or 1 per process" in capsys.readouterr().out  # (6, 8)

    refusals = [(0, {}, "--nproc must be at least 1; got 0"),
                (3, {"episodes_per_step": 2}, "2 episode(s) per step cannot be split over 3"),
                (2, {"device": "cuda"}, "--nproc 2 starts CPU processes; on GPUs use torchrun")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for nproc, fields, text in refusals:
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
            launch.run_training(dataclasses.replace(job, config=job.config.replace(**fields)),
                                nproc)
    launch.run_training(dataclasses.replace(job, config=job.config.replace(device="cuda")))
    assert launched == [1]  # a GPU keeps its one process (torchrun for several)

    monkeypatch.setenv("WORLD_SIZE", "2")  # a rank of torchrun's
    launch.run_training(job)
    assert launched == [1, 1]
    with pytest.raises(ValueError, match="this process is a rank already"):
        launch.run_training(job, 2)


def test_nproc_flag_of_the_original_binary() -> None:
    split = train_module.split_nproc
    assert split(["--a=1", "--nproc=3", "--b"]) == (3, ["--a=1", "--b"])
    assert split(["--nproc", "2", "-seed=1"]) == (2, ["-seed=1"])
    assert split(["-nproc=1"]) == (1, [])
    assert split(["--seed=1", "--", "--nproc=2"]) == (None, ["--seed=1", "--", "--nproc=2"])
    with pytest.raises(ValueError, match="flag --nproc needs a value"):
        split(["--nproc"])
    with pytest.raises(ValueError, match="nproc expects int; got 'x'"):
        split(["--nproc=x"])
