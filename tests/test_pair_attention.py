"""The fused attentive pair sum (AFM's and IFM's pair term) against autograd over its plain formula.

Both of its CPU paths: the chunked torch ops and the native kernel (``aim/layers/native.py``), each checked
against the formula; the kernel's tests skip where no C++ compiler can build it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import aim.layers.attention as attention_module
from aim.layers import AttentionNet, attentive_pair_sum, dropout_mask, pair_index
from aim.layers.native import pair_kernel
from tests.conftest import assert_same_bits_with_one_thread_or_two, take_kernel_path


@pytest.fixture(params=["torch", "native"])
def path(request, monkeypatch):
    """Which CPU implementation ``attentive_pair_sum`` takes."""
    take_kernel_path(request.param, monkeypatch, attention_module, "pair_kernel")
    return request.param


def draw_keep(path, rows, pairs, dim, dropout, dtype):
    """The dropout mask that ``attentive_pair_sum`` draws after the same seed, as [m, B, d]."""
    if path == "native":  # the kernel's mask is rows first
        return dropout_mask((rows, pairs, dim), dropout, dtype).transpose(0, 1)
    return dropout_mask((pairs, rows, dim), dropout, dtype)


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
# torch path: one chunk; chunks of 2 rows (and a ragged last one). Native: 16 hidden units take its unrolled loop.
@pytest.mark.parametrize(("chunk_elements", "hidden"), [(1 << 18, 4), (200, 4), (1 << 18, 16)])
def test_outputs_and_gradients_equal_autograd_of_the_formula(path, masked, dropout, chunk_elements, hidden,
                                                             monkeypatch):
    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", chunk_elements)
    embedded, pairs, attention, values, mask = setup(rows=150 if path == "native" else 37, hidden=hidden)
    mask = mask if masked else None
    temperature = 3.0
    torch.manual_seed(7)
    fused = attentive_pair_sum(embedded, pairs, attention, values, mask, temperature, dropout)
    torch.manual_seed(7)  # the same draw of the dropout mask
    keep = draw_keep(path, len(embedded), pairs.shape[0], 5, dropout, torch.float64) if dropout else None
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


def test_gradcheck_with_a_mask_and_a_temperature(path, monkeypatch):
    """Finite differences for the embeddings and values (the weights' gradients are checked against autograd above)."""
    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", 100)
    embedded, pairs, attention, values, mask = setup(rows=9, fields=4, dim=3, hidden=2)
    torch.autograd.gradcheck(lambda e, v: attentive_pair_sum(e, pairs, attention, v, mask, 0.7), (embedded, values))


# 16 wide: the torch path's padding to 16 columns. 20 wide with 16 hidden units: the kernel's loops for d > 16.
@pytest.mark.parametrize(("dim", "hidden"), [(16, 4), (20, 16)])
def test_wider_embeddings_and_float32_match_too(path, dim, hidden):
    embedded, pairs, attention, values, mask = setup(dim=dim, hidden=hidden, dtype=torch.float32)
    fused = attentive_pair_sum(embedded, pairs, attention, values, mask)
    expected = plain(embedded, pairs, attention, values, mask, 1.0, None)
    torch.testing.assert_close(fused, expected)
    got = torch.autograd.grad(fused.sum(), [embedded, values])
    want = torch.autograd.grad(expected.sum(), [embedded, values])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_native_kernel_gives_the_same_bits_with_one_thread_or_two():
    """Each block of 64 rows sums its weight gradients apart, and the blocks add up in their order: the thread
    count does not change a bit (a run is reproducible across machines with other core counts)."""
    if pair_kernel() is None:
        pytest.skip("the native pair kernel did not build here (no C++ compiler, or AIM_NATIVE=0)")
    embedded, pairs, attention, values, mask = setup(rows=1000, fields=8, dim=10, hidden=16, dtype=torch.float32)

    def run() -> list[torch.Tensor]:
        torch.manual_seed(3)
        out = attentive_pair_sum(embedded, pairs, attention, values, mask, 2.0, 0.2)
        params = [embedded, values, *attention.parameters()]
        return [out, *torch.autograd.grad(out, params, torch.linspace(-1, 1, len(out)))]

    assert_same_bits_with_one_thread_or_two(run)


def test_int32_pair_indices_give_what_int64_ones_give(path):
    """The kernel reads int64 indices through raw pointers: other integer types must be converted, not misread."""
    embedded, pairs, attention, values, mask = setup(dtype=torch.float32)
    torch.testing.assert_close(attentive_pair_sum(embedded, pairs.int(), attention, values, mask),
                               attentive_pair_sum(embedded, pairs, attention, values, mask))


def test_with_the_kernel_off_the_torch_path_runs(monkeypatch):
    """AIM_NATIVE=0 is the switch a user has if the kernel misbehaves: the layer then takes the torch ops."""
    import aim.layers.native as native

    monkeypatch.setenv("AIM_NATIVE", "0")
    assert not native.enabled()
    native.pair_kernel.cache_clear()
    try:
        assert native.pair_kernel() is None
    finally:
        native.pair_kernel.cache_clear()
        monkeypatch.delenv("AIM_NATIVE")
