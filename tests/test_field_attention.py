"""AutoInt's attention over a row's fields in the native kernel: what torch's attention gives (outputs and every
gradient, with a ragged last block of rows, odd sizes, large scores), the same bits with any thread count, and
the torch path when the kernel is off."""

import pytest
import torch

import aim.layers.attention as attention_module
from aim.layers import MultiHeadSelfAttention
from aim.layers.native import attention_kernel
from tests.conftest import assert_same_bits_with_one_thread_or_two

needs_kernel = pytest.mark.skipif(attention_kernel() is None,
                                  reason="the native attention kernel did not build here (no C++ compiler, or "
                                         "AIM_NATIVE=0)")


def forward_backward(layer: MultiHeadSelfAttention, x: torch.Tensor) -> list[torch.Tensor]:
    layer.zero_grad()
    leaf = x.clone().requires_grad_()
    y = layer(leaf)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return [y.detach(), leaf.grad, *(p.grad for p in layer.parameters())]


@needs_kernel
@pytest.mark.parametrize(("rows", "fields", "heads", "head_dim", "scaled", "spread"), [
    (257, 10, 2, 5, False, 1.0),  # AutoInt+ on Frappe; 257 rows: a last block of one row
    (40, 23, 3, 7, True, 1.0),
    (16, 4, 1, 32, True, 1.0),
    (33, 10, 2, 5, False, 6.0),  # scores in the hundreds: the softmax must stay exact and finite
])
def test_the_kernel_gives_what_torchs_attention_gives(rows, fields, heads, head_dim, scaled, spread, monkeypatch):
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(12, head_dim, heads, residual=True, scaled=scaled)
    x = torch.randn(rows, fields, 12) * spread
    ours = forward_backward(layer, x)
    monkeypatch.setattr(attention_module, "attention_kernel", lambda: None)
    want = forward_backward(layer, x)
    for name, a, b in zip(["output", "x", "qkv", "residual"], ours, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * b.abs().max().item(), msg=name)


@needs_kernel
def test_the_kernel_gives_the_same_bits_with_one_thread_or_two():
    """Rows are independent in the kernel (the projections around it are MKL's, not part of this promise)."""
    torch.manual_seed(1)
    qkv = torch.randn(100, 10, 30)
    grad = torch.randn(100, 10, 10)

    def run() -> list[torch.Tensor]:
        leaf = qkv.clone().requires_grad_()
        out = attention_module._FieldAttention.apply(leaf, 2, 5, 1.0)
        out.backward(grad)
        return [out.detach(), leaf.grad]

    assert_same_bits_with_one_thread_or_two(run)


@needs_kernel
def test_the_kernel_runs_on_cpu_float32_and_under_autocast_not_float64(monkeypatch):
    calls = []
    real = attention_module._FieldAttention.apply
    monkeypatch.setattr(attention_module._FieldAttention, "apply", lambda *a: calls.append(1) or real(*a))
    layer = MultiHeadSelfAttention(10, 5, 2)
    x = torch.randn(8, 10, 10)
    layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert len(calls) == 2
    layer.double()(x.double())
    assert len(calls) == 2


def test_with_the_kernel_off_torchs_attention_runs(monkeypatch):
    import aim.layers.native as native

    monkeypatch.setenv("AIM_NATIVE", "0")
    native.attention_kernel.cache_clear()
    try:
        assert native.attention_kernel() is None
        assert MultiHeadSelfAttention(10, 5, 2)(torch.randn(8, 10, 10)).shape == (8, 10, 10)
    finally:
        native.attention_kernel.cache_clear()
        monkeypatch.delenv("AIM_NATIVE")
