"""The search machinery: GRDA, candidate pools (Algorithm 1), the AIM network's gates, and EDS's smaller tables."""

from __future__ import annotations

import math

import pytest
import torch

from aim.data import CTRData, FieldSpec
from aim.layers import FieldEmbedding, PrunedFieldEmbedding, gated_batch_norm
from aim.layers import Interaction as InteractionLayer
from aim.models import build_model
from aim.search import GRDA, Interaction, all_pairs, combine, kept, top_k


def test_grda_matches_the_formula_step_by_step_and_gives_exact_zeros():
    p = torch.nn.Parameter(torch.tensor([1.0, 0.05, -0.02]))
    lr, c, mu = 0.1, 0.2, 0.6
    opt = GRDA([p], lr=lr, c=c, mu=mu)
    grads = [torch.tensor([0.5, 0.1, -0.2]), torch.tensor([-0.2, 0.3, 0.4]), torch.tensor([0.3, -0.1, -0.1])]
    acc = torch.tensor([1.0, 0.05, -0.02])
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        acc = acc - lr * g
        l1 = c * math.sqrt(lr) * (lr * t) ** mu  # the closed form, with a constant lr
        expected = torch.sign(acc) * torch.clamp(acc.abs() - l1, min=0)
        torch.testing.assert_close(p.detach(), expected)
    assert p[1].item() == 0.0 and p[2].item() == 0.0  # |acc| under the threshold: exactly zero, not tiny
    assert p[0].item() > 0


def test_grda_threshold_grows_incrementally_so_a_learning_rate_decay_slows_it():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = GRDA([p], lr=0.1, c=1.0, mu=0.7)
    for _ in range(3):
        p.grad = torch.zeros(1)
        opt.step()
    before = opt.state[p]["l1"]
    opt.param_groups[0]["lr"] = 0.01
    p.grad = torch.zeros(1)
    opt.step()
    step = opt.state[p]["l1"] - before
    assert step == pytest.approx(GRDA.threshold_increment(0.01, 1.0, 0.7, 4))
    assert step < GRDA.threshold_increment(0.1, 1.0, 0.7, 4)


def test_grda_closes_gates_without_signal_and_keeps_those_with_signal():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 8, generator=gen)
    y = 1.5 * x[:, 0] - 1.0 * x[:, 3] + 0.5 * torch.randn(20_000, generator=gen)
    w = torch.nn.Parameter(torch.full((8,), 0.5))
    opt = GRDA([w], lr=0.05, c=0.5, mu=0.8)
    for _ in range(5):
        for i in range(0, 20_000, 200):
            loss = ((x[i:i + 200] @ w - y[i:i + 200]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert w[0].item() > 1.0 and w[3].item() < -0.5  # signal: open, sign kept
    assert all(w[j].item() == 0.0 for j in (1, 2, 4, 5, 6, 7))  # noise: exactly closed


def test_grda_rejects_bad_settings():
    with pytest.raises(ValueError, match="mu"):
        GRDA([torch.nn.Parameter(torch.zeros(1))], mu=1.5)


def test_length_scaled_c_ends_every_search_at_the_reference_threshold():
    from aim.search import length_scaled_c
    from aim.train import TrainConfig
    from tasks.config import GRDASection
    from tasks.training import search_grda_c

    lr, c, mu, ref = 0.1, 0.05, 0.9, 1584
    final = c * lr**0.5 * (lr * ref) ** mu  # where the reference search's threshold ends
    for steps in (160, 625, 1584, 350_000):
        scaled = length_scaled_c(c, mu, steps, ref)
        assert math.isclose(scaled * lr**0.5 * (lr * steps) ** mu, final, rel_tol=1e-12)
    assert length_scaled_c(c, mu, 625, ref) > c > length_scaled_c(c, mu, 5000, ref)  # a short search prunes harder
    assert length_scaled_c(c, mu, 625, None) == c
    with pytest.raises(ValueError, match="step"):
        length_scaled_c(c, mu, 0, ref)
    # The stage counts steps as epochs x batches, the last batch partial: 8 x ceil(80,000 / 1,024) = 632.
    config = TrainConfig(epochs=8, batch_size=1024)
    grda = GRDASection(c=c, mu=mu, reference_steps=ref)
    assert search_grda_c(grda, config, 80_000, "t") == length_scaled_c(c, mu, 632, ref)
    assert search_grda_c(GRDASection(c=c, mu=mu), config, 80_000, "t") == c


def test_candidate_pools_follow_algorithm_1():
    assert [it.fields for it in all_pairs(4)] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(all_pairs(5, ["inner", "outer"])) == 20
    searched = [Interaction((0, 1), "inner", 0.9), Interaction((0, 1), "outer", -0.5),
                Interaction((2, 3), "inner", 0.3), Interaction((1, 3), "inner", 0.0)]
    assert top_k(searched, 1) == [(0, 1)]  # importance 1.4 = |0.9| + |-0.5|; closed ones never rank
    assert top_k(searched, 5) == [(0, 1), (2, 3)]
    triples = combine([(0, 1), (2, 3)], 4)
    assert [it.fields for it in triples] == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]  # deduplicated
    assert [it.gate for it in kept(searched, [0.9, -0.5, 0.0, 0.2])] == [0.9, -0.5, 0.2]
    with pytest.raises(ValueError, match="unknown interaction function"):
        all_pairs(3, ["cosine"])


FIELDS = [FieldSpec("a", 7), FieldSpec("b", 5), FieldSpec("m", 6, max_length=3, multi_valued=True), FieldSpec("c", 4)]


def _batch(n: int = 32) -> CTRData:
    gen = torch.Generator().manual_seed(1)
    single = torch.stack([torch.randint(0, v, (n,), generator=gen) for v in (7, 5, 4)], 1).to(torch.int32)
    multi = torch.randint(0, 6, (n, 3), generator=gen).to(torch.int32)
    return CTRData(tuple(FIELDS), single, (multi,), torch.randint(0, 2, (n,), generator=gen).float())


def test_pruned_embedding_keeps_the_searched_positions_and_really_has_fewer_parameters():
    kept_dims = [[0, 2, 3], [1], [0, 1, 2, 3], []]
    pruned = PrunedFieldEmbedding(FIELDS, 4, kept_dims, tables=2)  # two tables, as AIM's function-wise ones
    assert pruned.weight.numel() == 2 * (7 * 3 + 5 * 1 + 6 * 4 + 0)
    batch = _batch()
    compact, expanded = pruned(batch)
    assert compact.shape == (2, 32, 3 + 1 + 4) and [e.shape for e in expanded] == [(32, 4, 4)] * 2
    for t in range(2):
        # Build the full table that pruned table t stands for: the kept positions filled, the rest zero.
        full = FieldEmbedding(FIELDS, 4)
        with torch.no_grad():
            full.weight.zero_()
            offset, row = 0, 0
            for f, positions in zip(FIELDS, kept_dims, strict=True):
                rows = pruned.weight[offset: offset + f.vocab_size * len(positions), t]
                full.weight[row: row + f.vocab_size, positions] = rows.view(f.vocab_size, len(positions))
                offset += f.vocab_size * len(positions)
                row += f.vocab_size
        torch.testing.assert_close(expanded[t], full(batch))
        torch.testing.assert_close(compact[t, :, :3], expanded[t][:, 0, [0, 2, 3]])
        assert expanded[t][:, 3].abs().sum() == 0  # a field that kept nothing is zeros
    assert not torch.equal(expanded[0], expanded[1])  # independent tables
    with pytest.raises(ValueError, match="increasing"):
        PrunedFieldEmbedding(FIELDS, 4, [[2, 0], [], [], []])


def _compact_by_the_layout(pruned: PrunedFieldEmbedding, batch: CTRData) -> torch.Tensor:
    """[B, sum d, T] straight from the documented layout: field f's code c, slot s is row base_f + c * d_f + s;
    a multi-valued field averages its non-padding codes. Plain indexing, field by field: the reference."""
    columns, base, single, multi = [], 0, iter(batch.single.t()), iter(batch.multi)
    for f, positions in zip(FIELDS, pruned.kept, strict=True):
        size, codes = len(positions), (next(multi) if f.multi_valued else next(single)).long()
        rows = base + codes.unsqueeze(-1) * size + torch.arange(size)  # [B, size] or [B, L, size]
        values = pruned.weight[rows]
        if f.multi_valued:
            mask = (codes != 0).float()[..., None, None]
            values = (values * mask).sum(1) / mask.sum(1).clamp(min=1)
        columns.append(values)
        base += f.vocab_size * size
    return torch.cat(columns, 1)


@pytest.mark.parametrize("kept_dims", [[[0, 2, 3], [1], [1, 3], [0, 1, 2, 3]], [[0], [], [], [2, 3]],
                                       [[0, 1, 2, 3]] * 4])
def test_pruned_compact_and_its_gradients_follow_the_layout(kept_dims):
    """compact (one gather for the single-valued fields, whole blocks for a multi-valued one, written in place)
    against plain indexing of the layout, with the multi-valued field kept, pruned away, or whole."""
    torch.manual_seed(0)
    pruned = PrunedFieldEmbedding(FIELDS, 4, kept_dims, tables=3)
    batch = _batch()
    batch.multi[0][:4] = 0  # rows with no codes at all: their pooled values are 0
    compact, reference = pruned.compact(batch), _compact_by_the_layout(pruned, batch)
    multi = [pruned.column[(2, p)] for p in pruned.kept[2]]  # the pooled field's columns: equal to rounding
    single = [s for s in range(compact.shape[1]) if s not in multi]
    assert torch.equal(compact[:, single], reference[:, single])
    torch.testing.assert_close(compact[:, multi], reference[:, multi], rtol=1e-6, atol=1e-9)
    with torch.no_grad():  # without a graph, single-valued fields are gathered as whole blocks: the same bits
        assert torch.equal(pruned.compact(batch), compact)
    upstream = torch.randn_like(compact)
    got = torch.autograd.grad((compact * upstream).sum(), pruned.weight)[0]
    want = torch.autograd.grad((_compact_by_the_layout(pruned, batch) * upstream).sum(), pruned.weight)[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tables", [1, 2, 3, 4])
def test_last_dim_mean_is_mean_to_the_bit_forward_and_backward(tables):
    from aim.layers import last_dim_mean

    x = torch.randn(300, 17, tables, dtype=torch.float32, requires_grad=True)
    upstream = torch.randn(300, 17)
    assert torch.equal(last_dim_mean(x), x.mean(-1))
    ours = torch.autograd.grad((last_dim_mean(x) * upstream).sum(), x)[0]
    theirs = torch.autograd.grad((x.mean(-1) * upstream).sum(), x)[0]
    assert torch.equal(ours, theirs)


def test_pruned_embedding_builds_full_vectors_only_for_the_fields_asked():
    kept_dims = [[0, 2, 3], [1], [0, 1, 2, 3], []]
    every = PrunedFieldEmbedding(FIELDS, 4, kept_dims)
    some = PrunedFieldEmbedding(FIELDS, 4, kept_dims, full_fields=[1, 2])
    some.load_state_dict(every.state_dict())
    batch = _batch()
    (compact_all, full_all), (compact, full) = every(batch), some(batch)
    torch.testing.assert_close(compact, compact_all)
    torch.testing.assert_close(full[0], full_all[0][:, [1, 2]])
    # a list of fields per table: each table's full has its own fields
    per_table = PrunedFieldEmbedding(FIELDS, 4, kept_dims, full_fields=[[2], [0, 3, 1]], tables=2)
    both = PrunedFieldEmbedding(FIELDS, 4, kept_dims, tables=2)
    per_table.load_state_dict(both.state_dict())
    (_, full_both), (_, full_each) = both(batch), per_table(batch)
    torch.testing.assert_close(full_each[0], full_both[0][:, [2]])
    torch.testing.assert_close(full_each[1], full_both[1][:, [0, 3, 1]])
    with pytest.raises(ValueError, match="full_fields"):
        PrunedFieldEmbedding(FIELDS, 4, kept_dims, full_fields=[4])
    with pytest.raises(ValueError, match="2 lists of fields for 3 tables"):
        PrunedFieldEmbedding(FIELDS, 4, kept_dims, full_fields=[[0], [1]], tables=3)


@pytest.mark.parametrize("order", [2, 3])
def test_retrained_aim_scores_equal_the_zero_filled_vectors(order: int):
    """The retrained model's layers read the kept numbers (CompactInteraction); their scores and gradients must
    equal each function's on the zero-filled full vectors (paper eq. 18), for all four functions, with fields
    whose kept positions overlap partly or not at all."""
    kept_dims = [[0, 2, 3], [1, 3], [0, 1, 2, 3], [2]]
    sets = [(1, 2), (0, 2), (0, 1), (2, 3)] if order == 2 else [(0, 1, 2), (1, 2, 3), (0, 2, 3)]
    chosen = [Interaction(f, fn, 0.5) for fn in ("inner", "outer", "vector_kernel", "scalar_kernel") for f in sets]
    torch.manual_seed(0)
    net = build_model("aim", FIELDS, interactions=chosen, kept_dims=kept_dims, hidden_units=(), embedding_dim=4)
    kernels = [layer.kernel for layer in net.layers if hasattr(layer, "kernel")]  # inner has none
    for kernel in kernels:  # away from their initial values, so that a misplaced entry shows
        torch.nn.init.normal_(kernel)
    batch = _batch()
    inputs, _ = net.embed_tables(batch)
    scores = net.interaction_scores(inputs)
    _, full = net.tables(batch)  # the zero-filled [B, n, d] vectors of each table
    reference = []
    for layer, fn in zip(net.layers, net.layer_functions, strict=True):
        plain = InteractionLayer(layer.index, fn, 4)
        if hasattr(layer, "kernel"):
            plain.kernel = layer.kernel
        reference.append(plain(full[net.table_names.index(fn)]))
    reference = torch.cat(reference, 1)
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-12)
    weights = torch.randn_like(scores)
    grads = [torch.autograd.grad((s * weights).sum(), [net.tables.weight, *kernels])
             for s in (net.interaction_scores(net.embed_tables(batch)[0]), reference)]
    for new, old in zip(*grads, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-12)
    # inner of fields 0 and 1: only position 3 is kept by both
    e = net.tables.compact(batch)[..., net.table_names.index("inner")]
    if order == 2:
        column = net.tables.column
        torch.testing.assert_close(scores[:, 2], e[:, column[(0, 3)]] * e[:, column[(1, 3)]])


@pytest.mark.parametrize("gates", ["attention", "none"])
def test_folded_inference_gives_the_layered_logits_and_follows_the_weights(gates: str):
    from aim.layers.native import folded_kernel

    """In eval mode without a graph the retrained AIM reads its folded tables (FoldedAIM): the same logits as the
    layers (orders 2 and 3, all four functions, a multi-valued field, a field that kept no dimension, trained batch
    norm statistics and gates), rebuilt after the weights change."""
    kept_dims = [[0, 2, 3], [1, 3], [0, 1, 2, 3], [2]]
    sets = [(1, 2), (0, 2), (0, 1), (2, 3), (0, 1, 2), (1, 2, 3)]
    chosen = [Interaction(f, fn, g) for fn, g in (("inner", 0.7), ("outer", -0.4), ("vector_kernel", 1.3),
                                                 ("scalar_kernel", 0.2)) for f in sets]
    kept_dims[3] = [] if gates == "none" else kept_dims[3]  # a field with no numbers: its interactions read zeros
    torch.manual_seed(0)
    net = build_model("aim", FIELDS, interactions=chosen, kept_dims=kept_dims, hidden_units=(8,), embedding_dim=4,
                      gates=gates)
    for p in net.parameters():  # away from the initial values (tiny embeddings, unit kernels), so a slip shows
        torch.nn.init.normal_(p, std=0.5)
    batch = _batch(64)
    net.train()
    net(batch)  # batch-norm running statistics of this batch (momentum 0.1 from 0 and 1)

    def layered() -> torch.Tensor:
        net.fold_inference = False
        try:
            return net(batch)
        finally:
            net.fold_inference = True

    net.eval()
    with torch.no_grad():
        folded, reference = net(batch), layered()
        assert net._fold is not None  # the folded path ran
        torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
        assert folded.std() > 0.1  # the interactions and MLP move the logits: the comparison has something to see
        first = net._fold[1]
        # both ways of computing the folded logits: the native pass (when a compiler is here) and torch ops
        assert (first.native is not None) == (folded_kernel() is not None)
        torch.testing.assert_close(first.logits(batch, native=False), reference, rtol=1e-5, atol=1e-5)
        assert net(batch) is not None and net._fold[1] is first  # unchanged weights: the same tables
        vector = net.layer_functions.index("vector_kernel")
        net.layers[vector].kernel.mul_(-2.0)  # an in-place change, as an optimizer step makes
        changed = net(batch)
        assert net._fold[1] is not first
        torch.testing.assert_close(changed, layered(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed, folded)
        net.fold_memory_ratio = 0.1  # folded tables may not outgrow a tenth of the model's own: the layers score
        torch.testing.assert_close(net(batch), layered(), rtol=0, atol=0)
        assert net._fold[1] is None
        net.fold_memory_ratio = 4.0
    net.train()
    with torch.no_grad():
        net(batch)  # training mode keeps the layers (batch statistics)
    assert torch.is_grad_enabled()
    net.eval()
    out = net(batch)  # a graph wanted: the layers, so that gradients reach every parameter
    assert out.requires_grad


def test_pruned_embedding_gradients_are_the_same_on_every_run():
    """Two backward passes of one batch give bit-identical gradients (CPU, several threads): the same config
    must give the same model. Indexing the flat table with ``weight[index]`` did not (index_put_ accumulates
    in a thread-dependent order)."""
    pruned = PrunedFieldEmbedding(FIELDS, 4, [[0, 2, 3], [1], [0, 1, 2, 3], [0, 1, 2, 3]], tables=2)
    batch = _batch(20_000)  # many rows per table row: the gradient sums that could come out in any order
    grads = []
    for _ in range(3):
        pruned.zero_grad()
        compact, full = pruned(batch)
        (compact.sin().sum() + sum(f.cos().sum() for f in full)).backward()
        grads.append(pruned.weight.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_search_model_gives_gates_to_grda_and_the_rest_to_adam():
    net = build_model("aim", FIELDS, interactions=[Interaction((0, 1), "inner", 0.7)],
                      candidates=all_pairs(4, ["inner", "outer"], 0.5)[1:], hidden_units=())
    adam, grda = net.optimizers(1e-3)
    assert isinstance(grda, GRDA) and grda.param_groups[0]["params"] == [net.alpha_search]
    assert all(p is not net.alpha_search for p in adam.param_groups[0]["params"])
    assert net.table_names == ["inner", "outer"]  # function-wise embeddings
    net(_batch()).sum().backward()
    assert net.alpha.grad is not None and net.alpha_search.grad is not None
    assert [it.gate for it in net.fixed_gates()] == [pytest.approx(0.7)]
    assert len(net.searched_gates()) == 11 and all(it.gate == 0.5 for it in net.searched_gates())


def test_eds_search_gates_dimensions_and_retrain_shrinks_by_the_expected_amount():
    interactions = [Interaction((0, 1), "inner", 0.7), Interaction((1, 3), "vector_kernel", -0.4)]
    eds = build_model("aim", FIELDS, interactions=interactions, search_dims=True, hidden_units=(), embedding_dim=4)
    assert eds.dim_gates.shape == (4, 4)
    assert eds.optimizers(1e-3)[1].param_groups[0]["params"] == [eds.dim_gates]
    kept_dims = [[0, 2], [1], [0, 1, 2, 3], [3]]
    before = build_model("aim", FIELDS, interactions=interactions, embedding_dim=4, hidden_units=(8,))
    after = build_model("aim", FIELDS, interactions=interactions, embedding_dim=4, hidden_units=(8,),
                        kept_dims=kept_dims)
    pruned_numbers = sum(f.vocab_size * (4 - len(k)) for f, k in zip(FIELDS, kept_dims, strict=True))
    mlp_inputs_dropped = 4 * 4 - sum(len(k) for k in kept_dims)
    tables = 2  # inner and vector_kernel, function-wise
    assert before.num_parameters() - after.num_parameters() == tables * pruned_numbers + mlp_inputs_dropped * 8
    assert after(_batch()).shape == (32,)


def test_transfer_models_take_the_searched_set():
    interactions = [Interaction((0, 1), "inner"), Interaction((1, 2, 3), "outer")]
    for name in ("deepfm_if", "ipnn_if"):
        net = build_model(name, FIELDS, interactions=interactions, hidden_units=(8,))
        assert net.norm is None and net.alpha is None  # a plain sum / MLP input, no gates
        assert net(_batch()).shape == (32,)


def test_gated_batch_norm_equals_batch_norm_then_gates():
    """The fused sum_k alpha_k BN(z_k) of the search: batch norm's outputs, gradients and running statistics
    (train, then eval), from layer outputs of any layout (the vector kernel's are transposed)."""
    z = (torch.randn(16, 5, dtype=torch.float64) * 3 + 2).requires_grad_()
    g = torch.randn(5, dtype=torch.float64, requires_grad=True)
    norm64 = torch.nn.BatchNorm1d(5, affine=False).double()
    assert torch.autograd.gradcheck(lambda z, g: gated_batch_norm([z], g, norm64), (z, g))
    torch.manual_seed(0)
    rows, sizes = 512, [7, 30, 3]
    parts = [torch.randn(rows, s) * (i + 1) + i for i, s in enumerate(sizes)]
    parts[1] = torch.randn(30, rows).T * 2 + 1  # a transposed layout
    gates = torch.randn(sum(sizes))
    reference, fused = (torch.nn.BatchNorm1d(sum(sizes), affine=False) for _ in range(2))
    for training in (True, True, False):
        reference.train(training), fused.train(training)
        upstream = torch.randn(rows)
        results = []
        for combined in (lambda ps, g: reference(torch.cat(ps, 1)) @ g, lambda ps, g: gated_batch_norm(ps, g, fused)):
            ps, g = [p.clone().requires_grad_() for p in parts], gates.clone().requires_grad_()
            out = combined(ps, g)
            (out * upstream).sum().backward()
            results.append((out, [p.grad for p in ps], g.grad))
        (want, want_parts, want_gates), (got, got_parts, got_gates) = results
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got_gates, want_gates, atol=1e-3, rtol=1e-5)
        for a, b in zip(got_parts, want_parts, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
        assert got_parts[1].stride() == (1, rows)  # the gradient keeps its part's layout
        torch.testing.assert_close(fused.running_mean, reference.running_mean)
        torch.testing.assert_close(fused.running_var, reference.running_var)
        assert fused.num_batches_tracked == reference.num_batches_tracked
    with pytest.raises(ValueError, match="40 interaction outputs for 39 gates"):
        gated_batch_norm(parts, gates[:-1], fused)
