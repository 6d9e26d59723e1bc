"""The benchmarks' own logic that a wrong figure could hide behind (they are run by hand, not in CI)."""

from bench.aim_accuracy import overrides_for, targets


def test_a_dataset_prefixed_override_applies_to_that_dataset_only() -> None:
    given = ["train.lr=0.01", "movielens_100k:search.grda.c=0.1", "frappe:retrain.dropout=0.3"]
    assert overrides_for("movielens_100k", given) == ["train.lr=0.01",
                                                      "datasets.movielens_100k.overrides.search.grda.c=0.1"]
    assert overrides_for("frappe", given) == ["train.lr=0.01", "datasets.frappe.overrides.retrain.dropout=0.3"]
    assert overrides_for("criteo", given) == ["train.lr=0.01"]


def _row(model: str, kind: str, auc: float, params: int = 100, ratio: float | None = None) -> dict:
    return {"model": model, "kind": kind, "test_auc": auc, "parameters": params, "order2_selection_ratio": ratio}


def test_targets_compare_aim_with_every_baseline_and_autofis() -> None:
    rows = [_row("aim (retrain)", "aim", 0.80, 140, 0.25), _row("autofis", "baseline", 0.79),
            _row("ipnn", "baseline", 0.78), _row("deepfm", "baseline", 0.77), _row("fm", "baseline", 0.76),
            _row("deepfm_if", "transfer", 0.99)]  # transfers are not baselines of the target
    met = targets(rows)
    assert met["aim_above_every_baseline_and_autofis"] and met["paper_order_holds"]
    assert met["pairs_kept_within_30pct"] and met["params_within_1.5x_deepfm"]
    rows[3] = _row("deepfm", "baseline", 0.805)
    missed = targets(rows)
    assert not missed["aim_above_every_baseline_and_autofis"] and not missed["paper_order_holds"]
    assert missed["best_other"] == {"model": "deepfm", "test_auc": 0.805, "aim_retrain_minus_this": None}
    rows[3]["aim_retrain_minus_this"] = {"difference": -0.005, "se": 0.004, "p_value": 0.21}  # evaluate's DeLong
    assert targets(rows)["best_other"]["aim_retrain_minus_this"]["p_value"] == 0.21
