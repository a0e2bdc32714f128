"""Forms of the generated CNN's conv layer for T tasks, forward + backward, interleaved.

Usage::

    python benchmarks/conv_forms.py [--tasks 8] [--images 60] [--channels 8] [--size 28]
        [--threads 1] [--rounds 7] [--compile] [--inference]

One conv layer of ``maxpool-4-layer`` (3×3 "same" conv → 2×2 max-pool → ReLU → BatchNorm with
per-task batch statistics) on ``x`` [M, T·C_in, H, W] with generated weights [T, C_out, C_in,
3, 3], at each of the four layer shapes of a ``--size`` px, 1-channel input (C_in = 1 at the
first layer, ``--channels`` after). Forms of the convolution:

* ``grouped_cl``: one grouped convolution (groups = T), channels-last (the model's form);
* ``grouped``: the same in the default (NCHW) layout;
* ``unfold_bmm``: ``F.unfold`` (im2col) and a batched matmul per task;
* ``blockdiag<g>``: one convolution over groups of ``g`` tasks with block-diagonal weights
  (g·C_in channels per group, g× the FLOPs);
* ``compiled`` (``--compile``): the model's whole block through ``torch.compile`` (inductor,
  CPU; it needs a C++ compiler), which may fuse pool, ReLU and BatchNorm.

Every form is checked against ``grouped_cl`` (fp32 tolerance, forward and input/weight
gradients) and then timed in ``--rounds`` rounds, the forms interleaved within each round;
printed: the median ms of forward + backward per form and layer (``--inference``: of the
forward alone under ``torch.inference_mode``, as the evaluation runs it; e.g. ``--images 100``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hypertransformer.model.ops import CHANNELS_LAST, batch_norm

Conv = Callable[[Tensor, Tensor, int], Tensor]


def grouped(x: Tensor, w: Tensor, t: int) -> Tensor:
    return F.conv2d(x, w.flatten(0, 1), padding=1, groups=t)


def unfold_bmm(x: Tensor, w: Tensor, t: int) -> Tensor:
    m, _, h, wd = x.shape
    cols = F.unfold(x, 3, padding=1).view(m, t, -1, h * wd)  # [M, T, C_in·9, HW]
    out = torch.einsum("tok,mtkp->mtop", w.flatten(2), cols)
    return out.reshape(m, -1, h, wd)


def blockdiag(g: int) -> Conv:
    def conv(x: Tensor, w: Tensor, t: int) -> Tensor:
        c_out, c_in = w.shape[1:3]
        eye = torch.eye(g, dtype=w.dtype)
        bd = torch.einsum("Gaocij,ab->Gaobcij", w.view(t // g, g, c_out, c_in, 3, 3), eye)
        return F.conv2d(x, bd.reshape(t * c_out, g * c_in, 3, 3), padding=1, groups=t // g)
    return conv


def block(conv: Conv) -> Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]:
    def run(x: Tensor, w: Tensor, gamma: Tensor, beta: Tensor, t: int) -> Tensor:
        return batch_norm(F.relu(F.max_pool2d(conv(x, w, t), 2)), gamma, beta)
    return run


def run(form: Callable[..., Tensor], x0: Tensor, w0: Tensor, gamma: Tensor, beta: Tensor,
        grad: Tensor | None, t: int, layout: torch.memory_format) -> tuple[Tensor, ...]:
    """(output, input gradient, weight gradient) of ``form`` on fresh leaves; (output,) with
    ``grad`` None (inference)."""
    if grad is None:
        with torch.inference_mode():
            return (form(x0.contiguous(memory_format=layout), w0, gamma, beta, t),)
    x = x0.clone(memory_format=layout).requires_grad_()
    w = w0.clone().requires_grad_()
    out = form(x, w, gamma, beta, t)
    out.backward(grad)
    assert x.grad is not None and w.grad is not None
    return out, x.grad, w.grad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--inference", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t, m, c = args.tasks, args.images, args.channels
    forms = {"grouped_cl": block(grouped), "grouped": block(grouped),
             "unfold_bmm": block(unfold_bmm)}
    forms.update({f"blockdiag{g}": block(blockdiag(g)) for g in (2, 4, 8) if t % g == 0})
    if args.compile:
        forms["compiled"] = torch.compile(block(grouped), dynamic=False)
    layers, size, c_in = [], args.size, 1
    while size >= 2:
        layers.append((c_in, size))
        size, c_in = size // 2, c
    what = "forward (inference)" if args.inference else "forward + backward"
    print(f"T={t} M={m} C={c} threads={args.threads}: median ms of {what} "
          f"({args.rounds} interleaved rounds)")
    print(f"{'layer':<14}" + "".join(f"{name:>13}" for name in forms))
    for c_in, size in layers:
        x0 = torch.randn(m, t * c_in, size, size)
        w0 = torch.randn(t, c, c_in, 3, 3) / (3 * c_in ** 0.5)
        gamma, beta = torch.rand(t * c) + 0.5, torch.randn(t * c)
        grad = None if args.inference else torch.randn(m, t * c, size // 2, size // 2)
        tensors = {name: (form, x0, w0, gamma, beta, grad, t,
                          torch.contiguous_format if name == "grouped" else CHANNELS_LAST)
                   for name, form in forms.items()}
        reference = run(*tensors["grouped_cl"])
        for name in forms:  # correctness, and warm-up (and compilation)
            for a, b in zip(run(*tensors[name]), reference, strict=True):
                assert (a - b).abs().max() <= 1e-4 * b.abs().max(), name  # fp32 sums
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.rounds):
            for name in forms:
                start = time.perf_counter()
                for _ in range(5):
                    run(*tensors[name])
                times[name].append((time.perf_counter() - start) / 5 * 1000)
        print(f"{f'{c_in}->{c} @{size}px':<14}"
              + "".join(f"{statistics.median(v):>13.2f}" for v in times.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
