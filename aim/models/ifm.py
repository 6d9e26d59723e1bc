"""Interaction-aware models: IFM, INN and DeepIFM (Hong, Huang & Chen, AAAI 2019; shared/papers/ifm-paper.md).

The interaction-aware mechanism (IAM, eq. 4) weighs each pair (i, j) twice:

* feature aspect ``T_ij = softmax(a'_ij / τ)`` over the pairs, ``a'_ij = h^T ReLU(W (V_i ⊙ V_j) + b)`` (eq. 5);
* field aspect ``F_{f_i,f_j} = D^T (U_{f_i} ⊙ U_{f_j})`` (eq. 6), a K-vector per pair of fields from a field
  embedding U [n, K_F] and a factor matrix D [K_F, K].

IFM sums ``T_ij <F_{f_i,f_j}, V_i ⊙ V_j>`` (eq. 9 / 13); INN feeds the concatenated ``T_ij F ⊙ (V_i ⊙ V_j)`` to an
MLP (eq. 14-15); DeepIFM is DeepFM with the FM part replaced by IFM. Pairs are over fields (each field is one
non-zero feature; a multi-valued field enters as its pooled vector), so ``f_i`` is simply field i.

Sampling (section "Sampling"): per mini-batch, c pairs are drawn without replacement with probability
proportional to ``||F_{f_i,f_j}||`` and the attention is computed for those only, so the softmax of eq. 5 runs
over the c sampled pairs. The paper describes it as a training-time saving; in eval mode all pairs are scored
(``sample_inference="all"``, deterministic predictions), or the c pairs of largest ``||F||`` (``"top"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import (
    MLP,
    AttentionNet,
    Dropout,
    FieldLinear,
    attentive_pair_sum,
    elementwise_products,
    masked_softmax,
    pair_index,
)
from aim.models.afm import pair_mask, present_fields
from aim.models.base import CTRModel, register

SampleInference = Literal["all", "top"]


class InteractionAwareModel(CTRModel):
    """What IFM, INN and DeepIFM share: embeddings V, field embeddings U, factor matrix D, attention (W, b, h).

    ``attention_dim`` is K_a, ``temperature`` τ (the paper uses 10), ``field_factors`` K_F (eq. 6, K_F ≪ K by
    eq. 10), ``dropout`` drops entries of the pair-wise interaction layer, ``field_l2`` is λ_F (an L2 on U and
    D) and ``attention_l2`` an L2 on W as in AFM.
    """

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        attention_dim: int = 16,
        temperature: float = 10.0,
        field_factors: int = 8,
        dropout: float = 0.0,
        field_l2: float = 0.0,
        attention_l2: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.field_l2 = field_l2
        self.attention_l2 = attention_l2
        self.linear = FieldLinear(fields)
        self.attention = AttentionNet(self.embedding_dim, attention_dim)
        # U and D start near F ≡ 1 (U ≈ 1, D ≈ 1/K_F), i.e. near FM's all-ones vector of eq. 3: a product of
        # three small random factors would start the interaction term on a flat saddle at zero.
        self.field_embedding = nn.Parameter(1.0 + 0.1 * torch.randn(self.num_fields, field_factors))  # U
        self.factor_matrix = nn.Parameter((1.0 + 0.1 * torch.randn(field_factors, self.embedding_dim)) / field_factors)
        self.dropout = Dropout(dropout)
        self.register_buffer("pairs", pair_index(self.num_fields), persistent=False)
        self.sample_size = 0  # set by the models that have a sampling variant
        self.sample_inference: SampleInference = "all"
        self.sampled_pairs: Tensor | None = None  # rows of `pairs` the last forward scored (None: all of them)

    def set_sampling(self, sample_size: int | None, sample_inference: SampleInference) -> None:
        if sample_size is not None and sample_size < 0:
            raise ValueError(f"sample_size must be None or >= 0, got {sample_size}")
        if sample_inference not in ("all", "top"):
            raise ValueError(f"sample_inference must be 'all' or 'top', got {sample_inference!r}")
        self.sample_size = sample_size or 0
        self.sample_inference = sample_inference

    def field_aspect(self) -> Tensor:
        """``F_{f_i,f_j} = D^T (U_{f_i} ⊙ U_{f_j})`` for every pair, [m, K] (eq. 6); the same for every row."""
        u = self.field_embedding
        return (u.index_select(0, self.pairs[:, 0]) * u.index_select(0, self.pairs[:, 1])) @ self.factor_matrix

    def select_pairs(self, field_aspect: Tensor) -> Tensor | None:
        """Rows of ``pairs`` to score in this forward, sorted; None means all of them.

        Training: c pairs without replacement, probability ∝ ||F_{f_i,f_j}|| (one draw per mini-batch, from
        torch's global RNG, so ``torch.manual_seed`` fixes it). A pair with ||F|| = 0 is drawn only when fewer
        than c pairs have a positive norm. Eval: all pairs, or the c largest norms (``sample_inference="top"``).
        """
        c, m = self.sample_size, self.pairs.shape[0]
        if not c or c >= m or (not self.training and self.sample_inference == "all"):
            return None
        norms = field_aspect.detach().float().norm(dim=-1)
        if self.training:
            chosen = torch.multinomial(norms.clamp(min=1e-30), c, replacement=False)
        else:
            chosen = norms.topk(c).indices
        return chosen.sort().values

    def scored_pairs(self) -> tuple[Tensor, Tensor]:
        """The pairs this forward scores [c, 2] and their field aspect [c, K]; also adds λ_F and the attention L2
        to ``self.penalty`` (``embed`` must have run first) and records ``sampled_pairs``."""
        field_aspect = self.field_aspect()
        chosen = self.select_pairs(field_aspect)
        self.sampled_pairs = chosen
        pairs = self.pairs
        if chosen is not None:
            pairs, field_aspect = pairs.index_select(0, chosen), field_aspect.index_select(0, chosen)
        if self.field_l2:
            self.penalty = self.penalty + self.field_l2 * (
                self.field_embedding.square().sum() + self.factor_matrix.square().sum()
            )
        if self.attention_l2:
            self.penalty = self.penalty + self.attention_l2 * self.attention.weight_l2()
        return pairs, field_aspect

    def interact(self, batch: CTRData, embedded: Tensor) -> tuple[Tensor, Tensor]:
        """Feature-aspect weights T [B, c] (eq. 5) and the fused vectors ``F ⊙ (V_i ⊙ V_j)`` [B, c, K].

        c is the number of pairs scored: all m, or the sampled ones. INN's MLP reads these per pair; IFM's sum
        takes the fused path of ``ifm_term``.
        """
        pairs, field_aspect = self.scored_pairs()
        products = self.dropout(elementwise_products(embedded, pairs))  # P_F (eq. 8)
        logits = self.attention(products) / self.temperature
        weights = masked_softmax(logits, pair_mask(present_fields(batch), pairs))  # T_ij (eq. 5)
        return weights, field_aspect * products

    def ifm_term(self, batch: CTRData, embedded: Tensor) -> Tensor:
        """``G_IFM = sum_{(i,j)} T_ij <F_{f_i,f_j}, V_i ⊙ V_j>`` [B] (eq. 9 without its linear terms; eq. 13).

        One fused pass (``aim.layers.attentive_pair_sum``): the [B, c, K] products are never kept.
        """
        pairs, field_aspect = self.scored_pairs()
        return attentive_pair_sum(
            embedded,
            pairs,
            self.attention,
            field_aspect,
            pair_mask(present_fields(batch), pairs),
            temperature=self.temperature,
            dropout=self.dropout.p if self.training else 0.0,
        )


@register("ifm")
class IFM(InteractionAwareModel):
    """Interaction-aware FM: ``w_0 + sum_i w_i + sum_{i<j} T_ij (U_{f_i} ⊙ U_{f_j})^T D (V_i ⊙ V_j)`` (eq. 9).

    ``sample_size`` c > 0 (and < m) turns on the sampling variant (see the module docstring); None or 0 scores
    every pair.
    """

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        sample_size: int | None = None,
        sample_inference: SampleInference = "all",
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        self.set_sampling(sample_size, sample_inference)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        return self.linear(batch) + self.ifm_term(batch, embedded)


@register("inn")
class INN(InteractionAwareModel):
    """Interaction-aware neural network: ``w_0 + sum_i w_i + MLP(concat_{i<j} T_ij F_{f_i,f_j} ⊙ V_i ⊙ V_j)``.

    The MLP input is h^0 of eq. 14 (m·K wide), ReLU hidden layers ``hidden_units`` (``mlp_dropout``, optional
    ``batch_norm``, named as in the other deep models; ``dropout`` is the pair-wise layer's) and a linear output
    (f_L = identity, eq. 15). The linear terms the paper omits "for simplicity" are kept.
    No sampling variant: eq. 14 gives each pair a fixed slot of the MLP input, and the paper samples for the
    sum of eq. 13 only.
    """

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        hidden_units: Sequence[int] = (400, 400, 400),
        mlp_dropout: float = 0.0,
        batch_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        num_pairs = self.pairs.shape[0]
        self.mlp = MLP(num_pairs * self.embedding_dim, hidden_units, dropout=mlp_dropout, batch_norm=batch_norm)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        weights, fused = self.interact(batch, embedded)
        h0 = (weights.unsqueeze(-1) * fused).flatten(1)  # concat of I_X ⊙ F_X (eq. 11, 14)
        return self.linear(batch) + self.mlp(h0).squeeze(-1)


@register("deepifm")
class DeepIFM(InteractionAwareModel):
    """DeepFM with its FM part replaced by IFM: ``w_0 + sum_i w_i + G_IFM + MLP(concat_i V_i)``.

    The MLP reads the same embeddings V (concatenated, n·K wide), as DeepFM's deep part does. ``sample_size``
    samples the interactions of the IFM part, as in the paper's DeepIFM-sampling (Table 4). Batch norm in the
    MLP is on by default, as in DeepFM: with an L2 on the embeddings it lifted Frappe test AUC 0.9749 -> 0.9829.
    """

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        hidden_units: Sequence[int] = (400, 400, 400),
        mlp_dropout: float = 0.0,
        batch_norm: bool = True,
        sample_size: int | None = None,
        sample_inference: SampleInference = "all",
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        self.set_sampling(sample_size, sample_inference)
        self.mlp = MLP(self.num_fields * self.embedding_dim, hidden_units, dropout=mlp_dropout, batch_norm=batch_norm)

    def forward(self, batch: CTRData) -> Tensor:
        embedded = self.embed(batch)
        deep = self.mlp(embedded.flatten(1)).squeeze(-1)
        return self.linear(batch) + self.ifm_term(batch, embedded) + deep
