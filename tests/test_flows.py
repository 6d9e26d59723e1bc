"""The Prefect flow runs the DVC stages as a hand-run `dvc repro` does; a failed stage fails it by name;
the scheduled deployments of prefect.yaml carry their cron schedules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from flows.aim_pipeline import SEARCH_STAGES, StageFailed, aim_pipeline, metrics_markdown, pipeline_stages
from flows.serve import PREFECT_YAML, deployments
from tests.conftest import PINNED_THREADS, Reproduced, ran, read_gates, sh, tiny_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Outputs whose content holds wall-clock figures (train seconds, samples/s, report dates): two runs of one
# config never agree on them. The outputs of the AIM stages' training (searched gates, models and predictions,
# and what reads them; "gates" also matches the gates/ folder that evaluate depends on) are compared apart,
# below; the baselines' stay compared bit for bit.
TIMED = ("metrics/", "reports/")
UNTIMED = ("metrics/validate.json", "reports/predictions/lr.npy", "reports/predictions/fm.npy")
TRAINED = ("gates", "models/aim.pt", "models/autofis.pt", "models/transfer/", "reports/predictions")


def lock_hashes(lock: str) -> dict[str, Any]:
    """Per stage of a dvc.lock: its command, params and the md5 of every dep and out that is neither timed
    nor trained."""
    stages = yaml.safe_load(lock)["stages"]

    def compared(path: str) -> bool:
        return path in UNTIMED or not path.startswith((*TIMED, *TRAINED))

    return {name: {"cmd": s["cmd"], "params": s.get("params"),
                   **{kind: {d["path"]: d.get("md5") for d in s.get(kind, []) if compared(d["path"])}
                      for kind in ("deps", "outs")}}
            for name, s in stages.items()}


def architecture(gates: dict[str, str]) -> dict[str, Any]:
    """What the searches chose: the kept interactions (fields, order, function) and each field's kept
    embedding positions."""
    chosen = {}
    for name, text in gates.items():
        record = json.loads(text)
        if "interactions" in record:
            chosen[name] = sorted((tuple(it["fields"]), it["order"], it["function"]) for it in record["interactions"])
        else:
            chosen[name] = {field: f["kept"] for field, f in record["fields"].items()}
    return chosen


@pytest.fixture(scope="module")
def flowed(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, dict[str, str]]:
    """A tiny project (the same config as `reproduced`) run end to end by the flow."""
    repo = tiny_project(tmp_path_factory.mktemp("flowed"))
    with pytest.MonkeyPatch.context() as patch:  # the stages the flow starts inherit this environment
        for name, value in PINNED_THREADS.items():
            patch.setenv(name, value)
        return repo, aim_pipeline(root=str(repo))


def test_stages_come_in_dag_order_with_validation_before_any_training(flowed: tuple[Path, dict]) -> None:
    repo, _ = flowed
    order = [s["name"] for s in pipeline_stages(repo)]
    assert order[:4] == ["generate", "ingest", "encode", "validate"] and order[-1] == "evaluate"
    assert order.index("search_interaction") < order.index("search_embed") < order.index("retrain")
    metrics = {s["name"]: s["metrics"] for s in pipeline_stages(repo)}
    assert metrics["validate"] == ["metrics/validate.json"] and metrics["baselines@fm"] == ["metrics/baselines/fm.json"]


def test_flow_runs_every_stage_and_writes_the_same_lock_as_dvc_repro(flowed: tuple[Path, dict],
                                                                    reproduced: Reproduced) -> None:
    repo, results = flowed
    assert list(results) == ran(reproduced.output)  # the same stages, in the same order, all of them run
    assert set(results.values()) == {"ran"}
    # The same commands, params and inputs for every stage, and bit for bit the same data stages.
    assert lock_hashes((repo / "dvc.lock").read_text()) == lock_hashes(reproduced.lock)
    # Training: the same architecture chosen, the same AUCs. (Before MKL's dynamic thread count was turned off
    # and the two runs pinned to one thread, CI saw them differ in about one full test run in three.)
    assert architecture(read_gates(repo)) == architecture(reproduced.gates)
    ours = {r["model"]: r["test_auc"] for r in json.loads((repo / "metrics/evaluate.json").read_text())["models"]}
    theirs = {r["model"]: r["test_auc"] for r in json.loads(reproduced.evaluate)["models"]}
    assert ours.keys() == theirs.keys()
    assert all(ours[m] == pytest.approx(theirs[m], abs=2e-3) for m in ours), f"flow {ours}\ndvc repro {theirs}"
    assert "up to date" in sh(["dvc", "status"], repo)  # the flow left dvc.lock consistent with the workspace

    again = aim_pipeline(root=str(repo))  # nothing changed: DVC skips every stage
    assert set(again.values()) == {"skipped"} and list(again) == list(results)


def test_each_stage_attaches_its_metrics_as_a_markdown_artifact(flowed: tuple[Path, dict]) -> None:
    from prefect.artifacts import Artifact

    repo, _ = flowed
    evaluate = Artifact.get("evaluate")  # (a 422 here: FastAPI >= 0.151, see pyproject.toml)
    assert evaluate is not None and evaluate.type == "markdown"
    assert "metrics/evaluate.json: models" in evaluate.data  # the model table as a table
    retrain = next(r for r in json.loads((repo / "metrics/evaluate.json").read_text())["models"]
                   if r["kind"] == "aim")
    assert f"| aim (retrain) | aim | {retrain['test_auc']:.5g} |" in evaluate.data
    fm = Artifact.get("baselines-fm")
    auc = json.loads((repo / "metrics/baselines/fm.json").read_text())["test_auc"]
    assert f"| test_auc | {auc:.5g} |" in fm.data


def test_search_false_keeps_the_gates_and_overrides_become_a_dvc_experiment(flowed: tuple[Path, dict],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = flowed
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@example.com")
    gates = (repo / "gates/interaction.json").read_bytes()
    frozen = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["search_embed"]
    results = aim_pipeline(root=str(repo), search=False, overrides=["retrain.dropout=0.1", "search_embed.grda.c=0.5"],
                           experiment="nightly-0.1")
    assert not set(SEARCH_STAGES) & set(results)  # frozen: not even asked of DVC
    # and not recorded as run with the new c either: dvc exp save commits only the stages that ran
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["search_embed"] == frozen
    assert "search_embed" in sh(["dvc", "status", "search_embed"], repo)
    assert results["retrain"] == "ran" and results["evaluate"] == "ran"
    assert results["baselines@lr"] == "skipped"  # a retrain param: the baselines did not change
    assert (repo / "gates/interaction.json").read_bytes() == gates
    assert yaml.safe_load((repo / "params.yaml").read_text())["retrain"]["dropout"] == 0.1
    assert yaml.safe_load((repo / "params.yaml").read_text())["search_embed"]["grda"]["c"] == 0.5
    shown = sh(["dvc", "exp", "show", "--json"], repo)
    assert "nightly-0.1" in shown


def test_a_rejected_override_names_the_key_and_leaves_params_as_they_were(flowed: tuple[Path, dict]) -> None:
    repo, _ = flowed
    before = (repo / "params.yaml").read_text()
    with pytest.raises(ValueError, match="nope"):
        aim_pipeline(root=str(repo), overrides=["nope.depth=3"])
    with pytest.raises(ValueError, match="train.lr"):
        aim_pipeline(root=str(repo), overrides=["train.lr=fast"])
    assert (repo / "params.yaml").read_text() == before
    with pytest.raises(ValueError, match="unknown stage"):
        aim_pipeline(root=str(repo), stages=["trian"])


def test_search_false_without_an_earlier_search_says_so_before_running_anything(flowed: tuple[Path, dict]) -> None:
    repo, _ = flowed
    gates = repo / "gates/autofis.json"
    kept = gates.read_bytes()
    gates.unlink()  # as in a clone that never ran the searches
    lock, params = (repo / "dvc.lock").read_text(), (repo / "params.yaml").read_text()
    try:
        with pytest.raises(ValueError, match=r"search=False reuses the outputs of an earlier search, but "
                                             r"gates/autofis.json do not exist.*research"):
            aim_pipeline(root=str(repo), search=False, overrides=["train.epochs=1"])
        assert (repo / "dvc.lock").read_text() == lock  # no stage ran
        assert (repo / "params.yaml").read_text() == params  # and the overrides were not applied
    finally:
        gates.write_bytes(kept)


def test_a_failed_validation_fails_the_flow_naming_the_stage(flowed: tuple[Path, dict]) -> None:
    repo, _ = flowed
    valid = repo / "data/encoded/valid.parquet"
    frame = pl.read_parquet(valid)
    frame.with_columns(pl.when(pl.int_range(pl.len()) < 5).then(7).otherwise(pl.col("label"))
                       .cast(frame.schema["label"]).alias("label")).write_parquet(valid)  # 5 labels of 7
    trained = (repo / "metrics/baselines/lr.json").stat().st_mtime_ns
    state = aim_pipeline(root=str(repo), stages=["validate", "baselines@lr"], return_state=True)
    assert state.is_failed()
    # The flow ends in a Failed state carrying the stage's error (logged in one line), not an exception Prefect
    # logged with its engine's traceback ("Flow run encountered an exception: StageFailed: ...").
    assert state.message.startswith("stage 'validate' failed (exit ")
    with pytest.raises(StageFailed, match=r"(?s)stage 'validate' failed \(exit \d+\): error: "
                       r"validation failed.*valid: label is 0/1 \(unexpected: 5 rows, e.g. 7\)"):
        state.result()
    assert (repo / "metrics/baselines/lr.json").stat().st_mtime_ns == trained  # nothing trained after the gate


def test_deployments_in_prefect_yaml_carry_their_cron_schedules() -> None:
    from prefect import get_client

    built = {d.name: d for d in deployments(PREFECT_YAML)}
    assert set(built) == {"retrain", "research"}
    assert [s.schedule.cron for s in built["retrain"].schedules] == ["0 2 * * *"]  # nightly
    assert [s.schedule.cron for s in built["research"].schedules] == ["0 4 * * 0"]  # weekly, Sunday
    assert built["retrain"].parameters == {"search": False} and built["research"].parameters == {"search": True}
    assert built["retrain"].entrypoint.endswith("flows/aim_pipeline.py:aim_pipeline")

    with get_client(sync_client=True) as client:  # registered with a server, they read back the same
        for name, deployment in built.items():
            stored = client.read_deployment(deployment.apply())
            assert stored.name == name and stored.parameters == deployment.parameters
            assert [s.schedule.cron for s in stored.schedules] == [s.schedule.cron for s in deployment.schedules]
            assert all(s.active for s in stored.schedules)


def test_a_nested_value_in_a_table_of_records_gets_columns_of_its_own(tmp_path: Path) -> None:
    """evaluate's rows carry the AIM retrain's paired difference as a dict: it was a Python dict in one cell."""
    (tmp_path / "m.json").write_text(json.dumps({"models": [
        {"model": "aim", "test_auc": 0.8, "aim_retrain_minus_this": None},
        {"model": "fm", "test_auc": 0.7, "aim_retrain_minus_this": {"difference": 0.1, "p_value": 0.001}}]}))
    markdown = metrics_markdown("evaluate", tmp_path, ["m.json"])
    assert "| model | test_auc | aim_retrain_minus_this | aim_retrain_minus_this.difference | " in markdown
    assert "| fm | 0.7 |  | 0.1 | 0.001 |" in markdown and "{" not in markdown
