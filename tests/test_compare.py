"""tasks.compare: a grid of DVC experiments in a tiny project, and its AUC table.

The grid test is slow (about 45 s on 2 cores: two experiments of generate -> ingest -> encode -> validate ->
baselines@lr); skip it with `-k "not slow"`.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.compare import auc_columns, same_results_warning, table
from tests.conftest import sh, tiny_project

COMPARE = [sys.executable, "-m", "tasks.compare"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("compare"))


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # sh() passes os.environ on to the stages


def test_unknown_key_fails_before_anything_is_queued(project: Path) -> None:
    with pytest.raises(AssertionError, match=r"unknown param 'nope\.x'"):
        sh([*COMPARE, "-S", "train.lr=0.1,0.2", "-S", "nope.x=1", "--target", "baselines@lr"], project)
    with pytest.raises(AssertionError, match=r"train\.lr: Input should be greater than 0"):  # values too
        sh([*COMPARE, "-S", "train.lr=0.1,-1", "--target", "baselines@lr"], project)
    with pytest.raises(AssertionError, match=r"--target retrian: not a stage of dvc\.yaml, which has generate"):
        sh([*COMPARE, "-S", "train.lr=0.1,0.2", "--target", "retrian"], project)
    assert "No experiment tasks in the queue" in sh(["dvc", "queue", "status"], project)


def test_main_auc_is_the_aim_retrain_and_only_the_targets_metrics_count() -> None:
    metrics = {  # as `dvc exp show --json` gives them
        "metrics/baselines/lr.json": {"data": {"model": "lr", "test_auc": 0.79, "valid_auc": 0.78}},
        "metrics/baselines/fm.json": {"data": {"model": "fm", "test_auc": 0.5}},  # not run for the target: stale
        "metrics/retrain.json": {"data": {"model": "aim", "test_auc": 0.80}},
        "metrics/search_interaction.json": {"data": {"search_model_test_auc": 0.7, "kept": 3}},
        "metrics/autofis.json": {"error": {"type": "FileNotFoundError"}},
    }
    files = {"metrics/baselines/lr.json", "metrics/retrain.json", "metrics/search_interaction.json",
             "metrics/autofis.json"}
    assert auc_columns(metrics, files) == {"baselines/lr": 0.79, "retrain": 0.80,
                                           "search_interaction:search_model": 0.7}
    done = [{"name": "a-1", "params": {"retrain.dropout": 0.1}, "auc": {"baselines/lr": 0.79, "retrain": 0.80}},
            {"name": "a-2", "params": {"retrain.dropout": 0.2}, "auc": {"baselines/lr": 0.81, "retrain": 0.82}}]
    header, rows, main = table(done, ["retrain.dropout"])
    assert main == "retrain" and header == ["experiment", "retrain.dropout", "retrain", "baselines/lr"]
    assert rows == [["a-2", "0.2", "0.8200", "0.8100"], ["a-1", "0.1", "0.8000", "0.7900"]]
    assert same_results_warning(done) is None
    # a grid over a key that a model's own setting shadows trains one model twice: the report says so
    shadowed = [dict(r, auc={"baselines/lr": 0.79}) for r in done]
    assert "all 2 configs gave the same AUCs" in same_results_warning(shadowed)
    assert same_results_warning(shadowed[:1]) is None


def test_slow_grid_of_two_prints_and_writes_the_auc_table(project: Path) -> None:
    out = sh([*COMPARE, "-S", "train.lr=0.01,0.1", "--target", "baselines@lr", "--name-prefix", "g"], project)
    report = json.loads((project / "reports/compare/g.json").read_text())
    rows = report["experiments"]
    assert [r["name"] for r in rows] == ["g-1", "g-2"] and not report["failed"]
    assert {r["params"]["train.lr"] for r in rows} == {0.01, 0.1}
    aucs = [r["auc"]["baselines/lr"] for r in rows]
    assert all(0 < a < 1 and math.isfinite(a) for a in aucs) and report["main_auc"] == "baselines/lr"
    assert all(set(r["auc"]) == {"baselines/lr"} for r in rows)  # fm.json (not run, stale) is not a column

    # The same figures straight from DVC: each experiment's own params and metrics.
    dvc = str(Path(sys.executable).parent / "dvc")
    shown = json.loads(subprocess.run([dvc, "exp", "show", "--json"], cwd=project, capture_output=True, text=True,
                                      env=dict(os.environ, DVC_NO_ANALYTICS="1"), check=True).stdout)  # no stderr
    exps = {e["name"]: e["revs"][0]["data"] for b in shown for e in b.get("experiments") or []}
    for r in rows:
        data = exps[r["name"]]
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == r["params"]["train.lr"]
        assert data["metrics"]["metrics/baselines/lr.json"]["data"]["test_auc"] == r["auc"]["baselines/lr"]

    best = max(rows, key=lambda r: r["auc"]["baselines/lr"])
    lines = [line for line in out.splitlines() if line.startswith("g-")]
    assert len(lines) == 2 and lines[0].split()[0] == best["name"]  # best first
    assert f"{best['auc']['baselines/lr']:.4f}" in lines[0]
    markdown = (project / "reports/compare/g.md").read_text()
    assert f"| {best['name']} | {best['params']['train.lr']} | {best['auc']['baselines/lr']:.4f} |" in markdown
    assert "W&B: off (WANDB_MODE=disabled)" in out and "wandb sync" not in out  # no runs to sync: no sync line
