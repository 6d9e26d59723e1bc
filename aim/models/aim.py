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
import torch.nn.functional as F
from torch import Tensor, nn

from aim.data import CTRData, FieldSpec
from aim.layers import (
    MLP,
    CompactInteraction,
    FieldEmbedding,
    FieldLinear,
    PrunedFieldEmbedding,
    bag_mean,
    gated_batch_norm,
    gather_columns,
    last_dim_mean,
)
from aim.layers import Interaction as InteractionLayer
from aim.layers.native import folded_kernel
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

        # Eval mode without a graph: the folded tables (FoldedAIM), where they apply and hold at most
        # fold_memory_ratio times the numbers of the model's own embedding tables and first-order weights.
        self.fold_inference, self.fold_memory_ratio = True, 4.0
        self._fold: tuple[tuple, FoldedAIM | None] | None = None

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

    def _foldable(self) -> bool:
        """A retrained model (pruned tables, fixed interactions, first-order term beside the MLP) folds."""
        return (isinstance(self.tables, PrunedFieldEmbedding) and self.head == "parallel" and not self.candidates
                and self.dim_gates is None and self.linear is not None)

    def _folded(self) -> FoldedAIM | None:
        """The folded tables of the current weights, built again whenever a parameter or buffer changed (an
        optimizer step, ``load_state_dict`` and ``.to`` each give a tensor a new version or a new address); None
        where they would outgrow ``fold_memory_ratio``."""
        key = (self.fold_memory_ratio, *((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers())))
        if self._fold is None or self._fold[0] != key:
            own = self.tables.weight.numel() + self.linear.weights.weight.numel()
            try:
                self._fold = (key, FoldedAIM(self, max_numbers=int(self.fold_memory_ratio * own)))
            except ValueError:
                self._fold = (key, None)
        return self._fold[1]

    def interaction_parts(self, full: dict[str, Tensor]) -> list[Tensor]:
        """Each layer's [B, m_layer] outputs, fixed interactions first, in the model's entry order."""
        return [layer(full[self.table_of[fn]]) for layer, fn in zip(self.layers, self.layer_functions, strict=True)]

    def interaction_scores(self, full: dict[str, Tensor]) -> Tensor:
        """[B, m]: every interaction's output, fixed ones first, in the model's entry order."""
        return torch.cat(self.interaction_parts(full), 1)

    def forward(self, batch: CTRData) -> Tensor:
        if not self.training and not torch.is_grad_enabled() and self.fold_inference and self._foldable():
            folded = self._folded()
            if folded is not None:
                return folded.logits(batch)
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


class FoldedAIM:
    """A retrained AIM's eval-mode logit with every map that reads a single field applied to the tables once.

    In eval mode each interaction's batch norm and gate are one scale ``a_k = alpha_k / sqrt(var_k + eps)`` and one
    shift, and every factor of an interaction term is linear in one field's embedding: a kept number (times
    ``a_k`` and the kernel, on a term's first field) or an outer product's projection ``w·e`` (times ``a_k`` on the
    first). So is the mean of the T function-wise tables that the MLP reads, and the first-order weight. Each
    field's table ``folded[f]`` [vocab, size + 1 + factors] holds all of those for every code (a multi-valued field
    takes the bag mean of its codes' rows: the maps are linear). A row's logit is then the constant plus, per term,
    the product of its factors read from the row's folded rows, plus the MLP of the copied mean columns: one native
    pass per row on CPU (``csrc/folded_logits.cpp``), or torch ops (a gather per field, per order p a product of p
    gathered column sets and a row sum). The logits equal the layered forward's to rounding (tests/test_search.py).
    On ml-100k's 10,000 test rows the retrain's own work (all but the MLP) took 0.76 ms this way against 4.2 ms
    through its layers, and DeepFM's 1.1 (bench/inference_parts.py, README).

    ``max_numbers`` bounds the folded tables' size: a field in many interactions gets one column per factor, so the
    folded tables can outgrow the model's own (``ValueError`` then; ``AIM`` keeps its layers).
    """

    def __init__(self, model: AIM, max_numbers: int | None = None) -> None:
        tables: PrunedFieldEmbedding = model.tables  # type: ignore[assignment]
        T, fields = tables.tables, model.fields
        with torch.no_grad():
            weight = tables.weight.detach()
            linear = model.linear.weights  # FieldEmbedding of width 1: field f's codes are rows offset_f + code
            offsets = torch.cumsum(torch.tensor([0] + [f.vocab_size for f in fields]), 0).tolist()
            blocks = tables.blocks  # per field in field order: (first row, vocab, size, first column of compact)
            where = {column + slot: (f, slot) for f, (_, _, size, column) in enumerate(blocks) for slot in range(size)}
            # Each field's folded columns: its mean columns, its first-order weight, then one per factor. A factor is
            # a list of (source, coefficient), source = slot * T + table in the field's [vocab, size * T] rows.
            factors: list[list[list[tuple[int, Tensor | float]]]] = [[] for _ in fields]
            terms: dict[int, list[list[tuple[int, int]]]] = {1: [[(f, -1)] for f in range(len(fields))]}

            def factor(f: int, sources: list[tuple[int, Tensor | float]]) -> tuple[int, int]:
                factors[f].append(sources)
                return f, len(factors[f]) - 1

            scale, shift = self._gates(model)
            start = 0
            for layer in model.layers:
                m, p = layer.index.shape
                a = scale[start:start + m]
                t = layer.terms
                if layer.function == "outer":  # terms (compact column, k * p + s, k, s, pos): projection (k, s)
                    sources: dict[tuple[int, int], list] = {}
                    for column, _, k, s, pos in t.tolist():
                        f, slot = where[column // T]
                        coefficient = layer.kernel[k, s, pos] * (a[k] if s == 0 else 1.0)
                        sources.setdefault((k, s), []).append((slot * T + column % T, coefficient))
                    fields_of = layer.index.tolist()
                    for k in range(m):
                        terms.setdefault(p, []).append(
                            [factor(fields_of[k][s], sources.get((k, s), [])) for s in range(p)])
                else:  # terms (compact column of each slot..., k, pos): one term per kept position
                    for row in t.tolist():
                        *columns, k, pos = row
                        value = (layer.kernel[k, pos] if layer.function == "vector_kernel" else
                                 layer.kernel[k] if layer.function == "scalar_kernel" else 1.0)
                        term = []
                        for s, column in enumerate(columns):
                            f, slot = where[column // T]
                            term.append(factor(f, [(slot * T + column % T, value * a[k] if s == 0 else 1.0)]))
                        terms.setdefault(p, []).append(term)
                start += m

            numbers = sum(vocab * (size + 1 + len(factors[f])) for f, (_, vocab, size, _) in enumerate(blocks))
            if max_numbers is not None and numbers > max_numbers:
                raise ValueError(f"the folded tables would hold {numbers:,} numbers, over the {max_numbers:,} allowed")
            # folded[f] = [mean over the T tables | first-order weight | factors], one matrix product per field,
            # written into one array that holds every field's table (the native kernel reads it whole)
            flat = weight.new_empty(numbers)
            self.folded: list[Tensor] = []
            starts, mlp_columns, rest_starts = [], [], []
            start = rest_width = 0
            for f, (row, vocab, size, column) in enumerate(blocks):
                rows = weight[row:row + vocab * size].reshape(vocab, size * T)
                maps = weight.new_zeros(size * T, size + len(factors[f]))
                for slot in range(size):
                    maps[slot * T:(slot + 1) * T, slot] = 1.0 / T
                for j, sources in enumerate(factors[f]):
                    for source, coefficient in sources:
                        maps[source, size + j] += coefficient
                first_order = linear.weight[offsets[f]:offsets[f] + vocab]
                width = size + 1 + len(factors[f])
                folded = flat[start:start + vocab * width].view(vocab, width)
                torch.cat([rows @ maps[:, :size], first_order, rows @ maps[:, size:]], 1, out=folded)
                self.folded.append(folded)
                starts.append(start)
                mlp_columns.append((column, size))
                rest_starts.append(rest_width)
                start += vocab * width
                rest_width += width - size
            self.mlp_columns, self.rest_width = mlp_columns, rest_width
            self.multi_valued = [f.multi_valued for f in fields]
            device = weight.device
            groups = [(p, group) for p, group in sorted(terms.items()) if group]
            # per order: the column of x (all fields' non-MLP columns side by side) of each slot of each term
            self.slots = {p: [torch.tensor([rest_starts[f] + 1 + j for f, j in (term[s] for term in group)],
                                           dtype=torch.int64, device=device) for s in range(p)]
                          for p, group in groups}
            # The native kernel's view: all tables in one array; factor = (field, column of the field's row).
            sizes = [size for _, _, size, _ in blocks]
            self.native = None
            if device.type == "cpu" and weight.dtype == torch.float32 and folded_kernel() is not None:
                as_i64 = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
                single_columns = iter(range(len(fields)))
                factors_flat = [factor for _, group in groups for term in group for factor in term]
                self.native = {
                    "tables": flat,
                    "table_start": as_i64(starts),
                    "width": as_i64([t.shape[1] for t in self.folded]),
                    "mlp_size": as_i64(sizes),
                    "mlp_column": as_i64([column for column, _ in mlp_columns]),
                    "code_column": as_i64([-1 if multi else next(single_columns) for multi in self.multi_valued]),
                    "orders": as_i64([p for p, _ in groups]),
                    "counts": as_i64([len(group) for _, group in groups]),
                    "factor_field": torch.tensor([f for f, _ in factors_flat], dtype=torch.int32),
                    "factor_column": torch.tensor([sizes[f] + 1 + j for f, j in factors_flat], dtype=torch.int32),
                }
            self.constant = (model.linear.bias + shift).detach()
            self.mlp = model.mlp
            self.embedding_size = model.embedding_size

    def _native_logits(self, batch: CTRData) -> Tensor:
        k, rows = self.native, len(batch)
        pooled = [bag_mean(table, codes).contiguous()
                  for table, codes in zip((t for t, m in zip(self.folded, self.multi_valued, strict=True) if m),
                                          batch.multi, strict=True)]
        addresses, pooled_rows = [], iter(pooled)
        for multi in self.multi_valued:
            addresses.append(next(pooled_rows).data_ptr() if multi else 0)
        addresses = torch.tensor(addresses, dtype=torch.int64)
        codes = batch.single.to(torch.int32).contiguous()
        mlp_in = k["tables"].new_empty(rows, self.embedding_size)
        logits = k["tables"].new_empty(rows)
        folded_kernel().aim_folded_logits(
            k["tables"].data_ptr(), k["table_start"].data_ptr(), k["width"].data_ptr(), k["mlp_size"].data_ptr(),
            k["mlp_column"].data_ptr(), codes.data_ptr(), codes.shape[1], k["code_column"].data_ptr(),
            addresses.data_ptr(), rows, len(self.folded), self.embedding_size, k["orders"].data_ptr(),
            k["counts"].data_ptr(), len(k["orders"]), k["factor_field"].data_ptr(), k["factor_column"].data_ptr(),
            float(self.constant), torch.get_num_threads(), mlp_in.data_ptr(), logits.data_ptr())
        if self.mlp is not None:
            logits = logits + self.mlp(mlp_in).squeeze(-1)
        return logits

    @staticmethod
    def _gates(model: AIM) -> tuple[Tensor, Tensor]:
        """Each interaction's scale a_k and the sum of the shifts ``-sum_k a_k mean_k`` (no gates: 1 and 0)."""
        m = len(model.fixed)
        weight = model.tables.weight
        if model.norm is None:
            return weight.new_ones(m), weight.new_zeros(1)
        a = model.alpha.detach() * torch.rsqrt(model.norm.running_var + model.norm.eps)
        return a, -(model.norm.running_mean * a).sum().reshape(1)

    def logits(self, batch: CTRData, native: bool = True) -> Tensor:
        """[B] logits of ``batch``; on CPU in one native pass (``csrc/folded_logits.cpp``) unless ``native`` is
        False or the kernel is unavailable (then torch ops: the same numbers to rounding)."""
        if native and self.native is not None:
            return self._native_logits(batch)
        rows = len(batch)
        mlp_in = self.constant.new_empty(rows, self.embedding_size)
        x = self.constant.new_empty(rows, self.rest_width)
        single, multi, start = 0, 0, 0
        for f, table in enumerate(self.folded):
            if self.multi_valued[f]:
                values = bag_mean(table, batch.multi[multi])
                multi += 1
            else:
                values = F.embedding(batch.single[:, single], table)
                single += 1
            column, size = self.mlp_columns[f]
            mlp_in[:, column:column + size] = values[:, :size]
            x[:, start:start + table.shape[1] - size] = values[:, size:]
            start += table.shape[1] - size
        logit = self.constant.expand(rows).clone()
        for slots in self.slots.values():
            product = gather_columns(x, slots[0])
            for index in slots[1:]:
                product = product * gather_columns(x, index)
            logit += product.sum(1)
        if self.mlp is not None:
            logit = logit + self.mlp(mlp_in).squeeze(-1)
        return logit
