"""W&B tracking: what train_and_test and the stages log, gate tables, offline runs on disk, disabled mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from aim.data import CTRData, FieldSpec
from aim.models import build_model
from aim.train import TrainConfig
from tasks import autofis, baselines, retrain, search_embed, search_interaction, tracking, transfer
from tasks.common import StageError, read_json
from tasks.config import Params
from tasks.training import Checkpoint, train_and_test
from tests.conftest import ROOT, tiny_params

FIELDS = [FieldSpec("a", 8), FieldSpec("b", 6), FieldSpec("c", 5), FieldSpec("m", 6, max_length=2, multi_valued=True)]


def synthetic(n: int, seed: int) -> CTRData:
    """Random codes with a planted a x b interaction, so AUC is well above 0.5 and both classes occur."""
    gen = torch.Generator().manual_seed(seed)
    single = torch.stack([torch.randint(3, v, (n,), generator=gen) for v in (8, 6, 5)], 1).to(torch.int32)
    multi = torch.randint(0, 6, (n, 2), generator=gen).to(torch.int32)
    logit = 1.5 * (2 * (single[:, 0] % 2) - 1) * (2 * (single[:, 1] % 2) - 1)
    label = (torch.rand(n, generator=gen) < torch.sigmoid(logit.float())).float()
    return CTRData(tuple(FIELDS), single, (multi,), label)


SPLITS = {"train": synthetic(800, 1), "valid": synthetic(300, 2), "test": synthetic(300, 3)}


class FakeTracker:
    """Records every call, as tracking.Tracker receives them."""

    def __init__(self, stage: str = "", name: str = "", config: dict[str, Any] | None = None) -> None:
        self.stage, self.name, self.config = stage, name, config or {}
        self.logs: list[tuple[int, dict[str, float]]] = []
        self.summaries: dict[str, Any] = {}
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.finished = 0

    def log(self, values: dict[str, float], step: int) -> None:
        self.logs.append((step, dict(values)))

    def summary(self, values: dict[str, Any]) -> None:
        self.summaries.update(values)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[key] = (columns, rows)

    def finish(self) -> None:
        self.finished += 1


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[FakeTracker]:
    """Every run a stage starts, as a FakeTracker (tracking.tracked calls start_run through the module)."""
    runs: list[FakeTracker] = []

    def start_run(stage: str, name: str, params: Params, config: dict[str, Any]) -> FakeTracker:
        runs.append(FakeTracker(stage, name, config))
        return runs[-1]

    monkeypatch.setattr(tracking, "start_run", start_run)
    return runs


def tiny(**sections: Any) -> Params:
    columns = {"label": {"kind": "label", "threshold": 1}, "a": "categorical"}
    return tiny_params(columns, Path("unused.tsv"), train={"epochs": 2, "batch_size": 200, "device": "cpu"},
                       **sections)


def assert_epochs_logged(run: FakeTracker, epochs: int) -> None:
    assert [step for step, _ in run.logs] == list(range(1, epochs + 1))
    for _, values in run.logs:
        assert set(values) == set(tracking.EPOCH_KEYS)
        assert all(math.isfinite(v) for v in values.values()), values


def test_train_and_test_logs_each_epoch_and_the_test_summary(workdir: Path) -> None:
    torch.manual_seed(0)
    fake = FakeTracker()
    config = TrainConfig(epochs=3, batch_size=200, lr=0.01, patience=10, device="cpu")
    summary, probabilities = train_and_test(build_model("fm", FIELDS, embedding_dim=4), config, SPLITS, "tiny/fm",
                                            {}, tracker=fake)
    assert_epochs_logged(fake, 3)
    assert summary["epochs"] == 3 and len(probabilities) == 300
    assert fake.summaries == summary  # test AUC / logloss and the rest, exactly as returned
    assert fake.summaries["test_auc"] > 0.5 and math.isfinite(fake.summaries["test_logloss"])
    assert fake.logs[-1][1]["valid_auc"] == pytest.approx(float(Path("reports/tiny/fm.csv").read_text()
                                                                 .splitlines()[-1].split(",")[2]), abs=1e-6)
    assert fake.finished == 0  # the stage that started the run finishes it


def test_a_resumed_run_logs_the_epochs_before_the_stop_too(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(epochs=3, batch_size=200, lr=0.01, patience=10, device="cpu")
    original = Checkpoint.on_epoch_end

    def crash_after_first_epoch(self, trainer, record):
        original(self, trainer, record)
        raise KeyboardInterrupt

    first, second = FakeTracker(), FakeTracker()
    with monkeypatch.context() as mp:
        mp.setattr(Checkpoint, "on_epoch_end", crash_after_first_epoch)
        torch.manual_seed(0)
        with pytest.raises(KeyboardInterrupt):
            train_and_test(build_model("fm", FIELDS, embedding_dim=4), config, SPLITS, "tiny/fm", {}, first)
    torch.manual_seed(0)
    train_and_test(build_model("fm", FIELDS, embedding_dim=4), config, SPLITS, "tiny/fm", {}, second)
    assert [step for step, _ in first.logs] == [1]
    assert_epochs_logged(second, 3)  # epoch 1 replayed from the checkpoint, then 2 and 3
    assert second.logs[0] == first.logs[0]


def test_gate_records_become_tables() -> None:
    interaction = {"interactions": [
        {"fields": ["C1", "C3"], "order": 2, "function": "inner", "gate": 0.81},
        {"fields": ["C1", "C3", "I2"], "order": 3, "function": "scalar_kernel", "gate": -0.2},
    ]}
    assert tracking.interaction_table(interaction["interactions"]) == (
        ["fields", "order", "function", "gate"],
        [["C1 x C3", 2, "inner", 0.81], ["C1 x C3 x I2", 3, "scalar_kernel", -0.2]],
    )
    embed = {"embedding_dim": 4, "fields": {"C1": {"kept": [0, 2], "size": 2}, "C3": {"kept": [], "size": 0}}}
    expected = (["field", "size", "kept"], [["C1", 2, "0,2"], ["C3", 0, ""]])
    assert tracking.embedding_table(embed["fields"]) == expected
    assert tracking.embedding_table({"C1": [0, 2], "C3": []}) == expected  # name -> kept positions, as retrain has


def test_tracked_always_finishes_and_marks_a_failed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    class Run:  # what WandbTracker.finish calls
        exit_codes: list[int | None] = []

        def finish(self, exit_code: int | None = None) -> None:
            self.exit_codes.append(exit_code)

    monkeypatch.setattr(tracking, "start_run", lambda *args: tracking.WandbTracker(Run()))
    with tracking.tracked("retrain", "retrain", tiny(), {}):
        pass
    with pytest.raises(RuntimeError, match="boom"), tracking.tracked("retrain", "retrain", tiny(), {}):
        raise RuntimeError("boom")
    assert Run.exit_codes == [None, 1]


def test_mode_group_and_run_directory_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "Disabled")
    assert tracking.mode() == "disabled"
    assert isinstance(tracking.start_run("baselines", "baselines/fm", tiny(), {}), tracking.NullTracker)
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(StageError, match="WANDB_MODE='offlne'"):
        tracking.mode()

    group = tracking.params_group(tiny())
    assert group.startswith("params-") and len(group) == len("params-") + 8
    assert tracking.params_group(tiny()) == group and tracking.params_group(tiny(seed=1)) != group
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr01")
    assert tracking.params_group(tiny()) == "exp-lr01"

    assert tracking.wandb_runs_dir() == tmp_path / "wandb"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking.wandb_runs_dir() == tmp_path / "repo" / "wandb"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "runs"))
    assert tracking.wandb_runs_dir() == tmp_path / "runs" / "wandb"


def test_an_offline_run_is_written_where_wandb_sync_finds_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    for var in ("WANDB_API_KEY", "DVC_ROOT", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr01")
    tracker = tracking.start_run("baselines", "baselines/fm", tiny(), {"model": "fm", "train": {"lr": 0.01}})
    assert isinstance(tracker, tracking.WandbTracker)
    run = tracker.run
    assert (run.project, run.name, run.group, run.job_type) == ("aim-pipeline", "baselines/fm", "exp-lr01", "baselines")
    assert set(run.tags) == {"baselines", "t"}
    assert run.config["dataset"] == "t" and run.config["seed"] == 2024 and run.config["train"]["lr"] == 0.01
    tracker.log({"train_loss": 0.6, "valid_auc": 0.7}, step=1)
    tracker.log({"train_loss": 0.5, "valid_auc": 0.75}, step=2)
    tracker.table("interactions", *tracking.interaction_table([{"fields": ["a", "b"], "order": 2,
                                                                 "function": "inner", "gate": 0.5}]))
    tracker.summary({"test_auc": 0.74, "test_logloss": 0.5})
    assert run.summary["test_auc"] == 0.74
    tracker.finish()

    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    table = json.loads(next(runs[0].parent.glob("files/media/table/interactions_*.table.json")).read_text())
    assert table["columns"] == ["fields", "order", "function", "gate"] and table["data"] == [["a x b", 2, "inner", 0.5]]
    assert f"wandb sync {runs[0].parent}" in capsys.readouterr().out


def test_disabled_mode_does_not_import_wandb() -> None:
    code = """if True:
        import sys
        from tasks.config import parse_params
        from tasks.tracking import NullTracker, start_run
        params = parse_params({"dataset": "t", "datasets": {"t": {"paths": ["x"], "format": "tsv",
                               "columns": {"label": {"kind": "label", "threshold": 1}}}}})
        tracker = start_run("baselines", "baselines/fm", params, {})
        tracker.log({"train_loss": 1.0}, step=1)
        tracker.table("t", ["a"], [[1]])
        tracker.summary({"test_auc": 0.5})
        tracker.finish()
        print(type(tracker).__name__, "wandb" in sys.modules)
    """
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NullTracker", "False"]


def test_stages_track_config_epochs_and_gate_tables(workdir: Path, fake_runs: list[FakeTracker],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for stage in (baselines, search_interaction, search_embed, retrain, autofis, transfer):
        monkeypatch.setattr(stage, "load_encoded", lambda dataset=None: (FIELDS, SPLITS))
    grda = {"c": 0.0}  # no L1 pull: every gate stays open, so every stage has interactions and dimensions to show
    params = tiny(
        baselines={"embedding_dim": 4, "models": {"fm": {"train": {"lr": 0.01}}}},
        search={"functions": ["inner", "outer"], "max_order": 3, "top_k": 1, "embedding_dim": 4, "grda": grda,
                "train": {"epochs": 2, "patience": 5}},
        search_embed={"grda": grda, "train": {"epochs": 2}},
        retrain={"hidden_units": [8], "dropout": 0.0},
        transfer={"embedding_dim": 4, "models": {"deepfm_if": {"hidden_units": [8]}}},
    )
    results = {"baselines/fm": baselines.run(params, "fm")}
    gates = search_interaction.run(params)
    embed = search_embed.run(params)
    results["retrain"] = retrain.run(params)
    results["autofis"] = autofis.run(params)
    results["transfer/deepfm_if"] = transfer.run(params, "deepfm_if")

    names = [run.name for run in fake_runs]
    assert names == ["baselines/fm", "search_interaction/order2", "search_interaction/order3", "search_embed",
                     "retrain", "autofis_search/order2", "autofis_search/order3", "autofis", "transfer/deepfm_if"]
    runs = dict(zip(names, fake_runs, strict=True))
    assert [run.stage for run in fake_runs] == ["baselines", "search_interaction", "search_interaction",
                                                "search_embed", "retrain", "autofis", "autofis", "autofis",
                                                "transfer"]
    for run in fake_runs:
        assert run.finished == 1
        assert_epochs_logged(run, run.summaries["epochs"])
        assert run.config["train"]["batch_size"] == 200 and "progress" not in run.config["train"]
        json.dumps(run.config)  # plain data, as W&B stores it
    for name, summary in results.items():
        assert runs[name].summaries["test_auc"] == summary["test_auc"], name

    # The config: the stage's section, the model's hyper-parameters, the train config with its overrides.
    assert runs["baselines/fm"].config["hyperparameters"]["embedding_dim"] == 4
    assert runs["baselines/fm"].config["train"]["lr"] == 0.01
    assert runs["search_interaction/order3"].config["search"]["functions"] == ["inner", "outer"]
    assert runs["search_interaction/order3"].config["order"] == 3
    assert runs["autofis_search/order2"].config["search"]["mode"] == "fis"
    assert runs["retrain"].config["retrain"]["hidden_units"] == [8]
    assert runs["retrain"].config["hyperparameters"]["interactions"] == len(gates["interactions"])

    # The gate tables: the interactions each search order kept, the embedding sizes, what retrain was built from.
    final = tracking.interaction_table(gates["interactions"])
    assert runs["search_interaction/order3"].tables["interactions"] == final
    assert runs["search_interaction/order2"].summaries["selection_ratio"] == gates["orders"]["2"]["selection_ratio"]
    sizes = tracking.embedding_table(read_json(Path("gates/embed.json"))["fields"])
    assert runs["search_embed"].tables["embedding_sizes"] == sizes and embed["searched"]
    columns, rows = runs["retrain"].tables["interactions"]  # re-sorted by rounded gate: ties may swap
    assert columns == final[0] and sorted(rows) == sorted(final[1])
    assert runs["retrain"].tables["embedding_sizes"] == sizes
    assert runs["retrain"].summaries["parameters_after_eds"] == results["retrain"]["parameters_after_eds"]
    assert runs["autofis"].tables["interactions"] == tracking.interaction_table(read_json(Path("gates/autofis.json"))
                                                                                ["interactions"])
    assert "embedding_sizes" not in runs["autofis"].tables  # AutoFIS searches no dimensions
    assert runs["transfer/deepfm_if"].tables["interactions"] == final
