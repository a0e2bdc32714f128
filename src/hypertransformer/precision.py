"""The compute dtype: fp32, or bf16 autocast where the CPU computes bf16 natively and faster.

``Config.dtype`` (``--dtype``) is one of :data:`DTYPES`:

* ``fp32``: everything in float32;
* ``bf16``: the generated CNN and the feature extractors run under ``torch.autocast`` in
  bfloat16, on request even where the CPU only emulates it (slow, but correct);
* ``fp16``: the same in float16, CUDA only (the trainer then scales the loss);
* ``auto`` (the default): bf16 on a CPU that has native bf16 instructions (the flags of
  :data:`BF16_FLAGS` in ``/proc/cpuinfo``) *and* on which :func:`measure` finds the
  workload's generated CNN faster in bf16, else fp32; fp32 on a GPU (ask for bf16 or fp16
  there).  The measurement takes a fraction of a second and is cached per CPU, torch version
  and thread count in ``$HT_CACHE_DIR/precision.json``.

Inference (evaluation, ``fit``/``predict``, streams) and training are measured and decided
apart: the first runs the generated CNN forward on large query batches, the second forward
and backward on small ones, and the two gain differently (on the AMX host of
docs/performance.md bf16 paid at inference and not in training).

What stays float32 under bf16 (:func:`fp32`): the transformer of the weight generators
(bf16 attention at these sizes was measured slower, docs/performance.md), the last generated
layer (logits or embedding), prototype distances, the loss and softmax, masked BatchNorm,
and the BatchNorm statistics (``F.batch_norm`` accumulates them in float32 for bf16 input).
Parameters, gradients and the optimiser state are float32: autocast only casts copies.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

DTYPES = ("auto", "fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# AVX512-BF16 (Cooper Lake, Zen 4 ...), AMX-BF16 (Sapphire Rapids ...), AVX-NE-CONVERT (the
# bf16 conversions of the AVX-VNNI-INT8 family: Sierra Forest, Arrow Lake ...)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
MIN_SPEEDUP = 1.15  # bf16 must be at least this much faster than fp32 to be chosen
CACHE_FILE = "precision.json"
ROUNDS = 5

F_ = TypeVar("F_", bound=Callable[..., Any])


@dataclass(frozen=True)
class Precision:
    """A resolved dtype: ``name`` (fp32, bf16, fp16) and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.name]

    def autocast(self, device: torch.device | str) -> AbstractContextManager[Any]:
        """The context to run a forward pass in: autocast, or nothing for fp32."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(torch.device(device).type, self.dtype)


FP32 = Precision("fp32", "requested")


def check_dtype(name: str) -> None:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")


@functools.cache
def _cpuinfo(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line named one of ``keys`` (None if none or
    no such file); read once per process."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty elsewhere."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def native_bf16() -> list[str]:
    """The flags of :data:`BF16_FLAGS` this CPU has (empty: bf16 is emulated)."""
    flags = cpu_flags()
    return [f for f in BF16_FLAGS if f in flags]


# What autocast changes, as each workload runs it: the generated CNN of omniglot_1shot (4
# conv layers of 8 channels, 28 px, per-task BatchNorm) for 8 tasks in the grouped layout;
# the evaluation classifies 100 queries per task, a training step (one rank's share) runs 60
# images per task forward and backward.
_TASKS, _CHANNELS, _SIZE = 8, 8, 28
_WORKLOAD = "cnn-v1"  # in the cache key: a changed workload is measured again


def _workload(training: bool, dtype: torch.dtype) -> Callable[[], None]:
    from hypertransformer.model.cnn import ConvLayer, ConvSpec, LayerWeights, cnn_specs

    specs = [s for s in cnn_specs("maxpool-4-layer", image_size=_SIZE, in_channels=1,
                                  channels=_CHANNELS, kernel=3, stride=1, num_labels=5)
             if isinstance(s, ConvSpec)]
    layers = [ConvLayer(s, generated=True, allocation="output", generate_bias=False,
                        generate_bn=False, add_trainable=False, activation="relu")
              for s in specs]
    rng = torch.Generator().manual_seed(0)  # not the global RNG: resolving changes no run
    weights = [LayerWeights(weight=torch.randn(_TASKS, s.out_channels, s.in_channels, 3, 3,
                                               generator=rng).requires_grad_(training))
               for s in specs]
    x = torch.randn(60 if training else 100, _TASKS, _SIZE, _SIZE, generator=rng).contiguous(
        memory_format=torch.channels_last)

    def run() -> None:
        with torch.set_grad_enabled(training), torch.autocast("cpu", dtype,
                                                              enabled=dtype != torch.float32):
            h = x
            for layer, w in zip(layers, weights, strict=True):
                h = layer(h, w, _TASKS)
            if training:
                h.float().square().mean().backward()

    return run


def measure(training: bool, rounds: int = ROUNDS) -> dict[str, float]:
    """Median ms of :func:`_workload` (the generated CNN) in fp32 and in bf16 autocast,
    interleaved rounds, with this process's intra-op threads."""
    runs = {name: _workload(training, TORCH_DTYPES[name]) for name in ("fp32", "bf16")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: oneDNN builds its kernels
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    return {f"{name}_ms": round(statistics.median(t), 3) for name, t in times.items()}


def _cache_key(training: bool) -> str:
    return (f"{cpu_name()} | {' '.join(native_bf16()) or 'no bf16'} | torch "
            f"{torch.__version__} | {torch.get_num_threads()} threads | "
            f"{'training' if training else 'inference'} {_WORKLOAD}")


def _cache_path() -> Path | None:
    from hypertransformer.data.cache import cache_dir

    try:
        return cache_dir() / CACHE_FILE
    except OSError:
        return None  # not writable: measure every time


def cached_measure(training: bool) -> dict[str, float]:
    """:func:`measure`, cached per machine (:func:`_cache_key`)."""
    from hypertransformer.data.cache import atomic_write

    path, key = _cache_path(), _cache_key(training)
    cache: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}  # a corrupt cache is measured again and rewritten
        if isinstance(cache.get(key), dict):
            return cache[key]
    cache[key] = measure(training)
    if path is not None:
        try:
            atomic_write(path, lambda f: f.write(json.dumps(cache, indent=1).encode()))
        except OSError:
            pass
    return cache[key]


def resolve_precision(name: str, device: torch.device | str = "cpu", *,
            training: bool = False) -> Precision:
    """The :class:`Precision` that ``dtype=name`` means on ``device`` for this workload."""
    check_dtype(name)
    kind = torch.device(device).type
    if name == "fp16" and kind != "cuda":
        raise ValueError("dtype=fp16 needs device=cuda; on the CPU use bf16, fp32 or auto")
    if name != "auto":
        return Precision(name, "requested")
    if kind != "cpu":
        return Precision("fp32", f"auto on {kind}: fp32 (ask for bf16 or fp16)")
    flags = native_bf16()
    if not flags:
        return Precision("fp32", "auto: this CPU has no native bf16 "
                                 f"({', '.join(BF16_FLAGS)})")
    times = cached_measure(training)
    speedup = times["fp32_ms"] / max(times["bf16_ms"], 1e-9)
    what = f"{'training' if training else 'inference'} CNN"
    if speedup >= MIN_SPEEDUP:
        return Precision("bf16", f"auto: {', '.join(flags)}; bf16 {speedup:.2f}x fp32 on "
                                 f"the {what}")
    return Precision("fp32", f"auto: {', '.join(flags)}, but bf16 is only {speedup:.2f}x "
                             f"fp32 on the {what} (< {MIN_SPEEDUP})")


def fp32(fn: F_) -> F_:
    """Runs ``fn`` in float32 under autocast: autocast off, floating tensor arguments cast to
    float32.  Without autocast it is ``fn`` unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kinds = [k for k in ("cpu", "cuda") if torch.is_autocast_enabled(k)]
        if not kinds:
            return fn(*args, **kwargs)

        def cast(a: Any) -> Any:
            return a.float() if isinstance(a, Tensor) and a.is_floating_point() else a

        with torch.autocast(kinds[0], enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def add_dtype_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--dtype`` of the commands that run a model (None when not given: the command's
    ``default``, which the help names)."""
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help=f"compute dtype (default {default}; auto: bf16 where this CPU "
                             f"has native bf16 and it is faster, else fp32; fp16: CUDA only)")
