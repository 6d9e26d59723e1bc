"""The CPU dropout mask: the right drop rate, an unbiased expectation, reproducible by seed, a true mask."""

import pytest
import torch

from aim.layers import Dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_mask_drops_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    mask = dropout_mask((1000, 1000), p)
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # 1e6 draws: the standard error is below 5e-4
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p), rel=1e-4)
    assert abs(mask.mean().item() - 1.0) < 0.003


def test_mask_is_reproducible_by_seed_and_varies_otherwise():
    torch.manual_seed(3)
    a = dropout_mask((64, 33), 0.3)
    torch.manual_seed(3)
    b = dropout_mask((64, 33), 0.3)
    c = dropout_mask((64, 33), 0.3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dropout_layer_trains_with_a_mask_and_is_identity_in_eval():
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
