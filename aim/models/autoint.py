"""AutoInt and AutoInt+ (Song et al., 2019): stacked multi-head self-attention over the field embeddings.

AutoInt: ``logit = w^T [h_1; ...; h_n] + b`` where ``h`` are the fields after the interacting layers.
AutoInt+: the same plus an MLP on the raw embeddings, in parallel (the paper's "AutoInt+", section 5.5).

``attention_dim`` is the width of a field after a layer, all heads together (``num_heads * head_dim``), as in
FuxiCTR >= 1.2. Defaults are the BARS benchmark's best configs on Frappe_x1 (FuxiCTR ``AutoInt_frappe_x1_005``
for AutoInt, ``AutoInt_frappe_x1_006`` for AutoInt+).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import MLP, FP32Linear, MultiHeadSelfAttention
from aim.models.base import CTRModel, register


class InteractingLayer(MultiHeadSelfAttention):
    """The shared interacting layer, plus FuxiCTR's optional LayerNorm between the residual sum and the ReLU."""

    def __init__(
        self,
        in_dim: int,
        head_dim: int,
        heads: int,
        residual: bool = True,
        scaled: bool = False,
        layer_norm: bool = False,
    ) -> None:
        super().__init__(in_dim, head_dim, heads, residual=residual, scaled=scaled)
        self.norm = nn.LayerNorm(self.out_dim) if layer_norm else None

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is None:
            return self.attend(x, relu=True)
        return F.relu(self.norm(self.attend(x)))  # the norm before the ReLU, which it cannot undo


@register("autoint")
class AutoInt(CTRModel):
    """Self-attentive feature interactions: ``attention_layers`` interacting layers, then one linear output."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        attention_layers: int = 6,
        num_heads: int = 4,
        attention_dim: int = 128,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} is not divisible by num_heads={num_heads}")
        head_dim = attention_dim // num_heads
        self.attention = nn.Sequential(
            *(
                InteractingLayer(
                    self.embedding_dim if layer == 0 else attention_dim,
                    head_dim,
                    num_heads,
                    residual=use_residual,
                    scaled=use_scale,
                    layer_norm=layer_norm,
                )
                for layer in range(attention_layers)
            )
        )
        width = attention_dim if attention_layers else self.embedding_dim
        self.output = FP32Linear(self.num_fields * width, 1)

    def interact(self, embedded: Tensor) -> Tensor:
        """The logit of the attention part: [B, n, d] -> [B]."""
        return self.output(self.attention(embedded).flatten(1)).squeeze(-1)

    def forward(self, batch: CTRData) -> Tensor:
        return self.interact(self.embed(batch))


@register("autoint_plus")
class AutoIntPlus(AutoInt):
    """AutoInt+: AutoInt's logit plus that of an MLP on the concatenated embeddings."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        attention_layers: int = 5,
        use_scale: bool = True,
        layer_norm: bool = True,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.1,
        batch_norm: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            fields, attention_layers=attention_layers, use_scale=use_scale, layer_norm=layer_norm, **kwargs
        )
        self.mlp = MLP(self.num_fields * self.embedding_dim, hidden_units, dropout=dropout, batch_norm=batch_norm)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        return self.interact(embedded) + self.mlp(embedded.flatten(1)).squeeze(-1)
