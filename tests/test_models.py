"""Every registered model: builds from a name, trains every parameter, outputs probabilities."""

import pytest
import torch

from aim.data import CTRData, FieldSpec
from aim.models import MODELS, build_model, hyperparameters
from aim.models.base import CTRModel

FIELDS = (FieldSpec("u", 11), FieldSpec("tags", 8, max_length=3, multi_valued=True), FieldSpec("i", 7),
          FieldSpec("c", 5))


def batch(rows: int = 64, seed: int = 0) -> CTRData:
    g = torch.Generator().manual_seed(seed)
    single = [torch.randint(1, f.vocab_size, (rows,), generator=g) for f in FIELDS if not f.multi_valued]
    single = torch.stack(single, 1)
    tags = torch.randint(0, 8, (rows, 3), generator=g)  # 0 = padding, so some rows are partly or wholly empty
    tags[0] = 0
    return CTRData(FIELDS, single.to(torch.int32), (tags.to(torch.int32),),
                   torch.randint(0, 2, (rows,), generator=g).float())


def test_the_registry_holds_the_model_zoo() -> None:
    expected = {"lr", "fm", "fwfm", "ffm", "afm", "ifm", "inn", "deepifm", "autoint", "autoint_plus", "deepfm",
                "ipnn", "xdeepfm"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient_and_outputs_are_probabilities(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, FIELDS, embedding_dim=4, embedding_l2=0.01)
    for module in model.modules():  # the default 1e-4 initialisation makes products vanish in float32
        if hasattr(module, "weight") and type(module).__name__ == "FieldEmbedding":
            torch.nn.init.normal_(module.weight, std=0.5)
    data = batch()
    logits = model(data)
    assert logits.shape == (len(data),) and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, data.label) + model.regularization()
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"{name}: parameters without a gradient: {silent}"
    model.eval()
    p = model.predict(data)
    assert ((p > 0) & (p < 1)).all()


def test_unknown_names_and_hyperparameters_are_named() -> None:
    with pytest.raises(ValueError, match="unknown model 'fmm'; registered models"):
        build_model("fmm", FIELDS)
    with pytest.raises(ValueError, match="model 'fm' has no hyper-parameter 'hidden_units'"):
        build_model("fm", FIELDS, hidden_units=[10])
    assert hyperparameters("deepfm")["embedding_dim"] == 10
    with pytest.raises(ValueError, match="embedding_dim must be >= 1, got 0"):
        build_model("deepfm", FIELDS, embedding_dim=0)


def test_embedding_l2_is_half_lambda_times_the_squared_tables() -> None:
    model = build_model("fm", FIELDS, embedding_l2=0.1)
    model(batch())
    tables = model.embedding.weight.square().sum() + model.linear.weights.weight.square().sum()
    torch.testing.assert_close(model.regularization(), 0.05 * tables)
    assert isinstance(model, CTRModel) and build_model("fm", FIELDS).regularization() == 0.0
