"""AFM, the attentional factorization machine (Xiao et al., IJCAI 2017; equations from shared/papers/afm-notes.md).

``y = w_0 + sum_i w_i + p^T sum_{i<j} a_ij (e_i ⊙ e_j)`` (eq. 6), with ``a_ij`` a softmax over the pairs of a
one-layer attention network (eq. 5). Pairs are over fields; a multi-valued field enters as its pooled vector.

The helpers here (``present_fields``, ``pair_mask``) are shared with ``ifm.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aim.data import PADDING, CTRData, FieldSpec
from aim.layers import AttentionNet, Dropout, FieldLinear, attentive_pair_sum, pair_index
from aim.models.base import CTRModel, register


def present_fields(batch: CTRData) -> Tensor | None:
    """[B, n] bool: does field i have a value in the row (``x_i != 0``)? None when every field always has one.

    Only a multi-valued field can be empty (all padding); its pairs then leave the softmax, as the papers
    enumerate pairs of non-zero features only (AFM's R_x, IFM's eq. 1).
    """
    if not batch.multi:
        return None
    present = torch.ones(len(batch), len(batch.fields), dtype=torch.bool, device=batch.device)
    columns = [i for i, f in enumerate(batch.fields) if f.multi_valued]
    present[:, columns] = torch.stack([(codes != PADDING).any(1) for codes in batch.multi], 1)
    return present


def pair_mask(present: Tensor | None, pairs: Tensor) -> Tensor | None:
    """[B, m] bool: both fields of each pair (rows of ``pairs`` [m, 2]) have a value; None when all always do."""
    if present is None:
        return None
    return present.index_select(1, pairs[:, 0]) & present.index_select(1, pairs[:, 1])


@register("afm")
class AFM(CTRModel):
    """Attentional FM: ``b + sum_i w_i + p^T sum_{i<j} a_ij (e_i ⊙ e_j)`` (eq. 6).

    ``attention_dim`` is the attention factor t (W is t × k, eq. 5); ``dropout`` drops entries of the pair-wise
    interaction layer (eq. 2); ``attention_l2`` is λ in eq. 8, an L2 on the attention matrix W.
    """

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        attention_dim: int = 16,
        dropout: float = 0.0,
        attention_l2: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        self.attention_l2 = attention_l2
        self.linear = FieldLinear(fields)
        self.attention = AttentionNet(self.embedding_dim, attention_dim)
        # p starts at all ones: AFM with p ≡ 1 and uniform attention is FM scaled by 1/m (notes, after eq. 3).
        self.projection = nn.Parameter(torch.ones(self.embedding_dim))
        self.dropout = Dropout(dropout)
        self.register_buffer("pairs", pair_index(self.num_fields), persistent=False)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        # p^T sum a_ij (e_i ⊙ e_j) = sum a_ij <p, e_i ⊙ e_j>: eq. 4-6 in one fused pass (aim.layers.attention)
        pairwise = attentive_pair_sum(
            embedded,
            self.pairs,
            self.attention,
            self.projection,
            pair_mask(present_fields(batch), self.pairs),
            dropout=self.dropout.p if self.training else 0.0,
        )
        if self.attention_l2:
            self.penalty = self.penalty + self.attention_l2 * self.attention.weight_l2()  # eq. 8
        return self.linear(batch) + pairwise
