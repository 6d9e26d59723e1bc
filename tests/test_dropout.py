"""The CPU dropout mask: the right drop rate, an unbiased expectation, reproducible by seed, a true mask; the
native kernel and the torch twin of the generator give the same words; the words look independent."""

import pytest
import torch

import aim.layers.dropout as dropout_module
from aim.layers import Dropout, dropout_mask
from aim.layers.dropout import dropout_draw, keyed_words
from aim.layers.native import mlp_kernel
from tests.conftest import take_kernel_path


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Run a test with the native kernel and with the torch twin of the generator."""
    take_kernel_path(request.param, monkeypatch, dropout_module, "mlp_kernel")
    return request.param


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_mask_drops_p_and_keeps_the_expectation(p, path):
    torch.manual_seed(0)
    mask = dropout_mask((1000, 1000), p)
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # 1e6 draws: the standard error is below 5e-4
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p), rel=1e-4)
    assert abs(mask.mean().item() - 1.0) < 0.003


def test_mask_is_reproducible_by_seed_and_varies_otherwise(path):
    torch.manual_seed(3)
    a = dropout_mask((64, 33), 0.3)
    torch.manual_seed(3)
    b = dropout_mask((64, 33), 0.3)
    c = dropout_mask((64, 33), 0.3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dropout_layer_trains_with_a_mask_and_is_identity_in_eval(path):
    layer = Dropout(0.25)
    x = torch.randn(128, 40, requires_grad=True)
    torch.manual_seed(1)
    y = layer.train()(x)
    y.sum().backward()
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75, atol=1e-6)
    assert torch.allclose(x.grad, kept.float() / 0.75, atol=1e-6)  # gradient flows only where kept
    assert torch.equal(layer.eval()(x), x)
    assert y.shape == x.shape and 0 < kept.float().mean().item() < 1


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout_mask((3,), -0.1)


@pytest.mark.skipif(mlp_kernel() is None, reason="the native kernel did not build here (no C++ compiler, or "
                                                  "AIM_NATIVE=0)")
@pytest.mark.parametrize("first", [0, (1 << 32) - 100])  # the second crosses a wrap of the index's low 32 bits
@pytest.mark.parametrize("key", [0x0123456789ABCDEF, -0x0123456789ABCDEF])  # keys are signed int64: both signs
def test_the_kernel_and_the_torch_twin_make_the_same_mask(first, key):
    _, drop, scale = dropout_draw(0.3)
    n = 40_007  # several of the kernel's blocks, and a ragged end
    mask = torch.empty(n)
    mlp_kernel().aim_dropout(None, key, drop, scale, first, n, 2, mask.data_ptr())
    want = ((keyed_words(key, n, first) >> 16) >= drop).float() * scale
    assert torch.equal(mask, want)
    x = torch.randn(n)
    out = torch.empty(n)
    mlp_kernel().aim_dropout(x.data_ptr(), key, drop, scale, first, n, 2, out.data_ptr())
    assert torch.equal(out, x * want)


def test_the_native_layer_and_the_torch_path_give_the_same_values_and_gradients(monkeypatch):
    if mlp_kernel() is None:
        pytest.skip("the native kernel did not build here (no C++ compiler, or AIM_NATIVE=0)")
    x = torch.randn(77, 130)
    results = []
    for kernel in (mlp_kernel, lambda: None):
        monkeypatch.setattr(dropout_module, "mlp_kernel", kernel)
        leaf = x.clone().requires_grad_()
        torch.manual_seed(9)
        y = Dropout(0.4).train()(leaf)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        results.append((y.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_the_words_look_uniform_and_independent():
    """The generator is a hash of an element's index, so neighbours must not be related: the top 16 bits fill 256
    bins evenly (chi-square), and the keep decisions of neighbouring elements, in a row or a column of a
    [1000, 1000] mask, are uncorrelated."""
    words = keyed_words(0x0123456789ABCDEF, 1 << 20)
    counts = torch.bincount(words >> 24, minlength=256).double()
    expected = words.numel() / 256
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 330  # 255 degrees of freedom: p ~ 0.001 at 330
    torch.manual_seed(0)
    keep = (dropout_mask((1000, 1000), 0.5) > 0).double()
    for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 0.005  # 1e6 pairs: the standard error is 0.001


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_get_the_same_mask_from_either_path(dtype, monkeypatch):
    """bf16 (autocast) and float64 masks: the kernel's keep decisions, the scale rounded to the dtype, as the torch
    twin gives them."""
    if mlp_kernel() is None:
        pytest.skip("the native kernel did not build here (no C++ compiler, or AIM_NATIVE=0)")
    torch.manual_seed(2)
    native = dropout_mask((300, 77), 0.2, dtype)
    monkeypatch.setattr(dropout_module, "mlp_kernel", lambda: None)
    torch.manual_seed(2)
    assert torch.equal(native, dropout_mask((300, 77), 0.2, dtype)) and native.dtype == dtype
