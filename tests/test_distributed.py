"""Data-parallel training: two CPU ranks (gloo, launched by torchrun) against one process.

``python -m torch.distributed.run --nproc_per_node=2`` runs this file as a script (see
:func:`worker`): each rank calls ``hypertransformer.train.main`` with the original flags, as
``torchrun -m hypertransformer.train`` would, and then saves its final parameters so that the
test can compare the ranks.  The run is stopped by a SIGINT to torchrun (as Ctrl-C would) and
resumed to completion; up to the stop, the run must equal one process that takes, every step,
the union of the two ranks' episodes (3 per step in total: shares of 2 and 1).  The ranks the
``train`` commands start themselves are tested in tests/test_launch.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ranks import UnionSampler

from hypertransformer import cli, presets
from hypertransformer.config import Config
from hypertransformer.training import latest_checkpoint, launch, load_checkpoint, train
from hypertransformer.training import trainer as trainer_module
from hypertransformer.training.distributed import RANK_SEED_STRIDE, rank_seed

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
RANKS = 2
T = 3  # episodes per step, in total
# Tiny 5-way 1-shot; no dropout (a rank's dropout masks cannot be reproduced by one process,
# see docs/distributed.md) and plain SGD with a small learning rate (an update linear in the
# gradient, so float rounding differences between the two ways of batching stay at rounding
# level for the first steps; later, a rounding difference can flip a discrete choice, e.g. of a
# max-pool between nearly equal values, and the runs drift apart by more than rounding).
TINY = dict(num_labels=5, samples_transformer=5, samples_cnn=10, default_num_channels=4,
            num_layerwise_features=4, embedding_dim=8, num_layers=1, heads=1,
            shared_feature_extractor="2-layer", shared_features_dim=8, optimizer="sgd",
            learning_rate=0.02, steps_between_saves=1000, seed=3,
            dtype="fp32")  # fp32 on every host: the union's batch shapes round bf16 otherwise
LOG_EVERY = 1
HELDOUT_EPISODES = 4



def tiny_config(data_dir: Path, **overrides: object) -> Config:
    return presets.load("omniglot_1shot", data_dir=str(data_dir), **{**TINY, **overrides})


def worker(argv: list[str]) -> int:
    """Under torchrun: ``test_distributed.py <out_dir> <flags of hypertransformer.train>``."""
    from hypertransformer import train as train_module

    out = Path(argv[0])
    run = trainer_module._Trainer.run

    def run_and_save(self: trainer_module._Trainer) -> trainer_module.TrainResult:
        result = run(self)
        torch.save(self.model.state_dict(), out / f"rank{self.world.rank}.pt")
        return result

    log = trainer_module._Trainer.log

    def log_and_hold(self: trainer_module._Trainer, *args: Any) -> dict[str, float]:
        """Holds rank 0 after the first metrics line until a SIGINT reaches it, so the run
        stops at step LOG_EVERY + 1 on any machine (the other rank waits in that step)."""
        record = log(self, *args)
        deadline = time.monotonic() + 120
        while self.step == LOG_EVERY and not self._stop and time.monotonic() < deadline:
            time.sleep(0.02)
        return record

    trainer_module._Trainer.run = run_and_save  # type: ignore[method-assign]
    trainer_module._Trainer.log = log_and_hold  # type: ignore[method-assign]
    # The flags binary logs every 100 steps; the test wants a line every LOG_EVERY steps.
    def train_often(config: Config, log_dir: str, **kwargs: Any) -> trainer_module.TrainResult:
        return train(config, log_dir, **{**kwargs, "log_every": LOG_EVERY,
                                         "heldout_episodes": HELDOUT_EPISODES})

    launch.train = train_often  # type: ignore[assignment]
    return train_module.main(argv[1:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, config: Config) -> subprocess.Popen[str]:
    flags = [f"--{k}={'' if v is None else v}" for k, v in config.to_dict().items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}", __file__, str(out),
         *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_equal_one_process_on_their_union(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from realdata import omniglot_dir

    data_dir = omniglot_dir()
    log_dir, out = tmp_path / "ddp", tmp_path / "out"
    out.mkdir()
    config = tiny_config(data_dir, train_log_dir=str(log_dir), episodes_per_step=T,
                         train_steps=1000)

    # 1. Two ranks train until torchrun gets a SIGINT (Ctrl-C; it forwards it to the ranks):
    # all stop after the same step and rank 0 saves.
    proc = torchrun(out, config)
    try:
        deadline = time.monotonic() + 240
        while not ((log_dir / "metrics.jsonl").exists()
                   and (log_dir / "metrics.jsonl").read_text().endswith("\n")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(latest_checkpoint(log_dir))
    stopped = state["step"]
    assert stopped == LOG_EVERY + 1, (stdout, stderr)
    assert f"interrupted at step {stopped}" in stdout, (stdout, stderr)
    assert stdout.count("interrupted at step") == 1  # rank 0 alone reports
    assert len(state["rank_rng"]) == RANKS - 1 and set(state["rank_rng"][0]) == {
        "torch", "python", "numpy", "train_sampler"}
    assert state["episodes_seen"] == T * stopped  # T episodes per step in total
    first = [torch.load(out / f"rank{r}.pt") for r in range(RANKS)]
    for k, v in first[0].items():
        assert torch.equal(v, first[1][k]), k  # (a) the ranks agree
        assert torch.equal(v, state["model"][k]), k

    # 2. Resumed to two steps further: every rank continues its own episode stream.
    end = stopped + 2
    proc = torchrun(out, config.replace(train_steps=end))
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, (stdout, stderr)
    assert f"finished at step {end}" in stdout
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(RANKS)]
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), k  # (a)
    assert json.loads((log_dir / "done.json").read_text()) == {"step": end, "finished": True}

    # A two-rank checkpoint resumes in one process too (rank 0's state; not an exact resume).
    alone = tmp_path / "alone"
    shutil.copytree(log_dir, alone)
    more = train(config.replace(train_log_dir=str(alone), train_steps=end + 1), alone,
                 progress=False, log_every=LOG_EVERY, heldout_episodes=HELDOUT_EPISODES)
    assert more.step == end + 1 and more.finished
    assert "written by 2 rank(s), this run has 1" in capsys.readouterr().out
    assert load_checkpoint(latest_checkpoint(alone))["rank_rng"] == []

    # 3. One process, the same T episodes per step (the union of the ranks' episodes), up to
    # the stop: the same parameters and metrics.
    monkeypatch.setattr(trainer_module, "rank_sampler",
                        lambda data, cfg, rank: UnionSampler(data, cfg, RANKS))
    reference = tmp_path / "one"
    result = train(config.replace(train_log_dir=str(reference), train_steps=stopped),
                   reference, progress=False, log_every=LOG_EVERY,
                   heldout_episodes=HELDOUT_EPISODES)
    assert result.finished
    one = load_checkpoint(latest_checkpoint(reference))["model"]
    moved = 0.0
    for k, v in one.items():  # (b)
        torch.testing.assert_close(state["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, (ranks[0][k] - v).abs().max().item())
    assert moved > 1e-3  # two steps change the parameters well beyond the tolerance

    # The metrics of rank 0 are those of the union (loss and accuracy: weighted over ranks).
    ddp, single = metrics(log_dir)[:stopped], metrics(reference)
    for a, b in zip(ddp, single, strict=True):
        assert a["step"] == b["step"] and a["episodes"] == b["episodes"] == T * a["step"]
        assert a["lr"] == b["lr"] and a["heldout_accuracy"] == b["heldout_accuracy"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)


def test_rank_seeds() -> None:
    assert rank_seed(7, 0) == 7  # rank 0 (and a single process) keeps the seed
    assert rank_seed(7, 3) == 7 + 3 * RANK_SEED_STRIDE


def test_device_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    config = Config(train_log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="device=cuda but CUDA is not available"):
        train(config.replace(device="cuda"), tmp_path)
    assert cli.main(["train", "--preset", "glyphs_demo", "--log-dir", str(tmp_path),
                     "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dtype=fp16 needs device=cuda"):
        train(config.replace(dtype="fp16"), tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, fp16"):
        train(config.replace(dtype="fp8"), tmp_path)
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:<index>"):
        train(config.replace(device="tpu"), tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
