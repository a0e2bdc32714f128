"""Feature extractors that turn support activations into per-sample vectors (SPEC §3.1, §3.2).

Both are ordinary trained modules shared by all tasks; they take ``[B, C, H, W]`` and return
``[B, F]``.  Convolutions use TensorFlow's padding rules ("same" pads the extra row/column at
the bottom/right when the total padding is odd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        return (size - kernel) // stride + 1
    raise ValueError(f"unknown padding {padding!r}; use same or valid")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for one spatial dimension."""
    total = max((conv_output_size(size, kernel, stride, "same") - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Pads ``x`` [..., H, W] so that a valid convolution gives TF "same" output."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


class Conv2dTF(nn.Conv2d):
    """A convolution with TF "same"/"valid" padding (bias on, PyTorch default init)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 padding: str) -> None:
        super().__init__(in_channels, out_channels, kernel, stride)
        if padding not in ("same", "valid"):
            raise ValueError(f"unknown padding {padding!r}; use same or valid")
        self.tf_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_padding == "same":
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def per_task_batch_norm(x: Tensor, num_tasks: int, weight: Tensor, bias: Tensor,
                        eps: float = 1e-3) -> Tensor:
    """BatchNorm of ``x`` [T·M, C, H, W] (task-major) with each task's own batch statistics."""
    tm, c, h, w = x.shape
    grouped = x.view(num_tasks, tm // num_tasks, c, h, w).transpose(0, 1)
    grouped = grouped.reshape(tm // num_tasks, num_tasks * c, h, w)
    out = F.batch_norm(grouped, None, None, weight.repeat(num_tasks), bias.repeat(num_tasks),
                       training=True, eps=eps)
    return out.view(tm // num_tasks, num_tasks, c, h, w).transpose(0, 1).reshape(tm, c, h, w)


SHARED_EXTRACTORS = {"2-layer": (2, False), "3-layer": (3, False), "4-layer": (4, False),
                     "2-layer-bn": (2, True), "3-layer-bn": (3, True)}


class SharedFeatureExtractor(nn.Module):
    """``layers`` 3×3 convs (stride 2 but the last), each ReLU (then BatchNorm with batch
    statistics in the ``-bn`` variants), then global average pooling."""

    def __init__(self, name: str, in_channels: int, dim: int, padding: str,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if name not in SHARED_EXTRACTORS:
            raise ValueError(f"unknown shared_feature_extractor {name!r}; use none or one of "
                             f"{', '.join(SHARED_EXTRACTORS)}")
        layers, use_bn = SHARED_EXTRACTORS[name]
        self.convs = nn.ModuleList(
            Conv2dTF(in_channels if i == 0 else dim, dim, 3, 2 if i < layers - 1 else 1, padding)
            for i in range(layers))
        # BatchNorm γ, β per conv; statistics always from the current task's batch.
        self.bn_weight = nn.Parameter(torch.ones(layers, dim)) if use_bn else None
        self.bn_bias = nn.Parameter(torch.zeros(layers, dim)) if use_bn else None
        self.dropout = nn.Dropout(dropout)
        self.dim = dim

    def forward(self, x: Tensor, num_tasks: int) -> Tensor:
        """``x`` [T·S, C, H, W] (task-major) -> [T·S, dim]."""
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if self.bn_weight is not None and self.bn_bias is not None:
                x = per_task_batch_norm(x, num_tasks, self.bn_weight[i], self.bn_bias[i])
        return self.dropout(x.mean(dim=(-2, -1)))


class LayerFeatureExtractor(nn.Module):
    """The per-layer ("local") feature extractor of SPEC §3.2.

    ``layers`` valid k×k convs of width ``dim`` (stride 2 but the last).  If the input is
    smaller than k, k shrinks to the input size and every stride is 1.  A conv is skipped
    (and so are the rest) when the current map is smaller than k.  The output concatenates
    each applied conv's spatial mean, pre-activation (post-ReLU with ``nonlinear``); the next
    conv consumes the ReLU.
    """

    def __init__(self, in_channels: int, in_size: int, dim: int, layers: int, kernel: int,
                 nonlinear: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        stride = 2
        if in_size < kernel:
            kernel, stride = in_size, 1
        self.kernel = kernel
        self.nonlinear = nonlinear
        convs = []
        size = in_size
        for i in range(layers):
            if size < kernel:
                break
            s = stride if i < layers - 1 else 1
            convs.append(nn.Conv2d(in_channels if i == 0 else dim, dim, kernel, s))
            size = conv_output_size(size, kernel, s, "valid")
        self.convs = nn.ModuleList(convs)
        self.num_features = dim * len(convs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        features = []
        for conv in self.convs:
            pre = conv(x)
            x = F.relu(pre)
            features.append((x if self.nonlinear else pre).mean(dim=(-2, -1)))
        return self.dropout(torch.cat(features, dim=-1))
