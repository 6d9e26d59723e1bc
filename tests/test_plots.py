"""plots: statistics_AUC on planted and independent pairs, and every figure writes a real PNG."""

from pathlib import Path

import numpy as np
import pytest

from tasks import plots

FIELDS = ["I1", "I2", "C1", "C2", "C3", "M1"]
INTERACTION = {
    "mode": "fis_ifs",
    "fields": FIELDS,
    "functions": ["inner", "outer", "vector_kernel", "scalar_kernel"],
    "interactions": [
        {"fields": ["C1", "C2"], "order": 2, "function": "inner", "gate": 0.53},
        {"fields": ["I1", "C3"], "order": 2, "function": "inner", "gate": -0.2},
        {"fields": ["I2", "M1"], "order": 2, "function": "outer", "gate": 0.9},
        {"fields": ["C1", "C3"], "order": 2, "function": "scalar_kernel", "gate": 0.1},
        {"fields": ["C1", "C2", "C3"], "order": 3, "function": "inner", "gate": 0.3},
    ],
}
EMBED = {"embedding_dim": 10, "fields": {f: {"kept": list(range(k + 1)), "size": k + 1} for k, f in enumerate(FIELDS)}}


def xor_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fields 0, 1 binary with label = XOR; fields 2, 3 random codes independent of the label."""
    codes = rng.integers(0, [2, 2, 6, 6], size=(n, 4))
    return codes, codes[:, 0] ^ codes[:, 1]


def test_statistics_auc_planted_pair_is_perfect_and_independent_pair_is_chance() -> None:
    rng = np.random.default_rng(0)
    train, y_train = xor_data(rng, 4000)
    test, y_test = xor_data(rng, 2000)
    auc = plots.pair_statistics_auc(train, y_train, test, y_test, np.array([[0, 1], [2, 3], [0, 2]]))
    assert auc.shape == (3,)
    assert auc[0] == pytest.approx(1.0)
    assert abs(auc[1] - 0.5) < 0.05  # neither field says anything about the label
    assert abs(auc[2] - 0.5) < 0.05  # one half of an XOR alone is useless too


def test_pair_ctr_smooths_towards_global_ctr_and_unseen_combinations_get_it() -> None:
    train = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    labels = np.array([1, 1, 0, 0])
    test = np.array([[0, 0], [1, 0], [7, 9], [1, 1]])  # (1, 0) and (7, 9) never occur in train
    pred = plots.pair_ctr(train, labels, test, prior_weight=2.0)
    prior = 0.5
    np.testing.assert_allclose(pred, [(2 + 2 * prior) / (2 + 2), prior, prior, (0 + 2 * prior) / (1 + 2)])


def test_statistics_auc_is_nan_when_the_test_set_has_one_class() -> None:
    rng = np.random.default_rng(1)
    train, y_train = xor_data(rng, 200)
    test, _ = xor_data(rng, 50)
    auc = plots.pair_statistics_auc(train, y_train, test, np.zeros(50, dtype=np.int64), np.array([[0, 1], [2, 3]]))
    assert auc.shape == (2,) and np.isnan(auc).all()


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_heatmaps(tmp_path: Path) -> None:
    out = plots.gate_heatmaps(INTERACTION, tmp_path / "figs" / "gates.png")  # parent dir does not exist yet
    assert out == tmp_path / "figs" / "gates.png"
    assert_png(out)


def test_function_counts(tmp_path: Path) -> None:
    assert_png(plots.function_counts(INTERACTION, tmp_path / "counts.png"))


def test_embedding_sizes(tmp_path: Path) -> None:
    assert_png(plots.embedding_sizes(EMBED, tmp_path / "embed.png"))


def test_roc_curves(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    curves = {"AIM": (y, np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)), "LR": (y, rng.random(300))}
    assert_png(plots.roc_curves(curves, tmp_path / "roc.png"))


def test_gate_vs_statistics_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = [f"C{i}×C{i + 1}" for i in range(20)]
    gates = np.where(rng.random(20) < 0.5, 0.0, rng.normal(size=20))
    stats = 0.5 + 0.1 * rng.random(20)
    stats[3] = np.nan  # a pair whose statistic is undefined must not break the plot
    out = plots.gate_vs_statistics_auc(gates, stats, labels, tmp_path / "scatter.png", highlight={"C0×C1", "C3×C4"})
    assert_png(out)
