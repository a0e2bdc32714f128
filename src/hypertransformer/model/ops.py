"""Small tensor operations shared by the model's modules.

The generated CNN keeps the activations of T tasks in a *grouped layout* ``[M, T·C, H, W]``
(channel block t holds task t), so that a task's generated convolution is one grouped
convolution and BatchNorm statistics per task and channel are plain per-channel statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hypertransformer.precision import fp32

CHANNELS_LAST = torch.channels_last
BN_EPS = 1e-3  # the epsilon of every BatchNorm of the model (TensorFlow's default)


def to_grouped(x: Tensor) -> Tensor:
    """[T, M, C, H, W] -> [M, T·C, H, W], channels-last in memory (the fast layout for the
    CPU's convolution and pooling kernels)."""
    t, m, c, h, w = x.shape
    return x.transpose(0, 1).reshape(m, t * c, h, w).contiguous(memory_format=CHANNELS_LAST)


def from_grouped(x: Tensor, num_tasks: int) -> Tensor:
    """[M, T·C, H, W] -> [T, M, C, H, W]."""
    m, tc, h, w = x.shape
    return x.view(m, num_tasks, tc // num_tasks, h, w).transpose(0, 1)


def grouped_to_batch(x: Tensor, num_tasks: int) -> Tensor:
    """[M, T·C, H, W] -> [T·M, C, H, W] (task-major), channels-last in memory."""
    return from_grouped(x, num_tasks).flatten(0, 1).contiguous(memory_format=CHANNELS_LAST)


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        return (size - kernel) // stride + 1
    raise ValueError(f"unknown padding {padding!r}; use same or valid")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for one spatial dimension (the odd
    pixel goes after)."""
    total = max((conv_output_size(size, kernel, stride, "same") - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> tuple[Tensor, tuple[int, int]]:
    """``(x', padding)`` such that ``conv2d(x', ..., padding=padding)`` (valid convolution
    with the symmetric ``padding``) gives TF "same" output: when TF pads symmetrically
    ``x' = x`` and the convolution pads, which saves a copy; otherwise ``x`` is padded here."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


def batch_mask(mask: Tensor | None) -> Tensor | None:
    """A [T, M] presence mask as the [M, T] mask of :func:`batch_norm`; None when every
    sample is present (the faster unmasked kernels give the same result)."""
    return None if mask is None or bool(mask.all()) else mask.T


def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, mask: Tensor | None = None,
               eps: float = BN_EPS) -> Tensor:
    """BatchNorm of grouped ``x`` [M, T·C, H, W] with the current batch's statistics per task
    and channel (never running averages); ``gamma``, ``beta`` are [T·C].

    ``mask`` [M, T] (True = present) leaves removed samples out of the statistics, so that a
    removed support sample has no influence at all on the generated weights.

    Under bf16 autocast the statistics are float32: ``F.batch_norm`` accumulates them in
    float32 for bf16 input, and the masked form runs in float32 (:func:`masked_batch_norm`).
    """
    if mask is None:
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
    return masked_batch_norm(x, gamma, beta, mask, eps)


@fp32
def masked_batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, mask: Tensor,
                      eps: float) -> Tensor:
    """:func:`batch_norm` with a presence mask, in float32."""
    m, tc, h, w = x.shape
    weight = mask.to(x.dtype).repeat_interleave(tc // mask.shape[1], dim=1)[:, :, None, None]
    count = (weight.sum(0) * h * w).clamp(min=1.0)  # [T·C, 1, 1]
    mean = (x * weight).sum(dim=(0, 2, 3), keepdim=True) / count
    var = ((x - mean).square() * weight).sum(dim=(0, 2, 3), keepdim=True) / count
    return (x - mean) * (var + eps).rsqrt() * gamma[:, None, None] + beta[:, None, None]
