"""Shared test helpers: params built from the project's own params.yaml, stages run in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import Params, parse_params, read_yaml

# No W&B files from the tests; stage subprocesses (dvc repro, flows) inherit this. A test may set its own mode.
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"../shared/data not found at {SHARED_DATA} (real samples live there)")


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    spec["paths"] = [str((ROOT / p).resolve()) for p in spec["paths"]]
    spec["joins"] = [dict(j, path=str((ROOT / j["path"]).resolve())) for j in spec.get("joins", [])]
    return spec


def project_params(dataset: str, **sections: Any) -> Params:
    """The project's params.yaml with `dataset` chosen and input paths made absolute (tests run elsewhere)."""
    raw = read_yaml((ROOT / "params.yaml").read_text())
    raw["dataset"] = dataset
    raw["datasets"] = {name: _absolute(spec) for name, spec in raw["datasets"].items()}
    raw.update(sections)
    return parse_params(raw, ROOT / "params.yaml")


def tiny_params(columns: dict[str, Any], path: Path, **extra: Any) -> Params:
    """A one-file dataset spec for hand-written inputs."""
    spec = {"paths": [str(path)], "format": extra.pop("format", "tsv"), "columns": columns, **extra.pop("spec", {})}
    return parse_params({"dataset": "t", "datasets": {"t": spec}, **extra})


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stages write relative to the current directory: give each test its own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Two runs of the tiny project that are compared with each other train on one thread each. CPU training is
# bit-for-bit reproducible only at a fixed thread count (aim.train.fix_mkl_threads keeps MKL from changing
# its own); one thread takes that off the table for the comparison at no cost (69 s against 65 s here).
PINNED_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sh(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command as a user would (the venv's tools first on PATH, no telemetry); stdout + stderr.
    ``env`` adds to the environment."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **(env or {}))
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def tiny_project(repo: Path) -> Path:
    """A git repo at ``repo`` holding the working tree's tracked files and a tiny, quick config.

    3,000 synthetic rows, two baselines, two epochs everywhere, two interaction functions: the whole
    pipeline runs in about 1.5 min on 2 cores.
    """
    files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("tests/", "bench/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_bytes((ROOT / f).read_bytes())
    params = read_yaml((repo / "params.yaml").read_text())
    params["generate"]["rows"] = 3000
    params["baselines"]["models"] = {"lr": {}, "fm": {}}  # two models keep the tests quick
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


@dataclass
class Reproduced:
    """A tiny project after its first `dvc repro`: what ran and the dvc.lock it wrote (tests may go on
    changing the project; these two stay as they were)."""

    repo: Path
    output: str
    lock: str
    evaluate: str  # metrics/evaluate.json
    gates: dict[str, str]  # gates/<name>.json -> its text


def read_gates(repo: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((repo / "gates").glob("*.json"))}


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Reproduced:
    """One `dvc repro` of a tiny project per test session, shared by the pipeline and the flow tests."""
    repo = tiny_project(tmp_path_factory.mktemp("reproduced"))
    output = sh(["dvc", "repro"], repo, env=PINNED_THREADS)  # compared with the flow's run (test_flows.py)
    return Reproduced(repo, output, (repo / "dvc.lock").read_text(), (repo / "metrics/evaluate.json").read_text(),
                      read_gates(repo))


@pytest.fixture(scope="session")
def prefect_harness() -> Any:
    """One temporary Prefect server and database for the whole test session (starting one takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def take_kernel_path(path: str, monkeypatch: pytest.MonkeyPatch, module: Any, loader: str) -> None:
    """Make ``module`` take one of its two CPU paths: "torch" has its kernel loader ``loader`` return None, "native"
    keeps the kernel, or skips the test where the kernel did not build."""
    if path == "torch":
        monkeypatch.setattr(module, loader, lambda: None)
    elif getattr(module, loader)() is None:
        pytest.skip(f"the native kernel behind {loader}() did not build here (no C++ compiler, or AIM_NATIVE=0)")


def assert_same_bits_with_one_thread_or_two(run: Any) -> None:
    """Call ``run`` (which returns tensors) with torch on one thread, then two, and assert every tensor is equal bit for
    bit; the thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(list(run()))
    finally:
        torch.set_num_threads(threads)
    assert len(results[0]) == len(results[1]) > 0
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
