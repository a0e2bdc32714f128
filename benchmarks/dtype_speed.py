"""fp32 against bf16 on this CPU: the evaluation's largest generated convolution and a matmul.

Usage::

    python benchmarks/dtype_speed.py [--threads 1] [--rounds 7]

Median ms, interleaved rounds, under ``torch.inference_mode``: the grouped 3×3 convolution of
``omniglot_1shot``'s second CNN layer as the evaluation runs it (100 images, 8 tasks of 8
channels, 14×14, channels-last) and a 512² matmul. Without bf16 instructions (AVX512-BF16,
AMX-BF16 or AVX-VNNI-BF16), oneDNN and MKL emulate bf16 and it is slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(100, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    w, a = torch.randn(64, 8, 3, 3), torch.randn(512, 512)
    ops = {"conv": lambda x, w, a: F.conv2d(x, w, padding=1, groups=8),
           "matmul": lambda x, w, a: a @ a}
    dtypes = (torch.float32, torch.bfloat16)
    times: dict[tuple[str, torch.dtype], list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for dtype in dtypes:
                tensors = (x.to(dtype), w.to(dtype), a.to(dtype))
                for name, op in ops.items():
                    op(*tensors)
                    start = time.perf_counter()
                    op(*tensors)
                    times.setdefault((name, dtype), []).append(
                        (time.perf_counter() - start) * 1000)
    print(f"{args.threads} thread(s), median ms of {args.rounds} interleaved rounds")
    for (name, dtype), values in times.items():
        print(f"{name:<8}{str(dtype):<16}{statistics.median(values):9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
