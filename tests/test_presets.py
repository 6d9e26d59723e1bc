"""Every preset reads its real sample from ../shared/data with the documented row counts and fields."""

from pathlib import Path

import polars as pl
import pytest

from tasks import encode, ingest
from tasks.common import LABEL, ROWS
from tests.conftest import SHARED_DATA, needs_shared, project_params

pytestmark = needs_shared


def ingest_preset(name: str) -> tuple[dict, pl.DataFrame]:
    metrics = ingest.run(project_params(name))
    return metrics, pl.read_parquet(ROWS)


def test_criteo(workdir: Path) -> None:
    m, rows = ingest_preset("criteo")
    assert (m["rows_in"], m["rows_ok"], m["rows_rejected"]) == (8000, 8000, 0)
    assert rows.columns == [LABEL] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert rows.schema["I1"] == pl.Float64 and rows.schema["C1"] == pl.String
    assert rows[LABEL].sum() == 1549 + 93 + 86  # positives of train + dev + test (SOURCE.md)
    assert rows["I2"].min() < 0  # negative integers are kept (Criteo I2 has -1, -2)


def test_avazu_with_and_without_header(workdir: Path) -> None:
    m, rows = ingest_preset("avazu")
    assert (m["rows_in"], m["header_lines"], m["rows_ok"]) == (100, 1, 100)
    assert rows[LABEL].sum() == 20 and "id" not in rows.columns
    assert rows.schema["hour"] == pl.Datetime("us") and rows["hour"][0].isoformat() == "2014-10-21T00:00:00"
    headless = workdir / "avazu_noheader.csv"  # the same file without its header line: auto-detected
    headless.write_text("".join((SHARED_DATA / "avazu/deepctr_avazu_sample.csv").read_text().splitlines(True)[1:]))
    params = project_params("avazu")
    spec = params.datasets["avazu"].model_copy(update={"paths": [str(headless)]})
    m2 = ingest.run(params.model_copy(update={"datasets": {"avazu": spec}}))
    assert (m2["rows_ok"], m2["header_lines"]) == (100, 0)
    assert pl.read_parquet(ROWS).equals(rows)
    encode.run(params)
    fields = [f.name for f in encode.plan_fields(spec)]
    assert fields[:3] == ["hour_hour", "hour_weekday", "hour_weekend"] and len(fields) == 24


def test_frappe_ctr_set_rebuilt_from_raw_log(workdir: Path) -> None:
    m, rows = ingest_preset("frappe")
    assert m["rows_ok"] == 96_203 and m["rows_out"] == 288_609 == 3 * 96_203
    assert rows.columns == [LABEL, "user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                            "weather", "country", "city"]  # 10 fields, cnt dropped
    assert rows[LABEL].sum() == 96_203
    used = rows.filter(pl.col(LABEL) == 1).select("user", "item").unique()
    negatives = rows.filter(pl.col(LABEL) == 0)
    assert negatives.join(used, on=["user", "item"], how="semi").height == 0  # never an item the user used
    # cost is an attribute of the app: a sampled item carries its own cost
    item_cost = rows.filter(pl.col(LABEL) == 1).select("item", "cost").unique()
    assert negatives.join(item_cost, on=["item", "cost"], how="anti").height == 0
    again = pl.read_parquet(ROWS)
    ingest.run(project_params("frappe"))
    assert pl.read_parquet(ROWS).equals(again)  # seeded sampling


def test_frappe_libfm(workdir: Path) -> None:
    m, rows = ingest_preset("frappe_libfm")
    assert m["rows_ok"] == 57_722 + 28_860 and m["rows_rejected"] == 0
    assert rows[LABEL].sum() == 19_063 + 9_536  # label 1 -> 1, label -1 -> 0
    assert len(rows.columns) == 11 and rows["user"].str.contains(":").sum() == 0


def test_movielens_100k_with_multi_hot_genres(workdir: Path) -> None:
    m, rows = ingest_preset("movielens_100k")
    assert m["rows_ok"] == 100_000 and m["joins"][str(SHARED_DATA / "movielens/ml-100k/u.user")]["unmatched_rows"] == 0
    assert rows[LABEL].mean() == pytest.approx(0.5537, abs=1e-4)  # rating >= 4 share (SOURCE.md)
    assert rows.schema["genres"] == pl.List(pl.String)
    assert rows["genres"].list.len().min() >= 1 and rows["genres"].list.len().max() <= 6
    assert rows["zip"].str.len_chars().max() == 2

    encode.run(project_params("movielens_100k"))
    fmap = {f["name"]: f for f in pl.read_json("data/encoded/feature_map.json")["fields"][0]}
    assert fmap["genres"]["kind"] == "multi_valued" and fmap["genres"]["vocab_size"] == 3 + 19
    assert fmap["age"]["kind"] == "numeric" and fmap["age"]["vocab_size"] <= 3 + 8
    # round trip: encoded genre codes decode to the genre names u.item flags for that movie
    item = pl.read_csv(SHARED_DATA / "movielens/ml-100k/u.item", separator="|", has_header=False,
                       encoding="latin1", quote_char=None)
    names = [line.split("|")[0] for line in (SHARED_DATA / "movielens/ml-100k/u.genre").read_text().split("\n") if line]
    truth = {str(r[0]): sorted(n for n, flag in zip(names, r[5:], strict=True) if flag == 1) for r in item.iter_rows()}
    test = pl.read_parquet("data/encoded/test.parquet")
    item_codes = test["item"].to_list()
    item_names = encode.decode(item_codes, "item")
    checked = 0
    for item_id, codes in zip(item_names, test["genres"].to_list(), strict=True):
        if item_id is None:
            continue  # an item unseen in train: its id is out-of-vocabulary, its genres are still known
        assert sorted(encode.decode(codes, "genres")) == truth[item_id]
        checked += 1
    assert checked > 9_000
