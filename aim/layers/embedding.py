"""Field embeddings: every field's codes -> one vector per field, ``E`` of shape [B, n_fields, dim].

All fields share one table with per-field row offsets, so the single-valued fields of a batch cost one
gather. A multi-valued field gathers its padded codes from the same table and mean-pools the real ones
(padding, code 0, is masked out; a row with no codes at all gives a zero vector, not NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aim.data import PADDING, CTRData, FieldSpec


def masked_mean(vectors: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``vectors`` [B, L, d] over the positions where ``mask`` [B, L] is true; zero where none is."""
    mask = mask.to(vectors.dtype).unsqueeze(-1)
    return (vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class FieldEmbedding(nn.Module):
    """Codes of all fields -> [B, n_fields, dim], fields in the order given."""

    def __init__(self, fields: Sequence[FieldSpec], dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.dim = dim
        sizes = torch.tensor([f.vocab_size for f in self.fields], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        self.weight = nn.Parameter(torch.empty(int(sizes.sum()), dim))
        nn.init.normal_(self.weight, std=init_std)
        is_multi = torch.tensor([f.multi_valued for f in self.fields])
        self.register_buffer("single_offsets", offsets[~is_multi].to(torch.int32), persistent=False)
        self.register_buffer("multi_offsets", offsets[is_multi].to(torch.int32), persistent=False)
        # The layer computes singles first, then multis; put them back in field order only if they differ.
        order = torch.cat([torch.nonzero(~is_multi).flatten(), torch.nonzero(is_multi).flatten()])
        inverse = torch.argsort(order)
        identity = bool(torch.equal(inverse, torch.arange(len(self.fields))))
        self.register_buffer("field_order", None if identity else inverse, persistent=False)

    def forward(self, batch: CTRData) -> Tensor:
        parts = [F.embedding(batch.single + self.single_offsets, self.weight)]
        for j, codes in enumerate(batch.multi):
            vectors = F.embedding(codes + self.multi_offsets[j], self.weight)
            parts.append(masked_mean(vectors, codes != PADDING).unsqueeze(1))
        embedded = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if self.field_order is not None:
            embedded = embedded.index_select(1, self.field_order)
        return embedded


class NumericEmbedding(nn.Module):
    """AutoInt's embedding of a numeric field, ``e = v * x``: one learned vector per field scaled by its value."""

    def __init__(self, num_fields: int, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_fields, dim))
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, values: Tensor) -> Tensor:
        """``values`` [B, num_fields] (float) -> [B, num_fields, dim]."""
        return values.unsqueeze(-1) * self.weight


class FieldLinear(nn.Module):
    """The first-order term ``b + sum_i w_{x_i}`` (a multi-valued field contributes its pooled weight)."""

    def __init__(self, fields: Sequence[FieldSpec]) -> None:
        super().__init__()
        self.weights = FieldEmbedding(fields, 1, init_std=1e-4)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: CTRData) -> Tensor:
        return self.weights(batch).sum((1, 2)) + self.bias
