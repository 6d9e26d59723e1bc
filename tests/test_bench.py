"""The benchmarks' own logic that a wrong figure could hide behind (they are run by hand, not in CI)."""

import json
import math
from pathlib import Path

import pytest

from bench.aim_accuracy import overrides_for, targets
from bench.seed_summary import load_runs, markdown, summarize


def test_a_dataset_prefixed_override_applies_to_that_dataset_only() -> None:
    given = ["train.lr=0.01", "movielens_100k:search.grda.c=0.1", "frappe:retrain.dropout=0.3"]
    assert overrides_for("movielens_100k", given) == ["train.lr=0.01",
                                                      "datasets.movielens_100k.overrides.search.grda.c=0.1"]
    assert overrides_for("frappe", given) == ["train.lr=0.01", "datasets.frappe.overrides.retrain.dropout=0.3"]
    assert overrides_for("criteo", given) == ["train.lr=0.01"]


def _row(model: str, kind: str, auc: float, params: int = 100, ratio: float | None = None) -> dict:
    return {"model": model, "kind": kind, "test_auc": auc, "parameters": params, "order2_selection_ratio": ratio,
            "test_logloss": 1 - auc}


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


def _run(seed: int, aucs: dict[str, float]) -> dict:
    kinds = {"aim (retrain)": "aim", "deepfm_if": "transfer"}
    rows = [_row(m, kinds.get(m, "baseline"), auc, 140 if m == "aim (retrain)" else 100, 0.25)
            for m, auc in aucs.items()]
    return {"head": "abc1234", "overrides": [f"seed={seed}"],
            "datasets": {"frappe": {"overrides": [f"seed={seed}"], "models": rows, "targets": targets(rows)}}}


def test_seed_summary_pairs_each_seed_and_tests_the_mean_difference(tmp_path) -> None:
    aims, deepfms = [0.80, 0.82, 0.79], [0.79, 0.81, 0.795]
    paths = []
    for seed, aim, deepfm in zip([2024, 7, 11], aims, deepfms, strict=True):
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(_run(seed, {"aim (retrain)": aim, "deepfm": deepfm, "fm": 0.7})))
    s = summarize(load_runs(paths)["frappe"])
    assert s["seeds"] == [7, 11, 2024]
    deepfm = next(e for e in s["models"] if e["model"] == "deepfm")
    diffs = [a - d for a, d in zip(aims, deepfms, strict=True)]  # +0.01, +0.01, -0.005
    across = deepfm["aim_minus_this"]["across_seeds"]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3)
    assert across["mean"] == pytest.approx(mean) and across["se"] == pytest.approx(se)
    t = mean / se  # Student's t with 2 df has the closed form two-sided p = 1 - t / sqrt(t^2 + 2)
    assert across["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert deepfm["aim_minus_this"]["aim_above_in"] == 2 and s["models"][0]["model"] == "aim (retrain)"
    assert s["models"][0]["first_in"] == 2 and deepfm["first_in"] == 1
    assert s["mean_order_holds"]  # of the paper's five, the three present: aim > deepfm > fm on the means
    assert deepfm["mean_test_logloss"] == pytest.approx(1 - sum(deepfms) / 3)
    assert deepfm["mean_calibration_error"] is None  # the runs predate it
    text = markdown("frappe", s, 4)
    assert "| deepfm | +0.0100 | -0.0050 | +0.0100 | 2 of 3 |" in text


def test_seed_summary_refuses_a_run_without_a_seed_and_a_seed_twice(tmp_path) -> None:
    run = _run(7, {"aim (retrain)": 0.8, "deepfm": 0.79})
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="seed 7 is also in"):
        load_runs([tmp_path / "a.json", tmp_path / "b.json"])
    run["overrides"] = run["datasets"]["frappe"]["overrides"] = []
    (tmp_path / "c.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="without a seed=S override"):
        load_runs([tmp_path / "c.json"])


def test_throughput_targets_say_why_bf16_was_not_run() -> None:
    """On a CPU without native bf16 the bench skips those runs (they would time torch's emulation); the report keeps
    a line per bf16 target saying so, rather than leaving the targets out."""
    from bench.train_throughput import evaluate_targets

    ours = {"deepfm": {"roofline_fraction_fp32": 0.5}, "fm": {"vs_peer": 6.0}}
    roofline = {"fp32": {"best_flops": 1e11}}
    targets = evaluate_targets(["fm", "deepfm"], ours, {}, roofline, "this CPU has no native bf16 products")
    bf16_lines = [t for t in targets if "bf16" in t["target"]]
    assert [t["target"].split(":")[0] for t in bf16_lines] == ["deepfm"]
    assert bf16_lines[0]["result"] == "n/a" and "no native bf16" in bf16_lines[0]["shown"]
    assert not [t for t in evaluate_targets(["deepfm"], ours, {}, roofline) if "bf16" in t["target"]]


def test_the_accuracy_bench_keeps_each_training_curve(tmp_path) -> None:
    """Seed 11's Frappe retrain stopped at epoch 13 where the other seeds ran 23, and its curve went with the clone:
    the results file now keeps every run's validation AUC and learning rate per epoch, and nothing else."""
    from bench.aim_accuracy import training_curves

    (tmp_path / "reports" / "baselines").mkdir(parents=True)
    header = "epoch,train_loss,valid_auc,valid_logloss,lr,seconds,samples_per_second\n"
    (tmp_path / "reports" / "retrain.csv").write_text(header + "1,0.5,0.70,0.6,0.001,1,1\n2,0.4,0.69,0.6,0.0001,1,1\n")
    (tmp_path / "reports" / "baselines" / "deepfm.csv").write_text(header + "1,0.5,0.6512345678,0.6,0.001,1,1\n")
    (tmp_path / "reports" / "gate_vs_auc.csv").write_text("pair,gate,statistics_auc\na x b,0.5,0.6\n")
    assert training_curves(tmp_path) == {
        "baselines/deepfm": {"valid_auc": [0.651235], "lr": [0.001]},
        "retrain": {"valid_auc": [0.70, 0.69], "lr": [0.001, 0.0001]}}


def test_the_schedule_bench_compares_runs_paired_by_seed_and_leaves_the_searches_out(tmp_path) -> None:
    """bench.lr_schedule chooses on each training run's best validation AUC, paired by seed; a search's curve (which
    no plateau schedule changes) is not compared, and a test AUC is kept apart from the choice."""
    from bench.lr_schedule import outcome, summarize

    header = "epoch,train_loss,valid_auc,valid_logloss,lr,seconds,samples_per_second\n"
    for run in ("retrain", "baselines/fm", "search_interaction/order2", "autofis_search/order2", "search_embed"):
        (tmp_path / "reports" / run).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "reports" / f"{run}.csv").write_text(header + "1,0.5,0.70,0.6,0.001,1,1\n2,0.4,0.75,0.6,0.001,1,1\n"
                                                       "3,0.4,0.74,0.6,0.0001,1,1\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(
        '{"models": [{"model": "fm", "test_auc": 0.71}, {"model": "aim (retrain)", "test_auc": 0.73}]}')
    shipped = outcome(tmp_path)
    assert shipped == {"best_valid_auc": {"baselines/fm": 0.75, "retrain": 0.75},
                       "epochs": {"baselines/fm": 3, "retrain": 3},
                       "test_auc": {"fm": 0.71, "aim (retrain)": 0.73}}
    better = {"best_valid_auc": {"baselines/fm": 0.76, "retrain": 0.74}, "epochs": {},
              "test_auc": {"fm": 0.70, "aim (retrain)": 0.74}}
    summary = summarize({"11": {"shipped": shipped, "candidate": better},
                         "7": {"shipped": shipped, "candidate": shipped}})
    valid = summary["best_valid_auc"]
    assert valid["per_run"]["baselines/fm"]["per_seed"] == pytest.approx([0.01, 0.0])
    assert valid["per_run"]["retrain"]["mean"] == pytest.approx(-0.005)
    assert valid["mean_difference"] == pytest.approx(0.0) and (valid["runs_better"], valid["runs_worse"]) == (1, 1)
    assert summary["test_auc"]["per_run"]["aim (retrain)"]["per_seed"] == pytest.approx([0.01, 0.0])


def test_the_schedule_summary_reads_several_files_and_refuses_different_candidates(tmp_path) -> None:
    from bench.lr_schedule import summary_of_files

    def arm(auc: float) -> dict:
        return {"best_valid_auc": {"retrain": auc}, "epochs": {"retrain": 3}, "test_auc": {"aim (retrain)": auc}}

    def write(name: str, dataset: str, candidate: list[str], gain: float) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"dataset": dataset, "candidate": candidate,
                                    "seeds": {"7": {"shipped": arm(0.8), "candidate": arm(0.8 + gain)}}}))
        return path

    both = summary_of_files([write("a.json", "frappe", ["train.patience=3"], 0.002),
                             write("b.json", "movielens_100k", ["train.patience=3"], -0.001)])
    assert set(both["best_valid_auc"]["per_run"]) == {"frappe/retrain", "movielens_100k/retrain"}
    assert both["best_valid_auc"]["mean_difference"] == pytest.approx(0.0005)
    with pytest.raises(SystemExit, match="different candidates"):
        summary_of_files([tmp_path / "a.json", write("c.json", "frappe", ["train.patience=4"], 0.0)])
