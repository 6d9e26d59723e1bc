"""Deep model families: DeepFM, IPNN, xDeepFM (CIN), AutoInt, AutoInt+ on small hand-built batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aim.data import CTRData, FieldSpec
from aim.layers import MultiHeadSelfAttention
from aim.models import autoint, deepfm, pnn, xdeepfm  # noqa: F401  (importing registers the models)
from aim.models.base import CTRModel, build_model, hyperparameters
from aim.models.fm import fm_pairwise
from aim.models.xdeepfm import CIN

# A multi-valued field between single-valued ones, so the embedding has to restore field order.
FIELDS = (
    FieldSpec("user", 7),
    FieldSpec("tags", 6, max_length=3, multi_valued=True),
    FieldSpec("item", 5),
    FieldSpec("city", 4),
)
DEEP = ("deepfm", "ipnn", "xdeepfm", "autoint", "autoint_plus")

# Small settings: every part present (two CIN layers, two attention layers with layer norm), no dropout or
# batch norm (a batch norm makes the bias of the linear before it have a zero gradient by construction).
SMALL = {
    "deepfm": {"hidden_units": [8, 8], "dropout": 0.0, "batch_norm": False},
    "ipnn": {"hidden_units": [8, 8], "dropout": 0.0, "batch_norm": False},
    "xdeepfm": {"cin_layer_units": [3, 2], "hidden_units": [8], "dropout": 0.0, "batch_norm": False},
    "autoint": {"attention_layers": 2, "num_heads": 2, "attention_dim": 6, "use_scale": True, "layer_norm": True},
    "autoint_plus": {
        "attention_layers": 2,
        "num_heads": 2,
        "attention_dim": 6,
        "hidden_units": [8],
        "dropout": 0.0,
        "batch_norm": False,
    },
}


def make_batch(rows: int = 16, seed: int = 0) -> CTRData:
    g = torch.Generator().manual_seed(seed)
    single = torch.stack(
        [torch.randint(0, f.vocab_size, (rows,), generator=g) for f in FIELDS if not f.multi_valued], 1
    ).to(torch.int32)
    tags = torch.randint(0, 6, (rows, 3), generator=g).to(torch.int32)
    tags[0] = 0  # a row with no tags at all: pooled to a zero vector
    tags[1] = torch.tensor([3, 4, 0])  # padding after real codes
    label = (torch.arange(rows) % 2).float()
    return CTRData(FIELDS, single, (tags,), label)


def build(name: str, seed: int = 0, **hparams) -> CTRModel:
    torch.manual_seed(seed)
    return build_model(name, FIELDS, embedding_dim=4, **hparams)


@pytest.mark.parametrize("name", DEEP)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name, embedding_l2=1e-3, **SMALL[name])
    # The default init (std 1e-4) makes attention scores ~1e-8; larger embeddings make the check meaningful.
    nn.init.normal_(model.embedding.weight, std=0.5)
    batch = make_batch()
    logits = model(batch)
    assert logits.shape == (len(batch),)
    loss = F.binary_cross_entropy_with_logits(logits, batch.label) + model.penalty
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} has no gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", DEEP)
def test_predict_with_default_hyperparameters(name: str) -> None:
    model = build(name).eval()  # defaults: the BARS Frappe configs (batch norm, dropout, wide attention)
    p = model.predict(make_batch())
    assert p.shape == (16,)
    assert torch.isfinite(p).all()
    assert ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("name", DEEP)
def test_same_seed_same_initial_outputs(name: str) -> None:
    batch = make_batch()
    first = build(name, seed=3, **SMALL[name]).eval()(batch)
    again = build(name, seed=3, **SMALL[name]).eval()(batch)
    other = build(name, seed=4, **SMALL[name]).eval()(batch)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_brief_example_and_hyperparameters() -> None:
    model = build_model("deepfm", FIELDS, embedding_dim=10, hidden_units=[400, 400, 400], dropout=0.2)
    assert model.mlp.net[0].in_features == len(FIELDS) * 10
    assert hyperparameters("autoint_plus") == {
        "embedding_dim": 10,
        "embedding_l2": 0.0,
        "attention_layers": 5,
        "num_heads": 4,
        "attention_dim": 128,
        "use_residual": True,
        "use_scale": True,
        "layer_norm": True,
        "hidden_units": (400, 400, 400),
        "dropout": 0.1,
        "batch_norm": True,
    }
    with pytest.raises(ValueError, match="no hyper-parameter 'cin_layer_units'"):
        build_model("deepfm", FIELDS, cin_layer_units=[4])


def test_mlp_in_eval_folds_batch_norm_into_the_linear_layers() -> None:
    from aim.layers import MLP

    torch.manual_seed(0)
    mlp = MLP(6, [8, 5], dropout=0.2, batch_norm=True).double()
    for _ in range(3):  # running statistics and BN affine parameters away from their initial 0/1
        mlp(torch.randn(64, 6, dtype=torch.float64) * 3 + 1)
    with torch.no_grad():
        for m in mlp.net:
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    mlp.eval()
    x = torch.randn(16, 6, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), mlp.net(x))  # folded forward == the layers one by one


def test_a_linear_before_batch_norm_has_no_bias() -> None:
    """The norm subtracts the batch mean and adds its own shift, so a bias there would be a parameter that does
    nothing; without batch norm the hidden layers keep theirs."""
    from aim.layers import MLP

    with_norm, without = MLP(6, [8, 5], batch_norm=True), MLP(6, [8, 5], batch_norm=False)
    linears = [m for m in with_norm.net if isinstance(m, nn.Linear)]
    assert [m.bias is None for m in linears] == [True, True, False]  # the logit layer keeps its bias
    assert all(m.bias is not None for m in without.net if isinstance(m, nn.Linear))
    count = {mlp: sum(p.numel() for p in mlp.parameters()) for mlp in (with_norm, without)}
    assert count[with_norm] - count[without] == 2 * (8 + 5) - (8 + 5)  # the norms' scale and shift, less the biases


def test_deepfm_without_its_mlp_is_the_fm() -> None:
    model = build("deepfm", **SMALL["deepfm"])
    last = model.mlp.net[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    fm = build("fm")
    fm.embedding.load_state_dict(model.embedding.state_dict())
    fm.linear.load_state_dict(model.linear.state_dict())
    nn.init.normal_(model.embedding.weight, std=0.5)
    nn.init.normal_(fm.embedding.weight, std=0.5)  # different values: the comparison below must then fail...
    batch = make_batch()
    assert not torch.allclose(model(batch), fm(batch))
    fm.embedding.load_state_dict(model.embedding.state_dict())  # ...until the FM has DeepFM's embeddings
    torch.testing.assert_close(model(batch), fm(batch))
    # and the FM part is fm_pairwise of the model's own (multi-hot pooled) embeddings
    embedded = model.embedding(batch)
    torch.testing.assert_close(model(batch) - model.linear(batch), fm_pairwise(embedded))


def test_ipnn_products_are_the_pairwise_inner_products() -> None:
    model = build("ipnn", **SMALL["ipnn"])
    embedded = torch.randn(5, len(FIELDS), 4)
    expected = torch.stack(
        [(embedded[:, i] * embedded[:, j]).sum(-1) for i in range(len(FIELDS)) for j in range(i + 1, len(FIELDS))], 1
    )
    torch.testing.assert_close(model.products(embedded), expected)
    assert model.mlp.net[0].in_features == len(FIELDS) * 4 + 6


def cin_by_loops(cin: CIN, x0: torch.Tensor) -> torch.Tensor:
    """The CIN formula element by element: X^k[h, :] = sum_i sum_j W[h, i, j] X^{k-1}[i, :] * X^0[j, :] + b[h]."""
    batch, m, d = x0.shape
    pooled = []
    for b in range(batch):
        x = x0[b]
        row = []
        for layer in cin.layers:
            w = layer.weight.view(layer.out_features, x.shape[0], m)
            nxt = torch.zeros(layer.out_features, d)
            for h in range(layer.out_features):
                nxt[h] += layer.bias[h]
                for i in range(x.shape[0]):
                    for j in range(m):
                        nxt[h] += w[h, i, j] * x[i] * x0[b, j]
            row.append(nxt.sum(-1))
            x = nxt
        pooled.append(torch.cat(row))
    return torch.stack(pooled)


def test_cin_matches_the_formula() -> None:
    torch.manual_seed(0)
    cin = CIN(num_fields=3, layer_units=[2, 3])
    x0 = torch.randn(2, 3, 4)
    out = cin(x0)
    assert out.shape == (2, 5)
    with torch.no_grad():
        torch.testing.assert_close(out, cin_by_loops(cin, x0))


def test_autoint_without_attention_layers_is_linear_in_the_embeddings() -> None:
    model = build("autoint", attention_layers=0)
    assert len(model.attention) == 0
    assert model.output.in_features == len(FIELDS) * 4
    batch = make_batch()
    embedded = model.embedding(batch)
    expected = embedded.flatten(1) @ model.output.weight.squeeze(0) + model.output.bias
    torch.testing.assert_close(model(batch), expected)


def test_interacting_layer_with_layer_norm_matches_the_formula() -> None:
    torch.manual_seed(0)
    layer = autoint.InteractingLayer(in_dim=4, head_dim=3, heads=1, residual=True, scaled=True, layer_norm=True)
    x = torch.randn(2, 5, 4)
    q, k, v = layer.qkv(x).split(3, dim=-1)
    attention = torch.softmax(q @ k.transpose(1, 2) / 3**0.5, dim=-1)
    expected = F.relu(layer.norm(attention @ v + layer.residual(x)))
    torch.testing.assert_close(layer(x), expected)
    # without the norm it is exactly the shared layer
    plain = autoint.InteractingLayer(in_dim=4, head_dim=3, heads=2)
    shared = MultiHeadSelfAttention(in_dim=4, head_dim=3, heads=2)
    shared.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain(x), shared(x))


def test_autoint_plus_is_autoint_plus_an_mlp() -> None:
    settings = {"attention_layers": 2, "num_heads": 2, "attention_dim": 6, "use_scale": False, "layer_norm": False}
    base = build("autoint", **settings)
    plus = build("autoint_plus", hidden_units=[8], **settings)
    assert plus.num_parameters() > base.num_parameters()
    assert plus.num_parameters() - base.num_parameters() == sum(p.numel() for p in plus.mlp.parameters())
    with pytest.raises(ValueError, match="not divisible"):
        build("autoint", num_heads=3, attention_dim=8)


def test_xdeepfm_without_mlp_and_with_batch_norm() -> None:
    lr_cin = build("xdeepfm", cin_layer_units=[3], hidden_units=[])
    assert lr_cin.mlp is None
    assert torch.isfinite(lr_cin(make_batch())).all()
    with pytest.raises(ValueError, match="at least one CIN layer"):
        build("xdeepfm", cin_layer_units=[])


def test_the_logit_layer_stays_float32_under_bf16_autocast() -> None:
    """A bf16 logit has 8 mantissa bits: test rows would tie and AUC would pay. The hidden layers may run in
    bf16; the layer that makes the logit must not."""
    from aim.layers import MLP

    torch.manual_seed(0)
    mlp = MLP(16, [32], out_dim=1)
    x = torch.randn(256, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = mlp.net[:-1](x)
        logit = mlp(x)
    assert hidden.dtype == torch.bfloat16 and logit.dtype == torch.float32
    expected = F.linear(hidden.float(), mlp.net[-1].weight, mlp.net[-1].bias)
    # float32's precision (the native output unit sums in another order than MKL); bf16's would be ~1e-3
    torch.testing.assert_close(logit, expected, rtol=1e-6, atol=1e-6)
    assert logit.unique().numel() == 256  # no ties from rounding: a bf16 logit would tie many of these rows


@pytest.mark.parametrize("scale", [1.0, None])
def test_self_attention_under_cpu_bf16_autocast_is_the_same_attention(scale) -> None:
    """Under bf16 autocast on CPU the attention core is two matmuls and a softmax instead of torch's fused kernel
    (whose bf16 path is slower there): the same function, to bf16's precision, with gradients."""
    from aim.layers.attention import _self_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(64, 2, 10, 8, generator=g, requires_grad=True) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _self_attention(q, k, v, scale)
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: scores of about ±3 are off by up to 0.03 (a wrong scale or softmax axis: O(1))
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)
    grads = torch.autograd.grad(got.float().sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad(expected.sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, rtol=0.1, atol=0.1)
