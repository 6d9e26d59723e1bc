"""The baselines stage as DVC runs it: metrics, model file and curve written; bad settings named; resumable."""

import json
from pathlib import Path

import pytest
import torch

from tasks import baselines, encode, generate, ingest
from tasks.common import StageError
from tasks.config import ConfigError, parse_params, read_yaml
from tasks.training import Checkpoint, load_encoded, load_model
from tests.conftest import ROOT


def params_with(**baseline_models):
    raw = read_yaml((ROOT / "params.yaml").read_text())
    raw["generate"].update(rows=3000, out_dir="data/raw/synthetic")
    raw["train"].update(epochs=3, batch_size=512)
    raw["baselines"]["models"] = baseline_models
    return parse_params(raw)


@pytest.fixture
def encoded(workdir: Path):
    params = params_with(fm={})
    for stage in (generate, ingest, encode):
        stage.run(params)
    return workdir


def test_stage_writes_metrics_model_and_curve(encoded: Path) -> None:
    summary = baselines.run(params_with(fm={"embedding_dim": 4}), "fm")
    saved = json.loads(Path("metrics/baselines/fm.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("test_auc", "test_logloss", "parameters", "epochs", "train_seconds", "train_samples_per_second",
                "inference_seconds_per_100k"):
        assert key in saved, key
    assert 0.5 < saved["test_auc"] <= 1 and saved["epochs"] <= 3 and saved["hyperparameters"]["embedding_dim"] == 4
    model, fields = load_model("models/baselines/fm.pt")  # weights_only: plain types and tensors
    assert model.name == "fm" and model.hparams["embedding_dim"] == 4 and model.num_parameters() == saved["parameters"]
    assert fields == load_encoded()[0]
    curve = Path("reports/baselines/fm.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,train_loss,valid_auc") and len(curve) == saved["epochs"] + 1
    assert not Path("models/checkpoints/baselines/fm.ckpt").exists()  # removed once the run finished


def test_a_file_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "old.pt")  # no name, fields or hyper-parameters: an older format
    with pytest.raises(ValueError, match=r"old\.pt: not a model file .*re-run the stage"):
        load_model(tmp_path / "old.pt")


def test_same_params_same_metrics(encoded: Path) -> None:
    first = baselines.run(params_with(fm={}), "fm")
    second = baselines.run(params_with(fm={}), "fm")
    assert first["test_auc"] == second["test_auc"] and first["test_logloss"] == second["test_logloss"]


def test_a_stopped_run_resumes_from_its_checkpoint(encoded: Path, capsys: pytest.CaptureFixture) -> None:
    params = params_with(fm={})
    uninterrupted = baselines.run(params, "fm")

    original = Checkpoint.on_epoch_end

    def crash_after_first_epoch(self, trainer, record):
        original(self, trainer, record)
        raise KeyboardInterrupt  # as if the machine went away after epoch 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoint, "on_epoch_end", crash_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            baselines.run(params, "fm")
    assert Path("models/checkpoints/baselines/fm.ckpt").exists()
    resumed = baselines.run(params, "fm")
    assert "resuming from models/checkpoints/baselines/fm.ckpt after epoch 1" in capsys.readouterr().out
    assert resumed["test_auc"] == uninterrupted["test_auc"] and resumed["epochs"] == uninterrupted["epochs"]


def test_a_checkpoint_of_other_library_code_is_not_resumed(encoded: Path, capsys: pytest.CaptureFixture) -> None:
    """A change in aim/ makes DVC re-run the stage; a checkpoint left by the old code must not come back."""
    import tasks.training as training

    params = params_with(fm={})
    original = Checkpoint.on_epoch_end

    def crash_after_first_epoch(self, trainer, record):
        original(self, trainer, record)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoint, "on_epoch_end", crash_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            baselines.run(params, "fm")
    assert Path("models/checkpoints/baselines/fm.ckpt").exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "library_version", lambda: "other code")
        baselines.run(params, "fm")
    assert "resuming" not in capsys.readouterr().out


def test_bad_model_settings_are_named(encoded: Path) -> None:
    with pytest.raises(ConfigError, match=r"baselines.models.fm.hidden_units: unknown hyper-parameter of fm"):
        params_with(fm={"hidden_units": [8]})  # when params.yaml is read, before any stage runs
    with pytest.raises(ConfigError, match=r"baselines.models: no entry 'deepfm'"):
        baselines.run(params_with(fm={}), "deepfm")
    with pytest.raises(ConfigError, match=r"baselines.models.fm.train.learning_rate: unknown key"):
        params_with(fm={"train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"baselines\.models\.fm\.train\.lr: Input should be greater than 0"):
        params_with(fm={"train": {"lr": -1}})  # a bad value as well as a bad key: at load, not at the stage
    fields, _ = load_encoded()
    assert len(fields) == 40


@pytest.mark.parametrize("valid", ["one class", "empty"])
def test_a_validation_split_that_cannot_serve_is_a_stage_error(encoded: Path, valid: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A one-class or empty validation split stopped the stage with a raw ValueError traceback."""
    import polars as pl

    from tasks import common
    from tasks.common import split_path

    rows = pl.read_parquet(split_path("valid"))
    rows = rows.with_columns(pl.lit(0, rows.schema["label"]).alias("label")) if valid == "one class" else rows.head(0)
    rows.write_parquet(split_path("valid"))
    expected = (r"data/encoded/valid\.parquet holds one class only \(all 300 rows labelled 0\).*"
                r"encode\.split\.fractions" if valid == "one class" else
                r"data/encoded/valid\.parquet has no rows \(rows per split: train 2,400, valid 0, test 300\).*"
                r"encode\.split\.fractions")
    params = params_with(fm={})
    with pytest.raises(StageError, match=expected):
        baselines.run(params, "fm")
    monkeypatch.setattr(common, "load_params", lambda: params)
    monkeypatch.setattr("sys.argv", ["tasks.baselines", "fm"])
    with pytest.raises(SystemExit) as exit_info:
        baselines.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: data/encoded/valid.parquet") and "Traceback" not in err
