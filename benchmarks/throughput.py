"""Training and evaluation throughput of a preset on this machine's CPU.

Usage::

    python benchmarks/throughput.py --preset omniglot_1shot [--episodes-per-step T]
        [--nproc P] [--threads N] [--data-dir D] [--steps N] [--eval-tasks 1024] [--json]

Data: the built-in glyphs splits (offline) unless ``--data-dir`` is given, which uses the
preset's own datasets read from that folder (e.g. the Omniglot zips).

Training is measured as the ``train`` command runs it by default: through
``training.launch.run_training`` (the trainer itself), on ``--nproc`` processes (default:
``train``'s, the usable cores, at most T) with one intra-op thread each, or in this process
with torch's default threads when P = 1.  ``--threads`` changes the intra-op threads per
process.  Training and evaluation are measured twice, side by side: with ``dtype=fp32`` and
with ``dtype=auto`` (the default; :mod:`hypertransformer.precision`), whose choice and reason
are reported with the CPU's bf16 flags.  Measured, in this order:

* ``episodes_per_s``, ``step_ms`` (auto; ``fp32_episodes_per_s``, ``fp32_step_ms``;
  ``dtype`` the trainer's choice, ``auto_speedup`` = auto / fp32): whole training steps
  (sampling, forward, backward, the ranks' all-reduces, optimiser step) after ``--warmup``
  untimed steps: the trainer's own step time (``wall_time`` of ``metrics.jsonl``; held-out
  evaluations and checkpoints are not in it);
* ``baseline_episodes_per_s``: the same for the original recipe in the same run: one episode
  per step, fp32, one process (torch's default threads); ``speedup`` = ours / that;
* ``sampling_episodes_per_s``: episodes drawn by the training sampler alone (this process);
* ``gflops``: the FLOPs of one training step of T episodes
  (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions, attention; forward
  and backward; counted on one rank's share of T and scaled to T, as they grow linearly with
  the episodes) times steps per second;
* ``peak_gflops``: the best fp32 matmul rate of large square matrices on all usable cores,
  measured in the same run; ``ratio = gflops / peak_gflops``;
* ``eval_s`` (auto, in ``eval_dtype``; ``fp32_eval_s``): the SPEC §5 evaluation
  (``evaluate_model``: ``--eval-tasks`` × the preset's ``num_eval_batches`` (16) ×
  ``eval_batch_size`` (100) queries) of the untrained model on the test split (0 skips it),
  in this process with all usable cores;
* ``peak_rss_mb``: the peak resident memory of the largest process (this one or a rank;
  ``resource.getrusage``): the total is at most ``nproc`` times it.

With ``--json`` the last line printed is one JSON object with these keys.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from hypertransformer import presets
from hypertransformer.config import Config
from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeSampler
from hypertransformer.evaluation.evaluator import evaluate_model
from hypertransformer.memory import keep_freed_memory
from hypertransformer.model import HyperTransformer
from hypertransformer.precision import cpu_name, native_bf16, resolve_precision
from hypertransformer.training.distributed import shard_sizes
from hypertransformer.training.launch import Job, run_training, usable_cores
from hypertransformer.training.trainer import build_optimizer

PEAK_SIZE = 2048  # side of the square matmuls of the peak measurement
PEAK_SECONDS = 1.0  # time budget of the peak measurement


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=presets.names())
    p.add_argument("--episodes-per-step", type=int, default=None,
                   help="episodes per training step (default: the preset's)")
    p.add_argument("--nproc", type=int, default=None,
                   help="training processes (default: train's, min(cores, episodes per step))")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per training process (default: train's, 1 per "
                        "process, torch's default for one process)")
    p.add_argument("--data-dir", default=None,
                   help="the preset's own data from this folder (default: built-in glyphs)")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    p.add_argument("--eval-tasks", type=int, default=1024,
                   help="tasks of the timed evaluation (0: skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    for name in ("nproc", "threads", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.episodes_per_step is not None and args.episodes_per_step < 1:
        p.error("--episodes-per-step must be at least 1")
    if args.warmup < 0 or args.eval_tasks < 0:
        p.error("--warmup and --eval-tasks must be >= 0")
    return args


def build_config(args: argparse.Namespace) -> Config:
    cfg = presets.load(args.preset, seed=args.seed)
    if args.episodes_per_step is not None:
        cfg = cfg.replace(episodes_per_step=args.episodes_per_step)
    if args.data_dir is not None:
        return cfg.replace(data_dir=args.data_dir)
    return cfg.replace(train_dataset="glyphs:train", test_dataset="glyphs:test")


def conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int],
                       bias: Any, stride: Any, padding: Any, dilation: Any, transposed: bool,
                       output_padding: Any, groups: int, output_mask: list[bool],
                       out_shape: list[list[int] | None], **kwargs: Any) -> int:
    """FLOPs of ``aten.convolution_backward`` (non-transposed), grouped convolutions included.

    torch's own formula ignores ``groups`` in the weight gradient, which counts the generated
    CNN's weight gradient T times over (T tasks = T groups)."""
    if transposed:
        raise NotImplementedError("transposed convolutions are not counted")

    def t(shape: list[int]) -> list[int]:  # swap batch and channels
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input = conv_transpose(grad_out, weight)
        assert out_shape[0] is not None
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], transposed=True)
    if output_mask[1]:  # grad_weight = conv(input, grad_out), batch and channels swapped
        assert out_shape[1] is not None
        flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1])) // groups
    return flops


def peak_matmul_gflops(size: int = PEAK_SIZE, seconds: float = PEAK_SECONDS) -> float:
    """The best rate of ``size``² fp32 matmuls within about ``seconds`` (at least 3 runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up
    best, runs, start = 0.0, 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
        runs += 1
    return best


def training_step(cfg: Config, seed: int) -> tuple[Callable[[], None], EpisodeSampler,
                                                   HyperTransformer]:
    """``(step, sampler, model)``: ``step()`` is one training step of ``cfg`` (sampling,
    forward under ``cfg.dtype``, backward, optimiser step) on a fresh model."""
    torch.manual_seed(seed)
    precision = resolve_precision(cfg.dtype, training=True)
    sampler = EpisodeSampler.from_config(load_split(cfg, "train"), cfg, train=True, seed=seed)
    model = HyperTransformer(cfg).train()
    optimizer, _ = build_optimizer(model, cfg)

    def step() -> None:
        batch = sampler.sample(cfg.episodes_per_step)
        with precision.autocast("cpu"):
            out = model.loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                             support_mask=batch.support_mask, classes=batch.classes)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step, sampler, model


def train_seconds_per_step(cfg: Config, nproc: int, threads: int | None, steps: int,
                           warmup: int) -> tuple[float, str]:
    """(seconds per training step, dtype) of ``cfg`` as ``train`` runs it on ``nproc``
    processes (``threads`` intra-op threads each; None: ``train``'s default): the trainer's own
    step time over ``steps`` steps after ``warmup`` and the dtype it chose, read from its
    ``metrics.jsonl``."""
    default_threads = torch.get_num_threads()
    saved_env = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the ranks'
        torch.set_num_threads(threads)  # this process's, when nproc = 1
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as log_dir:
            job = Job(cfg.replace(train_steps=warmup + steps, train_log_dir=log_dir),
                      progress=False, log_every=warmup or steps)
            if run_training(job, nproc) != 0:
                raise RuntimeError("the training run failed")
            lines = [json.loads(line) for line in open(os.path.join(log_dir, "metrics.jsonl"))]
    finally:
        torch.set_num_threads(default_threads)
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
    wall = {line["step"]: line["wall_time"] for line in lines}
    return (wall[warmup + steps] - wall.get(warmup, 0.0)) / steps, lines[-1]["dtype"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = build_config(args)
    t = cfg.episodes_per_step
    nproc = min(usable_cores(), t) if args.nproc is None else args.nproc
    threads = args.threads or (1 if nproc > 1 else torch.get_num_threads())
    # the original recipe first: one episode per step, fp32, one process, default threads
    baseline_s, _ = train_seconds_per_step(
        cfg.replace(episodes_per_step=1, dtype="fp32"), 1, None, args.steps, args.warmup)
    fp32_s, _ = train_seconds_per_step(cfg.replace(dtype="fp32"), nproc, args.threads,
                                       args.steps, args.warmup)
    step_s, dtype = train_seconds_per_step(cfg.replace(dtype="auto"), nproc, args.threads,
                                           args.steps, args.warmup)

    torch.set_num_threads(threads)
    # why the trainer chose its dtype: resolved with its threads, so from the same (cached)
    # measurement as the trainer's
    dtype_reason = resolve_precision("auto", training=True).reason
    # FLOPs grow linearly with the episodes: count one rank's step (its share of T) and scale
    shard = shard_sizes(t, nproc)[0]
    step, sampler, model = training_step(cfg.replace(episodes_per_step=shard, dtype="fp32"),
                                         args.seed)
    start = time.perf_counter()
    for _ in range(args.steps):
        sampler.sample(t)
    sampling_s = time.perf_counter() - start
    with FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten.convolution_backward: conv_backward_flop}) as counter:
        step()
    flops = counter.get_total_flops() * t / shard

    torch.set_num_threads(usable_cores())
    peak = peak_matmul_gflops()
    steps_per_s = 1 / step_s
    gflops = flops * steps_per_s / 1e9
    evals = {"fp32": (0.0, "fp32"), "auto": (0.0, "fp32")}
    if args.eval_tasks:
        torch.manual_seed(args.seed)
        model = HyperTransformer(cfg)
        for name in evals:
            result = evaluate_model(model, cfg.replace(dtype=name), load_split(cfg, "test"),
                                    num_tasks=args.eval_tasks, num_batches=cfg.num_eval_batches,
                                    batch_size=cfg.eval_batch_size, seed=args.seed)
            evals[name] = (result.seconds, result.dtype)
    rss = max(resource.getrusage(who).ru_maxrss
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "preset": args.preset,
        "data": "glyphs" if args.data_dir is None else args.data_dir,
        "nproc": nproc,
        "threads": threads,
        "cpu": cpu_name(),
        "bf16_flags": native_bf16(),
        "dtype": dtype,
        "dtype_reason": dtype_reason,
        "episodes_per_step": t,
        "steps": args.steps,
        "episodes_per_s": t * steps_per_s,
        "step_ms": 1000 * step_s,
        "fp32_episodes_per_s": t / fp32_s,
        "fp32_step_ms": 1000 * fp32_s,
        "auto_speedup": fp32_s / step_s,
        "baseline_episodes_per_s": 1 / baseline_s,
        "speedup": t * steps_per_s * baseline_s,
        "sampling_episodes_per_s": t * args.steps / sampling_s,
        "gflop_per_step": flops / 1e9,
        "gflops": gflops,
        "peak_gflops": peak,
        "ratio": gflops / peak,
        "eval_tasks": args.eval_tasks,
        "eval_batches": cfg.num_eval_batches,
        "eval_batch_size": cfg.eval_batch_size,
        "eval_s": evals["auto"][0],
        "eval_dtype": evals["auto"][1],
        "fp32_eval_s": evals["fp32"][0],
        "peak_rss_mb": rss / 1024,
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['preset']} on {r['data']}, {r['nproc']} process(es) × {r['threads']} thread(s), "
        f"{r['episodes_per_step']} episodes/step, {r['steps']} steps",
        f"cpu        {r['cpu']}; native bf16: {', '.join(r['bf16_flags']) or 'none'}",
        f"dtype auto {r['dtype']} for training, {r['eval_dtype']} for the evaluation "
        f"({r['dtype_reason']})",
        f"train      {r['episodes_per_s']:9.1f} episodes/s  ({r['step_ms']:.1f} ms/step, auto: "
        f"{r['dtype']}); fp32 {r['fp32_episodes_per_s']:.1f} ({r['fp32_step_ms']:.1f} ms); "
        f"auto/fp32 {r['auto_speedup']:.2f}",
        f"baseline   {r['baseline_episodes_per_s']:9.1f} episodes/s  (1 episode/step, float32, "
        f"1 process); speedup {r['speedup']:.2f}",
        f"sampling   {r['sampling_episodes_per_s']:9.1f} episodes/s",
        f"compute    {r['gflops']:9.2f} GFLOP/s   ({r['gflop_per_step']:.3f} GFLOP/step)",
        f"peak       {r['peak_gflops']:9.2f} GFLOP/s   (fp32 matmul {PEAK_SIZE}²)",
        f"ratio      {r['ratio']:9.3f}",
        f"evaluation {r['eval_s']:9.1f} s         ({r['eval_tasks']} tasks × {r['eval_batches']} × "
        f"{r['eval_batch_size']}, auto: {r['eval_dtype']}); fp32 {r['fp32_eval_s']:.1f} s",
        f"peak RSS   {r['peak_rss_mb']:9.0f} MB    (largest process)",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as the commands do (memory.py)
    result = run(args)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
