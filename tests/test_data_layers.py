"""aim.data and aim.layers: tensors built once, batches by slicing, pooling, vectorised interactions."""

import itertools

import pyarrow as pa
import pytest
import torch

from aim.data import CTRData, FieldSpec, concat, from_arrow
from aim.layers import FieldEmbedding, Interaction, NumericEmbedding, bag_mean, combination_index, pair_index
from aim.layers import interaction as interaction_module
from aim.layers import native as native_module
from aim.layers.embedding import lookup
from aim.models.fm import fm_pairwise
from tests.conftest import take_kernel_path

FIELDS = (FieldSpec("a", 6), FieldSpec("tags", 9, max_length=3, multi_valued=True), FieldSpec("b", 5))


def table() -> pa.Table:
    return pa.table({
        "a": pa.array([3, 4, 5, 3], pa.int32()),
        "tags": pa.array([[3, 4], [], [5, 6, 7, 8], [3]], pa.list_(pa.int32())),
        "b": pa.array([3, 3, 4, 1], pa.int32()),
        "label": pa.array([1, 0, 0, 1], pa.int8()),
    })


def test_from_arrow_pads_truncates_and_keeps_order() -> None:
    data = from_arrow(table(), FIELDS)
    assert data.single.dtype == torch.int32 and data.single.tolist() == [[3, 3], [4, 3], [5, 4], [3, 1]]
    assert data.multi[0].tolist() == [[3, 4, 0], [0, 0, 0], [5, 6, 7], [3, 0, 0]]  # padded with 0, cut at 3
    assert data.label.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_from_arrow_names_missing_columns() -> None:
    with pytest.raises(ValueError, match=r"lacks columns \['b'\]"):
        from_arrow(table().drop_columns(["b"]), FIELDS)


def test_batches_are_views_and_shuffle_is_a_seeded_permutation() -> None:
    data = from_arrow(table(), FIELDS)
    plain = list(data.batches(3))
    assert [len(b) for b in plain] == [3, 1]
    assert plain[0].single.data_ptr() == data.single.data_ptr()  # a slice, not a copy
    first = torch.cat([b.label for b in data.batches(2, shuffle=True, generator=torch.Generator().manual_seed(1))])
    again = torch.cat([b.label for b in data.batches(2, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(first, again) and sorted(first.tolist()) == sorted(data.label.tolist())
    assert len(concat([data, data])) == 8


@pytest.mark.parametrize("width", [1, 10, 40])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("native", [True, False])
def test_lookup_gradients_equal_embeddings_and_are_the_same_on_every_run(
        width: int, index_dtype: torch.dtype, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward of ``lookup`` (the native row sum, or index_add_ without it) gives F.embedding's gradients, bit
    for bit, run after run (CPU, the threads this machine has): each table row sums its gradients in the order the
    indices come."""
    import aim.layers.embedding as embedding_module

    take_kernel_path("native" if native else "torch", monkeypatch, embedding_module, "rows_kernel")
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(300, width, generator=gen, requires_grad=True)
    index = torch.randint(0, 300, (4096, 7), generator=gen).to(index_dtype)  # ~100 gradients per row
    upstream = torch.randn(4096, 7, width, generator=gen)
    grads = []
    for _ in range(3):
        weight.grad = None
        (lookup(weight, index) * upstream).sum().backward()
        grads.append(weight.grad.clone())
    weight.grad = None
    (torch.nn.functional.embedding(index, weight) * upstream).sum().backward()
    assert all(torch.equal(g, weight.grad) for g in grads)
    with torch.no_grad():  # no graph: the plain gather
        assert torch.equal(lookup(weight, index), weight[index])


def test_multi_hot_pooling_ignores_padding_and_empty_rows_give_zero() -> None:
    data = from_arrow(table(), FIELDS)
    layer = FieldEmbedding(FIELDS, 4, init_std=1.0)
    out = layer(data)
    assert out.shape == (4, 3, 4)  # fields stay in their declared order
    rows = layer.weight[6:15]  # the tags table: offset 6 = vocab size of `a`
    torch.testing.assert_close(out[0, 1], rows[[3, 4]].mean(0))
    torch.testing.assert_close(out[2, 1], rows[[5, 6, 7]].mean(0))
    assert torch.equal(out[1, 1], torch.zeros(4))  # all padding: a zero vector, not NaN
    torch.testing.assert_close(out[3, 2], layer.weight[6 + 9 + 1])  # b's code 1 in b's own rows


@pytest.mark.parametrize("padding", [0, 5])  # FieldEmbedding's fields after the first pad with their own row 0
def test_bag_mean_is_the_masked_mean_and_its_gradient_that_of_the_masked_sum(padding: int) -> None:
    """bag_mean (embedding_bag forward, its own backward) against the definition: gather every code, zero the
    padding, sum over the codes, divide by their number. Padding anywhere in a row; rows of padding only."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 6, generator=gen, requires_grad=True)
    codes = torch.randint(0, 40, (500, 7), generator=gen)
    codes[torch.rand(500, 7, generator=gen) < 0.4] = padding
    codes[:3] = padding
    codes = codes.to(torch.int32)
    mask = (codes != padding).unsqueeze(-1).float()
    reference = (lookup(weight, codes) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    pooled = bag_mean(weight, codes, padding)
    torch.testing.assert_close(pooled, reference, rtol=1e-6, atol=1e-7)
    assert torch.equal(pooled[:3], torch.zeros(3, 6))  # nothing to pool: zeros, not NaN
    with torch.no_grad():  # without a graph, the bag alone: the same numbers
        assert torch.equal(bag_mean(weight, codes, padding), pooled)
    upstream = torch.randn(500, 6, generator=gen)
    ours = torch.autograd.grad((pooled * upstream).sum(), weight)[0]
    theirs = torch.autograd.grad((reference * upstream).sum(), weight)[0]
    assert torch.equal(ours, theirs)  # the same products, added to each row in the same order
    assert torch.equal(ours[padding], torch.zeros(6))  # the padding row takes no gradient
    with pytest.raises(ValueError, match="codes must be"):
        bag_mean(weight, codes[0])


def test_numeric_embedding_scales_one_vector_per_field() -> None:
    layer = NumericEmbedding(2, 3)
    out = layer(torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(out[0, 0], 2 * layer.weight[0])
    assert torch.equal(out[0, 1], torch.zeros(3))


def test_fm_sum_square_equals_explicit_sum_over_pairs() -> None:
    embedded = torch.randn(7, 6, 5, dtype=torch.float64)
    explicit = sum((embedded[:, i] * embedded[:, j]).sum(-1) for i, j in itertools.combinations(range(6), 2))
    torch.testing.assert_close(fm_pairwise(embedded), explicit)


@pytest.mark.parametrize("function", ["inner", "outer", "vector_kernel", "scalar_kernel"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("few", [False, True])  # every interaction, or two (fewer than the fields; some unused)
def test_interaction_functions_match_their_definitions(function: str, order: int, few: bool) -> None:
    torch.manual_seed(0)
    embedded = torch.randn(4, 5, 3, dtype=torch.float64)
    index = pair_index(5) if order == 2 else combination_index(5, 3)
    if few:  # field 1 (pairs) or field 3 (triples) takes no part
        index = torch.tensor([[0, 2], [3, 4]]) if order == 2 else torch.tensor([[0, 1, 2], [0, 2, 4]])
    layer = Interaction(index, function, 3).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    scores = layer(embedded)
    assert scores.shape == (4, len(index))
    for m, fields in enumerate(index.tolist()):
        vectors = embedded[:, fields]  # [B, p, d]
        if function == "outer":
            expected = (vectors * layer.kernel[m]).sum(-1).prod(-1)
        else:
            product = vectors.prod(1)
            if function == "vector_kernel":
                product = product * layer.kernel[m]
            expected = product.sum(-1) * (layer.kernel[m] if function == "scalar_kernel" else 1.0)
        torch.testing.assert_close(scores[:, m], expected)


@pytest.mark.parametrize("function", ["outer", "vector_kernel"])
def test_interaction_gradients_match_autograd_of_the_definition(function: str) -> None:
    """Every pair takes the vector kernel's hand-written backward (and outer's strided products): check both."""
    torch.manual_seed(0)
    layer = Interaction(pair_index(6), function, 4).double()
    assert layer.all_pairs_of == 6
    assert Interaction(pair_index(6)[1:], function, 4).all_pairs_of is None  # not every pair: the gather form
    embedded = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    kernel = layer.kernel.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda e, k: torch.func.functional_call(layer, {"kernel": k}, (e,)),
                                    (embedded, kernel))


@pytest.mark.parametrize("path", ["torch", "native"])
def test_every_pair_vector_kernel_in_float32_matches_the_definition(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's every-pair vector kernel, float32 on CPU: the C++ kernel (csrc/vector_pairs.cpp) and the torch
    loop it replaces, outputs and both gradients against float64 autograd of the definition."""
    take_kernel_path(path, monkeypatch, interaction_module, "vector_pairs_kernel")
    torch.manual_seed(0)
    n, d = 9, 5
    layer = Interaction(pair_index(n), "vector_kernel", d)
    with torch.no_grad():
        layer.kernel.normal_()
    embedded = torch.randn(70, n, d, requires_grad=True)  # 70 rows: groups of one and two rows in the backward
    grad = torch.randn(70, n * (n - 1) // 2)
    scores = layer(embedded)
    scores.backward(grad)
    e64, k64 = embedded.detach().double().requires_grad_(), layer.kernel.detach().double().requires_grad_()
    index = pair_index(n)
    expected = (e64[:, index[:, 0]] * e64[:, index[:, 1]] * k64).sum(-1)
    expected.backward(grad.double())
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedded.grad.double(), e64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.kernel.grad.double(), k64.grad, rtol=1e-5, atol=1e-4)


def test_every_pair_vector_kernel_gives_the_same_bits_on_one_thread_or_two() -> None:
    if native_module.vector_pairs_kernel() is None:
        pytest.skip("the native kernel did not build here (no C++ compiler, or AIM_NATIVE=0)")
    torch.manual_seed(1)
    layer = Interaction(pair_index(12), "vector_kernel", 10)
    embedded = torch.randn(1500, 12, 10)  # 1,500 rows: 64 groups of 23 or 24 for the kernel's gradient
    grad = torch.randn(1500, 66)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            e = embedded.clone().requires_grad_()
            layer.zero_grad()
            layer(e).backward(grad)
            results.append((layer(e).detach(), e.grad, layer.kernel.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_pair_index_is_every_pair_once() -> None:
    assert pair_index(4).tolist() == [list(p) for p in itertools.combinations(range(4), 2)]
    assert combination_index(5, 3).shape == (10, 3)
    with pytest.raises(ValueError, match="unknown interaction function"):
        Interaction(pair_index(3), "cosine", 2)


def test_data_moves_between_devices_whole() -> None:
    data = from_arrow(table(), FIELDS).to("cpu")
    assert isinstance(data, CTRData) and data.device.type == "cpu"
