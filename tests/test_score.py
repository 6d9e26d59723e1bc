"""Scoring new raw logs with a saved model (tasks.score): rows coded as encode coded them, the stage's own
predictions reproduced, bad lines kept aside and counted, clear errors."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aim.metrics import calibration
from tasks import baselines, common, encode, generate, ingest, score
from tasks.common import FEATURE_MAP, ROWS, SPLITS, VOCAB, StageError, read_json, split_path
from tasks.config import Params, parse_params, read_yaml
from tests.conftest import ROOT, needs_shared, project_params

MODEL = Path("models/baselines/fm.pt")
LOG = Path("data/raw/synthetic/clicks.tsv")


def synthetic(**sections) -> Params:
    """The project's params on a 3,000-row synthetic log, written where the test runs."""
    raw = read_yaml((ROOT / "params.yaml").read_text())
    raw["generate"].update(rows=3000)
    raw["train"].update(epochs=2)
    raw.update(sections)
    return parse_params(raw)


def encode_all(params) -> None:
    for stage in (generate, ingest, encode) if params.dataset == "synthetic" else (ingest, encode):
        stage.run(params)


def assert_codes_match_encode(params) -> None:
    """score's coding of the interim rows equals, split by split, what encode wrote."""
    codes = score.encode_rows(pl.read_parquet(ROWS), read_json(FEATURE_MAP), score.read_vocabularies(VOCAB))
    split = encode.assign_splits(codes.num_rows, params)
    ours = pl.from_arrow(codes)
    for split_id, name in enumerate(SPLITS):
        written = pl.read_parquet(split_path(name)).drop("label")
        assert ours.filter(pl.Series(split == split_id)).equals(written), name


def test_codes_equal_encode_on_the_synthetic_log(workdir: Path) -> None:
    params = synthetic()
    encode_all(params)
    assert_codes_match_encode(params)  # criteo_log numerics, categoricals, a multi-valued field, OOV in valid/test


@needs_shared
def test_codes_equal_encode_on_movielens(workdir: Path) -> None:
    params = project_params("movielens_100k")  # quantile ages, zip prefixes, hour and weekday, multi-hot genres, joins
    encode_all(params)
    assert_codes_match_encode(params)


@pytest.fixture
def trained(workdir: Path):
    params = synthetic(baselines={"models": {"fm": {"embedding_dim": 4}}})
    encode_all(params)
    baselines.run(params, "fm")
    return params


def test_scores_reproduce_the_stage_and_keep_bad_lines(trained, capsys: pytest.CaptureFixture[str]) -> None:
    lines = LOG.read_text().splitlines()
    n = len(lines)
    # The log twice (1.6 MB: two blocks of 1 MB), then a line with a label outside the mapping and one a column short.
    log = Path("to_score.tsv")
    log.write_text("\n".join([*lines, *lines, "7\t" + lines[0].split("\t", 1)[1], lines[1].rsplit("\t", 1)[0]]) + "\n")
    params = trained.model_copy(update={"ingest": trained.ingest.model_copy(update={"block_mb": 1})})
    summary = score.run(params, [log], MODEL, Path("out/scores.parquet"))
    assert read_json(Path("metrics/ingest.json"))["rows_ok"] * 2 == summary["rows_scored"] == 2 * n
    assert summary["rejected_by_reason"] == {"label outside mapping": 1, "wrong column count": 1}
    rejected = pl.read_parquet("out/scores.rejected.parquet")
    assert rejected["line"].to_list() == [2 * n + 1, 2 * n + 2] and set(rejected["file"]) == {str(log)}
    scores = pl.read_parquet("out/scores.parquet")
    assert scores["line"].to_list() == list(range(1, 2 * n + 1))
    probability = scores["probability"].to_numpy()
    np.testing.assert_allclose(probability[:n], probability[n:], rtol=0, atol=1e-6)  # blocks cut elsewhere
    # The test split's rows, in log order, get the probabilities the stage gave them.
    split = encode.assign_splits(n, trained)
    np.testing.assert_allclose(probability[:n][split == 2], np.load("reports/predictions/fm.npy"), rtol=0, atol=1e-6)
    assert scores["label"].to_list()[:n] == pl.read_parquet(ROWS)["label"].to_list()
    assert json.loads(Path("out/scores.json").read_text())["auc"] == summary["auc"] > 0.5
    labels = scores["label"].to_numpy()
    assert summary["predicted_over_observed"] == pytest.approx(probability.mean() / labels.mean())
    assert summary["calibration_error"] == pytest.approx(calibration(labels, probability)["calibration_error"])
    printed = capsys.readouterr().out
    assert f"{summary['rows_scored']:,} rows scored" in printed and "AUC" in printed
    assert f"mean predicted / observed CTR {summary['predicted_over_observed']:.3f}" in printed


def test_unlabelled_logs_score_the_same(trained) -> None:
    labelled = score.run(trained, [LOG], MODEL, Path("a/scores.parquet"))
    served = Path("served.tsv")  # the same log without its first column, the label
    served.write_text("".join(line.split("\t", 1)[-1] + "\n" for line in LOG.read_text().splitlines()))
    unlabelled = score.run(trained, [served], MODEL, Path("b/scores.parquet"), unlabelled=True)
    a, b = pl.read_parquet("a/scores.parquet"), pl.read_parquet("b/scores.parquet")
    assert "label" not in b.columns and "auc" not in unlabelled and "calibration_error" not in unlabelled
    same = a.join(b, on="line", suffix="_b")
    assert same.height == labelled["rows_scored"] == unlabelled["rows_scored"]
    np.testing.assert_array_equal(same["probability"].to_numpy(), same["probability_b"].to_numpy())
    # the flag mixed up: the message points to it rather than to the log
    with pytest.raises(StageError, match=r"lines are one field short of the spec.*\(--unlabelled\)"):
        score.run(trained, [served], MODEL, Path("c/scores.parquet"))
    with pytest.raises(StageError, match=r"one field more than the spec.*\(drop --unlabelled\)"):
        score.run(trained, [LOG], MODEL, Path("c/scores.parquet"), unlabelled=True)


def test_errors_name_what_is_wrong(trained) -> None:
    with pytest.raises(StageError, match=r"missing\.tsv: input file not found"):
        score.run(trained, [Path("missing.tsv")], MODEL, Path("o.parquet"))
    with pytest.raises(StageError, match=r"models/none\.pt not found"):
        score.run(trained, [LOG], Path("models/none.pt"), Path("o.parquet"))
    with pytest.raises(StageError, match=r"^models: a directory, not a model file: name one, such as models/aim\.pt"):
        score.run(trained, [LOG], Path("models"), Path("o.parquet"))
    Path("empty.pt").write_bytes(b"")
    Path("notes.yaml").write_text("lr: 0.1\n")
    for not_a_model in (Path("notes.yaml"), Path("empty.pt")):  # torch.load: UnpicklingError, EOFError
        with pytest.raises(StageError, match=rf"^{not_a_model}: not a model file that a training stage saved"):
            score.run(trained, [LOG], not_a_model, Path("o.parquet"))
    other = project_params("criteo")
    with pytest.raises(StageError, match=r"encoded from dataset 'synthetic'.*dataset 'criteo'"):
        score.run(other, [LOG], MODEL, Path("o.parquet"))
    feature_map = read_json(FEATURE_MAP)
    feature_map["fields"][3]["vocab_size"] += 1  # as if encode had run again on other data after the training
    FEATURE_MAP.write_text(json.dumps(feature_map))
    with pytest.raises(StageError, match=r"trained on other encoded data .*field 'I4'"):
        score.run(trained, [LOG], MODEL, Path("o.parquet"))
    feature_map["fields"][3]["vocab_size"] -= 1
    FEATURE_MAP.write_text(json.dumps(feature_map))
    junk = Path("junk.tsv")
    junk.write_text("a\tb\n")
    with pytest.raises(StageError, match=r"no usable rows .*wrong column count"):
        score.run(trained, [junk], MODEL, Path("o.parquet"))


def test_command_line(trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(common, "load_params", lambda: trained)  # no params.yaml here; stage_main reads it
    score.main([str(LOG), "--model", str(MODEL)])
    assert pl.read_parquet(score.DEFAULT_OUT).height > 0 and "rows scored" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        score.main(["missing.tsv", "--model", str(MODEL)])
    assert exit_info.value.code == 1 and "missing.tsv: input file not found" in capsys.readouterr().err


def test_a_directory_or_a_non_parquet_out_is_refused(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A directory as a log gave an IsADirectoryError traceback; --out s.csv wrote Parquet into s.csv."""
    params = synthetic()
    Path("logs").mkdir()
    with pytest.raises(StageError, match=r"^logs is a directory: give the log files to score \(e\.g\. logs/\*\)"):
        score.run(params, [Path("logs")], MODEL, Path("o.parquet"))
    Path("a.tsv").write_text("1\t2\n")
    with pytest.raises(StageError, match=r"^--out s\.csv: the scores are written as Parquet.*--out s\.parquet"):
        score.run(params, [Path("a.tsv")], MODEL, Path("s.csv"))
    assert not Path("s.csv").exists()
    monkeypatch.setattr(common, "load_params", lambda: params)
    with pytest.raises(SystemExit) as exit_info:
        score.main(["logs"])
    assert exit_info.value.code == 1 and capsys.readouterr().err == (
        "error: logs is a directory: give the log files to score (e.g. logs/*)\n")
