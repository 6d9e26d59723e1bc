"""params.yaml is validated up front: wrong types, unknown and missing keys are named with the file."""

from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, load_params, parse_params
from tests.conftest import ROOT

MINIMAL = {"dataset": "t", "datasets": {"t": {"paths": ["x.tsv"], "format": "tsv",
                                              "columns": {"label": {"kind": "label", "positive": ["1"]}}}}}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_project_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.dataset in params.datasets
    criteo = params.datasets["criteo"]
    assert list(criteo.columns)[:3] == ["label", "I1", "I2"] and len(criteo.columns) == 40  # I{1..13} expanded


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "encode": {"min_cuont": 3}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "encode.min_cuont: unknown key" in str(err.value)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "encode": {"min_count": "many"}})
    with pytest.raises(ConfigError, match=r"encode\.min_count: .*integer"):
        load_params(path)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    raw = {"dataset": "t", "datasets": {"t": {"format": "tsv", "columns": {"label": "label"}}}}
    with pytest.raises(ConfigError, match=r"datasets\.t\.paths: required key is missing"):
        load_params(write(tmp_path, raw))


def test_unknown_dataset_and_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="'nope' is not one of datasets"):
        parse_params({**MINIMAL, "dataset": "nope"})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_params({**MINIMAL, "encode": {"split": {"fractions": [0.5, 0.2, 0.2]}}})


def test_column_kind_checked() -> None:
    raw = {"dataset": "t", "datasets": {"t": {"paths": ["x"], "format": "tsv",
                                               "columns": {"label": "label", "C1": "categorial"}}}}
    with pytest.raises(ConfigError, match=r"datasets\.t\.columns\.C1\.kind"):
        parse_params(raw)


def test_overrides_like_dvc_set_param(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, MINIMAL), overrides={"encode.min_count": 5})
    assert params.encode.min_count == 5
