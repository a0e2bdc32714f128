"""Training on every core: the ``train`` commands start their own data-parallel processes.

``hypertransformer train`` and ``python -m hypertransformer.train`` call :func:`run_training`.
On a CPU it trains on ``N`` processes (``--nproc N``; default: the usable cores, at most
``episodes_per_step``), each with one intra-op thread (``OMP_NUM_THREADS``, 1 unless set),
which run DDP on gloo over 127.0.0.1 (a free port) exactly as under ``torchrun``
(:mod:`.distributed`): a step takes ``episodes_per_step`` episodes in total, split across the
ranks.  ``N = 1``, a GPU (``device=cuda``: one process, ``torchrun`` for several) and a process
that already is a rank (``WORLD_SIZE`` set, e.g. by ``torchrun``) train in this process.

This process then only watches the ranks (:class:`_Ranks`):

* Ctrl-C: the ranks run in sessions of their own, so a SIGINT reaches this process alone, which
  passes it on once to every rank: they finish the step, rank 0 saves one checkpoint and
  reports, and all exit with 130.  A second SIGINT kills the ranks at once (the last
  checkpoint is kept) and exits with 130.
* A rank that fails (killed by a signal, an error, a bug), or that does not exit within
  :data:`GRACE` seconds after another rank did: the others are killed at once and the command
  exits with one error line naming the rank (:mod:`hypertransformer.errors`; a rank's own
  expected error is that line, a bug's traceback comes before it).  Nothing waits in a
  collective for a rank that is gone.
* A rank exits when this process dies (its stdin, a pipe from here, reaches EOF).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch

from hypertransformer.config import Config
from hypertransformer.data.registry import load_split
from hypertransformer.errors import (
    ERROR_EXIT_CODE,
    EXPECTED,
    INTERRUPTED_EXIT_CODE,
    message,
    require_positive,
)
from hypertransformer.memory import keep_freed_memory
from hypertransformer.training.distributed import shard_sizes
from hypertransformer.training.trainer import LOG_EVERY, TrainResult, check_config, train

GRACE = 10.0  # seconds the other ranks have to exit after one has
_POLL = 0.05  # seconds between looks at the ranks
_JOB = "job.pkl"  # in the run's temporary directory, next to each failed rank's message


class RankError(ValueError):
    """A rank of a data-parallel run failed; the message says which, how, and what is kept."""


@dataclass(frozen=True)
class Job:
    """One ``train`` command: the arguments of :func:`.trainer.train` (the same on every
    rank)."""

    config: Config
    progress: bool = True
    log_every: int = LOG_EVERY

    def run(self) -> int:
        """Trains in this process (alone, or as one rank); :func:`report`'s exit code."""
        return report(train(self.config, self.config.train_log_dir, progress=self.progress,
                            log_every=self.log_every))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_training(job: Job, nproc: int | None = None) -> int:
    """Trains ``job`` on ``nproc`` processes (None: the default of the module docstring);
    the exit code of :func:`report`.  Refused before anything starts: ``nproc`` below 1, more
    processes than episodes per step, ``nproc > 1`` on a GPU or under torchrun."""
    cfg = job.config
    require_positive(nproc=nproc)
    keep_freed_memory()  # here and in each rank (memory.py)
    check_config(cfg)
    if "WORLD_SIZE" in os.environ or torch.device(cfg.device).type == "cuda":
        if nproc not in (None, 1):
            how = ("this process is a rank already: torchrun's --nproc_per_node chooses the "
                   "processes" if "WORLD_SIZE" in os.environ else
                   "on GPUs use torchrun --nproc_per_node=<GPUs>")
            raise ValueError(f"--nproc {nproc} starts CPU processes; {how} "
                             f"(docs/distributed.md)")
        nproc = 1
    n = min(usable_cores(), cfg.episodes_per_step) if nproc is None else nproc
    if n == 1:
        try:
            return job.run()
        except KeyboardInterrupt:
            return aborted()
    sizes = shard_sizes(cfg.episodes_per_step, n)
    load_split(cfg, "train")  # a missing data cache is built once, here, not in every rank
    share = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]} or {sizes[-1]}"
    print(f"training on {n} processes, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s) "
          f"each (--nproc 1: one process): {cfg.episodes_per_step} episodes per step, {share} "
          f"per process", flush=True)
    with tempfile.TemporaryDirectory(prefix="hypertransformer-ranks-") as run_dir:
        return _Ranks(job, n, Path(run_dir)).run()


def aborted() -> int:
    print("aborted; the last saved checkpoint (if any) is kept", file=sys.stderr)
    return INTERRUPTED_EXIT_CODE


def report(result: TrainResult) -> int:
    """Prints where the run stands (rank 0 only); the exit code: 0 when ``train_steps`` are
    done or the run stopped at ``max_steps``, 130 when interrupted."""
    if result.rank != 0:
        return INTERRUPTED_EXIT_CODE if result.interrupted else 0
    state = "finished" if result.finished else (
        "interrupted" if result.interrupted else "stopped")
    best = ("" if result.best_accuracy is None
            else f", best held-out accuracy {result.best_accuracy:.4f}")
    print(f"{state} at step {result.step}{best}; checkpoint {result.last_checkpoint}")
    return INTERRUPTED_EXIT_CODE if result.interrupted else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Ranks:
    """The ``n`` rank processes of one run, started and watched from here (module
    docstring).  ``run_dir`` holds the pickled :class:`Job` and, per failed rank ``r``, its
    error message (``rank<r>.error``, exit code 2) or traceback (``rank<r>.traceback``, exit
    code 1).  The file, not the exit code, tells which: a rank that has written its message
    may still abort while its process exits (seen once in CI: gloo's ``terminate called
    without an active exception``, SIGABRT), and the message is the cause."""

    def __init__(self, job: Job, n: int, run_dir: Path) -> None:
        self.job, self.n, self.run_dir = job, n, run_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.interrupts = 0

    def run(self) -> int:
        (self.run_dir / _JOB).write_bytes(pickle.dumps(self.job))
        env = {**os.environ, "WORLD_SIZE": str(self.n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port())}
        env.setdefault("OMP_NUM_THREADS", "1")
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        try:
            for rank in range(self.n):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", __name__, str(self.run_dir)],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    stdin=subprocess.PIPE, start_new_session=True))
            failed, late = self._watch()
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                assert p.stdin is not None
                p.stdin.close()
            if in_main:
                signal.signal(signal.SIGINT,
                              signal.default_int_handler if previous is None else previous)
        codes = [p.returncode for p in self.procs]
        if failed is None and self.interrupts < 2:
            return INTERRUPTED_EXIT_CODE if INTERRUPTED_EXIT_CODE in codes else 0
        if self.interrupts:
            return aborted()
        assert failed is not None
        raise RankError(self._describe(failed, late))

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        for p in self.procs:
            if self.interrupts == 1:
                p.send_signal(signal.SIGINT)
            else:
                p.kill()

    def _watch(self) -> tuple[int | None, int | None]:
        """Waits until every rank has exited, or one failed (its rank, None), or one did not
        exit within GRACE seconds after rank ``late`` had (its rank, ``late``)."""
        first: tuple[int, float] | None = None  # the first rank that exited, and when
        while self.interrupts < 2:
            codes = [p.poll() for p in self.procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0, INTERRUPTED_EXIT_CODE)]
            if failed:
                return min(failed, key=self._failure_order), None
            alive = [r for r, c in enumerate(codes) if c is None]
            if not alive:
                break
            if first is None and len(alive) < self.n:
                first = (min(set(range(self.n)) - set(alive)), time.monotonic())
            if first is not None and time.monotonic() - first[1] > GRACE:
                return alive[0], first[0]
            time.sleep(_POLL)
        return None, None

    def _failure_order(self, rank: int) -> tuple[int, int]:
        """Of ranks found failed at the same look, the cause first: a rank that left no
        message (killed) before ranks whose error may be the loss of a peer, then the earliest
        message."""
        paths = [p for p in _failure_files(self.run_dir, rank) if p.exists()]
        return (1, paths[0].stat().st_mtime_ns) if paths else (0, rank)

    def _describe(self, rank: int, late: int | None) -> str:
        p, (message_file, traceback_file) = self.procs[rank], _failure_files(self.run_dir, rank)
        if late is not None:
            how = f"did not exit within {GRACE:g} s after rank {late} had"
        elif message_file.exists():
            return message_file.read_text()  # the rank's own one-line message
        elif traceback_file.exists():
            print(traceback_file.read_text(), file=sys.stderr, end="")
            how = "failed with the traceback above"
        elif p.returncode < 0:
            how = f"was killed by {signal.Signals(-p.returncode).name}"
        else:
            how = f"exited with code {p.returncode}"
        return (f"rank {rank} of {self.n} (pid {p.pid}) {how}; the other ranks were stopped. "
                f"The last checkpoint in {self.job.config.train_log_dir} is kept: run the same "
                f"command to resume")


def _failure_files(run_dir: Path, rank: int) -> tuple[Path, Path]:
    """Where a failed rank leaves its one-line error message, or its traceback."""
    return run_dir / f"rank{rank}.error", run_dir / f"rank{rank}.traceback"


def _exit_with_launcher() -> None:
    """Ends this rank when the launching process is gone: its end of our stdin closes.

    ``os.read``, not ``sys.stdin``: this daemon thread would hold the buffered reader's lock
    while it blocks, and the interpreter's exit, which closes ``sys.stdin``, would then abort
    the rank (``Fatal Python error: _enter_buffered_busy``, SIGABRT) after a finished run."""
    while os.read(0, 512):
        pass
    os._exit(1)


def _rank_main(run_dir: Path) -> int:
    """One rank (``RANK`` and the rest in the environment); failures go to ``run_dir``."""
    threading.Thread(target=_exit_with_launcher, daemon=True).start()
    keep_freed_memory()
    job: Job = pickle.loads((run_dir / _JOB).read_bytes())
    message_file, traceback_file = _failure_files(run_dir, int(os.environ["RANK"]))
    try:
        return job.run()
    except KeyboardInterrupt:  # a SIGINT before the trainer's handler was installed
        return INTERRUPTED_EXIT_CODE
    except EXPECTED as e:
        message_file.write_text(message(e))
        return ERROR_EXIT_CODE
    except Exception:
        traceback_file.write_text(traceback.format_exc())
        return 1


if __name__ == "__main__":
    code = _rank_main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the interpreter's teardown can abort a rank after its run has finished
    # (gloo's threads: "terminate called without an active exception", SIGABRT; seen twice in
    # CI after a finished or failed run).  Everything the run writes is closed by now.
    os._exit(code)
