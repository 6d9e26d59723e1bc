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

from typing import Literal

import torch
from torch import Tensor, nn

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
    """[B, n, d] and [m, p] -> [B, m, d]: ``e_q1 ⊙ ... ⊙ e_qp`` for every interaction."""
    if index.shape[1] == 2:  # the common case, without the generic prod kernel
        return embedded.index_select(1, index[:, 0]) * embedded.index_select(1, index[:, 1])
    return gather_fields(embedded, index).prod(2)


class Interaction(nn.Module):
    """The scores [B, m] of m interactions (rows of ``index``) under one interaction function."""

    def __init__(self, index: Tensor, function: InteractionFunction, dim: int) -> None:
        super().__init__()
        if function not in FUNCTIONS:
            raise ValueError(f"unknown interaction function {function!r}; choose from {FUNCTIONS}")
        self.function = function
        self.register_buffer("index", index.to(torch.int64), persistent=False)
        m, p = index.shape
        if function == "vector_kernel":
            self.kernel = nn.Parameter(torch.ones(m, dim))
        elif function == "scalar_kernel":
            self.kernel = nn.Parameter(torch.ones(m))
        elif function == "outer":
            self.kernel = nn.Parameter(torch.randn(m, p, dim) / dim**0.5)

    @property
    def num_interactions(self) -> int:
        return self.index.shape[0]

    def forward(self, embedded: Tensor) -> Tensor:
        if self.index.shape[1] == 2 and self.function in ("inner", "scalar_kernel"):
            # Inner products of all pairs at once as a batched matmul (E E^T), then pick the pairs:
            # several times faster than gathering two [B, m, d] operands when m is large.
            n = embedded.shape[1]
            gram = torch.bmm(embedded, embedded.transpose(1, 2)).flatten(1)
            scores = gram.index_select(1, self.index[:, 0] * n + self.index[:, 1])
            return scores * self.kernel if self.function == "scalar_kernel" else scores
        if self.function == "outer":
            projections = (gather_fields(embedded, self.index) * self.kernel).sum(-1)  # [B, m, p]
            return projections.prod(-1)
        products = elementwise_products(embedded, self.index)
        if self.function == "vector_kernel":
            return (products * self.kernel).sum(-1)
        scores = products.sum(-1)
        return scores * self.kernel if self.function == "scalar_kernel" else scores
