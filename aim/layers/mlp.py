"""The multi-layer perceptron that deep CTR models put on top of the embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aim.layers.dropout import Dropout, dropout_draw
from aim.layers.native import FLOAT_SUFFIX, mlp_kernel


class FP32Linear(nn.Linear):
    """A linear layer that stays in float32 under autocast: for the layer that makes the logit.

    Under bf16 autocast a plain Linear returns a bf16 logit, 8 bits of mantissa: logits between 4 and 8 fall
    on a grid of 1/32, so many test rows tie, and AUC and the loss's gradient both pay for it. With one output
    (the logit) on CPU the native kernel does the product from x as it is, float32 or bf16, in float32
    (``_OutputUnit``); otherwise x is cast to float32 first.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (self.out_features == 1 and x.device.type == "cpu" and x.dim() == 2 and x.dtype in FLOAT_SUFFIX
                and self.weight.dtype == torch.float32 and mlp_kernel() is not None):
            return _OutputUnit.apply(x.contiguous(), self.weight.view(-1), self.bias)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)  # float32 weights: a float32 logit



class _BatchNormReLUDropout(torch.autograd.Function):
    """Training batch norm -> ReLU -> dropout of a float32 or bf16 [B, H] on CPU, in the native kernel: two passes
    forward, two backward, where torch's separate ops take about eight each way
    (``csrc/batch_norm_relu_dropout.cpp``). Returns y (z's dtype) and, not differentiable, the batch's mean and
    biased variance in float32 (for the running statistics)."""

    @staticmethod
    def forward(ctx, z: Tensor, gamma: Tensor, beta: Tensor, key: int, drop: int, scale: float,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        function = getattr(mlp_kernel(), f"aim_bnrd_forward_{FLOAT_SUFFIX[z.dtype]}")
        batch, width = z.shape
        y = torch.empty_like(z)
        mean, rstd, var = (gamma.new_empty(width) for _ in range(3))
        function(z.data_ptr(), gamma.data_ptr(), beta.data_ptr(), key, drop, scale, eps, batch, width,
                 torch.get_num_threads(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), var.data_ptr())
        ctx.save_for_backward(y, z, mean, rstd, gamma)
        ctx.scale = scale
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor | None, ...]:
        y, z, mean, rstd, gamma = ctx.saved_tensors
        grad = grad.to(z.dtype).contiguous()
        batch, width = z.shape
        dz = torch.empty_like(z)
        dgamma, dbeta = gamma.new_empty(width), gamma.new_empty(width)
        function = getattr(mlp_kernel(), f"aim_bnrd_backward_{FLOAT_SUFFIX[z.dtype]}")
        function(grad.data_ptr(), y.data_ptr(), z.data_ptr(), mean.data_ptr(), rstd.data_ptr(), gamma.data_ptr(),
                 ctx.scale, batch, width, torch.get_num_threads(), dz.data_ptr(), dgamma.data_ptr(),
                 dbeta.data_ptr())
        return dz, dgamma, dbeta, None, None, None, None


class _OutputUnit(torch.autograd.Function):
    """``x @ w + b`` [B, 1] in float32 for a float32 or bf16 x [B, H] on CPU, in the native kernel: no float32 copy
    of a bf16 x each way, and the backward's outer product ``g wᵀ`` is not a matrix product with K = 1."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        batch, width = x.shape
        out = weight.new_empty(batch, 1)
        getattr(mlp_kernel(), f"aim_unit_forward_{FLOAT_SUFFIX[x.dtype]}")(
            x.data_ptr(), weight.data_ptr(), 0.0 if bias is None else float(bias), batch, width,
            torch.get_num_threads(), out.data_ptr())
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g = grad.float().contiguous().view(-1)
        batch, width = x.shape
        dx, dw = torch.empty_like(x), torch.empty_like(weight)
        getattr(mlp_kernel(), f"aim_unit_backward_{FLOAT_SUFFIX[x.dtype]}")(
            x.data_ptr(), weight.data_ptr(), g.data_ptr(), batch, width, torch.get_num_threads(), dx.data_ptr(),
            dw.data_ptr())
        return dx, dw, g.sum().view(1) if ctx.has_bias else None


def fused_hidden_layer(z: Tensor, norm: nn.BatchNorm1d, dropout: Dropout | None) -> Tensor | None:
    """``dropout(relu(norm(z)))`` in training mode through the native kernel, updating ``norm``'s running statistics
    as torch does; None where the kernel does not apply (not a float32 or bf16 z on CPU, no kernel, other settings).
    Under bf16 autocast z is bf16 and so is the result, as with torch's batch norm; statistics stay float32."""
    if (z.device.type != "cpu" or z.dtype not in FLOAT_SUFFIX or z.dim() != 2 or z.shape[0] < 2
            or not norm.affine or not norm.track_running_stats or norm.momentum is None
            or norm.weight.dtype != torch.float32 or mlp_kernel() is None):
        return None
    key, drop, scale = 0, 0, 1.0  # drop level 0: no dropout
    if dropout is not None and dropout.p > 0:
        key, drop, scale = dropout_draw(dropout.p)
    y, mean, var = _BatchNormReLUDropout.apply(z.contiguous(), norm.weight, norm.bias, key, drop, scale, norm.eps)
    with torch.no_grad():  # torch's update: an exponential average, with the unbiased variance
        norm.running_mean.lerp_(mean, norm.momentum)
        norm.running_var.lerp_(var * (z.shape[0] / (z.shape[0] - 1)), norm.momentum)
        norm.num_batches_tracked.add_(1)
    return y


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer, then a linear output (if ``out_dim``).

    In training on CPU (float32, or bf16 under autocast), a hidden layer's batch norm, ReLU and dropout run as one
    native op (``fused_hidden_layer``); the modules stay as they are, so checkpoints and ``state_dict`` do not
    change.
    """

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
            # Before a batch norm a bias does nothing: the norm subtracts the batch mean, bias included, and its own
            # shift takes the bias's place. Without it the product is a plain mm (no [B, width] bias copy) and the
            # backward has no bias reduction.
            layers.append(nn.Linear(in_dim, width, bias=not batch_norm))
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
        if self.training and self.batch_norm:
            return self._train_forward(x)
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
                # The Linear has no bias (see __init__): norm(W x) = (scale W) x + (beta - mean * scale)
                x = F.linear(x, layer.weight * scale.unsqueeze(1), norm.bias - norm.running_mean * scale)
            else:
                x = layer(x)
        return x

    def _train_forward(self, x: Tensor) -> Tensor:
        """Training with batch norm: a hidden layer's norm, ReLU and dropout go to the native kernel where it can."""
        layers = list(self.net)
        k = 0
        while k < len(layers):
            layer = layers[k]
            x = layer(x)
            k += 1
            if isinstance(layer, nn.Linear) and k < len(layers) and isinstance(layers[k], nn.BatchNorm1d):
                dropout = layers[k + 2] if k + 2 < len(layers) and isinstance(layers[k + 2], Dropout) else None
                fused = fused_hidden_layer(x, layers[k], dropout)
                if fused is not None:
                    x = fused
                    k += 2 + (dropout is not None)  # the norm, the ReLU and the dropout are done
        return x
