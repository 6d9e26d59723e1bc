"""encode: split before fitting, no leakage, reserved codes, determinism down to the bytes."""

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from tasks import encode, ingest
from tasks.common import FEATURE_MAP, MISSING, OOV, StageError, split_path
from tests.conftest import tiny_params

COLUMNS = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "I1": {"kind": "numeric",
           "bucketing": "criteo_log"}, "C1": "categorical", "M": {"kind": "multi_valued", "max_length": 2}}


def write_log(path: Path, n: int = 2000) -> None:
    rows = [f"{i % 3 == 0:d}\t{i % 50}\tc{i % 7}\tm{i % 5}|m{i % 4}|m{i % 3}" for i in range(n)]
    rows[5] = "1\t\t\t"  # missing numeric, categorical and an empty list
    path.write_text("\n".join(rows) + "\n")


def run_both(params) -> None:
    ingest.run(params)
    encode.run(params)


def test_category_seen_only_in_test_is_out_of_vocabulary(workdir: Path) -> None:
    write_log(workdir / "log.tsv")
    split = {"method": "time", "column": "T", "fractions": [0.8, 0.1, 0.1]}
    cols = {**COLUMNS, "T": {"kind": "timestamp", "time_format": "unix", "derive": ["hour"]}}
    rows = [f"0\t1\tc{i % 5}\tm1\t{1_600_000_000 + i * 60}" for i in range(1000)]
    rows[-1] = "1\t1\tonly_in_test\tnew_token\t1700000000"  # the latest row: lands in test
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    params = tiny_params(cols, workdir / "log.tsv", encode={"split": split, "min_count": 1})
    run_both(params)
    test = pl.read_parquet(split_path("test"))
    assert test["C1"][-1] == OOV and test["M"][-1].to_list() == [OOV]
    vocab = pl.read_parquet("data/encoded/vocab.parquet")
    assert "only_in_test" not in vocab["token"].to_list()  # fitted on train only
    train = pl.read_parquet(split_path("train"))
    assert (train["C1"] != OOV).all()  # min_count 1: every train value is in vocabulary


def test_codes_within_vocabulary_and_reserved_codes(workdir: Path) -> None:
    write_log(workdir / "log.tsv")
    run_both(tiny_params(COLUMNS, workdir / "log.tsv"))
    fmap = json.loads(FEATURE_MAP.read_text())
    sizes = {f["name"]: f["vocab_size"] for f in fmap["fields"]}
    assert [f["kind"] for f in fmap["fields"]] == ["numeric", "categorical", "multi_valued"]
    frames = [pl.read_parquet(split_path(s)) for s in ("train", "valid", "test")]
    assert sum(f.height for f in frames) == 2000 and [f.height for f in frames] == [1600, 200, 200]
    everything = pl.concat(frames)
    for name, size in sizes.items():
        col = everything[name].explode() if name == "M" else everything[name]
        assert col.min() >= 0 and col.max() < size
        assert everything.schema[name] in (pl.Int32, pl.List(pl.Int32))
    assert everything["M"].list.len().max() == 2  # truncated at max_length
    row5 = everything.filter(pl.col("I1") == MISSING)
    assert row5.height == 1 and row5["C1"][0] == MISSING and row5["M"][0].to_list() == []
    # criteo_log buckets: 0..2 stay themselves, larger values share buckets floor(ln(x)^2)
    i1 = sorted(encode.decode(everything["I1"].unique().to_list(), "I1"), key=lambda t: (t is None, t))
    assert "17" not in i1 and str(int(__import__("math").log(49) ** 2)) in i1


def test_same_seed_same_bytes_other_seed_other_split(workdir: Path) -> None:
    write_log(workdir / "log.tsv")

    def digest() -> dict[str, str]:
        return {s: hashlib.sha256(split_path(s).read_bytes()).hexdigest() for s in ("train", "valid", "test")}

    run_both(tiny_params(COLUMNS, workdir / "log.tsv", seed=1))
    first = digest()
    run_both(tiny_params(COLUMNS, workdir / "log.tsv", seed=1))
    assert digest() == first
    run_both(tiny_params(COLUMNS, workdir / "log.tsv", seed=2))
    assert digest()["test"] != first["test"]


def test_dictionary_chunks_give_the_same_dictionary_and_indices_as_encoding_the_strings(tmp_path: Path) -> None:
    """encode reads text columns as Parquet dictionary pages (one dictionary per row group) and unifies them;
    this must equal dictionary_encode of the plain strings, or the codes of a log would depend on the reader."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    values = [None if r < 0.05 else f"v{int(r * 1000) % 97}" for r in rng.random(5000)]
    values[:3] = ["late", None, "v1"]  # a value whose first row group sees no other copy
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"C": pa.array(values, pa.string())}), path, row_group_size=700)
    chunks = pq.read_table(path, read_dictionary=["C"]).column(0)
    assert chunks.num_chunks > 5 and pa.types.is_dictionary(chunks.type)
    dictionary, idx = encode.dictionary_indices(chunks)
    expected = pa.array(values, pa.string()).dictionary_encode()
    assert dictionary.to_pylist() == expected.dictionary.to_pylist()
    assert np.array_equal(idx, expected.indices.fill_null(-1).to_numpy())
    assert idx[1] == -1 and dictionary[idx[0]].as_py() == "late"


def test_a_time_split_on_a_text_column_is_named(workdir: Path) -> None:
    """A time split by a categorical column sorted the rows as text, without a word."""
    write_log(workdir / "log.tsv")
    params = tiny_params(COLUMNS, workdir / "log.tsv",
                         encode={"split": {"method": "time", "column": "C1", "fractions": [0.8, 0.1, 0.1]}})
    ingest.run(params)
    with pytest.raises(StageError, match=r"encode.split.column 'C1' is String .*such columns: \['I1'\]"):
        encode.run(params)


def test_constant_and_empty_fields_are_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A column with one value everywhere, or none, passed every stage without a word."""
    columns = {**COLUMNS, "K": "categorical", "E": "categorical", "R": "categorical"}
    rows = [f"{i % 3 == 0:d}\t{i % 50}\tc{i % 7}\tm1\tus\t\tr{i}" for i in range(600)]  # R: every value once
    rows[3] = "0\t1\tc1\tm1\tus\t\t"
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    params = tiny_params(columns, workdir / "log.tsv")
    ingest.run(params)
    metrics = encode.run(params)
    out = capsys.readouterr().out
    assert metrics["uninformative_fields"] == ["E", "K", "R"]
    assert "field 'K' has the one value 'us' in every train row" in out
    assert "field 'E' has no value seen at least 2 times in train" in out and "field 'R' has no value" in out
    assert "field 'C1'" not in out and "field 'M'" not in out

    rows[3] = "0\t1\tc1\tm1\tca\t\t"  # one other value: K now says something (if little)
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    ingest.run(params)
    assert encode.run(params)["uninformative_fields"] == ["E", "R"]


def test_a_stage_run_alone_refuses_the_outputs_of_another_dataset(workdir: Path) -> None:
    """`python -m tasks.<stage>` after a change of `dataset` reads what the last run left: it must say so, and an
    ingest that fails leaves nothing of the earlier dataset behind."""
    from tasks import validate
    from tasks.common import METRICS, REJECTED, ROWS
    from tasks.config import parse_params
    from tasks.training import load_encoded

    write_log(workdir / "log.tsv")
    run_both(tiny_params(COLUMNS, workdir / "log.tsv"))  # dataset "t"
    (workdir / "bad.tsv").write_text("x\ny\n")
    specs = {"t": {"paths": [str(workdir / "log.tsv")], "format": "tsv", "columns": COLUMNS},
             "u": {"paths": [str(workdir / "bad.tsv")], "format": "tsv", "columns": COLUMNS}}
    other = parse_params({"dataset": "u", "datasets": specs})
    stale = "made from dataset 't', but params.yaml has dataset 'u'"
    with pytest.raises(StageError, match=f"rows.parquet was {stale}"):
        encode.run(other)
    with pytest.raises(StageError, match=f"ingest.json was {stale}"):
        validate.run(other)
    with pytest.raises(StageError, match=f"feature_map.json was {stale}"):
        load_encoded("u")
    assert load_encoded("t")[0]  # its own dataset loads

    # Gates another dataset's search wrote: a `git checkout gates/` brings back the committed synthetic ones
    from tasks import evaluate, retrain, search_embed
    from tasks.common import GATES, write_json
    mine = tiny_params(COLUMNS, workdir / "log.tsv")
    with pytest.raises(StageError, match="interaction.json not found: run the search_interaction stage first"):
        retrain.run(mine)
    write_json(GATES / "interaction.json", {"dataset": "synthetic"})
    for stage in (search_embed, retrain, evaluate):
        with pytest.raises(StageError, match="interaction.json was made from dataset 'synthetic', but params.yaml "
                                             "has dataset 't'"):
            stage.run(mine)

    with pytest.raises(StageError, match=f"all 2 lines rejected.*every line is in {REJECTED}"):
        ingest.run(other)
    assert not ROWS.exists() and not (METRICS / "ingest.json").exists()
    assert pl.read_parquet(REJECTED)["raw"].to_list() == ["x", "y"]
    with pytest.raises(StageError, match="rows.parquet not found"):
        encode.run(other)


def test_a_constant_number_under_quantile_bucketing_is_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Value 7 on every line gave quantile boundaries [7.0]: two codes, one holding every train row and one none,
    and no warning (the default bucketing warned)."""
    columns = {**COLUMNS, "Q": {"kind": "numeric", "bucketing": "quantile", "buckets": 4},
               "Z": {"kind": "numeric", "bucketing": "quantile"}}
    rows = [f"{i % 3 == 0:d}\t{i % 50}\tc{i % 7}\tm1\t7\t" for i in range(600)]  # Z: empty everywhere
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    params = tiny_params(columns, workdir / "log.tsv")
    ingest.run(params)
    metrics = encode.run(params)
    assert metrics["uninformative_fields"] == ["Q", "Z"]
    out = capsys.readouterr().out
    assert "field 'Q' has one value in every train row" in out and "field 'Z' is missing in every train row" in out
    fields = {f["name"]: f for f in json.loads(FEATURE_MAP.read_text())["fields"]}
    assert fields["Q"]["boundaries"] == [] and fields["Q"]["vocab_size"] == 4  # one bucket, no empty one
    vocab = pl.read_parquet("data/encoded/vocab.parquet").filter(pl.col("field") == "Q")
    assert vocab["count"].to_list() == [480]


def test_quantile_boundaries_leave_no_bucket_without_train_rows() -> None:
    import numpy as np

    def counts(train: np.ndarray, buckets: int) -> list[int]:
        cuts = encode.quantile_cuts(train, buckets)
        return np.bincount(encode.bucket_codes(train, cuts) - encode.FIRST_CODE, minlength=len(cuts) + 1).tolist()

    assert counts(np.full(100, 7.0), 4) == [100]
    assert counts(np.r_[np.full(60, 7.0), np.full(40, 3.0)], 2) == [40, 60]  # the mass at the maximum: its own bucket
    assert counts(np.r_[np.zeros(90), np.ones(10)], 10) == [90, 10]  # an interpolated boundary with nothing below
    assert counts(np.arange(100.0), 4) == [25, 25, 25, 25]  # spread values: the quantiles as they were
    assert encode.quantile_cuts(np.array([]), 4) == []


def test_identity_bucketing_names_truncated_and_out_of_range_numbers(workdir: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """identity cast floats to integers without a word: half of a price's rows became token 0, and values beyond
    Int64 became missing uncounted."""
    columns = {**COLUMNS, "P": "numeric", "N": "numeric"}  # bare numeric: identity
    rows = [f"{i % 3 == 0:d}\t{i % 50}\tc{i % 7}\tm1\t{0.25 + i % 4}\t{i % 9}" for i in range(800)]
    for k, big in enumerate(["9.3e18", "1e19", "1e300", "-1e20"]):
        rows[10 + k] = rows[10 + k].rsplit("\t", 1)[0] + f"\t{big}"
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    params = tiny_params(columns, workdir / "log.tsv")
    ingest.run(params)
    warnings = encode.run(params)["warnings"]
    assert warnings == [
        "encode: warning: field 'P' (bucketing: identity) has 800 non-integer values (100.0% of its 800 values): "
        "identity reads integers and truncates the rest toward zero (0.2 and 0.9 both become token 0). For a "
        "continuous number use `bucketing: quantile` (with `buckets: n`)",
        "encode: warning: field 'N' (bucketing: identity) has 4 values beyond the 64-bit integer range (largest "
        "magnitude 1e+300), which cannot become integer tokens: they were coded as missing. Use "
        "`bucketing: quantile`"]
    out = capsys.readouterr().out
    assert all(w in out for w in warnings)
    assert json.loads(Path("metrics/encode.json").read_text())["warnings"] == warnings
    from tasks.summary import render
    assert all(f"  {w}" in render().splitlines() for w in warnings)

    rows = [f"{i % 3 == 0:d}\t{i % 50}\tc{i % 7}\tm1\t{i % 4}\t-3.0" for i in range(800)]  # integers written as floats
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    ingest.run(params)
    assert "warnings" not in encode.run(params)  # nothing to say: no key, so a clean log's metrics are unchanged


def test_a_time_split_names_the_rows_without_a_time(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows with an empty timestamp sorted first and went to train without a word."""
    split = {"method": "time", "column": "T", "fractions": [0.8, 0.1, 0.1]}
    cols = {**COLUMNS, "T": {"kind": "timestamp", "time_format": "unix", "derive": ["hour"]}}
    rows = [f"{i % 2}\t1\tc{i % 5}\tm1\t{'' if i % 10 == 3 else 1_600_000_000 + i * 60}" for i in range(1000)]
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")
    params = tiny_params(cols, workdir / "log.tsv", encode={"split": split})
    ingest.run(params)
    metrics = encode.run(params)
    line = ("encode: warning: 100 of 1,000 rows (10.0%) have no 'T' (encode.split.column): a time split cannot place "
            "them, so they are all in train, none in valid or test")
    assert metrics["warnings"] == [line] and line in capsys.readouterr().out
    for name in ("valid", "test"):
        assert (pl.read_parquet(split_path(name))["T_hour"] != MISSING).all()

    rows = [f"{i % 2}\t1\tc{i % 5}\tm1\t{'' if i % 10 else 1_600_000_000 + i * 60}" for i in range(1000)]
    (workdir / "log.tsv").write_text("\n".join(rows) + "\n")  # 900 without a time: more than train's 800
    ingest.run(params)
    with pytest.raises(StageError, match=r"encode.split.column 'T' is missing in 900 of 1,000 rows .*800 rows of "
                                         r"train.*encode.split.method: random"):
        encode.run(params)
