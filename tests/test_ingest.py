"""Bad input: every kind of unusable line is kept aside with its reason; bad files stop with a clear message."""

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from tasks import ingest
from tasks.common import REJECTED, ROWS, StageError
from tasks.config import ConfigError
from tests.conftest import tiny_params

COLUMNS = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "I1": "numeric",
           "C1": "categorical", "T": {"kind": "timestamp", "time_format": "%y%m%d%H"},
           "M": {"kind": "multi_valued", "separator": "|"}}


def test_each_bad_line_gets_its_reason(workdir: Path) -> None:
    good = "1\t3\ta\t14102100\tx|y"
    lines = [
        good.encode(),                                # 1 ok
        b"0\t\t\t14102101\t",                          # 2 ok: empty fields are missing values
        b"1\t3\ta\t14102100",                          # 3 wrong column count (4 of 5)
        b"1\tthree\ta\t14102100\tx",                   # 4 non-numeric I1
        b"7\t3\ta\t14102100\tx",                       # 5 label outside mapping
        b"1\t3\t\xff\xfeb\t14102100\tx",               # 6 undecodable bytes
        b"",                                           # 7 empty line
        b"1\t3\ta\t2014-10-21\tx",                     # 8 unparseable timestamp
        b"0\t4.5\tb\t14102102\tz\r",                   # 9 ok: CRLF line ending
    ]
    path = workdir / "log.tsv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    m = ingest.run(tiny_params(COLUMNS, path))

    assert m["rows_in"] == 9 == m["rows_ok"] + m["rows_rejected"]
    assert m["rows_ok"] == 3
    rejected = pl.read_parquet(REJECTED).sort("line")
    assert dict(zip(rejected["line"], rejected["reason"], strict=True)) == {
        3: "wrong column count", 4: "non-numeric value in I1", 5: "label outside mapping",
        6: "undecodable bytes", 7: "empty line", 8: "unparseable timestamp in T"}
    assert m["rejected_by_reason"]["wrong column count"] == 1
    assert rejected.filter(pl.col("line") == 3)["detail"][0] == "4 fields, expected 5"
    assert rejected.filter(pl.col("line") == 6)["raw"][0] == "1\t3\t\\xff\\xfeb\t14102100\tx"  # bytes kept, escaped
    assert "set the dataset's `encoding: latin1`" in rejected.filter(pl.col("line") == 6)["detail"][0]
    assert rejected["file"].unique().to_list() == [str(path)]
    rows = pl.read_parquet(ROWS)
    assert rows["label"].to_list() == [1, 0, 0]
    assert rows["I1"].to_list() == [3.0, None, 4.5] and rows["C1"].to_list() == ["a", None, "b"]
    assert rows["M"].to_list() == [["x", "y"], [], ["z"]]
    assert rows["T"].dt.hour().to_list() == [0, 1, 2]


@pytest.mark.parametrize("bad_number", [False, True])
def test_fast_and_general_paths_agree(workdir: Path, bad_number: bool) -> None:
    """The fast path (numbers parsed by the CSV reader; CRLF line ends read as LF) and the general one (Latin-1
    forces it) give the same rows and the same rejected lines, with the raw text exact; a block holding a value
    that is not a number falls back to text and names that line."""
    lines = ["1\t3\ta\t14102100\tx", "0\t  5\tb\t14102101\ty", "1\t5 \tc\t14102102\t", "0\t \td\t14102103\tz",
             "9\t1.5\te\t14102104\tx", "1\t2e3\tf\t14102105\tx|y"]
    if bad_number:
        lines.append("0\t1,5\tg\t14102106\tx")
    results = []
    for eol, encoding in (("\n", "utf8"), ("\r\n", "utf8"), ("\n", "latin1")):
        path = workdir / f"log{len(eol)}{encoding}.tsv"
        path.write_text(eol.join(lines) + eol)
        m = ingest.run(tiny_params(COLUMNS, path, spec={"encoding": encoding}))
        rejected = pl.read_parquet(REJECTED).drop("file")
        results.append((m["rows_ok"], pl.read_parquet(ROWS), rejected))
        manifest = json.loads((workdir / "data/interim/manifest.json").read_text())
        assert manifest["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    (ok_fast, rows_fast, bad_fast), (ok_crlf, rows_crlf, bad_crlf), (ok_general, rows_general, bad_general) = results
    assert ok_fast == ok_crlf == ok_general == 5
    assert rows_fast.equals(rows_general) and rows_crlf.equals(rows_general)
    assert rows_fast["I1"].to_list() == [3.0, 5.0, 5.0, None, 2000.0]  # spaces around a number; blank = missing
    assert bad_fast.equals(bad_general) and bad_crlf.equals(bad_general)
    expected = [(5, "label outside mapping", "9\t1.5\te\t14102104\tx")]
    if bad_number:
        expected.append((7, "non-numeric value in I1", "0\t1,5\tg\t14102106\tx"))
    assert list(zip(bad_fast["line"], bad_fast["reason"], bad_fast["raw"], strict=True)) == expected


def test_quoted_csv_fields_read_as_spreadsheets_write_them(workdir: Path) -> None:
    """csv honours double quotes (RFC 4180) in the fast path and the general one alike: a separator inside quotes,
    a doubled quote, a quoted number or list; a quote that does not close on its line is kept aside with its
    reason. Before, both paths split at every comma: the first line below was "6 fields, expected 5"."""
    lines = ['"1",3,"Portland, OR",14102100,"x|y"',        # 1 ok: every kind of field quoted
             '0,,"New ""York""",14102101,',                  # 2 ok: a doubled quote is one quote
             '1,"4.5",Boston,14102102,z',                    # 3 ok: a quoted number
             '1,3,"Austin, TX,14102103,x',                   # 4 a quote that never closes
             '1,3,Austin, TX,14102104,x',                    # 5 an unquoted comma: 6 fields
             '0,"",,14102105,""']                            # 6 ok: empty quoted fields are missing
    header = '"label",I1,"C1",T,M'
    results = []
    for encoding in ("utf8", "latin1"):  # the fast path, then the general one
        path = workdir / f"q-{encoding}.csv"
        path.write_text("\n".join([header, *lines]) + "\n")
        m = ingest.run(tiny_params(COLUMNS, path, format="csv", spec={"header": True, "encoding": encoding}))
        assert m["rows_ok"] == 4
        results.append((pl.read_parquet(ROWS), pl.read_parquet(REJECTED).drop("file")))
    (rows, rejected), (rows_general, rejected_general) = results
    assert rows.equals(rows_general) and rejected.equals(rejected_general)
    assert rows["C1"].to_list() == ["Portland, OR", 'New "York"', "Boston", None]
    assert rows["I1"].to_list() == [3.0, None, 4.5, None] and rows["label"].to_list() == [1, 0, 1, 0]
    assert rows["M"].to_list() == [["x", "y"], [], ["z"], []]
    assert list(zip(rejected["line"], rejected["reason"], rejected["raw"], strict=True)) == [
        (5, "unbalanced quotes", lines[3]), (6, "wrong column count", lines[4])]  # line 1 is the header

    # A quote inside a field is text (as to the csv module): `ab"c,d"e` is two fields, the line has 6. The fast
    # path's count would have taken that comma for quoted: its block goes to the general path instead.
    (workdir / "mid.csv").write_text('1,3,ab"c,d"e,14102100,x\n1,3,"ok",14102100,x\n')
    ingest.run(tiny_params(COLUMNS, workdir / "mid.csv", format="csv"))
    rejected = pl.read_parquet(REJECTED)
    assert rejected.select("line", "reason", "detail").rows() == [(1, "wrong column count", "6 fields, expected 5")]
    assert pl.read_parquet(ROWS)["C1"].to_list() == ["ok"]

    (workdir / "q.tsv").write_text('1\t3\t"quoted"\t14102100\tx\n')  # tsv: quotes are text unless asked
    ingest.run(tiny_params(COLUMNS, workdir / "q.tsv"))
    assert pl.read_parquet(ROWS)["C1"].to_list() == ['"quoted"']
    ingest.run(tiny_params(COLUMNS, workdir / "q.tsv", spec={"quoting": True}))
    assert pl.read_parquet(ROWS)["C1"].to_list() == ["quoted"]


def test_unix_milliseconds_read_as_seconds_are_kept_aside_with_the_fix(workdir: Path) -> None:
    """A JavaScript-style millisecond timestamp parses as seconds too, in the year 55,840: it used to pass silently
    into the hour and weekday fields. Now its line is kept aside, and a log of them stops with the key to set."""
    def spec(time_format: str) -> dict:
        return {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "C1": "categorical",
                "ts": {"kind": "timestamp", "time_format": time_format, "derive": ["hour"]}}
    path = workdir / "ms.tsv"
    path.write_text("1\ta\t1700000000123\n0\tb\t1700003600456\n")
    with pytest.raises(StageError, match=r"line 1 of .*ms\.tsv: timestamp out of range in ts: ts = '1700000000123' "
                                         r"is after the year 2200 as unix seconds: milliseconds\? "
                                         r"\(time_format: unix_ms\)"):
        ingest.run(tiny_params(spec("unix"), path))
    ingest.run(tiny_params(spec("unix_ms"), path))
    assert pl.read_parquet(ROWS)["ts"].dt.hour().to_list() == [22, 23]  # 2023-11-14 22:13:20.123 UTC
    path.write_text("1\ta\t1700000000\n0\tb\t1700003600456\n")  # one of each: each reading keeps one line
    assert ingest.run(tiny_params(spec("unix"), path))["rejected_by_reason"] == {"timestamp out of range in ts": 1}
    assert pl.read_parquet(REJECTED)["line"].to_list() == [2]
    assert ingest.run(tiny_params(spec("unix_ms"), path))["rejected_by_reason"] == {"timestamp out of range in ts": 1}
    assert pl.read_parquet(REJECTED)["line"].to_list() == [1]


def test_nan_is_missing_and_an_infinity_is_kept_aside(workdir: Path) -> None:
    """`nan` (numpy's missing number) becomes null; `inf`, `-inf` and a number too large for a float are no
    usable value and their lines are rejected with the column named, on the fast path and the general one."""
    lines = ["1\t3\ta\t14102100\tx", "0\tnan\tb\t14102101\ty", "1\tinf\tc\t14102102\tx",
             "0\t-Infinity\td\t14102103\tz", "1\t1e400\te\t14102104\tx", "0\tNaN\tf\t14102105\tx"]
    for eol in ("\n", "\r\n"):  # CR line ends take the general path
        path = workdir / "log.tsv"
        path.write_text(eol.join(lines) + eol)
        m = ingest.run(tiny_params(COLUMNS, path))
        assert m["rows_ok"] == 3 and m["rejected_by_reason"] == {"infinite value in I1": 3}
        assert pl.read_parquet(ROWS)["I1"].to_list() == [3.0, None, None]
        rejected = pl.read_parquet(REJECTED)
        assert rejected["line"].to_list() == [3, 4, 5]
        assert rejected["raw"].to_list() == lines[2:5]
        assert rejected["detail"][0] == "I1 = 'inf'"


def test_a_short_line_and_a_long_one_do_not_cancel_out(workdir: Path) -> None:
    """The fast path's shape check counts separators per block: a line one field short and another one
    field long leave the total right, and both must still be set aside."""
    lines = ["1\t3\ta\t14102100\tx", "0\t4\tb\t14102101", "1\t5\tc\t14102102\tx\textra", "0\t6\td\t14102103\tz"]
    path = workdir / "log.tsv"
    path.write_text("\n".join(lines) + "\n")
    m = ingest.run(tiny_params(COLUMNS, path))
    assert sum(line.count("\t") for line in lines) == len(lines) * (len(COLUMNS) - 1)  # the total is right
    assert m["rows_in"] == 4 and m["rows_ok"] == 2
    rejected = pl.read_parquet(REJECTED)
    assert rejected["line"].to_list() == [2, 3]
    assert rejected["reason"].to_list() == ["wrong column count", "wrong column count"]
    assert rejected["raw"].to_list() == lines[1:3]
    assert pl.read_parquet(ROWS)["I1"].to_list() == [3.0, 6.0]


def test_count_byte_equals_bytes_count_across_slice_boundaries() -> None:
    """The fast path's shape check rests on exact separator and newline counts."""
    import numpy as np

    rng = np.random.default_rng(0)
    for size in (0, 1, ingest._COUNT_SLICE - 1, ingest._COUNT_SLICE, 3 * ingest._COUNT_SLICE + 17):
        block = rng.choice(np.frombuffer(b"a\t\n", np.uint8), size).tobytes()
        assert ingest.count_byte(block, 9) == block.count(b"\t")
        assert ingest.count_byte(block, 10) == block.count(b"\n")


def test_line_numbers_are_exact_across_blocks(workdir: Path) -> None:
    path = workdir / "big.tsv"
    body = ["1\t1\ta\t14102100\tx"] * 80_000  # 1.6 MB: two blocks of 1 MB
    body[4321] = body[64321] = "1\tbad\ta\t14102100\tx"
    path.write_text("\n".join(body))  # no newline at the end: the last line still counts
    params = tiny_params(COLUMNS, path)
    m = ingest.run(params.model_copy(update={"ingest": params.ingest.model_copy(update={"block_mb": 1})}))
    assert m["rows_in"] == 80_000 and m["rows_ok"] == 79_998
    assert pl.read_parquet(REJECTED)["line"].to_list() == [4322, 64322]
    manifest = json.loads((workdir / "data/interim/manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # hashed block by block


def test_header_mismatch_stops_with_file_and_column(workdir: Path) -> None:
    path = workdir / "h.csv"
    path.write_text("label,I1,C_one,T,M\n1,2,a,14102100,x\n")
    with pytest.raises(StageError) as err:
        ingest.run(tiny_params(COLUMNS, path, format="csv", spec={"header": True}))
    assert str(path) in str(err.value) and "column 3" in str(err.value) and "'C1'" in str(err.value)


@pytest.mark.parametrize("header", [True, "auto", False])
def test_an_excel_export_with_a_byte_order_mark_and_crlf_reads_as_the_plain_file(workdir: Path, header) -> None:
    """Excel's "CSV UTF-8" starts with a UTF-8 byte-order mark, which stuck to the first column's name (a header
    mismatch) or value; its "Unicode text" is UTF-16, which stops with what to do."""
    lines = ["label,I1,C1,T,M", "1,2,a,14102100,x|y", "0,3,b,14102101,", "1,,c,14102102,z"]
    if header is False:
        lines = lines[1:]
    text = "\n".join(lines) + "\n"
    rows = {}
    for name, data in {"plain": text.encode(), "excel": b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()}.items():
        (workdir / f"{name}.csv").write_bytes(data)
        metrics = ingest.run(tiny_params(COLUMNS, workdir / f"{name}.csv", format="csv", spec={"header": header}))
        assert metrics["rows_ok"] == 3, name
        rows[name] = pl.read_parquet(ROWS)
    assert rows["excel"].equals(rows["plain"])
    (workdir / "unicode.txt").write_bytes(text.encode("utf-16"))
    with pytest.raises(StageError, match=r"unicode\.txt: the file is UTF-16 .*iconv -f UTF-16 -t UTF-8"):
        ingest.run(tiny_params(COLUMNS, workdir / "unicode.txt", format="csv", spec={"header": header}))


def test_missing_and_empty_files_stop(workdir: Path) -> None:
    with pytest.raises(StageError, match=r"nope\.tsv: input file not found$"):
        ingest.run(tiny_params(COLUMNS, workdir / "nope.tsv"))
    with pytest.raises(StageError, match=r"clicks\.tsv: input file not found; the generate stage writes it"):
        ingest.run(tiny_params(COLUMNS, Path("data/raw/synthetic/clicks.tsv")))  # the synthetic log, not generated
    (workdir / "empty.tsv").write_bytes(b"")
    with pytest.raises(StageError, match=r"empty\.tsv: input file is empty"):
        ingest.run(tiny_params(COLUMNS, workdir / "empty.tsv"))


def test_all_lines_rejected_stops(workdir: Path) -> None:
    (workdir / "bad.tsv").write_text("x\ny\n")
    with pytest.raises(StageError, match="no usable rows.*all 2 lines rejected"):
        ingest.run(tiny_params(COLUMNS, workdir / "bad.tsv"))


def test_label_threshold_and_libfm(workdir: Path) -> None:
    path = workdir / "r.tsv"
    path.write_text("5\ta\n3\tb\n4\tc\nfive\td\nNaN\te\nnan\tf\ninf\tg\n-inf\th\n\ti\n 4.5 \tj\n2.5\tk\n")
    m = ingest.run(tiny_params({"rating": {"kind": "label", "threshold": 4}, "C1": "categorical"}, path))
    # NaN compares above every number in Polars: a NaN rating must not become a click
    assert pl.read_parquet(ROWS)["label"].to_list() == [1, 0, 1, 1, 0] and m["rows_rejected"] == 6
    assert m["rejected_by_reason"] == {"label outside mapping": 6}
    path = workdir / "f.libfm"
    path.write_text("1 3:1 10:1\n-1 4:1 11:1\n1 5:1\n1 6 12:1\n")
    m = ingest.run(tiny_params({"label": {"kind": "label", "positive": ["1"], "negative": ["-1"]},
                                "f0": "categorical", "f1": "categorical"}, path, format="libfm"))
    assert pl.read_parquet(ROWS).select("f0", "f1").rows() == [("3", "10"), ("4", "11")]
    assert m["rejected_by_reason"] == {"libfm token without ':'": 1, "wrong column count": 1}


def test_a_parquet_log_reads_as_its_text_would(workdir: Path) -> None:
    """`format: parquet`: the spec's columns by name (others ignored), typed by the same checks as text: native
    numbers, lists, booleans and zoned datetimes; a bad row is kept aside with its row number and the row as JSON."""
    from datetime import UTC, datetime

    path = workdir / "log.parquet"
    pl.DataFrame({
        "unused": [1, 2, 3, 4],
        "clicked": [True, False, True, None],
        "price": [1.5, float("nan"), float("inf"), 2.0],
        "site": ["a", None, "b", "c"],
        "ts": [datetime(2024, 3, 1, 14, 30, tzinfo=UTC)] * 4,
        "tags": [["x", "y"], [], ["z"], ["x"]],
    }).with_columns(pl.col("ts").dt.convert_time_zone("Europe/Berlin")).write_parquet(path)
    columns = {"clicked": {"kind": "label", "positive": ["true"], "negative": ["false"]}, "price": "numeric",
               "site": "categorical", "ts": {"kind": "timestamp", "time_format": "unix", "derive": ["hour"]},
               "tags": {"kind": "multi_valued", "separator": "|"}}
    m = ingest.run(tiny_params(columns, path, format="parquet"))
    assert m["rows_in"] == 4 and m["rows_ok"] == 2
    rows = pl.read_parquet(ROWS)
    assert rows["label"].to_list() == [1, 0] and rows["site"].to_list() == ["a", None]
    assert rows["price"].to_list() == [1.5, None]  # NaN is missing, as in text
    assert rows["ts"].dt.hour().to_list() == [14, 14]  # the instant, in UTC, as a unix-seconds log gives it
    assert rows["tags"].to_list() == [["x", "y"], []]
    rejected = pl.read_parquet(REJECTED).sort("line")
    assert rejected["line"].to_list() == [3, 4]
    assert rejected["reason"].to_list() == ["infinite value in price", "label outside mapping"]
    assert json.loads(rejected["raw"][0])["site"] == "b"

    with pytest.raises(StageError, match=r"log.parquet: the dataset spec's columns \['cost'\] are not in the file"):
        ingest.run(tiny_params({"clicked": columns["clicked"], "cost": "numeric"}, path, format="parquet"))


@pytest.mark.parametrize(("magic", "what"), [(b"PAR1", "a Parquet file.*format: parquet"),
                                             (b"BZh91AY&SY", "bzip2-compressed.*bunzip2 -k log.tsv"),
                                             (b"PK\x03\x04", "a zip archive")])
def test_a_binary_file_read_as_text_is_named(workdir: Path, magic: bytes, what: str) -> None:
    path = workdir / "log.tsv"
    path.write_bytes(magic + b"\x00\x01binary\n" * 3)
    with pytest.raises(StageError, match=f"log.tsv: the file is {what}"):
        ingest.run(tiny_params(COLUMNS, path))


def test_gzip_is_known_by_its_bytes_not_its_name(workdir: Path) -> None:
    import gzip

    path = workdir / "log.tsv"  # gzip without the .gz suffix, as some exporters name it
    path.write_bytes(gzip.compress(b"1\t3\ta\t14102100\tx\n0\t4\tb\t14102101\ty\n"))
    assert ingest.run(tiny_params(COLUMNS, path))["rows_ok"] == 2


def test_iso8601_and_fractional_unix_timestamps(workdir: Path) -> None:
    """`time_format: iso8601` reads the shapes exports mix in one column (`Z`, `+02:00`, `+0200`, a space for the
    `T`, fractions, a date alone) as UTC instants; `unix` keeps a fraction of a second (`time.time()`)."""
    stamps = ["2024-03-05T14:37:33Z", "2024-03-05T16:37:33+02:00", "2024-03-05 14:37:33", "2024-03-05T16:37:33+0200",
              "2024-03-05T14:37:33.250Z", "2024-03-05", "5 March 2024"]
    path = workdir / "iso.tsv"
    path.write_text("".join(f"1\t{s}\n" for s in stamps))
    cols = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]},
            "T": {"kind": "timestamp", "time_format": "iso8601"}}
    m = ingest.run(tiny_params(cols, path))
    got = pl.read_parquet(ROWS)["T"].dt.strftime("%Y-%m-%d %H:%M:%S%.3f").to_list()
    assert got == ["2024-03-05 14:37:33.000"] * 4 + ["2024-03-05 14:37:33.250", "2024-03-05 00:00:00.000"]
    assert m["rejected_by_reason"] == {"unparseable timestamp in T": 1}

    path.write_text("1\t1709649453.25\n1\t1.709649453e+09\n1\t 1709649453 \n1\tnan\n")
    m = ingest.run(tiny_params({**cols, "T": {"kind": "timestamp", "time_format": "unix"}}, path))
    got = pl.read_parquet(ROWS)["T"].dt.strftime("%H:%M:%S%.3f").to_list()
    assert got == ["14:37:33.250", "14:37:33.000", "14:37:33.000"]
    assert m["rejected_by_reason"] == {"unparseable timestamp in T": 1}


def test_a_file_with_only_a_header_is_named(workdir: Path) -> None:
    path = workdir / "head.csv"
    path.write_text("label,C1\n")
    with pytest.raises(StageError, match=r"no data lines in .*head.csv.*: only a header"):
        ingest.run(tiny_params({"label": COLUMNS["label"], "C1": "categorical"}, path, format="csv",
                               spec={"header": True}))


def test_a_directory_in_paths_is_named(workdir: Path) -> None:
    (workdir / "logs").mkdir()
    with pytest.raises(StageError, match=r"logs: a directory, not a log file"):
        ingest.run(tiny_params(COLUMNS, workdir / "logs"))


def test_missing_value_markers_are_missing_where_the_spec_lists_them(workdir: Path) -> None:
    """R writes `NA`, Hive `\\N`: without `missing_values` such a number is kept aside, with a detail that names
    the key; listed, the marker is missing in every kind of field (a token of a multi-valued field is dropped), on
    the fast path and the general one, and a label stays a label (a marker there is no label)."""
    lines = ["1\t3\ta\t14102100\tx|NA", "0\tNA\tNA\tNA\ty", "1\t\\N\t\\N\t14102102\t\\N", "0\t5\tb\t14102103\tz",
             "NA\t6\tc\t14102104\tx"]
    for eol in ("\n", "\r\n"):  # CR line ends take the general path
        path = workdir / "log.tsv"
        path.write_text(eol.join(lines) + eol)
        m = ingest.run(tiny_params(COLUMNS, path))
        assert m["rejected_by_reason"] == {"non-numeric value in I1": 2, "label outside mapping": 1}
        detail = pl.read_parquet(REJECTED).sort("line")["detail"].to_list()
        assert detail[0] == "I1 = 'NA' (a missing-value marker? list it in the dataset's `missing_values`)"
        assert detail[1] == "I1 = '\\N' (a missing-value marker? list it in the dataset's `missing_values`)"

        m = ingest.run(tiny_params(COLUMNS, path, spec={"missing_values": ["NA", "\\N"]}))
        assert m["rows_ok"] == 4 and m["rejected_by_reason"] == {"label outside mapping": 1}
        rows = pl.read_parquet(ROWS)
        assert rows["I1"].to_list() == [3.0, None, None, 5.0]
        assert rows["C1"].to_list() == ["a", None, None, "b"]
        assert rows["T"].is_null().to_list() == [False, True, False, False]
        assert rows["M"].to_list() == [["x"], ["y"], [], ["z"]]



def test_missing_value_markers_apply_to_side_tables_and_parquet(workdir: Path) -> None:
    """The dataset's markers hold for its joined tables and for a Parquet log's text columns too."""
    (workdir / "users.tsv").write_text("u1\t34\tNULL\nu2\tNULL\tstudent\n")
    (workdir / "log.tsv").write_text("1\tu1\n0\tu2\n")
    side = {"path": str(workdir / "users.tsv"), "key": "user",
            "columns": {"user": "categorical", "age": "numeric", "job": "categorical"}}
    columns = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "user": "categorical"}
    m = ingest.run(tiny_params(columns, workdir / "log.tsv", spec={"joins": [side], "missing_values": ["NULL"]}))
    assert m["rows_out"] == 2 and m["joins"][str(workdir / "users.tsv")]["rows_rejected"] == 0
    rows = pl.read_parquet(ROWS)
    assert rows["age"].to_list() == [34.0, None] and rows["job"].to_list() == [None, "student"]

    pl.DataFrame({"label": ["1", "0"], "site": ["NA", "a"], "price": ["2.5", " NA "]}).write_parquet("log.parquet")
    columns = {"label": columns["label"], "site": "categorical", "price": "numeric"}
    m = ingest.run(tiny_params(columns, workdir / "log.parquet", format="parquet", spec={"missing_values": ["NA"]}))
    assert m["rows_ok"] == 2
    assert pl.read_parquet(ROWS).select("site", "price").rows() == [(None, 2.5), ("a", None)]


def test_a_numeric_marker_is_missing_in_every_block(workdir: Path) -> None:
    """A marker that is a number (`-1`) matches a numeric column by value. It used to match the text only, which the
    CSV reader's fast path never sees: -1 was missing in a block that some `NA` sent to the text path, and -1.0 in a
    block without one. Now both blocks, Parquet's native numbers and `-1.0` read as missing."""
    columns = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "age": "numeric",
               "site": "categorical"}
    path = workdir / "log.csv"
    for na in ("1,NA,b\n", ""):  # with an `NA` the block takes the text path; without, the reader's numbers
        path.write_text("1,-1,a\n0,30,-1\n" + na + "0,-1.0,c\n1,31,-1\n")
        m = ingest.run(tiny_params(columns, path, format="csv", spec={"missing_values": ["-1", "NA"]}))
        assert m["rows_ok"] == 4 + bool(na)
        rows = pl.read_parquet(ROWS)
        assert rows["age"].to_list() == [None, 30.0, *[None] * bool(na), None, 31.0]
        assert rows["site"].to_list() == ["a", None, *["b"] * bool(na), "c", None]  # a category compares text

    pl.DataFrame({"label": ["1", "0"], "age": [-1.0, 40.0], "site": ["-1", "d"]}).write_parquet("log.parquet")
    ingest.run(tiny_params(columns, workdir / "log.parquet", format="parquet", spec={"missing_values": ["-1"]}))
    assert pl.read_parquet(ROWS).select("age", "site").rows() == [(None, None), (40.0, "d")]


def test_a_columns_own_missing_values_replace_the_datasets(workdir: Path) -> None:
    """`age: {missing_values: ['0']}`: an age of 0 is unknown, a count of 0 is a count, and `NA`, the dataset's
    marker, is no marker of `age` (its line is kept aside, pointing to the key)."""
    columns = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]},
               "age": {"kind": "numeric", "missing_values": ["0"]}, "clicks": "numeric", "site": "categorical",
               "tags": {"kind": "multi_valued", "separator": "|", "missing_values": ["none"]}}
    path = workdir / "log.tsv"
    path.write_text("1\t0\t0\tNA\tx|none\n0\t25\tNA\ta\tnone\n1\tNA\t3\tb\ty\n")
    m = ingest.run(tiny_params(columns, path, spec={"missing_values": ["NA"]}))
    assert m["rows_ok"] == 2 and m["rejected_by_reason"] == {"non-numeric value in age": 1}
    assert pl.read_parquet(ROWS).select("age", "clicks", "site", "tags").rows() == [
        (None, 0.0, None, ["x"]), (25.0, None, "a", [])]

    with pytest.raises(ConfigError, match=r"columns\.label\.missing_values: applies to numeric, categorical, "
                                          r"timestamp and multi_valued columns only; this column is label"):
        tiny_params({**columns, "label": {**columns["label"], "missing_values": ["NA"]}}, path)


def test_spaces_around_values_are_dropped_as_around_numbers(workdir: Path) -> None:
    """A hand-written csv (`1, a, x | y`) or a padded export: `a` and ` a ` are one category, a list's tokens
    lose their spaces, and a label or a flag reads the same; spaces inside a value stay."""
    columns = {"label": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "site": "categorical",
               "tags": {"kind": "multi_valued", "separator": "|"}, "n": "numeric",
               "f1": {"kind": "flag", "field": "flags"}, "f2": {"kind": "flag", "field": "flags"}}
    path = workdir / "log.csv"
    path.write_text("1, a, x | y, 2, 1, 0\n 0 ,a ,x|  ,  3 , 0 , 1\n1,New York, ,,1,1\n")
    m = ingest.run(tiny_params(columns, path, format="csv"))
    assert m["rows_ok"] == 3, m["rejected_by_reason"]
    rows = pl.read_parquet(ROWS)
    assert rows["label"].to_list() == [1, 0, 1]
    assert rows["site"].to_list() == ["a", "a", "New York"]
    assert rows["tags"].to_list() == [["x", "y"], ["x"], []]
    assert rows["n"].to_list() == [2.0, 3.0, None]
    assert rows["flags"].to_list() == [["f1"], ["f2"], ["f1", "f2"]]


def test_a_queued_experiment_reads_relative_inputs_from_the_project(workdir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run --queue` (tasks.compare) runs the stages in a copy of the project under .dvc/tmp/exps, where
    ../shared is not beside it. DVC names the project in DVC_ROOT: a relative input missing in the copy is read
    from there, and validate finds ingest's rejected lines under the same file name."""
    from tasks import validate

    (workdir / "shared").mkdir()
    (workdir / "shared/log.tsv").write_text("1\t3\ta\t14102100\tx\n7\t3\ta\t14102100\tx\n")
    project = workdir / "project"
    copy = project / ".dvc/tmp/exps/tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    params = tiny_params(COLUMNS, Path("../shared/log.tsv"))
    with pytest.raises(StageError, match="input file not found"):
        ingest.run(params)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert ingest.run(params)["rows_ok"] == 1
    rejected, _ = validate.rejected_asset(["../shared/log.tsv"], 2, 0.5)
    assert rejected.height == 1
