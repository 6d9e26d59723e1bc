"""AFM, IFM, INN, DeepIFM: reductions to FM, the papers' equations against loop references, gradients, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import aim.models.afm  # noqa: F401  (registers "afm")
import aim.models.ifm  # noqa: F401  (registers "ifm", "inn", "deepifm")
from aim.data import PADDING, CTRData, FieldSpec
from aim.models.afm import AFM
from aim.models.base import build_model, hyperparameters
from aim.models.fm import fm_pairwise
from aim.models.ifm import InteractionAwareModel
from aim.train import TrainConfig, evaluate, fit

# Five fields, the multi-valued one in the middle (exercises the embedding's field re-ordering): m = 10 pairs.
FIELDS = (
    FieldSpec("user", 8),
    FieldSpec("tags", 10, max_length=3, multi_valued=True),
    FieldSpec("item", 6),
    FieldSpec("hour", 5),
    FieldSpec("city", 7),
)
N, M = len(FIELDS), len(FIELDS) * (len(FIELDS) - 1) // 2
TAGS = 1  # position of the multi-valued field


def make_batch(rows: int = 12, seed: int = 0) -> CTRData:
    """Random codes; row 0 has no tags at all (an empty multi-valued field), the other rows 1-3 tags."""
    g = torch.Generator().manual_seed(seed)
    single = torch.stack(
        [torch.randint(1, f.vocab_size, (rows,), generator=g) for f in FIELDS if not f.multi_valued], 1
    ).to(torch.int32)
    tags = torch.randint(1, FIELDS[TAGS].vocab_size, (rows, 3), generator=g)
    keep = torch.rand(rows, 3, generator=g) < 0.6
    keep[:, 0] = True
    tags = torch.where(keep, tags, PADDING)
    tags[0] = PADDING
    label = torch.randint(0, 2, (rows,), generator=g).float()
    return CTRData(FIELDS, single, (tags.to(torch.int32),), label)


def scale_embeddings(model: torch.nn.Module, std: float = 0.5) -> None:
    """The default init (std 1e-4) makes every interaction ~1e-8; larger vectors make comparisons meaningful."""
    torch.nn.init.normal_(model.embedding.weight, std=std)


def present_pairs(batch: CTRData) -> list[list[tuple[int, int]]]:
    """Per row, the field pairs (i < j) whose fields both have a value (loop reference of the papers' R_x / X)."""
    out = []
    for b in range(len(batch)):
        has = [True] * N
        has[TAGS] = bool((batch.multi[0][b] != PADDING).any())
        out.append([(i, j) for i in range(N) for j in range(i + 1, N) if has[i] and has[j]])
    return out


def reference_logit(model: torch.nn.Module, batch: CTRData, subset: list[tuple[int, int]] | None = None) -> Tensor:
    """Loop over rows and pairs: AFM eq. 6, or IFM eq. 9 (softmax over the pairs of ``subset`` that are present)."""
    embedded = model.embedding(batch)
    attention = model.attention
    out = []
    for b, pairs in enumerate(present_pairs(batch)):
        if subset is not None:
            pairs = [p for p in pairs if p in subset]
        vectors = [embedded[b, i] * embedded[b, j] for i, j in pairs]
        if not vectors:  # no pair with both fields present: no interaction term
            out.append(embedded.new_zeros(()))
            continue
        logits = torch.stack([attention.score(F.relu(attention.project(v))).squeeze() for v in vectors])
        if isinstance(model, AFM):
            weights = torch.softmax(logits, 0)
            out.append(sum(w * (v @ model.projection) for w, v in zip(weights, vectors, strict=True)))
        else:
            weights = torch.softmax(logits / model.temperature, 0)
            u, d = model.field_embedding, model.factor_matrix
            out.append(sum(w * (d.T @ (u[i] * u[j])) @ v for w, v, (i, j) in zip(weights, vectors, pairs, strict=True)))
    return model.linear(batch) + torch.stack(out)


def field_rows(field: int) -> slice:
    """The rows of the shared embedding table that belong to ``field`` (tables are stacked in field order)."""
    start = sum(f.vocab_size for f in FIELDS[:field])
    return slice(start, start + FIELDS[field].vocab_size)


# -- construction ------------------------------------------------------------------------------------------


def test_models_build_by_name_with_their_hyperparameters():
    afm = build_model("afm", FIELDS, embedding_dim=10, attention_dim=10)
    assert isinstance(afm, AFM) and afm.attention.project.out_features == 10
    assert {"attention_dim", "dropout", "attention_l2", "embedding_dim"} <= set(hyperparameters("afm"))
    ifm_params = hyperparameters("ifm")
    assert ifm_params["temperature"] == 10.0 and ifm_params["sample_size"] is None
    assert {"field_factors", "field_l2", "attention_dim", "dropout"} <= set(ifm_params)
    assert {"hidden_units", "mlp_dropout", "batch_norm", "sample_size"} <= set(hyperparameters("deepifm"))
    assert "sample_size" not in hyperparameters("inn")  # eq. 14 gives each pair a fixed MLP slot: no sampling
    ifm = build_model("ifm", FIELDS, embedding_dim=6, field_factors=3)
    assert ifm.field_embedding.shape == (N, 3) and ifm.factor_matrix.shape == (3, 6)
    with pytest.raises(ValueError, match="sample_size"):
        build_model("inn", FIELDS, sample_size=3)
    with pytest.raises(ValueError, match="sample_inference"):
        build_model("ifm", FIELDS, sample_size=3, sample_inference="random")


# -- AFM -----------------------------------------------------------------------------------------------------


def test_afm_with_uniform_attention_and_unit_projection_is_fm_over_the_number_of_pairs():
    """a_ij = 1/m and p = 1 turn eq. 6 into w_0 + sum w_i + (1/m) sum_{i<j} <e_i, e_j>, m = present pairs of the row."""
    torch.manual_seed(0)
    model = build_model("afm", FIELDS, embedding_dim=6, attention_dim=4).eval()
    scale_embeddings(model)
    batch = make_batch()
    with torch.no_grad():
        model.attention.score.weight.zero_()  # h = 0: every a'_ij is 0, the softmax is uniform
        assert torch.equal(model.projection, torch.ones(6))  # p starts at all ones
        pairwise = model(batch) - model.linear(batch)
        embedded = model.embedding(batch)
        # Row 0 has no tags: 4 present fields, 6 pairs (its zero tag vector adds nothing to fm_pairwise); others 10.
        num_pairs = torch.tensor([math.comb(N - 1, 2)] + [M] * (len(batch) - 1), dtype=torch.float32)
        torch.testing.assert_close(pairwise, fm_pairwise(embedded) / num_pairs)
        # ...and not /10: the empty field's pairs left the softmax.
        assert not torch.allclose(pairwise[:1], fm_pairwise(embedded)[:1] / M)

        torch.nn.init.normal_(model.attention.score.weight, std=3.0)  # a real attention breaks the reduction
        assert not torch.allclose(model(batch) - model.linear(batch), fm_pairwise(embedded) / num_pairs, rtol=1e-2)


def test_afm_matches_the_loop_reference_of_eq_6():
    torch.manual_seed(1)
    model = build_model("afm", FIELDS, embedding_dim=5, attention_dim=3).eval()
    scale_embeddings(model)
    with torch.no_grad():
        torch.nn.init.normal_(model.projection)
        torch.nn.init.normal_(model.attention.score.weight, std=2.0)
        batch = make_batch(seed=3)
        torch.testing.assert_close(model(batch), reference_logit(model, batch))


def test_afm_attention_l2_is_added_to_the_penalty():
    model = build_model("afm", FIELDS, attention_l2=0.3, embedding_l2=0.0)
    model(make_batch())
    expected = 0.3 * model.attention.project.weight.square().sum()
    torch.testing.assert_close(model.penalty, expected)
    assert float(expected.detach()) > 0


def test_afm_dropout_acts_on_the_interaction_layer_in_training_only():
    torch.manual_seed(0)
    model = build_model("afm", FIELDS, dropout=0.5)
    scale_embeddings(model)
    batch = make_batch()
    model.eval()
    a, b = model(batch), model(batch)
    torch.testing.assert_close(a, b)
    model.train()
    assert not torch.allclose(model(batch), a)


# -- IFM -----------------------------------------------------------------------------------------------------


def test_ifm_with_flat_attention_and_constant_field_aspect_is_a_scaled_fm():
    """τ → ∞ makes T_ij = 1/m (eq. 5); U = 1, D = 1 make F = D^T 1 = K_F·1 (eq. 6); eq. 9 becomes K_F/m · FM."""
    torch.manual_seed(0)
    k_f = 3
    model = build_model("ifm", FIELDS, embedding_dim=6, attention_dim=4, field_factors=k_f, temperature=1e9).eval()
    scale_embeddings(model)
    batch = make_batch()
    with torch.no_grad():
        torch.nn.init.normal_(model.attention.score.weight, std=5.0)  # strong attention logits, flattened by τ
        model.field_embedding.fill_(1.0)
        model.factor_matrix.fill_(1.0)
        torch.testing.assert_close(model.field_aspect(), torch.full((M, 6), float(k_f)))
        pairwise = model(batch) - model.linear(batch)
        embedded = model.embedding(batch)
        num_pairs = torch.tensor([math.comb(N - 1, 2)] + [M] * (len(batch) - 1), dtype=torch.float32)
        torch.testing.assert_close(pairwise, k_f * fm_pairwise(embedded) / num_pairs)

        model.temperature = 0.1  # a low temperature lets the same attention network decide
        sharp = model(batch) - model.linear(batch)
        assert not torch.allclose(sharp, k_f * fm_pairwise(embedded) / num_pairs, rtol=1e-2)


def test_ifm_matches_the_loop_reference_of_eq_9():
    torch.manual_seed(2)
    model = build_model("ifm", FIELDS, embedding_dim=5, attention_dim=3, field_factors=2, temperature=0.5).eval()
    scale_embeddings(model)
    with torch.no_grad():
        torch.nn.init.normal_(model.field_embedding)
        torch.nn.init.normal_(model.factor_matrix)
        torch.nn.init.normal_(model.attention.score.weight, std=2.0)
        batch = make_batch(seed=5)
        torch.testing.assert_close(model(batch), reference_logit(model, batch))


def test_ifm_field_l2_and_attention_l2_enter_the_penalty():
    model = build_model("ifm", FIELDS, field_l2=0.2, attention_l2=0.1)
    model(make_batch())
    expected = 0.2 * (model.field_embedding.square().sum() + model.factor_matrix.square().sum())
    expected = expected + 0.1 * model.attention.project.weight.square().sum()
    torch.testing.assert_close(model.penalty, expected)


@pytest.mark.parametrize("name", ["afm", "ifm", "inn", "deepifm"])
def test_every_parameter_gets_a_gradient_and_predictions_are_probabilities(name):
    torch.manual_seed(0)
    extra = {} if name == "afm" else {"field_factors": 2}
    model = build_model(name, FIELDS, embedding_dim=4, attention_dim=3, **extra)
    scale_embeddings(model)
    batch = make_batch(rows=32)
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    probabilities = model.predict(batch)
    assert probabilities.shape == (32,)
    assert bool(((probabilities > 0) & (probabilities < 1)).all())


def test_inn_input_is_the_concatenation_of_eq_14():
    """With an MLP that is one linear map, INN is that map applied to concat_ij T_ij F_ij ⊙ V_i ⊙ V_j."""
    torch.manual_seed(0)
    model = build_model("inn", FIELDS, embedding_dim=3, attention_dim=2, field_factors=2, hidden_units=()).eval()
    scale_embeddings(model)
    batch = make_batch(rows=4)
    with torch.no_grad():
        embedded = model.embedding(batch)
        weights, fused = model.interact(batch, embedded)
        assert weights.shape == (4, M) and fused.shape == (4, M, 3)
        linear = model.mlp.net[0]
        per_pair = linear.weight.view(M, 3)  # the MLP weight slot of each pair
        expected = model.linear(batch) + (weights * (fused * per_pair).sum(-1)).sum(-1) + linear.bias
        torch.testing.assert_close(model(batch), expected)


# -- sampling ------------------------------------------------------------------------------------------------


def sampling_model(name: str = "ifm", c: int = 2, **kw) -> InteractionAwareModel:
    torch.manual_seed(0)
    model = build_model(name, FIELDS, embedding_dim=4, attention_dim=3, field_factors=2, sample_size=c, **kw)
    scale_embeddings(model)
    with torch.no_grad():
        torch.nn.init.normal_(model.field_embedding)
        torch.nn.init.normal_(model.attention.score.weight, std=2.0)
    return model


def test_sampling_scores_only_c_pairs_in_training():
    model = sampling_model(c=2).train()
    batch = make_batch()
    pairs = [tuple(p) for p in model.pairs.tolist()]
    torch.manual_seed(11)
    out = model(batch)
    chosen = model.sampled_pairs
    assert chosen is not None and chosen.shape == (2,) and len(set(chosen.tolist())) == 2
    subset = [pairs[k] for k in chosen.tolist()]
    # The softmax of eq. 5 runs over the sampled pairs only.
    torch.testing.assert_close(out, reference_logit(model, batch, subset))

    # Two pairs touch at most 4 of the 5 fields: an untouched field's V and U get no gradient at all.
    out.sum().backward()
    touched = {f for pair in subset for f in pair}
    assert len(touched) < N
    for field in range(N):
        v_grad = model.embedding.weight.grad[field_rows(field)].abs().sum()
        u_grad = model.field_embedding.grad[field].abs().sum()
        if field in touched:
            assert v_grad > 0 and u_grad > 0, field
        else:
            assert v_grad == 0 and u_grad == 0, field


def test_sampling_is_deterministic_under_a_seed_and_varies_across_seeds():
    model = sampling_model(c=3).train()
    batch = make_batch()
    torch.manual_seed(5)
    first, first_pairs = model(batch), model.sampled_pairs
    torch.manual_seed(5)
    second, second_pairs = model(batch), model.sampled_pairs
    assert torch.equal(first_pairs, second_pairs)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    draws = set()
    for seed in range(20):
        torch.manual_seed(seed)
        model(batch)
        draws.add(tuple(model.sampled_pairs.tolist()))
    assert len(draws) > 1


def test_sampling_draws_pairs_in_proportion_to_the_field_aspect_norm():
    model = sampling_model(c=1).train()
    with torch.no_grad():
        field_aspect = model.field_aspect()
    norms = field_aspect.norm(dim=-1)
    torch.manual_seed(0)
    draws = torch.cat([model.select_pairs(field_aspect) for _ in range(4000)])
    frequency = torch.bincount(draws, minlength=M).float() / len(draws)
    torch.testing.assert_close(frequency, norms / norms.sum(), atol=0.03, rtol=0)

    # A field whose U row is zero has F = 0 for all its pairs: they are never drawn while c others remain.
    model.set_sampling(3, "all")
    with torch.no_grad():
        model.field_embedding[0] = 0.0
        field_aspect = model.field_aspect()
    with_field_0 = {k for k, (i, j) in enumerate(model.pairs.tolist()) if 0 in (i, j)}
    for _ in range(200):
        assert not set(model.select_pairs(field_aspect).tolist()) & with_field_0


def test_sampling_in_eval_scores_all_pairs_or_the_top_c():
    model = sampling_model(c=2).eval()
    batch = make_batch()
    full = build_model("ifm", FIELDS, embedding_dim=4, attention_dim=3, field_factors=2).eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(batch), full(batch))
        assert model.sampled_pairs is None

        model.set_sampling(2, "top")
        out = model(batch)
        norms = model.field_aspect().norm(dim=-1)
        assert model.sampled_pairs.tolist() == sorted(norms.topk(2).indices.tolist())
        pairs = [tuple(p) for p in model.pairs.tolist()]
        torch.testing.assert_close(out, reference_logit(model, batch, [pairs[k] for k in model.sampled_pairs.tolist()]))

    model.set_sampling(M, "all")  # c >= m: nothing to sample
    model.train()
    model(batch)
    assert model.sampled_pairs is None


def test_deepifm_samples_the_ifm_part():
    model = sampling_model("deepifm", c=4, hidden_units=(8,)).train()
    torch.manual_seed(0)
    model(make_batch())
    assert model.sampled_pairs is not None and model.sampled_pairs.shape == (4,)


# -- learning ------------------------------------------------------------------------------------------------


def planted(rows: int, seed: int) -> CTRData:
    """Four fields; the click rate depends only on a checkerboard of fields 0 and 1 (zero marginals: no
    first-order term can learn it, only the pair interaction)."""
    rng = np.random.default_rng(seed)
    fields = tuple(FieldSpec(f"f{k}", 9) for k in range(4))
    codes = rng.integers(3, 9, size=(rows, 4))
    sign = np.where((codes[:, 0] + codes[:, 1]) % 2 == 0, 1.0, -1.0)
    label = (rng.random(rows) < 1 / (1 + np.exp(-3 * sign))).astype(np.float32)
    return CTRData(fields, torch.from_numpy(codes.astype(np.int32)), (), torch.from_numpy(label))


def short_fit_auc(name: str) -> float:
    train, valid = planted(2000, 0), planted(1000, 1)
    torch.manual_seed(0)
    hparams = {} if name == "lr" else {"embedding_dim": 4, "attention_dim": 4}
    model = build_model(name, train.fields, **hparams)
    fit(model, train, valid, TrainConfig(epochs=4, batch_size=250, lr=0.03, patience=4, device="cpu", seed=0))
    return evaluate(model, valid)["auc"]


@pytest.mark.parametrize("name", ["afm", "ifm"])
def test_short_fit_learns_a_planted_interaction(name):
    assert short_fit_auc(name) > 0.8  # ~0.95 in practice; the planted Bayes AUC is ~0.95


def test_the_planted_signal_needs_the_interaction():
    assert short_fit_auc("lr") < 0.6  # first-order terms alone see nothing: the test above measures the pair term
