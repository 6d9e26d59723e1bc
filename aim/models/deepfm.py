"""DeepFM (Guo et al., 2017): an FM and an MLP side by side on one shared set of embeddings.

Defaults are those of the BARS benchmark's best DeepFM on Frappe_x1 (FuxiCTR ``DeepFM_frappe_x1_001``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from aim.data import CTRData, FieldSpec
from aim.layers import MLP, FieldLinear
from aim.models.base import CTRModel, register
from aim.models.fm import fm_pairwise


@register("deepfm")
class DeepFM(CTRModel):
    """``b + sum_i w_i + sum_{i<j} <e_i, e_j> + MLP([e_1; ...; e_n])``: low-order terms by the FM, high by the MLP."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.2,
        batch_norm: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        self.linear = FieldLinear(fields)
        self.mlp = MLP(self.num_fields * self.embedding_dim, hidden_units, dropout=dropout, batch_norm=batch_norm)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        deep = self.mlp(embedded.flatten(1)).squeeze(-1)
        return self.linear(batch) + fm_pairwise(embedded) + deep
