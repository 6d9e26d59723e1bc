"""The multi-layer perceptron that deep CTR models put on top of the embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aim.layers.dropout import Dropout


class FP32Linear(nn.Linear):
    """A linear layer that stays in float32 under autocast: for the layer that makes the logit.

    Under bf16 autocast a plain Linear returns a bf16 logit, 8 bits of mantissa: logits between 4 and 8 fall
    on a grid of 1/32, so many test rows tie, and AUC and the loss's gradient both pay for it. This layer
    is a [B, h] x [h, 1] product, so float32 costs nothing here.
    """

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)  # float32 weights: a float32 logit


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer, then a linear output (if ``out_dim``)."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int | None = 1,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(nn.Linear(in_dim, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            # In place: neither Linear's nor BatchNorm's backward reads its output, and a fresh [B, 400] is one
            # more pass through memory.
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = width
        if out_dim is not None:
            layers.append(FP32Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.batch_norm = batch_norm
        self.out_dim = out_dim if out_dim is not None else in_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not self.batch_norm:
            return self.net(x)
        # Eval: each BatchNorm is an affine map with its running statistics, folded into the Linear before it
        # (a [width, in] rescale per call, cheap), which saves a pass over every [B, width] activation.
        layers = list(self.net)
        for k, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm1d):
                continue
            if isinstance(layer, nn.Linear) and k + 1 < len(layers) and isinstance(layers[k + 1], nn.BatchNorm1d):
                norm = layers[k + 1]
                scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
                x = F.linear(x, layer.weight * scale.unsqueeze(1), (layer.bias - norm.running_mean) * scale + norm.bias)
            else:
                x = layer(x)
        return x
