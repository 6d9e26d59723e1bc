"""Attention blocks: AFM's attention network over interactions, AutoInt's multi-head self-attention."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class AttentionNet(nn.Module):
    """AFM's attention network: the score ``a'_ij = h^T ReLU(W v_ij + b)`` of each of the m interactions.

    Returns the scores before the softmax: AFM and IFM mask empty pairs first, and IFM divides by a temperature.
    """

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)  # W, b
        self.score = nn.Linear(attention_dim, 1, bias=False)  # h

    def forward(self, interactions: Tensor) -> Tensor:
        """``interactions`` [B, m, d] -> scores [B, m]."""
        return self.score(F.relu(self.project(interactions))).squeeze(-1)

    def weight_l2(self) -> Tensor:
        """``||W||²``, the attention L2 of AFM's eq. 8."""
        return self.project.weight.square().sum()


class MultiHeadSelfAttention(nn.Module):
    """One AutoInt interacting layer: multi-head self-attention over fields with a residual connection.

    [B, n, d_in] -> [B, n, heads * head_dim]; ``ReLU(concat_h(attention_h) + W_res e)``.
    """

    def __init__(
        self, in_dim: int, head_dim: int, heads: int, residual: bool = True, scaled: bool = False
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scaled = heads, head_dim, scaled
        self.qkv = nn.Linear(in_dim, 3 * heads * head_dim, bias=False)  # W_Q, W_K, W_V of every head
        self.residual = nn.Linear(in_dim, heads * head_dim, bias=False) if residual else None

    @property
    def out_dim(self) -> int:
        return self.heads * self.head_dim

    def forward(self, x: Tensor) -> Tensor:
        batch, fields, _ = x.shape
        q, k, v = self.qkv(x).view(batch, fields, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # The AutoInt paper uses the plain inner product <q, k>; `scaled` divides by sqrt(head_dim).
        scale = None if self.scaled else 1.0
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, heads, n, head_dim]
        out = out.transpose(1, 2).reshape(batch, fields, self.out_dim)
        if self.residual is not None:
            out = out + self.residual(x)
        return F.relu(out)
