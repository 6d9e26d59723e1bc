"""The fused attentive pair sum (AFM's and IFM's pair term) against autograd over its plain formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import aim.layers.attention as attention_module
from aim.layers import AttentionNet, attentive_pair_sum, dropout_mask, pair_index


def plain(embedded, pairs, attention, values, mask, temperature, keep):
    """sum_k a_k <v_k, p_k>, a = masked softmax of h^T ReLU(W p_k + b) / τ, p_k = (e_i ⊙ e_j) ⊙ keep: autograd."""
    products = embedded[:, pairs[:, 0]] * embedded[:, pairs[:, 1]]  # [B, m, d]
    if keep is not None:
        products = products * keep.transpose(0, 1)
    logits = attention.score(F.relu(attention.project(products))).squeeze(-1) / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, -1)
    if mask is not None:
        weights = weights * mask
    return (weights * (products * values).sum(-1)).sum(-1)


def setup(rows=37, fields=6, dim=5, hidden=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    embedded = torch.randn(rows, fields, dim, generator=g, dtype=dtype, requires_grad=True)
    pairs = pair_index(fields)
    torch.manual_seed(seed)
    attention = AttentionNet(dim, hidden).to(dtype)
    with torch.no_grad():
        attention.score.weight.normal_(std=2.0)
    values = torch.randn(pairs.shape[0], dim, generator=g, dtype=dtype, requires_grad=True)
    mask = torch.rand(rows, pairs.shape[0], generator=g) > 0.3
    mask[0] = False  # a row with no pair present: its term is 0, not NaN
    return embedded, pairs, attention, values, mask


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("chunk_elements", [1 << 18, 200])  # one chunk; chunks of 2 rows (and a ragged last one)
def test_outputs_and_gradients_equal_autograd_of_the_formula(masked, dropout, chunk_elements, monkeypatch):
    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", chunk_elements)
    embedded, pairs, attention, values, mask = setup()
    mask = mask if masked else None
    temperature = 3.0
    torch.manual_seed(7)
    fused = attentive_pair_sum(embedded, pairs, attention, values, mask, temperature, dropout)
    torch.manual_seed(7)  # the same draw of the dropout mask, [m, B, d]
    keep = dropout_mask((pairs.shape[0], len(embedded), 5), dropout, torch.float64) if dropout else None
    expected = plain(embedded, pairs, attention, values, mask, temperature, keep)
    torch.testing.assert_close(fused, expected)
    if masked:
        assert fused[0] == 0

    params = [embedded, values, *attention.parameters()]
    upstream = torch.randn(len(embedded), dtype=torch.float64)
    got = torch.autograd.grad(fused, params, upstream)
    want = torch.autograd.grad(expected, params, upstream)
    for name, a, b in zip(["embedded", "values", "W", "b", "h"], got, want, strict=True):
        torch.testing.assert_close(a, b, msg=f"gradient of {name}")
        assert b.abs().sum() > 0, name


def test_gradcheck_with_a_mask_and_a_temperature(monkeypatch):
    """Finite differences for the embeddings and values (the weights' gradients are checked against autograd above)."""
    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", 100)
    embedded, pairs, attention, values, mask = setup(rows=9, fields=4, dim=3, hidden=2)
    torch.autograd.gradcheck(lambda e, v: attentive_pair_sum(e, pairs, attention, v, mask, 0.7), (embedded, values))


def test_a_multiple_of_16_wide_embedding_and_float32_match_too():
    embedded, pairs, attention, values, mask = setup(dim=16, dtype=torch.float32)
    fused = attentive_pair_sum(embedded, pairs, attention, values, mask)
    expected = plain(embedded, pairs, attention, values, mask, 1.0, None)
    torch.testing.assert_close(fused, expected)
    got = torch.autograd.grad(fused.sum(), [embedded, values])
    want = torch.autograd.grad(expected.sum(), [embedded, values])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
