"""AIM, the Automatic Interaction Machine (Zhu et al., TKDE 2021), and its transfers DeepFM+IF and IPNN+IF.

One network serves every stage of the search, set up by its arguments:

* ``candidates`` are searched: each output goes through batch norm without scale and shift, then times a gate
  ``alpha`` that GRDA trains to exact zeros (``optimizers()`` hands gates to GRDA, all else to Adam).
* ``interactions`` were selected earlier: their gates stay as attention weights, trained by Adam with the
  rest (``gates="none"`` drops gates and batch norm: the transfers, a plain sum as in an FM).
* ``function_wise``: one embedding table per interaction function in use (paper eq. 14), or one shared table.
  The T function-wise tables are the T column blocks of one parameter, so that a batch costs one gather and
  one backward for all of them, not T (each block still gets gradients from its own function only).
* ``search_dims``: EDS gates ``beta`` [n_fields, dim], shared by a field's function-wise embeddings (eq. 15),
  trained by GRDA. ``kept_dims`` then builds the smaller tables (eq. 18, ``PrunedFieldEmbedding``).
* ``hidden_units``: the MLP that retrain adds, beside the interactions (``head="parallel"``, DeepFM-style) or on
  top of the embeddings and interaction outputs (``head="stacked"``, IPNN-style).

The search stages use no MLP (paper, section 4.1.4); retrain adds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import (
    MLP,
    CompactInteraction,
    FieldEmbedding,
    FieldLinear,
    PrunedFieldEmbedding,
    gated_batch_norm,
    last_dim_mean,
)
from aim.layers import Interaction as InteractionLayer
from aim.models.base import CTRModel, adam, register
from aim.search.architecture import Interaction, all_pairs
from aim.search.grda import GRDA


def _grouped(entries: Sequence[Interaction]) -> list[tuple[int, str, list[Interaction]]]:
    """Entries grouped by (order, function), groups in first-seen order: one vectorised layer per group."""
    groups: dict[tuple[int, str], list[Interaction]] = {}
    for e in entries:
        groups.setdefault((e.order, e.function), []).append(e)
    return [(order, fn, members) for (order, fn), members in groups.items()]


@register("aim")
class AIM(CTRModel):
    """``b + sum_i w_i + sum_k alpha_k BN(f_k(e_k1, ..., e_kp)) [+ MLP(E)]`` over selected and searched interactions."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        interactions: Sequence[Interaction] | None = None,
        candidates: Sequence[Interaction] = (),
        function_wise: bool = True,
        gates: Literal["attention", "none"] = "attention",
        search_dims: bool = False,
        kept_dims: Sequence[Sequence[int]] | None = None,
        hidden_units: Sequence[int] = (400, 400, 400),
        head: Literal["parallel", "stacked"] = "parallel",
        dropout: float = 0.2,
        batch_norm: bool = True,
        grda_lr: float = 0.01,
        grda_c: float = 0.005,
        grda_mu: float = 0.7,
        dim_gate_init: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(fields, **kwargs)
        if gates not in ("attention", "none"):
            raise ValueError(f"gates must be 'attention' or 'none', got {gates!r}")
        if head not in ("parallel", "stacked"):
            raise ValueError(f"head must be 'parallel' or 'stacked', got {head!r}")
        if interactions is None and not candidates:  # the registry's default: every pair, inner product
            interactions = all_pairs(self.num_fields)
        n, d = self.num_fields, self.embedding_dim
        for e in (*(interactions or ()), *candidates):
            if len(set(e.fields)) != e.order or not all(0 <= f < n for f in e.fields) or e.order < 2:
                raise ValueError(f"interaction {e} must name >= 2 distinct field positions in [0, {n})")
        if kept_dims is not None and search_dims:
            raise ValueError("search_dims searches the dimensions that kept_dims would fix: give one of them")
        fixed_groups, search_groups = _grouped(interactions or ()), _grouped(candidates)
        # The model's own order of entries: fixed groups, then searched groups (gate vectors follow it).
        self.fixed = [e for _, _, members in fixed_groups for e in members]
        self.candidates = [e for _, _, members in search_groups for e in members]
        self.gate_mode, self.head, self.function_wise = gates, head, function_wise
        self.grda = {"lr": grda_lr, "c": grda_c, "mu": grda_mu}

        # Embedding tables: one per function in use (function-wise) or one shared, stacked in one module.
        functions = list(dict.fromkeys(e.function for e in (*self.fixed, *self.candidates))) or ["inner"]
        self.table_names = functions if function_wise else ["shared"]
        tables = len(self.table_names)
        self.embedding = None  # CTRModel's single table is replaced by the tables below
        self.table_of = {fn: (fn if function_wise else "shared") for fn in functions}
        if kept_dims is None:  # table t is columns [t * d, (t + 1) * d)
            self.tables: FieldEmbedding | PrunedFieldEmbedding = FieldEmbedding(self.fields, d * tables)
        else:
            self.tables = PrunedFieldEmbedding(self.fields, d, kept_dims, tables=tables)
        self.dim_gates = nn.Parameter(torch.full((n, d), dim_gate_init)) if search_dims else None

        self.linear = FieldLinear(self.fields) if head == "parallel" else None
        groups = (*fixed_groups, *search_groups)
        if kept_dims is None:
            self.layers = nn.ModuleList(InteractionLayer(torch.tensor([e.fields for e in members]), fn, d)
                                        for _, fn, members in groups)
        else:  # pruned tables: each layer reads its table's kept numbers, number s of table t in column s * T + t
            def columns(fn: str) -> dict[tuple[int, int], int]:
                t = self.table_names.index(self.table_of[fn])
                return {key: s * tables + t for key, s in self.tables.column.items()}
            self.layers = nn.ModuleList(
                CompactInteraction(torch.tensor([e.fields for e in members]), fn, d, self.tables.kept, columns(fn))
                for _, fn, members in groups)
        self.layer_functions = [fn for _, fn, _ in (*fixed_groups, *search_groups)]
        num_fixed, num_searched = len(self.fixed), len(self.candidates)
        gated = (gates == "attention" and num_fixed > 0) or num_searched > 0
        self.norm = nn.BatchNorm1d(num_fixed + num_searched, affine=False) if gated else None
        has_alpha = gates == "attention" and num_fixed > 0
        self.alpha = nn.Parameter(torch.tensor([e.gate for e in self.fixed])) if has_alpha else None
        self.alpha_search = nn.Parameter(torch.tensor([e.gate for e in self.candidates])) if num_searched else None
        if gates == "none" and num_searched:
            raise ValueError("gates='none' is for a fixed set of interactions; searched candidates need gates")

        self.embedding_size = d * n if kept_dims is None else sum(len(k) for k in kept_dims)
        if hidden_units:
            in_dim = self.embedding_size + (num_fixed + num_searched if head == "stacked" else 0)
            self.mlp = MLP(in_dim, hidden_units, dropout=dropout, batch_norm=batch_norm)
        elif head == "stacked":
            raise ValueError("head='stacked' puts an MLP on the interactions: give hidden_units")
        else:
            self.mlp = None

    # -- what the search reads back ------------------------------------------------------------------------
    def searched_gates(self) -> list[Interaction]:
        """The candidates with their current gate values (exact zeros are closed)."""
        values = self.alpha_search.detach().cpu().tolist() if self.alpha_search is not None else []
        return [Interaction(e.fields, e.function, g) for e, g in zip(self.candidates, values, strict=True)]

    def fixed_gates(self) -> list[Interaction]:
        """The fixed interactions with their (Adam-trained) attention weights."""
        if self.alpha is None:
            return list(self.fixed)
        values = self.alpha.detach().cpu().tolist()
        return [Interaction(e.fields, e.function, g) for e, g in zip(self.fixed, values, strict=True)]

    def optimizers(self, lr: float, weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """Gates being searched (alpha of the candidates, or the EDS betas) by GRDA; everything else by Adam."""
        searched = [p for p in (self.alpha_search, self.dim_gates) if p is not None]
        ids = {id(p) for p in searched}
        rest = [p for p in self.parameters() if id(p) not in ids]
        optimizers: list[torch.optim.Optimizer] = [adam(rest, lr, weight_decay)]
        if searched:
            optimizers.append(GRDA(searched, **self.grda))
        return optimizers

    # -- forward -------------------------------------------------------------------------------------------
    def embed_tables(self, batch: CTRData) -> tuple[dict[str, Tensor], Tensor]:
        """What each table's layers read, and the mean of the tables' compact forms [B, sum d] (the MLP's input).
        A full table gives [B, n, d] (after the EDS gates, if searching); a pruned one gives every table's kept
        numbers, [B, sum d * T] (``CompactInteraction`` reads its own table's columns there)."""
        self.penalty = 0.0
        tables = len(self.table_names)
        if isinstance(self.tables, PrunedFieldEmbedding):
            kept = self.tables.compact(batch)  # [B, sum d, T]
            compact = kept[..., 0] if tables == 1 else last_dim_mean(kept)
            return dict.fromkeys(self.table_names, kept.flatten(1)), compact
        e = self.tables(batch)
        e = e.view(e.shape[0], e.shape[1], tables, self.embedding_dim)  # [B, n, T, d]
        if self.dim_gates is not None:  # one gate per field and dimension, shared by the T tables
            e = e * self.dim_gates.unsqueeze(1)
        compact = (e[:, :, 0] if tables == 1 else e.mean(2)).flatten(1)
        # Each table's [B, n, d] made contiguous (one copy of all T): the layers' products read it whole.
        full = e.permute(2, 0, 1, 3).contiguous().unbind(0)
        return dict(zip(self.table_names, full, strict=True)), compact

    def interaction_parts(self, full: dict[str, Tensor]) -> list[Tensor]:
        """Each layer's [B, m_layer] outputs, fixed interactions first, in the model's entry order."""
        return [layer(full[self.table_of[fn]]) for layer, fn in zip(self.layers, self.layer_functions, strict=True)]

    def interaction_scores(self, full: dict[str, Tensor]) -> Tensor:
        """[B, m]: every interaction's output, fixed ones first, in the model's entry order."""
        return torch.cat(self.interaction_parts(full), 1)

    def forward(self, batch: CTRData) -> Tensor:
        full, compact = self.embed_tables(batch)
        parts = self.interaction_parts(full)
        if self.head == "stacked":
            return self.mlp(torch.cat([compact, *parts], 1)).squeeze(-1)
        logit = self.linear(batch)
        if parts:
            if self.norm is None:
                logit = logit + sum(z.sum(1) for z in parts)
            else:  # sum_k alpha_k BN(z_k), one layer's outputs at a time (aim/layers/gate.py says why)
                gates = [g for g in (self.alpha, self.alpha_search) if g is not None]
                logit = logit + gated_batch_norm(parts, torch.cat(gates), self.norm)
        if self.mlp is not None:
            logit = logit + self.mlp(compact).squeeze(-1)
        return logit


@register("deepfm_if")
class DeepFMIF(AIM):
    """DeepFM with its FM part replaced by a searched interaction × function set (AIM paper, Table 10)."""

    def __init__(self, fields: Sequence[FieldSpec], function_wise: bool = False, gates: str = "none", **kwargs) -> None:
        super().__init__(fields, function_wise=function_wise, gates=gates, head="parallel", **kwargs)


@register("ipnn_if")
class IPNNIF(AIM):
    """IPNN whose product layer holds a searched interaction × function set instead of all inner products."""

    def __init__(self, fields: Sequence[FieldSpec], function_wise: bool = False, gates: str = "none",
                 dropout: float = 0.3, batch_norm: bool = True, **kwargs) -> None:
        # Batch norm on, as IPNN's (aim/models/pnn.py says why).
        super().__init__(fields, function_wise=function_wise, gates=gates, head="stacked", dropout=dropout,
                         batch_norm=batch_norm, **kwargs)
