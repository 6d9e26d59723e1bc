"""Dropout on CPU from a counter-based generator, made where it is used.

On CPU, ``nn.Dropout`` draws one Bernoulli sample per element (``aten::bernoulli_``): 11 ms for a [4096, 400]
activation on 2 cores, 37 % of a DeepFM training step (torch profiler, Frappe shapes). Here a draw takes one
64-bit key from torch's generator (so ``torch.manual_seed`` makes it reproducible), and element ``i`` of the
draw gets a 32-bit word that is a hash of ``i`` and the key (``keyed_words``). The element is kept where the
word's top 16 bits are at least ``p`` quantised to 1/65536 (p = 0.2 becomes 0.199997), and a kept element is
scaled by the exact inverse of the quantised keep rate, so the expectation is preserved exactly.

Because a word depends only on the key and the index, the native kernel (``csrc/batch_norm_relu_dropout.cpp``)
makes the mask in registers inside the pass that uses it: no random numbers are stored, and the backward remakes
the mask from the key. ``keyed_words`` here is the same generator in torch ops, for where the kernel is not built
(and as its reference in the tests). On other devices dropout is ``F.dropout`` (CUDA's is fused and cheap).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aim.layers.native import mlp_kernel

_LEVELS = 1 << 16  # resolution of the drop probability
_LOW32 = 0xFFFFFFFF


def _drop_level(p: float) -> int:
    """``p`` quantised to a count of the 65536 levels; refuses what is not a probability in [0, 1)."""
    drop = round(p * _LEVELS)
    if not (0 <= p < 1 and drop < _LEVELS):
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return drop


def dropout_draw(p: float) -> tuple[int, int, float]:
    """One dropout draw: (key, drop level, scale). The key is one 64-bit word from torch's CPU generator (a signed
    int64, as torch's ops and profiler want their int arguments; the kernel reads its bits as unsigned); an element
    is kept where its word's top 16 bits are >= the drop level, then multiplied by the scale."""
    drop = _drop_level(p)
    key = int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64))
    return key, drop, _LEVELS / (_LEVELS - drop)


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``x * constant mod 2**32`` for int64 ``x`` in [0, 2**32), split so that no product overflows int64."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _LOW32


def _mix32(x: Tensor) -> Tensor:
    """lowbias32 (hash-prospector) on int64 tensors holding 32-bit words: the kernel's ``mix32``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_words(key: int, n: int, first: int = 0) -> Tensor:
    """The generator in torch ops: the 32-bit words (int64) of elements ``first .. first + n - 1`` under ``key``,
    ``mix32(mix32(lo(i) ^ lo(key)) ^ hi(key) ^ hi(i))``. The native kernel makes the same words in registers."""
    i = torch.arange(first, first + n, dtype=torch.int64)
    return _mix32(_mix32((i & _LOW32) ^ (key & _LOW32)) ^ ((key >> 32) & _LOW32) ^ (i >> 32))


def dropout_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """A tensor of ``shape``: 0 with probability ``round(p·65536)/65536``, else ``1 / keep rate``.

    On CPU it is the keyed draw above (the native kernel writes it where built); on another device it is one
    Bernoulli draw per element, with ``p`` exact (the device's own generator is fast).
    """
    if torch.device(device).type != "cpu":
        _drop_level(p)
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p).div_(1 - p)
    key, drop, scale = dropout_draw(p)
    n = math.prod(shape)
    lib = mlp_kernel()
    if lib is None:
        return ((keyed_words(key, n) >> 16) >= drop).view(shape).to(dtype).mul_(scale)
    mask = torch.empty(shape, dtype=torch.float32)
    lib.aim_dropout(None, key, drop, scale, 0, n, torch.get_num_threads(), mask.data_ptr())
    # Another dtype (bf16 under autocast, float64 in tests) gets the scale rounded to that dtype, as the torch path
    return mask if dtype == torch.float32 else (mask != 0).to(dtype).mul_(scale)


class _NativeDropout(torch.autograd.Function):
    """``x * mask`` for float32 ``x`` on CPU in the kernel, and the same for the gradient: the mask is remade from
    the key, never stored."""

    @staticmethod
    def forward(ctx, x: Tensor, key: int, drop: int, scale: float) -> Tensor:
        ctx.draw = key, drop, scale
        return _apply(x, key, drop, scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        return _apply(grad.contiguous(), *ctx.draw), None, None, None


def _apply(x: Tensor, key: int, drop: int, scale: float) -> Tensor:
    out = torch.empty_like(x)
    mlp_kernel().aim_dropout(x.data_ptr(), key, drop, scale, 0, x.numel(), torch.get_num_threads(), out.data_ptr())
    return out


class Dropout(nn.Module):
    """``nn.Dropout(p)`` with the keyed CPU mask above; identity in eval mode or when ``p`` is 0."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        _drop_level(p)  # fail at construction, not at the first training step
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if x.dtype == torch.float32 and mlp_kernel() is not None:
            return _NativeDropout.apply(x.contiguous(), *dropout_draw(self.p))
        return x * dropout_mask(x.shape, self.p, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"
