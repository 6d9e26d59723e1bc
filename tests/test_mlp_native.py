"""The MLP's hidden layers in training: batch norm, ReLU and dropout in the native kernel give what torch's ops give
(outputs, every gradient, the running statistics, the same dropout masks), with any thread count."""

import copy

import pytest
import torch

import aim.layers.mlp as mlp_module
from aim.layers import MLP
from aim.layers.native import mlp_kernel

needs_kernel = pytest.mark.skipif(mlp_kernel() is None,
                                  reason="the native MLP kernel did not build here (no C++ compiler, or AIM_NATIVE=0)")


def train_step(model: MLP, x: torch.Tensor, seed: int = 5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients of one training forward and backward, with the dropout masks drawn after ``seed``."""
    model.train().zero_grad()
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_kernel
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_the_kernel_gives_what_the_torch_ops_give(dropout, monkeypatch):
    torch.manual_seed(0)
    fused = MLP(30, [64, 48], 1, dropout=dropout, batch_norm=True)
    reference = copy.deepcopy(fused)
    x = torch.randn(257, 30) * 3 + 1  # an odd batch and activations off centre
    out, grads = train_step(fused, x)
    monkeypatch.setattr(mlp_module, "fused_hidden_layer", lambda *args: None)  # the torch ops
    want_out, want_grads = train_step(reference, x)

    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    layers = list(fused.net)
    before_norm = {f"net.{k}.bias" for k, layer in enumerate(layers[:-1])
                   if isinstance(layer, torch.nn.Linear) and isinstance(layers[k + 1], torch.nn.BatchNorm1d)}
    assert len(before_norm) == 2
    for name, grad in grads.items():
        if name in before_norm:  # batch norm removes it: a true gradient of 0, rounding noise on both sides
            assert grad.abs().max() < 1e-5 and want_grads[name].abs().max() < 1e-5
        else:
            # float32 rounding: errors of about 1e-6 of the largest entry, whatever an entry's own size
            scale = want_grads[name].abs().max().item()
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    for (name, a), (_, b) in zip(fused.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


@needs_kernel
def test_the_kernel_gives_the_same_bits_with_one_thread_or_two():
    """Each column's sums run over the rows in order inside one thread: the thread count changes no bit of the
    kernel's output or gradients (the Linear layers' matrix products are MKL's and not part of this promise)."""
    torch.manual_seed(0)
    z = torch.randn(1000, 96) * 2 + 0.5
    gamma, beta = torch.rand(96) + 0.5, torch.randn(96) * 0.1
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            inputs = [t.clone().requires_grad_() for t in (z, gamma, beta)]
            key, drop, scale = mlp_module.dropout_draw(0.2)
            y, mean, var = mlp_module._BatchNormReLUDropout.apply(*inputs, key, drop, scale, 1e-5)
            grads = torch.autograd.grad(y, inputs, torch.linspace(-1, 1, y.numel()).view_as(y))
            results.append([y, mean, var, *grads])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_kernel
def test_the_kernel_is_used_in_fp32_training_only(monkeypatch):
    """Evaluation folds batch norm into the Linear; bf16 autocast and a batch of one keep torch's ops."""
    calls = []
    real = mlp_module._BatchNormReLUDropout.apply
    monkeypatch.setattr(mlp_module._BatchNormReLUDropout, "apply", lambda *a: calls.append(1) or real(*a))
    model = MLP(8, [16, 16], 1, dropout=0.1, batch_norm=True)
    x = torch.randn(32, 8)
    model.train()(x)
    assert len(calls) == 2  # one per hidden layer
    model.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(x)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # torch's own message
        model.train()(x[:1])


def test_with_the_kernel_off_the_torch_ops_run(monkeypatch):
    import aim.layers.native as native

    monkeypatch.setenv("AIM_NATIVE", "0")
    native.mlp_kernel.cache_clear()
    try:
        assert native.mlp_kernel() is None
        model = MLP(8, [16], 1, dropout=0.1, batch_norm=True)
        assert mlp_module.fused_hidden_layer(torch.randn(32, 16), model.net[1], model.net[3]) is None
        assert model.train()(torch.randn(32, 8)).shape == (32, 1)
    finally:
        native.mlp_kernel.cache_clear()
        monkeypatch.delenv("AIM_NATIVE")
