"""xDeepFM (Lian et al., 2018): linear terms + a compressed interaction network (CIN) + an MLP.

Defaults are those of the BARS benchmark's best xDeepFM on Frappe_x1 (FuxiCTR ``xDeepFM_frappe_x1_005``).
As in FuxiCTR, every CIN feature map both feeds the next layer and is pooled into the output (no
"split half"), and the CIN has no activation (the paper's best setting was the identity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import MLP, FieldLinear, FP32Linear
from aim.models.base import CTRModel, register


class CIN(nn.Module):
    """Compressed interaction network: ``X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i ⊙ X^0_j) + b^k_h``.

    [B, m, d] -> [B, sum(layer_units)]: each layer's H_k feature maps, sum-pooled over the embedding dimension.
    """

    def __init__(self, num_fields: int, layer_units: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        previous = num_fields
        for units in layer_units:
            # weight[h, i * m + j] is W^{k,h}_{ij}: i runs over the previous layer's maps, j over the fields.
            self.layers.append(nn.Linear(previous * num_fields, units))
            previous = units
        self.out_dim = sum(layer_units)

    def forward(self, embedded: Tensor) -> Tensor:
        # Fields last ([B, d, m]): then the (i, j) sum of a layer is one Linear over the last dim, for all d at once.
        x0 = embedded.transpose(1, 2)
        x = x0
        pooled = []
        for layer in self.layers:
            outer = (x.unsqueeze(-1) * x0.unsqueeze(-2)).flatten(2)  # [B, d, H_{k-1} * m]
            x = layer(outer)  # [B, d, H_k]
            pooled.append(x.sum(1))
        return torch.cat(pooled, 1)


@register("xdeepfm")
class XDeepFM(CTRModel):
    """``b + sum_i w_i + w^T CIN(E) + MLP([e_1; ...; e_n])``; ``hidden_units=()`` leaves the MLP out (LR + CIN)."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        cin_layer_units: Sequence[int] = (64,),
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.2,
        batch_norm: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        if not cin_layer_units:
            raise ValueError("xDeepFM needs at least one CIN layer (cin_layer_units is empty)")
        self.linear = FieldLinear(fields)
        self.cin = CIN(self.num_fields, cin_layer_units)
        self.cin_out = FP32Linear(self.cin.out_dim, 1)
        in_dim = self.num_fields * self.embedding_dim
        self.mlp = MLP(in_dim, hidden_units, dropout=dropout, batch_norm=batch_norm) if hidden_units else None

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        logits = self.linear(batch) + self.cin_out(self.cin(embedded)).squeeze(-1)
        if self.mlp is not None:
            logits = logits + self.mlp(embedded.flatten(1)).squeeze(-1)
        return logits
