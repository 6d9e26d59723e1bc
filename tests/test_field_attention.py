"""AutoInt's attention over a row's fields in the native kernel: what torch's attention gives (outputs and every
gradient, with a ragged last block of rows, odd sizes, large scores, with and without the residual and the ReLU),
bf16 in and out with the float32 kernel's result rounded once, the same bits with any thread count, and the torch
path when the kernel is off."""

import pytest
import torch

import aim.layers.attention as attention_module
from aim.layers import MultiHeadSelfAttention
from aim.layers.native import attention_kernel
from tests.conftest import assert_same_bits_with_one_thread_or_two

needs_kernel = pytest.mark.skipif(attention_kernel() is None,
                                  reason="the native attention kernel did not build here (no C++ compiler, or "
                                         "AIM_NATIVE=0)")


def forward_backward(layer: MultiHeadSelfAttention, x: torch.Tensor, relu: bool = True) -> list[torch.Tensor]:
    layer.zero_grad()
    leaf = x.clone().requires_grad_()
    y = layer.attend(leaf, relu=relu)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return [y.detach(), leaf.grad, *(p.grad for p in layer.parameters())]


@needs_kernel
@pytest.mark.parametrize(("rows", "fields", "heads", "head_dim", "scaled", "spread", "residual", "relu"), [
    (257, 10, 2, 5, False, 1.0, True, True),  # AutoInt+ on Frappe; 257 rows: a last block of one row
    (40, 23, 3, 7, True, 1.0, True, False),  # before a layer norm: no ReLU in the kernel
    (16, 4, 1, 32, True, 1.0, False, True),
    (20, 6, 2, 3, False, 1.0, False, False),
    (33, 10, 2, 5, False, 6.0, True, True),  # scores in the hundreds: the softmax must stay exact and finite
    (1100, 10, 2, 5, False, 1.0, True, True),  # 69 blocks: the weight's gradient summed in groups of one or two
    (64, 10, 4, 32, True, 1.0, True, False),  # BARS' width ([512, 12] weight): MKL's projections, the kernel after
])
def test_the_kernel_gives_what_torchs_attention_gives(rows, fields, heads, head_dim, scaled, spread, residual,
                                                      relu, monkeypatch):
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(12, head_dim, heads, residual=residual, scaled=scaled)
    x = torch.randn(rows, fields, 12) * spread
    ours = forward_backward(layer, x, relu)
    monkeypatch.setattr(attention_module, "attention_kernel", lambda: None)
    want = forward_backward(layer, x, relu)
    names = ["output", "x", "qkv", "residual"] if residual else ["output", "x", "qkv"]
    if relu:
        assert (ours[0] == 0).float().mean() > 0.2  # the ReLU's mask is exercised
    for name, a, b in zip(names, ours, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * b.abs().max().item(), msg=name)


def run_kernel(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, residual: bool = True, relu: bool = True
               ) -> list[torch.Tensor]:
    """Output, d x and d weight of the kernel at 2 heads of 5 (weight [30 or 40, E])."""
    leaf, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out = attention_module._FieldAttention.apply(leaf, w, 2, 5, 1.0, residual, relu)
    out.backward(grad)
    return [out.detach(), leaf.grad, w.grad]


@needs_kernel
@pytest.mark.parametrize(("residual", "relu"), [(True, True), (False, False)])
def test_in_bf16_the_kernel_gives_the_float32_kernels_result_rounded_once(residual, relu):
    """bf16 x, output and d x, float32 inside and in the weight: equal bit for bit to the float32 kernel on the
    same (bf16) numbers, each bf16 result rounded by torch's .to(bfloat16)."""
    torch.manual_seed(3)
    x = torch.randn(37, 10, 12).bfloat16()
    weight = torch.randn(40 if residual else 30, 12) * 0.3
    grad = torch.randn(37, 10, 10).bfloat16()
    out, dx, dweight = run_kernel(x, weight, grad, residual, relu)
    assert out.dtype == dx.dtype == torch.bfloat16 and dweight.dtype == torch.float32
    out32, dx32, dweight32 = run_kernel(x.float(), weight, grad.float(), residual, relu)
    assert torch.equal(out.view(torch.int16), out32.bfloat16().view(torch.int16))
    assert torch.equal(dx.view(torch.int16), dx32.bfloat16().view(torch.int16))
    assert torch.equal(dweight, dweight32)


@needs_kernel
def test_the_kernel_gives_the_same_bits_with_one_thread_or_two():
    """Rows are independent in the kernel, and the weight's gradient is summed in groups fixed by the batch alone;
    1,500 rows: 94 blocks of 16 (the last one ragged) in 64 groups of one or two."""
    torch.manual_seed(1)
    x = torch.randn(1500, 10, 10)
    weight = torch.randn(40, 10) * 0.3
    grad = torch.randn(1500, 10, 10)
    assert_same_bits_with_one_thread_or_two(lambda: run_kernel(x, weight, grad))


@needs_kernel
def test_a_narrow_layer_makes_its_projections_in_the_kernel_and_a_wide_one_takes_mkls(monkeypatch):
    weights = []
    real = attention_module._FieldAttention.apply
    monkeypatch.setattr(attention_module._FieldAttention, "apply", lambda *a: weights.append(a[1]) or real(*a))
    x = torch.randn(20, 10, 10)
    MultiHeadSelfAttention(10, 5, 2)(x)  # Frappe's AutoInt+: a [40, 10] weight
    MultiHeadSelfAttention(10, 32, 4)(x)  # BARS' width: [512, 10]
    assert weights[0] is not None and weights[0].shape == (40, 10) and weights[1] is None


@needs_kernel
def test_the_kernel_from_a_projection_gives_the_same_bits_with_one_thread_or_two():
    torch.manual_seed(2)
    proj = torch.randn(1500, 10, 40)
    grad = torch.randn(1500, 10, 10)

    def run() -> list[torch.Tensor]:
        leaf = proj.clone().requires_grad_()
        out = attention_module._FieldAttention.apply(leaf, None, 2, 5, 1.0, True, True)
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
    assert layer(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # no casts around the kernel
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
