"""The post-LayerNorm transformer of the weight generators (SPEC §3.4).

Everything is batched over a leading task dimension: sequences are ``[T, L, E]`` and key masks
``[T, L]`` (True = the token may be attended to).  Dense layers are Glorot-uniform with zero
bias, LayerNorm eps is 1e-6, masked keys get −1e8 added to their attention logits, and the
attention logits are scaled by 1/sqrt(per-head key depth), as in the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.precision import fp32

LARGE_NUMBER = 1e8


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """relu | gelu | lrelu (slope 0.1), the `transformer_nonlinearity` values."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "lrelu":
        return lambda x: F.leaky_relu(x, 0.1)
    raise ValueError(f"unknown transformer_nonlinearity {name!r}; use relu, gelu or lrelu")


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    """A Keras-style Dense layer: Glorot-uniform kernel, zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def inner_size(width: int, fraction: float, heads: int) -> int:
    """Total q/k, v or FFN dim: int(width·f) rounded up to a multiple of heads if f ≤ 3."""
    if fraction > 3.0:
        return int(fraction)
    dim = int(width * fraction)
    return math.ceil(dim / heads) * heads


@dataclass(frozen=True)
class TransformerParams:
    width: int  # E, the token width (also the MHA and FFN output width)
    query_key_dim: int
    value_dim: int
    inner_dim: int
    num_layers: int
    heads: int
    dropout: float = 0.0
    nonlinearity: str = "relu"
    attention: str = "softmax"  # softmax | sigmoid
    skip_last_nonlinearity: bool = False

    @classmethod
    def sized(cls, width: int, *, key_query: float, value: float, inner: float, num_layers: int,
              heads: int, **kwargs: object) -> TransformerParams:
        return cls(width=width, query_key_dim=inner_size(width, key_query, heads),
                   value_dim=inner_size(width, value, heads),
                   inner_dim=inner_size(width, inner, heads), num_layers=num_layers,
                   heads=heads, **kwargs)  # type: ignore[arg-type]


class MultiHeadAttention(nn.Module):
    def __init__(self, p: TransformerParams, kv_width: int | None = None) -> None:
        super().__init__()
        kv_width = p.width if kv_width is None else kv_width
        if p.query_key_dim % p.heads or p.value_dim % p.heads:
            raise ValueError(f"q/k dim {p.query_key_dim} and v dim {p.value_dim} must be "
                             f"multiples of heads={p.heads}")
        self.heads = p.heads
        self.sigmoid = p.attention == "sigmoid"
        if p.attention not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown transformer_activation {p.attention!r}")
        self.q = dense(p.width, p.query_key_dim)
        self.k = dense(kv_width, p.query_key_dim)
        self.v = dense(kv_width, p.value_dim)
        self.out = dense(p.value_dim, p.width)

    def _split(self, x: Tensor) -> Tensor:  # [T, L, D] -> [T, heads, L, D/heads]
        t, n, d = x.shape
        return x.view(t, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, kv: Tensor, key_mask: Tensor | None) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        bias = None
        if key_mask is not None:  # [T, Lk] True = visible -> additive [T, 1, 1, Lk]
            bias = (~key_mask).to(q.dtype)[:, None, None, :] * -LARGE_NUMBER
        if self.sigmoid:
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias
            out = torch.sigmoid(logits) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        t, h, n, dv = out.shape
        return self.out(out.transpose(1, 2).reshape(t, n, h * dv))


class FeedForward(nn.Module):
    def __init__(self, p: TransformerParams, activation: bool) -> None:
        super().__init__()
        self.fc1 = dense(p.width, p.inner_dim)
        self.fc2 = dense(p.inner_dim, p.width)
        self.act = activation_fn(p.nonlinearity) if activation else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(self.act(h) if self.act is not None else h)


class EncoderLayer(nn.Module):
    """x1 = LN(x + MHA(x)); x2 = LN(x1 + FFN(x1))."""

    def __init__(self, p: TransformerParams, last: bool) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(p)
        self.ffn = FeedForward(p, activation=not (last and p.skip_last_nonlinearity))
        self.norm1 = nn.LayerNorm(p.width, eps=1e-6)
        self.norm2 = nn.LayerNorm(p.width, eps=1e-6)
        self.dropout = nn.Dropout(p.dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, x, key_mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention to the encoder output, FFN; each post-LN."""

    def __init__(self, p: TransformerParams, memory_width: int, last: bool) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(p)
        self.cross_attention = MultiHeadAttention(p, kv_width=memory_width)
        self.ffn = FeedForward(p, activation=not (last and p.skip_last_nonlinearity))
        self.norm1 = nn.LayerNorm(p.width, eps=1e-6)
        self.norm2 = nn.LayerNorm(p.width, eps=1e-6)
        self.norm3 = nn.LayerNorm(p.width, eps=1e-6)
        self.dropout = nn.Dropout(p.dropout)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None,
                memory_mask: Tensor | None) -> Tensor:
        x = self.norm1(x + self.dropout(self.self_attention(x, x, self_mask)))
        x = self.norm2(x + self.dropout(self.cross_attention(x, memory, memory_mask)))
        return self.norm3(x + self.dropout(self.ffn(x)))


class Encoder(nn.Module):
    def __init__(self, p: TransformerParams) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(p, last=i == p.num_layers - 1) for i in range(p.num_layers))

    @fp32  # bf16 attention at these sizes is slower than fp32 (precision.py)
    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class Decoder(nn.Module):
    def __init__(self, p: TransformerParams, memory_width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(p, memory_width, last=i == p.num_layers - 1)
            for i in range(p.num_layers))

    @fp32
    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, self_mask, memory_mask)
        return x
