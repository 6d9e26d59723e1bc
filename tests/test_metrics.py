"""aim.metrics: DeLong's AUCs and covariance against sklearn and against the definition's m x n comparisons;
calibration by hand and on draws from known probabilities."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aim.metrics import auc_difference, calibration, delong


def explicit_delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) as written: psi over every (positive, negative) pair, then the components' covariance."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # [k, m, n]
    v10, v01 = psi.mean(2), psi.mean(1)
    return psi.mean((1, 2)), np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


def test_delong_matches_sklearn_and_the_explicit_form_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    signal = labels + rng.normal(0, 1.5, 300)
    scores = np.stack([np.round(signal, 1), np.round(signal + rng.normal(0, 1, 300), 1), rng.integers(0, 3, 300)])
    aucs, cov = delong(labels, scores)
    assert aucs == pytest.approx([roc_auc_score(labels, s) for s in scores], abs=1e-12)
    want_aucs, want_cov = explicit_delong(labels, scores)
    assert aucs == pytest.approx(want_aucs, abs=1e-12)
    assert cov == pytest.approx(want_cov, abs=1e-12)


def test_a_difference_on_the_same_rows() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    signal = labels + rng.normal(0, 1, 4000)
    scores = np.stack([signal, signal, signal + rng.normal(0, 0.05, 4000), labels + rng.normal(0, 2, 4000)])
    aucs, cov = delong(labels, scores)
    same = auc_difference(aucs, cov, 0, 1)
    assert same == {"difference": 0.0, "se": 0.0, "p_value": 1.0}
    close = auc_difference(aucs, cov, 0, 2)  # the same signal, a little noise: a tiny gap, not significant
    assert abs(close["difference"]) < 0.003 and close["p_value"] > 0.01
    far = auc_difference(aucs, cov, 0, 3)  # twice the noise: a real gap
    assert far["difference"] > 0.1 and far["p_value"] < 1e-6
    # Paired: the difference's error is far below what two independent AUCs' errors would add to.
    assert close["se"] < 0.2 * np.sqrt(cov[0, 0] + cov[2, 2])


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="two rows of each class"):
        delong(np.array([1, 1, 1, 0]), np.array([[0.1, 0.2, 0.3, 0.4]]))


def test_evaluate_adds_the_errors_and_skips_predictions_of_another_run() -> None:
    from tasks.evaluate import REFERENCE, render, significance

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    predictions = {REFERENCE: labels + rng.normal(0, 1, 2000), "deepfm": labels + rng.normal(0, 1.2, 2000),
                   "fm": labels + rng.normal(0, 3, 2000)}
    rows = [{"model": name, "kind": "baseline", "test_auc": roc_auc_score(labels, p), "test_logloss": 0.5,
             "parameters": 1, "train_seconds": 1.0} for name, p in predictions.items()]
    rows[2]["test_auc"] += 0.01  # fm's stage reported another AUC: its saved predictions are of another run
    significance(rows, labels, predictions)
    aucs, cov = delong(labels, np.stack(list(predictions.values())))
    assert rows[0]["test_auc_se"] == pytest.approx(np.sqrt(cov[0, 0])) and "aim_retrain_minus_this" not in rows[0]
    assert rows[1]["aim_retrain_minus_this"] == auc_difference(aucs, cov, 0, 1)
    assert "test_auc_se" not in rows[2] and "aim_retrain_minus_this" not in rows[2]
    text = render({"models": rows, "recovered": {}})
    assert f"{rows[1]['aim_retrain_minus_this']['p_value']:.2g}" in text.splitlines()[2] and "DeLong" in text


def test_evaluate_adds_calibration_and_plots_it(tmp_path) -> None:
    from tasks.evaluate import add_calibration, markdown, render
    from tasks.plots import reliability_curves

    rng = np.random.default_rng(3)
    probs = rng.beta(2, 6, 5000)
    labels = (rng.random(5000) < probs).astype(np.int64)
    predictions = {"calibrated": probs, "halved": probs / 2}
    rows = [{"model": name, "kind": "baseline", "test_auc": roc_auc_score(labels, p), "test_logloss": 0.5,
             "parameters": 1, "train_seconds": 1.0, "inference_seconds_per_100k": None,
             "order2_selection_ratio": None, "interactions": None} for name, p in predictions.items()]
    rows.append({**rows[0], "model": "no predictions saved"})
    curves = add_calibration(rows, labels, predictions)
    assert sorted(curves) == ["calibrated", "halved"] and "calibration_error" not in rows[2]
    assert rows[0]["predicted_over_observed"] == pytest.approx(1, abs=0.05) and rows[0]["calibration_error"] < 0.03
    assert rows[1]["predicted_over_observed"] == pytest.approx(0.5, abs=0.03) and rows[1]["calibration_error"] > 0.1
    text = render({"models": rows, "recovered": {}})
    assert f"{rows[1]['predicted_over_observed']:.3f}  {rows[1]['calibration_error']:.4f}" in text.splitlines()[2]
    assert "ECE: expected calibration error" in text
    cells = f"| {rows[1]['predicted_over_observed']:.3f} | {rows[1]['calibration_error']:.4f} |"
    assert cells in markdown(rows, {}, [])
    png = reliability_curves(curves, tmp_path / "calibration.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_says_why_a_tiny_test_split_has_no_errors_and_no_ranking(workdir) -> None:
    """A 20-row test split with one positive: the table ranked the models, with – for the errors and no word."""
    import json

    from tasks.common import METRICS
    from tasks.evaluate import COLUMNS, REFERENCE, markdown, render, significance, test_split_warnings
    from tasks.summary import render as summary

    labels = np.zeros(20, np.int64)
    labels[3] = 1
    rng = np.random.default_rng(0)
    predictions = {REFERENCE: rng.random(20), "ipnn": rng.random(20)}
    rows = [dict.fromkeys(COLUMNS) | {"model": name, "kind": "baseline", "test_auc": roc_auc_score(labels, p),
                                      "test_logloss": 0.5, "parameters": 1, "train_seconds": 1.0}
            for name, p in predictions.items()]
    refused = significance(rows, labels, predictions)
    assert refused == "DeLong's covariance needs two rows of each class (got 1 positives, 19 negatives)"
    warnings = test_split_warnings(labels, refused)
    assert warnings == ["evaluate: warning: the test split has 1 positive and 19 negatives, fewer than 30 of a class: "
                        "its AUCs are too noisy to rank the models, so the ranking is not meaningful. Evaluate on a "
                        "larger log or test fraction (encode.split.fractions). AUC standard errors and p-values are "
                        f"left out (–): the differences are not testable ({refused})"]
    result = {"models": rows, "recovered": {}, "warnings": warnings}
    assert render(result).splitlines()[-1] == warnings[0]
    assert "**Warning.** the test split has 1 positive" in markdown(rows, {}, [], warnings)
    METRICS.mkdir()
    (METRICS / "evaluate.json").write_text(json.dumps(result))
    lines = summary().splitlines()
    assert lines.count(warnings[0]) == 0 and lines.count(f"  {warnings[0]}") == 1  # once, in the warnings section

    few = np.r_[np.ones(29), np.zeros(500)]  # DeLong works, but 29 positives rank nothing
    assert "fewer than 30 of a class" in test_split_warnings(few, None)[0]
    assert test_split_warnings(np.r_[np.ones(30), np.zeros(30)], None) == []


def test_calibration_by_hand() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1])
    probs = np.array([0.1, 0.3, 0.2, 0.5, 0.9, 0.7])  # sorted: 0.1 0.2 0.3 | 0.5 0.7 0.9
    c = calibration(labels, probs, bins=2)
    assert c["bins"]["rows"] == [3, 3]
    assert c["bins"]["predicted"] == pytest.approx([0.2, 0.7])
    assert c["bins"]["observed"] == pytest.approx([1 / 3, 2 / 3])
    assert c["calibration_error"] == pytest.approx((abs(0.2 - 1 / 3) + abs(0.7 - 2 / 3)) / 2)
    assert c["predicted_over_observed"] == pytest.approx(probs.mean() / 0.5)
    with pytest.raises(ValueError, match="as many predictions as labels"):
        calibration(labels, probs[:5])


def test_calibration_tells_a_calibrated_model_from_one_that_doubles_its_ctr() -> None:
    rng = np.random.default_rng(1)
    probs = rng.beta(1, 9, 200_000)  # CTR-like: mean 0.1
    labels = rng.random(200_000) < probs
    honest, doubled = calibration(labels, probs), calibration(labels, np.clip(2 * probs, 0, 1))
    assert honest["predicted_over_observed"] == pytest.approx(1, abs=0.02) and honest["calibration_error"] < 0.005
    assert doubled["predicted_over_observed"] == pytest.approx(2, abs=0.05) and doubled["calibration_error"] > 0.08
    assert len(honest["bins"]["rows"]) == 10 and sum(honest["bins"]["rows"]) == 200_000
