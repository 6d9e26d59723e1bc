"""Shared test helpers: params built from the project's own params.yaml, stages run in a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import Params, parse_params

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
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
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
