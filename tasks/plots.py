"""plots: the figures of the `evaluate` stage, and the per-pair statistics_AUC of the AIM paper (Fig. 7).

Every plot function writes one PNG to the path it is given (creating the parent directory), closes its figure so a
long evaluate run does not accumulate them, and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on machines without a display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

DPI = 120


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _tick_fontsize(n: int) -> float:
    # ~9 pt for a handful of fields, shrinking so that 40 fields still fit without overlapping (~6 pt)
    return float(np.clip(240 / max(n, 1), 4, 9))


# ---------------------------------------------------------------------------------------------------------------------
# statistics_AUC


def pair_ctr(train_pair: np.ndarray, train_labels: np.ndarray, test_pair: np.ndarray,
             prior_weight: float = 10.0) -> np.ndarray:
    """Smoothed train CTR of each test row's (value_i, value_j) combination; unseen combinations get the global CTR.

    `train_pair` / `test_pair` are int arrays [N, 2] of non-negative codes.
    """
    train_pair, test_pair = np.asarray(train_pair, dtype=np.int64), np.asarray(test_pair, dtype=np.int64)
    labels = np.asarray(train_labels, dtype=np.float64)
    if (train_pair.size and train_pair.min() < 0) or (test_pair.size and test_pair.min() < 0):
        raise ValueError("codes must be non-negative")
    # The radix must cover test codes too, or an unseen test code could collide with a different train combination.
    radix = int(max(train_pair[:, 1].max(initial=0), test_pair[:, 1].max(initial=0))) + 1
    train_keys = train_pair[:, 0] * radix + train_pair[:, 1]
    test_keys = test_pair[:, 0] * radix + test_pair[:, 1]

    prior = float(labels.mean()) if labels.size else 0.0
    uniq, inverse = np.unique(train_keys, return_inverse=True)
    imps = np.bincount(inverse, minlength=uniq.size).astype(np.float64)
    clicks = np.bincount(inverse, weights=labels, minlength=uniq.size)
    ctr = (clicks + prior_weight * prior) / (imps + prior_weight)

    pred = np.full(test_keys.shape, prior, dtype=np.float64)
    if uniq.size:
        pos = np.minimum(np.searchsorted(uniq, test_keys), uniq.size - 1)
        seen = uniq[pos] == test_keys
        pred[seen] = ctr[pos[seen]]
    return pred


def pair_statistics_auc(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
                        test_labels: np.ndarray, pairs: np.ndarray, prior_weight: float = 10.0) -> np.ndarray:
    """statistics_AUC per pair: test AUC of predicting each row by its (field_i, field_j) combination's train CTR.

    Returns a float array [len(pairs)]; all NaN when the test labels hold a single class (AUC undefined).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    test_labels = np.asarray(test_labels)
    out = np.full(len(pairs), np.nan, dtype=np.float64)
    if np.unique(test_labels).size < 2:
        return out
    for k, (i, j) in enumerate(pairs):  # one vectorised pass per pair; pair counts are small (<= n_fields^2 / 2)
        pred = pair_ctr(train_codes[:, [i, j]], train_labels, test_codes[:, [i, j]], prior_weight)
        out[k] = roc_auc_score(test_labels, pred)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# gates


def gate_heatmaps(interaction: dict, path: Path) -> Path:
    """One n x n heatmap of |gate| per interaction function, for the kept order-2 interactions."""
    fields: list[str] = list(interaction["fields"])
    functions: list[str] = list(interaction["functions"])
    index = {name: k for k, name in enumerate(fields)}
    n = len(fields)
    mats = {f: np.zeros((n, n)) for f in functions}
    for it in interaction["interactions"]:  # kept interactions only: a few hundred at most
        if it["order"] != 2:
            continue
        a, b = it["fields"]
        if a not in index or b not in index or it["function"] not in mats:
            raise ValueError(f"interaction {it} names a field or function missing from the gate file's lists")
        mats[it["function"]][index[a], index[b]] = mats[it["function"]][index[b], index[a]] = abs(it["gate"])
    vmax = max((m.max() for m in mats.values()), default=0.0) or 1.0  # one shared scale; 1.0 if nothing is kept

    ncols = min(len(functions), 2) or 1
    nrows = max(-(-len(functions) // ncols), 1)
    side = float(np.clip(0.16 * n + 1.5, 3.5, 8.0))  # ~8 in per panel at 40 fields keeps 6-pt labels apart
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols + 1.2, side * nrows + 0.4), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # the masked diagonal is drawn blank
    fs = _tick_fontsize(n)
    image = None
    for ax, func in zip(axes.flat, functions, strict=False):
        mat = np.ma.masked_array(mats[func], mask=np.eye(n, dtype=bool))
        image = ax.imshow(mat, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(np.arange(n), fields, rotation=90, fontsize=fs)
        ax.set_yticks(np.arange(n), fields, fontsize=fs)
        ax.set_title(f"{func}: {int(np.count_nonzero(np.triu(mats[func], 1)))} pairs kept", fontsize=10)
    for ax in axes.flat[len(functions):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="|gate|")
    fig.suptitle(f"order-2 interaction gates ({interaction.get('mode', '?')})")
    return _save(fig, path)


def function_counts(interaction: dict, path: Path) -> Path:
    """Grouped bars: number of kept interactions per function, one group per order."""
    kept = interaction["interactions"]
    functions = list(interaction.get("functions", []))
    functions += sorted({it["function"] for it in kept} - set(functions))  # never drop a function the list omits
    orders = sorted({int(it["order"]) for it in kept})
    counts = np.zeros((len(orders), len(functions)), dtype=np.int64)
    if kept:
        o = np.searchsorted(orders, [int(it["order"]) for it in kept])
        f = np.array([functions.index(it["function"]) for it in kept])
        np.add.at(counts, (o, f), 1)

    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(orders) + 3.0), 4.0), layout="constrained")
    width = 0.8 / max(len(functions), 1)
    x = np.arange(len(orders))
    for k, func in enumerate(functions):
        bars = ax.bar(x + (k - (len(functions) - 1) / 2) * width, counts[:, k], width, label=func)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, [f"order {o}" for o in orders])
    ax.set_ylabel("kept interactions")
    ax.set_title("kept interactions per function")
    if functions and orders:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no kept interactions", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def embedding_sizes(embed: dict, path: Path) -> Path:
    """Horizontal bars: searched embedding size per field, with the full embedding_dim marked."""
    names = list(embed["fields"])
    sizes = np.array([embed["fields"][name]["size"] for name in names], dtype=np.int64)
    dim = embed["embedding_dim"]
    fig, ax = plt.subplots(figsize=(5.0, max(2.5, 0.18 * len(names) + 1.0)), layout="constrained")
    ax.barh(np.arange(len(names)), sizes, color="C0")
    ax.axvline(dim, color="C3", linestyle="--", label=f"embedding_dim = {dim}")
    ax.set_yticks(np.arange(len(names)), names, fontsize=_tick_fontsize(len(names)))
    ax.invert_yaxis()  # first field on top, as in the gate file
    ax.set_xlim(0, max(dim, int(sizes.max(initial=0))) + 1)
    ax.set_xlabel("kept embedding dimensions")
    ax.set_title(f"embedding sizes ({int(sizes.sum())} of {dim * len(names)} dimensions kept)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# model quality


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One ROC curve per model, AUC in the legend; a model whose labels hold one class is listed as 'n/a'."""
    fig, ax = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, (labels, probs) in curves.items():  # one entry per model
        labels, probs = np.asarray(labels), np.asarray(probs)
        if np.unique(labels).size < 2:
            ax.plot([], [], label=f"{name} (AUC n/a)")  # keeps the model visible in the legend
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} (AUC {roc_auc_score(labels, probs):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (test)")
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def reliability_curves(bins: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Observed click rate against mean predicted CTR per equal-count bin, one line per model; the diagonal is a
    calibrated model (``aim.metrics.calibration`` makes the bins)."""
    fig, ax = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
    top = max([1e-3, *(max(b["predicted"] + b["observed"]) for b in bins.values())])
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    for name, b in bins.items():
        ax.plot(b["predicted"], b["observed"], marker="o", markersize=3, linewidth=1.0, label=name)
    ax.set_xlim(0, top * 1.02)
    ax.set_ylim(0, top * 1.02)
    ax.set_xlabel("mean predicted CTR (per tenth of the test rows)")
    ax.set_ylabel("observed click rate")
    ax.set_title("calibration (test)")
    if bins:
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def gate_vs_statistics_auc(gates: np.ndarray, statistics_auc: np.ndarray, labels: list[str], path: Path,
                           highlight: set[str] | None = None) -> Path:
    """Scatter of statistics_AUC (x) against gate value (y) per pair; closed gates (exactly 0) in grey."""
    gates, stats = np.asarray(gates, dtype=np.float64), np.asarray(statistics_auc, dtype=np.float64)
    if not (gates.shape == stats.shape == (len(labels),)):
        raise ValueError(f"gates {gates.shape}, statistics_auc {stats.shape} and {len(labels)} labels disagree")
    closed = gates == 0.0
    fig, ax = plt.subplots(figsize=(6.0, 4.5), layout="constrained")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.axvline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.scatter(stats[closed], gates[closed], s=10, color="lightgrey", label=f"closed ({int(closed.sum())})")
    ax.scatter(stats[~closed], gates[~closed], s=14, color="C0", label=f"open ({int((~closed).sum())})")
    if highlight:
        # a pair without a statistic (NaN) has no place on the x axis, so it cannot be annotated either
        hit = np.flatnonzero(np.isin(np.asarray(labels, dtype=object), list(highlight)) & np.isfinite(stats))
        ax.scatter(stats[hit], gates[hit], s=40, facecolors="none", edgecolors="C3", linewidths=1.2)
        for k in hit:  # only the few highlighted pairs are labelled
            ax.annotate(labels[k], (stats[k], gates[k]), xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="C3")
    ax.set_xlabel("statistics_AUC")
    ax.set_ylabel("gate")
    ax.set_title("gate vs statistics_AUC per 2nd-order pair")
    ax.legend(fontsize=8)
    return _save(fig, path)
