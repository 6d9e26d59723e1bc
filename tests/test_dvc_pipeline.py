"""The pipeline as a user drives it: `dvc repro` in a fresh clone, then again, then with a changed param."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SHARED_DATA, needs_shared


def sh(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


BASELINES = ["baselines@lr", "baselines@fm"]
AIM = ["search_interaction", "search_embed", "retrain", "autofis", "transfer@deepfm_if", "transfer@ipnn_if"]


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git clone of the working tree's tracked files, with a tiny synthetic log."""
    repo = tmp_path_factory.mktemp("clone")
    files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("tests/", "bench/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_bytes((ROOT / f).read_bytes())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generate"]["rows"] = 3000
    params["baselines"]["models"] = {"lr": {}, "fm": {}}  # two models keep the test quick
    params["train"]["epochs"] = 2
    for section in ("search", "search_embed", "retrain"):  # the searches set their own epochs
        params[section]["train"]["epochs"] = 2
    params["search"]["functions"] = ["inner", "vector_kernel"]
    for spec in params["datasets"].values():  # the clone lives elsewhere: point presets at ../shared for real
        spec["paths"] = [p.replace("../shared/data", str(SHARED_DATA)) for p in spec["paths"]]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        sh(cmd, repo)
    return repo


def test_repro_then_nothing_then_only_downstream(clone: Path) -> None:
    first = ran(sh(["dvc", "repro"], clone))
    assert first[:4] == ["generate", "ingest", "encode", "validate"] and first[-1] == "evaluate"
    assert sorted(first[4:-1]) == sorted(BASELINES + AIM)
    for out in ("data/encoded/train.parquet", "data/encoded/feature_map.json", "metrics/validate.json",
                "reports/validation/data_docs/index.html", "dvc.lock", "metrics/baselines/fm.json",
                "models/baselines/fm.pt", "reports/baselines/lr.csv", "gates/interaction.json", "gates/embed.json",
                "models/aim.pt", "metrics/retrain.json", "metrics/evaluate.json", "reports/evaluate/report.md",
                "reports/evaluate/gates_heatmap.png", "metrics/transfer/ipnn_if.json", "metrics/autofis.json"):
        assert (clone / out).exists(), out
    assert ran(sh(["dvc", "repro"], clone)) == []  # nothing changed: nothing runs

    params = yaml.safe_load((clone / "params.yaml").read_text())
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
def test_exp_run_switches_dataset(clone: Path) -> None:
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "min_count 3"], clone)
    out = sh(["dvc", "exp", "run", "-S", "dataset=criteo"], clone)
    stages = ran(out)
    assert stages[:3] == ["ingest", "encode", "validate"]  # generate's params did not change
    assert sorted(stages[3:-1]) == sorted(BASELINES + AIM) and stages[-1] == "evaluate"
    metrics = yaml.safe_load((clone / "metrics/ingest.json").read_text())
    assert metrics["dataset"] == "criteo" and metrics["rows_ok"] == 8000
