"""The validate gate: clean inputs pass and write every report; each kind of corruption fails by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tasks import validate
from tasks.common import FEATURE_MAP, METRICS, REJECTED, ROWS, StageError, split_path, write_json
from tasks.config import Params, parse_params

FIELDS = [
    {"name": "C1", "kind": "categorical", "vocab_size": 10},
    {"name": "I1", "kind": "numeric", "vocab_size": 6},
    {"name": "tags", "kind": "multi_valued", "vocab_size": 8},
]
SIZES = {"train": 200, "valid": 100, "test": 200}
# interim: 5 checks; rejected: 1; each split: 5 (label x3, rows, ratio) + 2 per single-valued field + 3 for the list
EXPECTED_CHECKS = 5 + 1 + 3 * (5 + 2 + 2 + 3)


def params(tolerance: float = 0.05, max_rejected: float = 0.5) -> Params:
    return parse_params(
        {
            "dataset": "t",
            "datasets": {
                "t": {
                    "paths": ["x.tsv"],
                    "format": "tsv",
                    "columns": {
                        "label": {"kind": "label", "positive": ["1"], "negative": ["0"]},
                        "C1": "categorical",
                    },
                }
            },
            "validate": {"positive_ratio_tolerance": tolerance, "max_rejected_fraction": max_rejected},
        }
    )


def split_frame(n: int) -> dict[str, list[Any]]:
    """n rows, exactly half positive; every code in range, one empty tag list (padding)."""
    return {
        "label": [i % 2 for i in range(n)],
        "C1": [3 + i % 7 for i in range(n)],
        "I1": [3 + i % 3 for i in range(n)],
        "tags": [[] if i == 0 else [3 + i % 5, 2] for i in range(n)],
    }


Edit = Callable[[dict[str, dict[str, list[Any]]], dict[str, Any]], None]


def write_fixtures(edit: Edit | None = None) -> None:
    """Write every input of the stage into the CWD; ``edit(splits, encode_json)`` corrupts it first."""
    splits = {s: split_frame(n) for s, n in SIZES.items()}
    encode = {"rows": dict(SIZES), "positive_ratio": {s: 0.5 for s in SIZES}}
    if edit:
        edit(splits, encode)

    interim = pl.DataFrame(
        {
            "label": [0, 1, 1, 0, 1],
            "C1": ["a", "b", None, "a", "c"],
            "I1": [1.0, None, 2.5, 3.0, 0.0],
            "tags": [["x"], [], ["y", "z"], None, ["x"]],
        },
        schema={"label": pl.Int8, "C1": pl.String, "I1": pl.Float64, "tags": pl.List(pl.String)},
    )
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    interim.write_parquet(ROWS)
    # 9 lines read, 4 kept aside; and 1 line of a side table's (not counted against the log)
    write_json(METRICS / "ingest.json", {"rows_in": 9, "rows_ok": 5, "rows_rejected": 4, "rows_out": 5,
                                         "rejected_by_reason": {"wrong column count": 3, "empty line": 1}})
    pl.DataFrame({"file": ["x.tsv"] * 4 + ["side.tsv"], "line": [1, 2, 3, 4, 1], "reason": ["r"] * 5,
                  "detail": [""] * 5, "raw": [""] * 5}).write_parquet(REJECTED)

    schema = {"label": pl.Int8, "C1": pl.Int32, "I1": pl.Int32, "tags": pl.List(pl.Int32)}
    split_path("train").parent.mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        pl.DataFrame(columns, schema=schema).write_parquet(split_path(split))
    write_json(
        FEATURE_MAP, {"label": "label", "reserved": {"padding": 0, "oov": 1, "missing": 2}, "fields": FIELDS}
    )
    write_json(METRICS / "encode.json", encode)


def failure_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit) -> str:
    monkeypatch.chdir(tmp_path)
    write_fixtures(edit)
    with pytest.raises(StageError) as err:
        validate.run(params())
    return str(err.value)


def test_clean_inputs_pass_and_write_every_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_fixtures()
    metrics = validate.run(params())

    assert metrics["success"] is True
    assert metrics["evaluated"] == EXPECTED_CHECKS and metrics["failed"] == 0 and metrics["failures"] == []
    assert set(metrics["per_asset"]) == {"interim", "rejected", "train", "valid", "test"}
    assert json.loads(validate.METRICS_FILE.read_text()) == metrics
    results = json.loads(validate.RESULTS.read_text())
    assert set(results) == {"interim", "rejected", "train", "valid", "test"}
    assert all(r["success"] for r in results.values())
    assert (validate.DATA_DOCS / "index.html").exists()
    assert f"validate: {EXPECTED_CHECKS}/{EXPECTED_CHECKS} expectations passed" in capsys.readouterr().out
    # every result carries its readable name
    names = [r["expectation_config"]["meta"]["name"] for r in results["valid"]["results"]]
    assert "valid: C1 codes within vocabulary [0, 10)" in names


def test_code_outside_vocabulary_fails_by_split_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(splits: dict, encode: dict) -> None:
        splits["test"]["C1"][4] = 10  # == vocab_size

    message = failure_message(tmp_path, monkeypatch, corrupt)
    assert "validation failed: 1 of" in message
    assert "test: C1 codes within vocabulary [0, 10)" in message and "e.g. 10" in message
    # outputs are written before the stage fails
    metrics = json.loads(validate.METRICS_FILE.read_text())
    assert metrics["success"] is False and metrics["failures"] == ["test: C1 codes within vocabulary [0, 10)"]
    assert metrics["per_asset"]["test"]["failed"] == 1 and metrics["per_asset"]["train"]["failed"] == 0
    assert (validate.DATA_DOCS / "index.html").exists() and validate.RESULTS.exists()


@pytest.fixture(scope="module")
def three_failures(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One run with three independent corruptions (GX runs are the slow part): the row count of valid,
    test's labels all 1 (its positive ratio, and one class only), a list code of valid. The message must name
    all four failures."""

    def corrupt(splits: dict, encode: dict) -> None:
        encode["rows"]["valid"] = SIZES["valid"] + 1
        splits["test"]["label"] = [1] * SIZES["test"]  # ratio 1.0 against train's 0.5
        encode["positive_ratio"]["test"] = 1.0
        splits["valid"]["tags"][3] = [4, 8]  # 8 == vocab_size

    with pytest.MonkeyPatch.context() as monkeypatch:
        message = failure_message(tmp_path_factory.mktemp("three"), monkeypatch, corrupt)
    assert message.startswith(f"validation failed: 4 of {EXPECTED_CHECKS} expectations")
    return message


def test_row_count_mismatch_fails(three_failures: str) -> None:
    assert "valid: row count equals encode's 101 (observed: 100)" in three_failures


def test_positive_ratio_out_of_tolerance_fails(three_failures: str) -> None:
    assert "test: positive ratio within train's 0.5000 ± 0.1914 (observed: 1.0)" in three_failures
    assert "valid: positive ratio" not in three_failures


def test_a_split_with_one_class_fails(three_failures: str) -> None:
    """AUC is undefined on a split holding one label: caught at the gate, not as a NaN in training."""
    assert "test: both labels present" in three_failures
    assert "valid: both labels present" not in three_failures


def test_multi_valued_code_out_of_range_fails(three_failures: str) -> None:
    line = "valid: tags largest code per row within vocabulary [0, 8) (unexpected: 1 rows, e.g. 8)"
    assert line in three_failures
    assert "tags smallest" not in three_failures


def test_too_many_rejected_lines_fail_with_their_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rejected line is kept, but the rows left can be a biased rest (a Latin-1 log read as UTF-8 loses the
    accented rows): past `max_rejected_fraction` of the log's lines the gate stops. The side table's line does
    not count: 4 of 9 pass at 0.5 (above) and fail at 0.4 (at most 3)."""
    monkeypatch.chdir(tmp_path)
    write_fixtures()
    with pytest.raises(StageError) as err:
        validate.run(params(max_rejected=0.4))
    message = str(err.value)
    assert "validation failed: 1 of" in message
    assert "ingest: rejected lines at most 40% of the 9 read (3) (observed: 4)" in message
    assert (f"the rejected lines (wrong column count 3, empty line 1) are in {REJECTED} with their reasons; "
            "if they are expected, raise validate.max_rejected_fraction") in message
    assert "missing-value marker" not in message

    # Lines kept aside for a marker such as R's NA: the message says which key reads it as missing
    hint = " (a missing-value marker? list it in the dataset's `missing_values`)"
    pl.DataFrame({"file": ["x.tsv"] * 4, "line": [1, 2, 3, 4], "reason": ["non-numeric value in I1"] * 4,
                  "detail": [f"I1 = 'NA'{hint}"] * 3 + ["I1 = 'x'"], "raw": [""] * 4}).write_parquet(REJECTED)
    with pytest.raises(StageError, match=r"3 of them hold a missing-value marker \(I1 = 'NA'\): list it in the "
                                         r"dataset's `missing_values`"):
        validate.run(params(max_rejected=0.4))
