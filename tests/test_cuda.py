"""The library on a GPU: every model and the AIM search give the CPU's numbers there, and the Trainer uses it.

These run only where CUDA is present (the project's CI has none; they were run on an H200 through the session's
device tool, see README "GPU"). Each compares a CUDA computation with the same computation on CPU from the same
weights and batch, so a device-specific path (the Bernoulli dropout draw, SDPA, the fused pair term's buffers)
that went wrong would show as a mismatch, not pass silently.
"""

from __future__ import annotations

import copy

import pytest
import torch

from aim.data import CTRData, FieldSpec
from aim.layers import attentive_pair_sum, dropout_mask
from aim.models import MODELS, build_model, hyperparameters
from aim.search import Interaction, all_pairs
from aim.train import TrainConfig, Trainer, predict
from tests.test_pair_attention import plain, setup

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

FIELDS = (FieldSpec("u", 11), FieldSpec("tags", 8, max_length=3, multi_valued=True), FieldSpec("i", 7),
          FieldSpec("c", 5), FieldSpec("d", 9))
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_matmuls() -> None:
    """Full fp32 on the GPU (no TF32), so CPU and CUDA differ only by summation order."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def data(rows: int = 256, seed: int = 0) -> CTRData:
    g = torch.Generator().manual_seed(seed)
    single = torch.stack([torch.randint(1, f.vocab_size, (rows,), generator=g) for f in FIELDS if not f.multi_valued],
                         1)
    tags = torch.randint(0, 8, (rows, 3), generator=g)
    label = ((single[:, 0] % 2) ^ (single[:, 2] % 2)).float()  # a planted pair (u, i) to learn
    return CTRData(FIELDS, single.to(torch.int32), (tags.to(torch.int32),), label)


def no_dropout(name: str) -> dict[str, float]:
    """Every dropout hyper-parameter of ``name`` at 0: CPU and CUDA draw different masks."""
    return {k: 0.0 for k in hyperparameters(name) if "dropout" in k}


def gradients(model: torch.nn.Module, batch: CTRData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits and every parameter's gradient of the training loss (on CPU)."""
    logits = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label) + model.regularization()
    loss.backward()
    return logits.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


def assert_like_cpu(model: torch.nn.Module, name: str) -> None:
    """Logits and every gradient on CUDA are within rounding of the float64 result, as CPU float32's are.

    The bound is relative to CPU float32's own error (plus a floor), not a fixed tolerance: a deep model with batch
    norm is ill-conditioned at some units (IPNN's second layer loses 4e-4 of 0.013 in float32 on CPU), while a
    device-specific bug would be off by far more than rounding.
    """
    # Not the default 1e-4 initialisation: its products are ~1e-8, so the logits would be ~1e-4 and any
    # absolute tolerance would pass whatever the device computed.
    for module in model.modules():
        if type(module).__name__ in ("FieldEmbedding", "PrunedFieldEmbedding"):
            torch.nn.init.normal_(module.weight, std=0.5)
    batch = data()
    exact = gradients(copy.deepcopy(model).double(), batch)
    on_cpu = gradients(copy.deepcopy(model), batch)
    on_cuda = gradients(copy.deepcopy(model).to(CUDA), batch.to(CUDA))
    for key, truth in [("logits", exact[0]), *exact[1].items()]:
        cpu = on_cpu[0] if key == "logits" else on_cpu[1][key]
        cuda = on_cuda[0] if key == "logits" else on_cuda[1][key]
        cpu_error = (cpu.double() - truth).abs().max().item()
        cuda_error = (cuda.double() - truth).abs().max().item()
        bound = 10 * cpu_error + 1e-6 * truth.abs().max().item() + 1e-9
        assert cuda_error <= bound, f"{name} {key}: CUDA off by {cuda_error:.3g}, CPU float32 by {cpu_error:.3g}"


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"aim", "deepfm_if", "ipnn_if"}))
def test_every_model_computes_on_cuda_as_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    assert_like_cpu(build_model(name, FIELDS, embedding_dim=4, embedding_l2=0.01, **no_dropout(name)), name)


def test_the_retrained_aim_computes_on_cuda_as_on_cpu() -> None:
    """The retrain stage's model: pruned tables (the multi-valued field partly kept), all four functions read from
    the kept numbers, gates as attention, an MLP."""
    kept_dims = [[0, 2, 3], [1, 3], [0, 1, 2, 3], [2], [0, 1]]  # field 1 is the multi-valued one
    chosen = [Interaction(f, fn, 0.5) for fn in ("inner", "outer", "vector_kernel", "scalar_kernel")
              for f in [(0, 1), (1, 2), (2, 4), (0, 3, 4)]]
    torch.manual_seed(0)
    model = build_model("aim", FIELDS, interactions=chosen, kept_dims=kept_dims, embedding_dim=4,
                        hidden_units=(16, 16), dropout=0.0)
    assert_like_cpu(model, "aim retrain")


def test_the_aim_search_step_moves_the_same_gates_on_cuda() -> None:
    """Every pair x the four functions, function-wise tables, GRDA on the gates: the search stage's model."""
    torch.manual_seed(0)
    functions = ["inner", "outer", "vector_kernel", "scalar_kernel"]
    model = build_model("aim", FIELDS, interactions=[], candidates=all_pairs(len(FIELDS), functions, 0.5),
                        function_wise=True, hidden_units=(), embedding_dim=4, embedding_l2=0.001,
                        grda_lr=0.01, grda_c=0.05, grda_mu=0.7)
    batch = data(512)
    cpu_model, cuda_model = copy.deepcopy(model), copy.deepcopy(model).to(CUDA)
    cpu_opt, cuda_opt = cpu_model.optimizers(1e-2), cuda_model.optimizers(1e-2)
    for _ in range(5):  # a few steps: GRDA's threshold grows with t, and its accumulators live on the device
        for m, opts, b in ((cpu_model, cpu_opt, batch), (cuda_model, cuda_opt, batch.to(CUDA))):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(b), b.label) + m.regularization()
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
    torch.testing.assert_close(cuda_model.alpha_search.detach().cpu(), cpu_model.alpha_search.detach(),
                               rtol=1e-4, atol=1e-6)
    assert ((cuda_model.alpha_search == 0).cpu() == (cpu_model.alpha_search == 0)).all()


@pytest.mark.parametrize("masked", [False, True])
def test_the_fused_pair_term_with_dropout_matches_autograd_on_cuda(masked: bool) -> None:
    """attentive_pair_sum's GPU path (one chunk, Bernoulli dropout): the same mask fed to the formula, same grads."""
    embedded, pairs, attention, values, mask = (t.to(CUDA) for t in setup(dtype=torch.float64))
    embedded, values = embedded.detach().requires_grad_(), values.detach().requires_grad_()
    mask = mask if masked else None
    torch.manual_seed(7)
    fused = attentive_pair_sum(embedded, pairs, attention, values, mask, 3.0, 0.4)
    torch.manual_seed(7)  # the same draw, [m, B, d]
    keep = dropout_mask((pairs.shape[0], len(embedded), embedded.shape[-1]), 0.4, torch.float64, CUDA)
    assert 0.5 < (keep > 0).double().mean() < 0.7
    expected = plain(embedded, pairs, attention, values, mask, 3.0, keep)
    torch.testing.assert_close(fused, expected)
    params = [embedded, values, *attention.parameters()]
    for got, want in zip(torch.autograd.grad(fused.sum(), params), torch.autograd.grad(expected.sum(), params),
                         strict=True):
        torch.testing.assert_close(got, want)


def test_the_trainer_on_auto_trains_on_the_gpu() -> None:
    torch.manual_seed(0)
    model = build_model("deepfm", FIELDS, embedding_dim=4, hidden_units=(32,))
    result = Trainer(model, TrainConfig(epochs=3, batch_size=64, lr=1e-2, device="auto")).fit(data(2048),
                                                                                               data(512, seed=1))
    assert next(model.parameters()).device.type == "cuda"
    assert result.best_valid_auc > 0.9  # the planted pair is learnt: the GPU run trains, not just runs
    probabilities = predict(model, data(300, seed=2))
    assert probabilities.shape == (300,) and ((probabilities > 0) & (probabilities < 1)).all()


def test_bf16_autocast_trains_autoint_plus_on_cuda() -> None:
    torch.manual_seed(0)
    model = build_model("autoint_plus", FIELDS, embedding_dim=4, attention_layers=2, attention_dim=16,
                        hidden_units=(32,))
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, device="cuda", precision="bf16")
    result = Trainer(model, config).fit(data(2048), data(512, seed=1))
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in result.history)
    assert result.best_valid_auc > 0.9
