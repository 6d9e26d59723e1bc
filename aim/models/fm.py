"""The factorization-machine family: LR, FM, FwFM, FFM (AIM paper, section 3.1).

All share the first-order term ``b + sum_i w_i``; they differ in how a pair of fields interacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import FieldEmbedding, FieldLinear, pair_index
from aim.models.base import CTRModel, register


def fm_pairwise(embedded: Tensor) -> Tensor:
    """``sum_{i<j} <e_i, e_j>`` for [B, n, d] in O(n·d): ½ · sum_d((sum_i e_i)² − sum_i e_i²)."""
    square_of_sum = embedded.sum(1).square()
    sum_of_squares = embedded.square().sum(1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(-1)


@register("lr")
class LogisticRegression(CTRModel):
    """First-order terms only: the floor that interaction models must beat."""

    def __init__(self, fields: Sequence[FieldSpec], **kwargs) -> None:
        kwargs.pop("embedding_dim", None)  # accepted so that one shared setting serves every model
        super().__init__(fields, embedding_dim=1, **kwargs)
        del self.embedding  # LR has no factors; FieldLinear holds its weights
        self.linear = FieldLinear(fields)

    def forward(self, batch: CTRData) -> Tensor:
        self.penalty = 0.0
        return self.linear(batch)


@register("fm")
class FM(CTRModel):
    """Factorization machine: ``b + sum_i w_i + sum_{i<j} <e_i, e_j>``."""

    def __init__(self, fields: Sequence[FieldSpec], **kwargs) -> None:
        super().__init__(fields, **kwargs)
        self.linear = FieldLinear(fields)

    def forward(self, batch: CTRData) -> Tensor:
        return self.linear(batch) + fm_pairwise(self.embed(batch))


@register("fwfm")
class FwFM(CTRModel):
    """Field-weighted FM: each pair of fields has its own weight, ``sum_{i<j} r_ij <e_i, e_j>``."""

    def __init__(self, fields: Sequence[FieldSpec], **kwargs) -> None:
        super().__init__(fields, **kwargs)
        self.linear = FieldLinear(fields)
        self.pair_weights = nn.Parameter(torch.ones(self.num_fields * (self.num_fields - 1) // 2))
        self.register_buffer("pairs", pair_index(self.num_fields), persistent=False)

    def field_weights(self) -> Tensor:
        """The symmetric [n, n] matrix R of pair weights r_ij, zero on the diagonal."""
        n = self.num_fields
        weights = torch.zeros(n, n, dtype=self.pair_weights.dtype, device=self.pair_weights.device)
        weights = weights.index_put((self.pairs[:, 0], self.pairs[:, 1]), self.pair_weights)
        return weights + weights.T

    def forward(self, batch: CTRData) -> Tensor:
        # sum_{i<j} r_ij <e_i, e_j> = ½ sum_d e_d^T R e_d: one [n, n] x [n, d] product per sample.
        embedded = self.embed(batch)
        mixed = torch.matmul(self.field_weights(), embedded)  # [B, n, d]
        return self.linear(batch) + 0.5 * (embedded * mixed).sum((1, 2))


@register("ffm")
class FFM(CTRModel):
    """Field-aware FM: a feature has one vector per other field, ``sum_{i<j} <v_{i,f_j}, v_{j,f_i}>``."""

    def __init__(self, fields: Sequence[FieldSpec], **kwargs) -> None:
        super().__init__(fields, **kwargs)
        n, d = self.num_fields, self.embedding_dim
        self.embedding = FieldEmbedding(self.fields, n * d)  # vector for field f at columns [f*d, (f+1)*d)
        self.linear = FieldLinear(fields)
        pairs = pair_index(n)
        i, j = pairs[:, 0], pairs[:, 1]
        # Rows of the [B, n*n, d] view: v_{i, f_j} is row i*n + j; v_{j, f_i} is row j*n + i.
        self.register_buffer("left", i * n + j, persistent=False)
        self.register_buffer("right", j * n + i, persistent=False)

    def forward(self, batch: CTRData) -> Tensor:
        vectors = self.embed(batch).view(len(batch), self.num_fields * self.num_fields, self.embedding_dim)
        pairwise = (vectors.index_select(1, self.left) * vectors.index_select(1, self.right)).sum((1, 2))
        return self.linear(batch) + pairwise
