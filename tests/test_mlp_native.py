"""The MLP's hidden layers in training: batch norm, ReLU and dropout in the native kernel give what torch's ops give
(outputs, every gradient, the running statistics, the same dropout masks), with any thread count."""

import copy

import pytest
import torch

import aim.layers.mlp as mlp_module
from aim.layers import MLP
from aim.layers.native import mlp_kernel
from tests.conftest import assert_same_bits_with_one_thread_or_two

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
    for name, grad in grads.items():
        # float32 rounding: errors of about 1e-6 of the largest entry, whatever an entry's own size
        scale = want_grads[name].abs().max().item()
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    for (name, a), (_, b) in zip(fused.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


@needs_kernel
def test_the_bf16_kernel_is_the_float32_kernel_rounded_once():
    """The bf16 kernel reads bf16 as float, computes as the float32 kernel does and rounds each result to nearest
    even: fed the same values, its outputs are the float32 kernel's, rounded by torch's ``.to(bfloat16)``."""
    torch.manual_seed(0)
    B, H = 300, 40
    z = (torch.randn(B, H) * 2 + 0.5).to(torch.bfloat16)
    dy = torch.randn(B, H).to(torch.bfloat16)
    gamma, beta = torch.rand(H) + 0.5, torch.randn(H) * 0.1
    key, drop, scale = mlp_module.dropout_draw(0.3)
    lib = mlp_module.mlp_kernel()
    out = {}
    for dtype, suffix in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        y, dz = torch.empty(B, H, dtype=dtype), torch.empty(B, H, dtype=dtype)
        stats = [torch.empty(H) for _ in range(5)]  # mean, rstd, var, dgamma, dbeta
        mean, rstd, var, dgamma, dbeta = stats
        zz = z.to(dtype)
        getattr(lib, f"aim_bnrd_forward_{suffix}")(zz.data_ptr(), gamma.data_ptr(), beta.data_ptr(), key, drop, scale,
                                                   1e-5, B, H, 2, y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                                   var.data_ptr())
        saved = y if dtype == torch.bfloat16 else out[torch.bfloat16][0].float()  # the backward reads y as saved
        dd = dy.to(dtype)
        getattr(lib, f"aim_bnrd_backward_{suffix}")(dd.data_ptr(), saved.data_ptr(), zz.data_ptr(), mean.data_ptr(),
                                                    rstd.data_ptr(), gamma.data_ptr(), scale, B, H, 2, dz.data_ptr(),
                                                    dgamma.data_ptr(), dbeta.data_ptr())
        out[dtype] = [y, dz, *stats]
    (y16, dz16, *stats16), (y32, dz32, *stats32) = out[torch.bfloat16], out[torch.float32]
    assert torch.equal(y16, y32.to(torch.bfloat16)) and torch.equal(dz16, dz32.to(torch.bfloat16))
    assert 0.3 < (y16 == 0).float().mean() < 0.9  # ReLU's and dropout's zeros, and values
    for a, b in zip(stats16, stats32, strict=True):
        assert torch.equal(a, b)  # statistics and the parameters' gradients are float32 either way


@needs_kernel
def test_under_bf16_autocast_the_kernel_is_as_close_to_float32_as_the_torch_ops(monkeypatch):
    """bf16 activations: the kernel computes in float and rounds once, torch rounds after each op. Neither equals
    the float32 result (bf16 keeps 8 bits; weight gradients here differ from float32's by about 10 % of their
    largest entry), so the test holds the kernel's error against float32 to the torch ops' error, with the same
    dropout masks."""
    torch.manual_seed(0)
    fused = MLP(30, [64, 48], 1, dropout=0.2, batch_norm=True)
    reference, truth = copy.deepcopy(fused), copy.deepcopy(fused)
    x = torch.randn(257, 30) * 3 + 1
    want_out, want_grads = train_step(truth, x)  # float32, the kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = train_step(fused, x)
        monkeypatch.setattr(mlp_module, "fused_hidden_layer", lambda *args: None)
        torch_out, torch_grads = train_step(reference, x)
    assert out.dtype == torch.float32
    assert (out - want_out).abs().max() <= 2 * (torch_out - want_out).abs().max() + 1e-3
    for name, grad in grads.items():
        want = want_grads[name]
        top = want.abs().max().clamp_min(1e-6)  # the output bias: linspace(-1, 1) sums to 0
        ours = ((grad - want).abs().max() / top).item()
        theirs = ((torch_grads[name] - want).abs().max() / top).item()
        assert ours <= 2 * theirs + 0.02, f"{name}: {ours:.4f} of the largest entry off float32, torch's {theirs:.4f}"
    for (name, a), (_, b) in zip(fused.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-3, msg=name)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_gives_the_same_bits_with_one_thread_or_two(dtype):
    """Each column's sums run over the rows in order inside one thread: the thread count changes no bit of the
    kernel's output or gradients (the Linear layers' matrix products are MKL's and not part of this promise)."""
    torch.manual_seed(0)
    z = (torch.randn(1000, 96) * 2 + 0.5).to(dtype)
    gamma, beta = torch.rand(96) + 0.5, torch.randn(96) * 0.1

    def run() -> list[torch.Tensor]:
        torch.manual_seed(3)
        inputs = [t.clone().requires_grad_() for t in (z, gamma, beta)]
        key, drop, scale = mlp_module.dropout_draw(0.2)
        y, mean, var = mlp_module._BatchNormReLUDropout.apply(*inputs, key, drop, scale, 1e-5)
        grads = torch.autograd.grad(y, inputs, torch.linspace(-1, 1, y.numel()).view_as(y).to(dtype))
        return [y, mean, var, *grads]

    assert_same_bits_with_one_thread_or_two(run)


@needs_kernel
def test_the_kernel_is_used_in_training_only(monkeypatch):
    """Training in float32 and under bf16 autocast takes the kernel; evaluation folds batch norm into the Linear;
    a batch of one keeps torch's ops (and its error)."""
    calls = []
    real = mlp_module._BatchNormReLUDropout.apply
    monkeypatch.setattr(mlp_module._BatchNormReLUDropout, "apply", lambda *a: calls.append(1) or real(*a))
    model = MLP(8, [16, 16], 1, dropout=0.1, batch_norm=True)
    x = torch.randn(32, 8)
    model.train()(x)
    assert len(calls) == 2  # one per hidden layer
    model.eval()(x)
    assert len(calls) == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.train()(x).dtype == torch.float32  # the logit layer stays float32
    assert len(calls) == 4
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


def output_unit_step(layer: mlp_module.FP32Linear, x: torch.Tensor) -> list[torch.Tensor]:
    """The logit, d x, d w and d b of one forward and backward of the output unit."""
    layer.zero_grad()
    leaf = x.clone().requires_grad_()
    out = layer(leaf)
    out.backward(torch.linspace(-2, 2, out.numel()).view_as(out))
    return [out.detach(), leaf.grad, layer.weight.grad, layer.bias.grad]


@needs_kernel
def test_the_output_unit_gives_what_torchs_linear_gives_in_float32_and_from_bf16(monkeypatch):
    torch.manual_seed(4)
    layer = mlp_module.FP32Linear(400, 1)
    x = torch.randn(300, 400)
    calls = []
    real = mlp_module._OutputUnit.apply
    monkeypatch.setattr(mlp_module._OutputUnit, "apply", lambda *a: calls.append(a[0].dtype) or real(*a))
    ours = output_unit_step(layer, x)
    ours_bf16 = output_unit_step(layer, x.bfloat16())
    assert calls == [torch.float32, torch.bfloat16]
    monkeypatch.setattr(mlp_module, "mlp_kernel", lambda: None)  # torch's F.linear, on a float32 copy of x
    want = output_unit_step(layer, x)
    want_bf16 = output_unit_step(layer, x.bfloat16())
    for got, expected in ((ours, want), (ours_bf16, want_bf16)):
        assert got[0].dtype == torch.float32 and got[1].dtype == expected[1].dtype
        for name, a, b in zip(["logit", "x", "weight", "bias"], got, expected, strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=name)


@needs_kernel
def test_the_output_unit_gives_the_same_bits_with_one_thread_or_two():
    torch.manual_seed(6)
    layer = mlp_module.FP32Linear(100, 1)
    x = torch.randn(1000, 100)
    assert_same_bits_with_one_thread_or_two(lambda: output_unit_step(layer, x))
