"""Feature interactions, vectorised: index tensors name the interactions, one gather computes them all.

An interaction of order p is a row of an index tensor ``[m, p]`` of field positions. Its element-wise
product ``e_q1 ⊙ ... ⊙ e_qp`` is the common core of the AIM paper's interaction functions (section 4.1):

* ``inner``          sum(e_i ⊙ e_j)
* ``outer``          (w_1·e_i)(w_2·e_j), the paper's low-cost stand-in for the outer product
* ``vector_kernel``  sum(e_i ⊙ e_j ⊙ k_ij)
* ``scalar_kernel``  s_ij · sum(e_i ⊙ e_j)

each extended to order p by multiplying p vectors (p weight vectors for ``outer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from aim.layers.native import vector_pairs_kernel

InteractionFunction = Literal["inner", "outer", "vector_kernel", "scalar_kernel"]
FUNCTIONS: tuple[InteractionFunction, ...] = ("inner", "outer", "vector_kernel", "scalar_kernel")


def pair_index(num_fields: int) -> Tensor:
    """All pairs i < j as an index tensor [n(n-1)/2, 2], in row-major order (0,1), (0,2), ..., (1,2), ..."""
    return torch.triu_indices(num_fields, num_fields, offset=1).T.contiguous()


def combination_index(num_fields: int, order: int) -> Tensor:
    """All ``order``-subsets of the fields as an index tensor [C(n, order), order], lexicographic."""
    return torch.combinations(torch.arange(num_fields), order)


def gather_fields(embedded: Tensor, index: Tensor) -> Tensor:
    """[B, n, d] and [m, p] -> [B, m, p, d]: the embeddings that take part in each interaction."""
    m, p = index.shape
    return embedded.index_select(1, index.flatten()).view(embedded.shape[0], m, p, embedded.shape[-1])


def elementwise_products(embedded: Tensor, index: Tensor) -> Tensor:
    """[B, n, d] and [m, p] -> [B, m, d]: ``e_q1 ⊙ ... ⊙ e_qp`` for every interaction.

    Computed fields first ([n, B, d]) and returned as a [B, m, d] view: gathering whole [B, d] rows makes the
    backward (an index_add) about 2x faster on CPU than gathering along dim 1.
    """
    by_field = embedded.transpose(0, 1)
    products = by_field.index_select(0, index[:, 0])
    for s in range(1, index.shape[1]):
        products = products * by_field.index_select(0, index[:, s])  # [m, B, d]
    return products.transpose(0, 1)


class _AllPairsVectorKernel(torch.autograd.Function):
    """``sum_d e_i[d] e_j[d] k_ij[d]`` for every pair i < j (in ``pair_index`` order), field by field, on CPU.

    ``by_field`` [n, B, d], ``kernel`` [m, d] -> [m, B]. Pair (i, j) for all j > i reads ``by_field[i + 1:]``, a
    slice, so nothing is gathered; each step's temporaries are [n-1-i, B, d], small enough to stay in cache; and
    only the inputs are saved for the backward, which is written out by hand. The autograd of the gather form
    keeps three [m, B, d] tensors and streams about sixteen of them through memory per step: 1.7-2.5x slower at a
    search batch of 1024 and 40 fields (three one-off timings), 4.3x at 4096 (one), forward + backward.
    """

    @staticmethod
    def forward(ctx, by_field: Tensor, kernel: Tensor) -> Tensor:
        n, batch, _ = by_field.shape
        out = by_field.new_empty(kernel.shape[0], batch)
        start = 0
        for i in range(n - 1):  # a loop over fields (n - 1 steps), each vectorised over its pairs and the batch
            stop = start + n - 1 - i
            torch.bmm(by_field[i + 1:] * by_field[i], kernel[start:stop].unsqueeze(-1),
                      out=out[start:stop].unsqueeze(-1))
            start = stop
        ctx.save_for_backward(by_field, kernel)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        by_field, kernel = ctx.saved_tensors
        grad = grad.contiguous()
        grad_by_field, grad_kernel = torch.zeros_like(by_field), torch.empty_like(kernel)
        n, start = by_field.shape[0], 0
        for i in range(n - 1):
            stop = start + n - 1 - i
            g, e_i, rest = grad[start:stop], by_field[i], by_field[i + 1:]
            # d/dk_ij = sum_b g_ij e_i e_j: a [1, B] x [B, d] product per pair
            torch.bmm(g.unsqueeze(1), rest * e_i, out=grad_kernel[start:stop].unsqueeze(1))
            g_k = g.unsqueeze(-1) * kernel[start:stop].unsqueeze(1)  # g_ij k_ij, [n-1-i, B, d]
            grad_by_field[i + 1:].addcmul_(g_k, e_i)  # d/de_j = g_ij k_ij e_i
            grad_by_field[i] += g_k.mul_(rest).sum(0)  # d/de_i = sum_j g_ij k_ij e_j
            start = stop
        return grad_by_field, grad_kernel


class _NativeAllPairsVectorKernel(torch.autograd.Function):
    """``_AllPairsVectorKernel`` in C++ (``csrc/vector_pairs.cpp``), float32: embedded [B, n, d] and kernel [m, d]
    in, scores [B, m] out. A row at a time, in cache, where the torch version is a Python loop over the fields:
    about 400 small ops a batch, 30 % of a search step (40 fields, batch 1024). Only the inputs are saved."""

    @staticmethod
    def forward(ctx, embedded: Tensor, kernel: Tensor) -> Tensor:
        batch, n, d = embedded.shape
        kernel = kernel.contiguous()
        out = embedded.new_empty(batch, kernel.shape[0])
        vector_pairs_kernel().aim_vector_pairs_forward(embedded.data_ptr(), kernel.data_ptr(), batch, n, d,
                                                       torch.get_num_threads(), out.data_ptr())
        ctx.save_for_backward(embedded, kernel)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        embedded, kernel = ctx.saved_tensors
        batch, n, d = embedded.shape
        lib = vector_pairs_kernel()
        grad = grad.contiguous()
        grad_embedded, grad_kernel = torch.empty_like(embedded), torch.empty_like(kernel)
        slots = embedded.new_empty(lib.aim_vector_pairs_slots(batch, n, d))
        lib.aim_vector_pairs_backward(embedded.data_ptr(), kernel.data_ptr(), grad.data_ptr(), batch, n, d,
                                      torch.get_num_threads(), grad_embedded.data_ptr(), grad_kernel.data_ptr(),
                                      slots.data_ptr())
        return grad_embedded, grad_kernel


class Interaction(nn.Module):
    """The scores [B, m] of m interactions (rows of ``index``) under one interaction function."""

    def __init__(self, index: Tensor, function: InteractionFunction, dim: int) -> None:
        super().__init__()
        if function not in FUNCTIONS:
            raise ValueError(f"unknown interaction function {function!r}; choose from {FUNCTIONS}")
        self.function = function
        self.register_buffer("index", index.to(torch.int64), persistent=False)
        m, p = index.shape
        # Every pair of the fields in pair_index order (an order-2 search): the vector kernel's fast path.
        fields = int(index.max()) + 1 if m else 0
        self.all_pairs_of = fields if p == 2 and torch.equal(index.cpu().to(torch.int64), pair_index(fields)) else None
        if function == "vector_kernel":
            self.kernel = nn.Parameter(torch.ones(m, dim))
        elif function == "scalar_kernel":
            self.kernel = nn.Parameter(torch.ones(m))
        elif function == "outer":
            self.kernel = nn.Parameter(torch.randn(m, p, dim) / dim**0.5)
            # Each field's projections as one small matmul: slot (k, s) is column `slot` of field index[k, s].
            # Count how many slots each field has, and give each slot its rank within its field.
            # Only the fields that take part get projected: a retrained model's few interactions touch a few of
            # the fields, and projecting all of them was most of its outer layer's time.
            used, flat = torch.unique(index.flatten().to(torch.int64), sorted=True, return_inverse=True)
            order = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=len(used))
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.empty_like(flat)
            rank[order] = torch.arange(len(flat)) - starts[flat[order]]
            self.register_buffer("used_fields", used, persistent=False)
            self.register_buffer("slot_field", flat, persistent=False)  # the slot's field, among used_fields
            self.register_buffer("slot_rank", rank, persistent=False)
            self.slots_per_field = int(counts.max())

    @property
    def num_interactions(self) -> int:
        return self.index.shape[0]

    def forward(self, embedded: Tensor) -> Tensor:
        n = embedded.shape[1]
        if self.index.shape[1] == 2 and self.function in ("inner", "scalar_kernel") and self.num_interactions >= n:
            # Inner products of all pairs at once as a batched matmul (E E^T), then pick the pairs: several
            # times faster than gathering two [B, m, d] operands when m is large (a search's every pair). With
            # fewer pairs than fields (a retrained model's few) the n^2 products are mostly waste: 20x slower
            # than the gather at 4 pairs of 40 fields, even at 40 (bench.aim_overhead, inference).
            gram = torch.bmm(embedded, embedded.transpose(1, 2)).flatten(1)
            scores = gram.index_select(1, self.index[:, 0] * n + self.index[:, 1])
            return scores * self.kernel if self.function == "scalar_kernel" else scores
        if self.function == "outer":
            return self._outer(embedded)
        if self.function == "vector_kernel" and self.all_pairs_of == n and embedded.device.type == "cpu":
            # On CPU, where memory traffic sets the cost; on a GPU the gather form's few large kernels suit better.
            if embedded.dtype == self.kernel.dtype == torch.float32 and vector_pairs_kernel() is not None:
                return _NativeAllPairsVectorKernel.apply(embedded.contiguous(), self.kernel)
            return _AllPairsVectorKernel.apply(embedded.transpose(0, 1).contiguous(), self.kernel).T
        products = elementwise_products(embedded, self.index)
        if self.function == "vector_kernel":  # einsum (a batched matmul) for many, a multiply-sum for few:
            # each is about 2x the other's time on the other's case (search batch, retrain inference).
            if self.num_interactions >= n:
                return torch.einsum("bmd,md->bm", products, self.kernel)
            return (products * self.kernel).sum(-1)
        scores = products.sum(-1)
        return scores * self.kernel if self.function == "scalar_kernel" else scores

    def _outer(self, embedded: Tensor) -> Tensor:
        """prod_s <w_ks, e_{index[k, s]}>, without gathering a [B, m, p, d] copy of the embeddings.

        The m*p projection vectors are placed in a [u, slots, d] array by field (the u fields that take part),
        so every field's projections are one batched matmul, [u, B, d] @ [u, d, slots]; that is several times
        faster on CPU than the gather.
        """
        batch, n, d = embedded.shape
        m, p = self.index.shape
        u = len(self.used_fields)
        if u < n:
            embedded = embedded.index_select(1, self.used_fields)
        weights = embedded.new_zeros(u, self.slots_per_field, d)
        weights = weights.index_put((self.slot_field, self.slot_rank), self.kernel.reshape(m * p, d))
        projections = torch.bmm(embedded.transpose(0, 1), weights.transpose(1, 2))  # [u, B, slots]
        projections = projections.permute(1, 0, 2).reshape(batch, u * self.slots_per_field)
        picked = projections.index_select(1, self.slot_field * self.slots_per_field + self.slot_rank)
        # p - 1 multiplies of strided views, not .prod(-1): prod's backward checks for zeros and divides, and
        # was a third of an outer search step.
        scores = picked[:, 0::p]
        for s in range(1, p):
            scores = scores * picked[:, s::p]
        return scores


class CompactInteraction(Interaction):
    """An ``Interaction`` on pruned embeddings (after EDS), read from the kept numbers themselves.

    A pruned field keeps some of the ``dim`` positions; the interaction functions are defined on its vector with
    zeros at the others (AIM paper, eq. 18). Those zeros add nothing, so an inner product or a kernel sums only
    over the positions that every field of the interaction kept, and ``outer``'s projection ``w·e_i`` only over
    the positions that field i kept. Each layer therefore gathers the few numbers it needs from ``compact``
    [B, columns] (``column[(field, position)]`` says which column holds a kept number) and sums them with one
    small matrix product: the same scores as on the zero-filled [B, n, dim] vectors, without building those.
    On the retrained synthetic model, that made the interactions 1.6x faster at 4,096 rows and 2.3x at 20k
    (one-off timings), and saved building the zero-filled vectors. The kernel parameters keep the shapes of
    ``Interaction``'s (entries at positions a field did not keep get no gradient), so checkpoints load either way.
    """

    def __init__(self, index: Tensor, function: InteractionFunction, dim: int, kept: Sequence[Sequence[int]],
                 column: Mapping[tuple[int, int], int]) -> None:
        super().__init__(index, function, dim)
        m, p = index.shape
        rows = index.tolist()
        if function == "outer":  # one projection per (interaction k, slot s): sum_pos w[k, s, pos] e_f[pos]
            terms = [(column[(f, pos)], k * p + s, k, s, pos) for k, fields in enumerate(rows)
                     for s, f in enumerate(fields) for pos in kept[f]]
        else:  # one term per position every field of interaction k kept: prod_s e_fs[pos] (times the kernel)
            terms = [(*(column[(f, pos)] for f in fields), k, pos) for k, fields in enumerate(rows)
                     for pos in sorted(set.intersection(*(set(kept[f]) for f in fields)))]
        width = 5 if function == "outer" else p + 2
        table = torch.tensor(terms, dtype=torch.int64).reshape(-1, width)
        self.register_buffer("terms", table, persistent=False)
        self.outputs = m * p if function == "outer" else m

    def forward(self, compact: Tensor) -> Tensor:
        m, p = self.index.shape
        t, k, pos = self.terms, self.terms[:, -3 if self.function == "outer" else -2], self.terms[:, -1]
        if self.function == "outer":
            values = self.kernel[k, t[:, 3], pos]
        elif self.function == "vector_kernel":
            values = self.kernel[k, pos]
        elif self.function == "scalar_kernel":
            values = self.kernel[k]
        else:
            values = compact.new_ones(len(t))
        # [terms, outputs]: term j adds values[j] to output (the slot, for outer; the interaction, otherwise)
        target = t[:, 1] if self.function == "outer" else k
        weights = compact.new_zeros(len(t), self.outputs).index_put((torch.arange(len(t), device=t.device), target),
                                                                     values.to(compact.dtype))
        if self.function == "outer":
            projections = gather_columns(compact, t[:, 0]) @ weights  # [B, m * p], slot k * p + s
            scores = projections[:, 0::p]
            for s in range(1, p):
                scores = scores * projections[:, s::p]
            return scores
        products = gather_columns(compact, t[:, 0])
        for s in range(1, p):
            products = products * gather_columns(compact, t[:, s])
        return products @ weights


def gather_columns(x: Tensor, index: Tensor) -> Tensor:
    """``x[:, index]`` for a 2-d ``x``: a gather, which on CPU took half the time of ``index_select`` along dim 1
    (0.48 against 1.07 ms for 100 of 360 columns at 10,000 rows), and gives the same numbers both ways."""
    return torch.gather(x, 1, index.expand(x.shape[0], -1))
