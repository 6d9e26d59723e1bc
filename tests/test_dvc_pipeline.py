"""The pipeline as a user drives it: `dvc repro` in a fresh clone, then again, then with a changed param."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from aim.train import predict
from tasks.config import read_yaml
from tasks.training import load_encoded, load_model
from tests.conftest import Reproduced, needs_shared, ran, sh

BASELINES = ["baselines@lr", "baselines@fm"]
AIM = ["search_interaction", "search_embed", "retrain", "autofis", "transfer@deepfm_if", "transfer@ipnn_if"]


def test_saved_models_load_and_score_as_trained(reproduced: Reproduced, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model file a stage wrote builds again with its weights and scores the test split as the stage did."""
    monkeypatch.chdir(reproduced.repo)  # first, while the project is as `dvc repro` left it
    fields, splits = load_encoded()
    saved = {  # model file: (its test predictions, its metrics)
        "models/aim.pt": ("retrain", "retrain"), "models/autofis.pt": ("autofis", "autofis"),
        "models/transfer/deepfm_if.pt": ("deepfm_if", "transfer/deepfm_if"),
        "models/transfer/ipnn_if.pt": ("ipnn_if", "transfer/ipnn_if"),
        "models/baselines/lr.pt": ("lr", "baselines/lr"), "models/baselines/fm.pt": ("fm", "baselines/fm"),
    }
    for path, (predictions, metrics) in saved.items():
        model, model_fields = load_model(path)
        assert model_fields == fields and not model.training, path
        assert model.num_parameters() == json.loads(Path(f"metrics/{metrics}.json").read_text())["parameters"], path
        np.testing.assert_allclose(predict(model, splits["test"]), np.load(f"reports/predictions/{predictions}.npy"),
                                   rtol=0, atol=1e-6, err_msg=path)


def test_repro_then_nothing_then_only_downstream(reproduced: Reproduced) -> None:
    clone = reproduced.repo
    first = ran(reproduced.output)
    assert first[:4] == ["generate", "ingest", "encode", "validate"] and first[-1] == "evaluate"
    assert sorted(first[4:-1]) == sorted(BASELINES + AIM)
    for out in ("data/encoded/train.parquet", "data/encoded/feature_map.json", "metrics/validate.json",
                "reports/validation/data_docs/index.html", "dvc.lock", "metrics/baselines/fm.json",
                "models/baselines/fm.pt", "reports/baselines/lr.csv", "gates/interaction.json", "gates/embed.json",
                "models/aim.pt", "metrics/retrain.json", "metrics/evaluate.json", "reports/evaluate/report.md",
                "reports/evaluate/gates_heatmap.png", "metrics/transfer/ipnn_if.json", "metrics/autofis.json"):
        assert (clone / out).exists(), out
    # The table holds the models configured now, even where metrics/ still has another's file from an older run.
    models = [row["model"] for row in json.loads(reproduced.evaluate)["models"]]
    assert sorted(models) == sorted(["lr", "fm", "autofis", "aim (search model)", "aim (retrain)", "deepfm_if",
                                     "ipnn_if"])
    assert ran(sh(["dvc", "repro"], clone)) == []  # nothing changed: nothing runs

    params = read_yaml((clone / "params.yaml").read_text())
    params["encode"]["min_count"] = 3
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = ran(sh(["dvc", "repro"], clone))
    assert again[:2] == ["encode", "validate"] and sorted(again[2:-1]) == sorted(BASELINES + AIM)

    params["baselines"]["models"]["fm"] = {"embedding_l2": 0.001}  # one model's settings: only it retrains
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(["dvc", "repro"], clone)) == ["baselines@fm", "evaluate"]

    params["search_embed"]["grda"]["c"] = 0.2  # an EDS param: search_embed onward, not the interaction search
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(["dvc", "repro"], clone)) == ["search_embed", "retrain", "evaluate"]


@needs_shared
def test_exp_run_switches_dataset(reproduced: Reproduced) -> None:
    clone = reproduced.repo  # after the test above: its last state committed, then another dataset
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "min_count 3"], clone)
    out = sh(["dvc", "exp", "run", "-S", "dataset=criteo"], clone)
    stages = ran(out)
    assert stages[:4] == ["generate", "ingest", "encode", "validate"]
    assert sorted(stages[4:-1]) == sorted(BASELINES + AIM) and stages[-1] == "evaluate"
    # criteo does not read the synthetic log, so generate left a note in its place instead of writing it
    assert sorted(p.name for p in (clone / "data/raw/synthetic").iterdir()) == ["NOT_GENERATED.txt"]
    metrics = yaml.safe_load((clone / "metrics/ingest.json").read_text())
    assert metrics["dataset"] == "criteo" and metrics["rows_ok"] == 8000
