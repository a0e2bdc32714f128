"""Training and evaluation throughput of a preset on this machine's CPU.

Usage::

    python benchmarks/throughput.py --preset omniglot_1shot [--episodes-per-step T]
        [--threads N] [--data-dir D] [--steps N] [--eval-tasks 1024] [--json]

Data: the built-in glyphs splits (offline) unless ``--data-dir`` is given, which uses the
preset's own datasets read from that folder (e.g. the Omniglot zips).

Measured, in this order, all with ``--threads`` intra-op threads:

* ``sampling_episodes_per_s``: episodes drawn by the training sampler alone;
* ``episodes_per_s``: whole training steps (sampling, forward, backward, optimiser step)
  after ``--warmup`` untimed steps;
* ``gflops``: the FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``:
  matmuls, convolutions, attention; forward and backward) times steps per second;
* ``peak_gflops``: the best fp32 matmul rate of large square matrices, measured in the same
  run; ``ratio = gflops / peak_gflops``;
* ``eval_s``: the SPEC §5 evaluation (``evaluate_model``: ``--eval-tasks`` × the preset's
  ``num_eval_batches`` (16) × ``eval_batch_size`` (100) queries) of the untrained model on
  the test split (0 skips it);
* ``peak_rss_mb``: the process's peak resident memory (``resource.getrusage``).

With ``--json`` the last line printed is one JSON object with these keys.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
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
from hypertransformer.model import HyperTransformer
from hypertransformer.training.trainer import build_optimizer

PEAK_SIZE = 2048  # side of the square matmuls of the peak measurement
PEAK_SECONDS = 1.0  # time budget of the peak measurement


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=presets.names())
    p.add_argument("--episodes-per-step", type=int, default=None,
                   help="episodes per training step (default: the preset's)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="the preset's own data from this folder (default: built-in glyphs)")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    p.add_argument("--eval-tasks", type=int, default=1024,
                   help="tasks of the timed evaluation (0: skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    for name in ("threads", "steps"):
        if getattr(args, name) < 1:
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
    forward, backward, optimiser step) on a fresh model."""
    torch.manual_seed(seed)
    sampler = EpisodeSampler.from_config(load_split(cfg, "train"), cfg, train=True, seed=seed)
    model = HyperTransformer(cfg).train()
    optimizer, _ = build_optimizer(model, cfg)

    def step() -> None:
        batch = sampler.sample(cfg.episodes_per_step)
        out = model.loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                         support_mask=batch.support_mask, classes=batch.classes)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step, sampler, model


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    t = cfg.episodes_per_step
    step, sampler, model = training_step(cfg, args.seed)

    for _ in range(args.warmup):
        step()

    start = time.perf_counter()
    for _ in range(args.steps):
        sampler.sample(t)
    sampling_s = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    train_s = time.perf_counter() - start

    with FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten.convolution_backward: conv_backward_flop}) as counter:
        step()
    flops = counter.get_total_flops()

    peak = peak_matmul_gflops()
    steps_per_s = args.steps / train_s
    gflops = flops * steps_per_s / 1e9
    eval_s = 0.0
    if args.eval_tasks:
        result = evaluate_model(model, cfg, load_split(cfg, "test"), num_tasks=args.eval_tasks,
                                num_batches=cfg.num_eval_batches,
                                batch_size=cfg.eval_batch_size, seed=args.seed)
        eval_s = result.seconds
    return {
        "preset": args.preset,
        "data": "glyphs" if args.data_dir is None else args.data_dir,
        "threads": args.threads,
        "episodes_per_step": t,
        "steps": args.steps,
        "episodes_per_s": t * steps_per_s,
        "step_ms": 1000 / steps_per_s,
        "sampling_episodes_per_s": t * args.steps / sampling_s,
        "gflop_per_step": flops / 1e9,
        "gflops": gflops,
        "peak_gflops": peak,
        "ratio": gflops / peak,
        "eval_tasks": args.eval_tasks,
        "eval_batches": cfg.num_eval_batches,
        "eval_batch_size": cfg.eval_batch_size,
        "eval_s": eval_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['preset']} on {r['data']}, {r['threads']} thread(s), "
        f"{r['episodes_per_step']} episodes/step, {r['steps']} steps",
        f"train      {r['episodes_per_s']:9.1f} episodes/s  ({r['step_ms']:.1f} ms/step)",
        f"sampling   {r['sampling_episodes_per_s']:9.1f} episodes/s",
        f"compute    {r['gflops']:9.2f} GFLOP/s   ({r['gflop_per_step']:.3f} GFLOP/step)",
        f"peak       {r['peak_gflops']:9.2f} GFLOP/s   (fp32 matmul {PEAK_SIZE}²)",
        f"ratio      {r['ratio']:9.3f}",
        f"evaluation {r['eval_s']:9.1f} s         ({r['eval_tasks']} tasks × {r['eval_batches']} × "
        f"{r['eval_batch_size']})",
        f"peak RSS   {r['peak_rss_mb']:9.0f} MB",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
