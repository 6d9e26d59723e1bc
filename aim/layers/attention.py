"""Attention blocks: AFM's attention network over interactions (and its fused pooled sum), AutoInt's self-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aim.layers.dropout import dropout_mask
from aim.layers.native import FLOAT_SUFFIX, PAIR_SUFFIX, attention_kernel, pair_kernel


class AttentionNet(nn.Module):
    """AFM's attention network: the score ``a'_ij = h^T ReLU(W v_ij + b)`` of each of the m interactions.

    Returns the scores before the softmax: AFM and IFM mask empty pairs first, and IFM divides by a temperature.
    """

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)  # W, b
        self.score = nn.Linear(attention_dim, 1, bias=False)  # h

    def forward(self, interactions: Tensor) -> Tensor:
        """``interactions`` [B, m, d] -> scores [B, m]."""
        return self.score(F.relu(self.project(interactions))).squeeze(-1)

    def weight_l2(self) -> Tensor:
        """``||W||²``, the attention L2 of AFM's eq. 8."""
        return self.project.weight.square().sum()


class MultiHeadSelfAttention(nn.Module):
    """One AutoInt interacting layer: multi-head self-attention over fields with a residual connection.

    [B, n, d_in] -> [B, n, heads * head_dim]; ``ReLU(concat_h(attention_h) + W_res e)``.
    """

    def __init__(
        self, in_dim: int, head_dim: int, heads: int, residual: bool = True, scaled: bool = False
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scaled = heads, head_dim, scaled
        self.qkv = nn.Linear(in_dim, 3 * heads * head_dim, bias=False)  # W_Q, W_K, W_V of every head
        self.residual = nn.Linear(in_dim, heads * head_dim, bias=False) if residual else None

    @property
    def out_dim(self) -> int:
        return self.heads * self.head_dim

    def attend(self, x: Tensor, relu: bool = False) -> Tensor:
        """``concat_h(attention_h) + W_res e`` [B, n, heads * head_dim], passed through a ReLU when ``relu``."""
        batch, fields, _ = x.shape
        # q, k, v and the residual projection as one weight [3 * heads * head_dim (+ heads * head_dim), in_dim]
        weight = self.qkv.weight if self.residual is None else torch.cat([self.qkv.weight, self.residual.weight])
        # The AutoInt paper uses the plain inner product <q, k>; `scaled` divides by sqrt(head_dim).
        scale = self.head_dim ** -0.5 if self.scaled else 1.0
        residual = self.residual is not None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if x.device.type == "cpu" and dtype in FLOAT_SUFFIX and attention_kernel() is not None:
            # The whole layer in the kernel; under autocast its input, output and gradients are bf16, as a
            # Linear's would be, and its weights float32. A wide layer's projections are MKL's (see the kernel).
            if weight.numel() <= _FUSED_WEIGHT_MAX:
                return _FieldAttention.apply(x.to(dtype).contiguous(), weight.float(), self.heads, self.head_dim,
                                             scale, residual, relu)
            proj = F.linear(x, weight).to(dtype)
            return _FieldAttention.apply(proj.contiguous(), None, self.heads, self.head_dim, scale, residual, relu)
        proj = F.linear(x, weight)
        width = 3 * self.out_dim
        q, k, v = proj[..., :width].unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        out = _self_attention(q, k, v, scale)  # [B, heads, n, head_dim]
        out = out.transpose(1, 2).reshape(batch, fields, self.out_dim)
        if residual:
            out = out + proj[..., width:]
        return F.relu(out) if relu else out

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x, relu=True)


# The largest stacked weight [width, E] whose projections the attention kernel makes itself: its per-lane gradient
# (16 · width · E floats) stays within 64 KB. Frappe's AutoInt+ ([40, 10]) is under it; at BARS' config ([512, 128])
# making them in the kernel made the fp32 step 2.5x slower (1,849 against 741 ms), so there MKL makes them.
_FUSED_WEIGHT_MAX = 1024


class _FieldAttention(torch.autograd.Function):
    """A whole interacting layer, ``[ReLU](softmax(scale · q kᵀ) v [+ W_res x])`` with ``q, k, v = W x`` per row
    and head, in the native kernel (``csrc/field_attention.cpp``): x [B, n, E] (float32 or bf16) and the stacked
    weight [(3 or 4) · heads · head_dim, E] (float32) in, [B, n, heads · head_dim] (x's dtype) out. The
    projections are made in the kernel and remade in the backward, never stored; the forward keeps the softmax
    weights (B · heads · n² floats, in the kernel's own layout) and the output as the ReLU's mask. With
    ``weight`` None, x is the projection itself [B, n, (3 or 4) · heads · head_dim] and its gradient is returned."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, heads: int, head_dim: int, scale: float, residual: bool,
                relu: bool) -> Tensor:
        batch, fields, in_dim = x.shape
        lib, suffix = attention_kernel(), FLOAT_SUFFIX[x.dtype]
        weight = None if weight is None else weight.contiguous()
        out = x.new_empty(batch, fields, heads * head_dim)
        attn = x.new_empty(lib.aim_field_attention_buffer(batch, fields, heads), dtype=torch.float32)
        getattr(lib, f"aim_field_attention_forward_{suffix}")(
            x.data_ptr(), _address(weight), batch, fields, in_dim, heads, head_dim, residual, relu, scale,
            torch.get_num_threads(), out.data_ptr(), attn.data_ptr())
        ctx.save_for_backward(x, weight, attn, out if relu else None)
        ctx.shape = heads, head_dim, scale, residual, relu
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, attn, out = ctx.saved_tensors
        heads, head_dim, scale, residual, relu = ctx.shape
        lib, suffix = attention_kernel(), FLOAT_SUFFIX[x.dtype]
        grad = grad.to(x.dtype).contiguous()
        batch, fields, in_dim = x.shape
        dx = torch.empty_like(x)
        dweight = slots = None
        if weight is not None:
            dweight = torch.empty_like(weight)
            slots = weight.new_empty(lib.aim_field_attention_slots(batch, weight.shape[0], in_dim))
        getattr(lib, f"aim_field_attention_backward_{suffix}")(
            x.data_ptr(), _address(weight), attn.data_ptr(), _address(out), grad.data_ptr(), batch, fields, in_dim,
            heads, head_dim, residual, relu, scale, torch.get_num_threads(), dx.data_ptr(), _address(dweight),
            _address(slots))
        return dx, dweight, None, None, None, None, None


def _self_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
    """``softmax(scale · q kᵀ) v`` over the last two dims; ``scale`` None is ``1 / sqrt(head_dim)``.

    torch's fused kernel, except under bf16 autocast on CPU: there its bf16 path was 2.1x slower than its own
    float32 one at AutoInt's shapes (fields as the sequence: [4096, 2, 10, 5], forward + backward 39 ms against
    18.5; [4096, 4, 10, 32]: 188 against 116), while two batched bf16 matmuls and a softmax took 15 and 89 ms
    (one-off timings, 2 cores).
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        scores = torch.matmul(q, k.transpose(-1, -2))
        if scale != 1.0:
            scores = scores * (q.shape[-1] ** -0.5 if scale is None else scale)
        return torch.matmul(torch.softmax(scores, -1), v)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# Rows per chunk of the fused pair attention: a chunk's hidden layer [rows * m, attention_dim] should stay in
# cache while the chunk is worked on, and chunks should be few, as each costs some 25 small ops; see
# attentive_pair_sum. Forward + backward at Frappe's shapes (45 pairs, t = 16, batch 4096) on the 2-core AMD EPYC
# (1 MB L2 per core, 32 MB L3), medians of six interleaved rounds: 2^18 elements (364 rows) 13.3 ms, 2^19 (728)
# 11.9, 2^20 (1456) 12.2, one chunk of 4096 rows 15.3.
_CHUNK_ELEMENTS = 1 << 19


def _padded_columns(weight: Tensor) -> Tensor:
    """``weight`` [t, d] with zero columns up to a multiple of 16, on CPU.

    A [N, t] @ [t, d] product whose output is 10 columns wide ran at a third of the speed of one 16 wide in
    MKL here (one-off timings, N = 46,080, t = 16: 621 µs for d = 10, 228 µs padded to 16, padding included).
    """
    d = weight.shape[1]
    if weight.device.type != "cpu" or d % 16 == 0:
        return weight
    return F.pad(weight, (0, 16 - d % 16))


def _view(buffer: Tensor, *shape: int) -> Tensor:
    """The first prod(shape) numbers of a flat work buffer, as a contiguous tensor of ``shape``."""
    return buffer[: math.prod(shape)].view(shape)


class _AttentivePairSum(torch.autograd.Function):
    """The fused forward and backward of ``attentive_pair_sum``, a chunk of rows at a time.

    Nothing of size [B, m, ·] is kept between the forward and the backward: the backward recomputes each chunk's
    products and hidden layer from the embeddings (a cheap product with a 16-wide weight) while they are in
    cache, and saves only the softmax weights and the pairs' values r [m, B]. Fields come first ([n, B, d]),
    so the products are gathered, and their gradients added back, as whole [rows, d] blocks. Every chunk-sized
    intermediate is written into a few work buffers allocated once per call (``out=`` and in-place ops): a fresh
    1 MB tensor per op and chunk comes from new pages, and their page faults made a copy or a ReLU of [16380, 16] take
    200-280 µs (torch profiler) where a warm buffer takes about 20.
    """

    @staticmethod
    def forward(ctx, by_field, pairs, weight, bias, score, values, mask, keep, temperature, chunk):
        _, batch, dim = by_field.shape
        m, hidden_dim = pairs.shape[0], weight.shape[0]
        left, right = pairs[:, 0], pairs[:, 1]
        out = by_field.new_empty(batch)
        weights = by_field.new_empty(m, batch)
        pair_values = by_field.new_empty(m, batch)  # r_k = <v_k, e_i ⊙ e_j>, kept for the backward's d/da
        values_column = values.unsqueeze(-1)  # [m, d, 1]
        rows_max = min(chunk, batch)
        products_buf, other_buf = (by_field.new_empty(m * rows_max * dim) for _ in range(2))
        hidden_buf = by_field.new_empty(m * rows_max * hidden_dim)
        for start in range(0, batch, chunk):
            stop = min(start + chunk, batch)
            c, rows = stop - start, by_field[:, start:stop]
            products, other = _view(products_buf, m, c, dim), _view(other_buf, m, c, dim)
            torch.index_select(rows, 0, left, out=products)
            products.mul_(torch.index_select(rows, 0, right, out=other))  # [m, c, d]
            if keep is not None:
                products.mul_(keep[:, start:stop])
            hidden = torch.addmm(bias, products.view(-1, dim), weight.t(), out=_view(hidden_buf, m * c, hidden_dim))
            logits = torch.mv(hidden.relu_(), score).view(m, c)
            if temperature != 1.0:
                logits.div_(temperature)
            a = masked_softmax(logits, None if mask is None else mask[:, start:stop], dim=0)
            weights[:, start:stop] = a
            r = torch.bmm(products, values_column).view(m, c)
            pair_values[:, start:stop] = r
            torch.sum(a.mul_(r), 0, out=out[start:stop])
        ctx.save_for_backward(by_field, pairs, weight, bias, score, values, keep, weights, pair_values)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        by_field, pairs, weight, bias, score, values, keep, weights, pair_values = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        n, batch, dim = by_field.shape
        m, hidden_dim = pairs.shape[0], weight.shape[0]
        left, right = pairs[:, 0], pairs[:, 1]
        padded = _padded_columns(weight)
        values3 = values.unsqueeze(1)
        grad = grad.contiguous()
        grad_by_field = torch.empty_like(by_field)
        grad_weight_t = weight.new_zeros(dim, hidden_dim)
        grad_bias, grad_score, grad_values = torch.zeros_like(bias), torch.zeros_like(score), torch.zeros_like(values)
        rows_max = min(chunk, batch)
        left_buf, right_buf, products_buf, work_buf = (by_field.new_empty(m * rows_max * dim) for _ in range(4))
        hidden_buf, d_hidden_buf = (by_field.new_empty(m * rows_max * hidden_dim) for _ in range(2))
        wide_buf = by_field.new_empty(m * rows_max * padded.shape[1])
        block_buf = by_field.new_empty(n * rows_max * dim)
        for start in range(0, batch, chunk):
            stop = min(start + chunk, batch)
            c, rows = stop - start, by_field[:, start:stop]
            e_left = torch.index_select(rows, 0, left, out=_view(left_buf, m, c, dim))
            e_right = torch.index_select(rows, 0, right, out=_view(right_buf, m, c, dim))
            products = torch.mul(e_left, e_right, out=_view(products_buf, m, c, dim))
            if keep is not None:
                products.mul_(keep[:, start:stop])
            flat, work = products.view(-1, dim), _view(work_buf, m, c, dim)
            a, g = weights[:, start:stop], grad[start:stop]
            # out = sum_k a_k r_k with r_k = <v_k, p_k>: d/dr = g a, d/da = g r
            d_r = a * g  # [m, c]
            grad_values.add_(torch.bmm(d_r.unsqueeze(1), products).squeeze(1))
            d_a = pair_values[:, start:stop] * g
            d_logits = a * (d_a - (a * d_a).sum(0))  # softmax backward; masked pairs have a = 0, so 0 here too
            if temperature != 1.0:
                d_logits.div_(temperature)
            d_logits = d_logits.view(-1)
            hidden = torch.addmm(bias, flat, weight.t(), out=_view(hidden_buf, m * c, hidden_dim)).relu_()
            grad_score.add_(torch.mv(hidden.t(), d_logits))
            # ReLU's backward, in place: d_pre = d_hidden where hidden > 0 (where the pre-activation was), else 0.
            # aten's threshold_backward does it in one pass; a masked_fill_ with a bool mask took 540-640 µs here
            # against 22 (a [16380, 16] chunk, one-off timings).
            d_pre = torch.mul(d_logits.unsqueeze(1), score, out=_view(d_hidden_buf, m * c, hidden_dim))
            torch.ops.aten.threshold_backward.grad_input(d_pre, hidden, 0, grad_input=d_pre)
            grad_weight_t.addmm_(flat.t(), d_pre)  # a 16-wide output: see _padded_columns
            grad_bias.add_(d_pre.sum(0))
            wide = torch.mm(d_pre, padded, out=_view(wide_buf, m * c, padded.shape[1]))
            d_products = torch.addcmul(wide[:, :dim].view(m, c, dim), d_r.unsqueeze(-1), values3, out=work)
            if keep is not None:
                d_products.mul_(keep[:, start:stop])
            block = _view(block_buf, n, c, dim).zero_()
            block.index_add_(0, left, torch.mul(d_products, e_right, out=products))
            block.index_add_(0, right, d_products.mul_(e_left))
            grad_by_field[:, start:stop] = block
        return grad_by_field, None, grad_weight_t.t(), grad_bias, grad_score, grad_values, None, None, None, None


def _address(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _NativePairSum(torch.autograd.Function):
    """``attentive_pair_sum`` by the C++ kernel (``csrc/attentive_pair_sum.cpp``), float32 or float64 on CPU.

    Rows first ([B, n, d] embeddings, [B, m] mask, [B, m, d] dropout mask); the forward keeps the softmax weights
    and the pairs' values [B, m] for the backward, which recomputes each pair's product and hidden layer.
    """

    @staticmethod
    def forward(ctx, embedded, pairs, weight, bias, score, values, mask, keep, temperature):
        lib, suffix = pair_kernel(), PAIR_SUFFIX[embedded.dtype]
        batch, n, dim = embedded.shape
        m, hidden_dim = pairs.shape[0], weight.shape[0]
        left, right = (pairs[:, i].to(torch.int64).contiguous() for i in (0, 1))  # the kernel reads int64
        weight_t = weight.t().contiguous()  # [d, t]: a row of it is one input's weights to every hidden unit
        out = embedded.new_empty(batch)
        weights, pair_values = embedded.new_empty(batch, m), embedded.new_empty(batch, m)
        getattr(lib, f"aim_pair_forward_{suffix}")(
            embedded.data_ptr(), left.data_ptr(), right.data_ptr(), weight_t.data_ptr(), bias.data_ptr(),
            score.data_ptr(), values.data_ptr(), _address(mask), _address(keep), temperature,
            batch, n, m, dim, hidden_dim, torch.get_num_threads(), out.data_ptr(), weights.data_ptr(),
            pair_values.data_ptr())
        ctx.save_for_backward(embedded, left, right, weight_t, bias, score, values, keep, weights, pair_values)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        embedded, left, right, weight_t, bias, score, values, keep, weights, pair_values = ctx.saved_tensors
        lib, suffix = pair_kernel(), PAIR_SUFFIX[embedded.dtype]
        batch, n, dim = embedded.shape
        m, hidden_dim = left.shape[0], weight_t.shape[1]
        grad = grad.contiguous()
        grad_embedded = torch.empty_like(embedded)
        slot = dim * hidden_dim + 2 * hidden_dim + m * dim  # grad of weight_t, bias, score, values
        slots = embedded.new_empty(-(-batch // lib.block_rows) * slot)
        grads = embedded.new_empty(slot)
        getattr(lib, f"aim_pair_backward_{suffix}")(
            embedded.data_ptr(), left.data_ptr(), right.data_ptr(), weight_t.data_ptr(), bias.data_ptr(),
            score.data_ptr(), values.data_ptr(), _address(keep), ctx.temperature, batch, n, m, dim, hidden_dim,
            torch.get_num_threads(), grad.data_ptr(), weights.data_ptr(), pair_values.data_ptr(),
            grad_embedded.data_ptr(), slots.data_ptr(), grads.data_ptr())
        grad_weight_t, grad_bias, grad_score, grad_values = grads.split(
            [dim * hidden_dim, hidden_dim, hidden_dim, m * dim])
        return (grad_embedded, None, grad_weight_t.view(dim, hidden_dim).t(), grad_bias, grad_score,
                grad_values.view(m, dim), None, None, None)


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim``, restricted to ``mask``; a slice with nothing unmasked gets all-zero weights.

    Masked logits are set to the dtype's minimum rather than -inf, so a fully masked slice gives a finite
    uniform softmax (then zeroed) instead of NaN, and gradients stay finite.
    """
    if mask is None:
        return torch.softmax(logits, dim)
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim) * mask


def attentive_pair_sum(
    embedded: Tensor,
    pairs: Tensor,
    attention: AttentionNet,
    values: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    dropout: float = 0.0,
) -> Tensor:
    """``sum_k a_k <v_k, e_i ⊙ e_j>`` [B] over the pairs k = (i, j) (rows of ``pairs`` [m, 2]).

    ``a`` is the softmax over the pairs of ``attention(e_i ⊙ e_j) / temperature``, restricted to ``mask`` [B, m]
    (None: every pair); ``values`` [m, d] (or [d]) weighs each pair's product: AFM's projection p (eq. 6) or
    IFM's field aspect F (eq. 9). ``dropout`` (training only, the caller decides) drops entries of the products,
    AFM's pair-wise layer, before both the attention and the sum.

    One fused pass instead of autograd over [B, m, d] products and a [B, m, t] hidden layer: on CPU those were
    most of an AFM step (torch profiler, Frappe's shapes), mostly memory traffic (the hidden layer is 12 MB at
    batch 4096 and 45 pairs) and products whose output is 10 columns wide. Here rows are taken a chunk at a time,
    small enough that a chunk's intermediates stay in cache, and the backward is written out (tests check both
    against autograd).
    """
    batch, _, dim = embedded.shape
    m, hidden_dim = pairs.shape[0], attention.project.out_features
    values = values.expand(m, dim)
    # On CPU the native kernel (aim/layers/native.py) when it is built; else the chunked torch ops below.
    lib = pair_kernel() if embedded.device.type == "cpu" else None
    native = lib is not None and max(dim, hidden_dim) <= lib.max_width  # wider: the torch path
    keep = None
    if dropout > 0:  # the kernel reads a row's mask in one place, the torch path a pair's
        shape = (batch, m, dim) if native else (m, batch, dim)
        keep = dropout_mask(shape, dropout, embedded.dtype, embedded.device)
    params = (attention.project.weight, attention.project.bias, attention.score.weight.view(-1), values)
    with torch.autocast(embedded.device.type, enabled=False):  # small products: float32 costs nothing here
        x = embedded.float() if embedded.dtype in (torch.bfloat16, torch.float16) else embedded
        params = tuple(p.to(x.dtype) for p in params)
        keep = None if keep is None else keep.to(x.dtype)
        if native:
            weight, bias, score, values = params
            return _NativePairSum.apply(x.contiguous(), pairs, weight, bias, score, values.contiguous(),
                                        None if mask is None else mask.contiguous(), keep, float(temperature))
        if embedded.device.type == "cpu":
            chunk = max(1, _CHUNK_ELEMENTS // (m * max(dim, hidden_dim)))
        else:
            chunk = max(batch, 1)  # a GPU wants one big launch per op, not a loop
        by_field = x.transpose(0, 1).contiguous()  # [n, B, d]
        mask_t = None if mask is None else mask.t().contiguous()
        return _AttentivePairSum.apply(by_field, pairs, *params, mask_t, keep, float(temperature), chunk)
