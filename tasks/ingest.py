"""ingest: raw click logs -> typed rows (data/interim/rows.parquet), bad lines kept aside with a reason.

Files are read in blocks of whole lines (``ingest.block_mb``), so memory stays flat on large logs. The common block
(UTF-8, LF or CRLF line ends, a one-byte separator) goes to Polars' CSV reader whole, after a shape check that costs
two byte counts (``parse_block_fast``); a block with quoted fields (csv) has its separators counted outside quotes,
vectorised too; other blocks are cut into lines with one vectorised newline search. Every check (column count,
numbers, label mapping, timestamps, bytes that are not UTF-8) is vectorised or a column expression, never a Python
loop over rows (but in the rare blocks the general path splits a line at a time: bad bytes, and quoted fields in
Latin-1 or with lone CRs). A line that fails any check goes to data/interim/rejected.parquet with its file, line
number, reason and raw text; metrics/ingest.json records ``rows_in == rows_ok + rows_rejected`` with the count per
reason.

Typed columns: label Int8 (0/1), categorical String, numeric Float64, multi_valued List(String),
timestamp Datetime, flag groups List(String). A missing value is null.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.common import (
    INTERIM,
    LABEL,
    MANIFEST,
    MARKER_HINT,
    METRICS,
    REJECTED,
    ROWS,
    StageError,
    input_path,
    progress_enabled,
    stage_main,
    write_json,
)
from tasks.config import ColumnSpec, DatasetSpec, JoinSpec, Params

# Line-shape reasons, shared by the general and the fast parse path.
EMPTY_LINE, WRONG_COLUMN_COUNT, UNBALANCED_QUOTES = "empty line", "wrong column count", "unbalanced quotes"

REJECTED_SCHEMA = {"file": pl.String, "line": pl.Int64, "reason": pl.String, "detail": pl.String,
                   "raw": pl.String}


def no_rejections() -> pl.DataFrame:
    """An empty table of rejected lines, before the file column is added."""
    return pl.DataFrame(schema=REJECTED_SCHEMA).drop("file")


# ----------------------------------------------------------------------------------------------- reading
_COUNT_SLICE = 1 << 18  # bytes compared at a time: the comparison's output stays in cache


def count_byte(block: bytes, value: int) -> int:
    """How many times the byte ``value`` occurs in ``block``: a vectorised compare over cache-sized
    slices into one reused mask, 4x faster than ``bytes.count`` on a 64 MB block (which is a plain loop
    for one byte) and 2x faster than one whole-block ``np.count_nonzero(arr == value)``."""
    arr = np.frombuffer(block, np.uint8)
    mask = np.empty(min(len(arr), _COUNT_SLICE), bool)
    total = 0
    for start in range(0, len(arr), _COUNT_SLICE):
        part = arr[start : start + _COUNT_SLICE]
        out = mask[: len(part)]
        np.equal(part, value, out=out)
        total += int(np.count_nonzero(out))
    return total


# What a file's first bytes say it is, where the reader cannot read it as text: (magic, what it is, what to do).
_NOT_TEXT = [
    (b"PAR1", "a Parquet file", "set the dataset's `format: parquet`"),
    (b"BZh", "bzip2-compressed", "decompress it (`bunzip2 -k FILE`) or recompress it with gzip, which ingest reads"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (`unxz -k FILE`) or recompress it with gzip, which ingest reads"),
    (b"(\xb5/\xfd", "zstd-compressed", "decompress it (`unzstd FILE`) or recompress it with gzip, which ingest reads"),
    (b"PK\x03\x04", "a zip archive", "unzip it and list the log inside it in `paths`"),
]
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Read as gzip by its first bytes, whatever its name says (`log.csv` may be gzip, `log.gz` may not)."""
    if not path.is_file():  # a directory, or nothing: read_table says which
        return False
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def check_readable_as_text(path: Path) -> None:
    """Stop on a file that is binary by its first bytes, saying what it is, instead of rejecting its "lines"."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, what, todo in _NOT_TEXT:
        if head.startswith(magic):
            raise StageError(f"{path}: the file is {what}, not a text log: {todo}".replace("FILE", path.name))


def read_parquet_file(path: Path, columns: dict[str, ColumnSpec], sep: str, block_rows: int,
                      missing: Sequence[str] = ()) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """A Parquet log as ``read_table`` yields a text log's blocks, ``block_rows`` rows at a time.

    The spec's columns are taken by name (others are ignored) and written as the text reader would see them, so
    every field is typed and checked by the same expressions: numbers as their text, a list as its items joined
    by the field's separator, a datetime in the column's ``time_format`` (time zones converted to UTC), booleans as
    ``true``/``false``. A row's "line" is its row number in the file; its raw text is the row as JSON.
    """
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise StageError(f"{path}: not a readable Parquet file ({err})") from err
    schema = parquet.schema_arrow
    absent = [name for name in columns if name not in schema.names]
    if absent:
        raise StageError(f"{path}: the dataset spec's columns {absent} are not in the file, which has "
                         f"{schema.names}")
    total, size, first = max(parquet.metadata.num_rows, 1), path.stat().st_size, 1
    for batch in parquet.iter_batches(batch_size=block_rows, columns=list(columns)):
        df = pl.DataFrame(pl.from_arrow(batch))
        as_text = []
        for name, spec in columns.items():
            dtype = df.schema[name]
            column = pl.col(name)
            if isinstance(dtype, pl.List | pl.Array):
                column = column.cast(pl.List(pl.String)).list.join(spec.separator or sep)
            elif isinstance(dtype, pl.Datetime) and spec.kind == "timestamp":
                if dtype.time_zone is not None:
                    column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
                if spec.time_format in ("unix", "unix_ms"):
                    column = column.dt.epoch("s" if spec.time_format == "unix" else "ms").cast(pl.String)
                elif spec.time_format == "iso8601":
                    column = column.dt.strftime("%Y-%m-%dT%H:%M:%S%.f")
                else:
                    column = column.dt.strftime(spec.time_format)
            elif dtype in (pl.Binary, pl.Object) or isinstance(dtype, pl.Struct):
                raise StageError(f"{path}: column {name!r} is {dtype}, which has no text form to read as "
                                 f"{spec.kind}")
            else:
                column = column.cast(pl.String)
            as_text.append(column.alias(name))
        df = df.select(*as_text).with_columns(_line=pl.int_range(first, first + pl.len(), dtype=pl.Int64))
        rows, rejected = type_fields(df, columns, [], pl.struct(list(columns)).struct.json_encode(), missing)
        rejected = rejected.with_columns(file=pl.lit(str(path))).select(list(REJECTED_SCHEMA))
        yield rows, rejected, {"lines": df.height, "header_lines": 0, "bytes": size * df.height // total}
        first += df.height


def iter_blocks(path: Path, block_bytes: int, digest: Any = None) -> Iterator[tuple[bytes, int, int]]:
    """Yield (bytes of whole lines, number of the block's first line, its number of lines); gzip is read
    transparently. Lines are counted once, here (a count is a full scan of the block).

    ``digest`` (a hashlib object), if given, is fed every byte as it is read, from a second thread (hashlib
    releases the GIL): the input's checksum costs no second read of the file and little wall time.
    """
    opener = gzip.open if is_gzip(path) else open
    first_line, hashing = 1, None
    with opener(path, "rb") as f, ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        while block := f.read(block_bytes):
            if not block.endswith(b"\n"):
                block += f.readline()  # finish the block's last line (one copy, and none at a block's end)
            if digest is not None:
                if hashing is not None:
                    hashing.result()  # in order: one update at a time
                hashing = pool.submit(digest.update, block)
            if not block.endswith(b"\n"):  # the file's last line has no newline: it still counts
                block += b"\n"
            lines = count_byte(block, 10)
            yield block, first_line, lines
            first_line += lines
        if hashing is not None:
            hashing.result()


def block_lines(block: bytes, encoding: str) -> pl.DataFrame:
    """Lines of a block as a String column plus an ``undecodable`` flag, trailing CR/LF stripped."""
    if encoding == "latin1":  # every byte is valid Latin-1: re-encode as UTF-8 and go on
        block = block.decode("latin1").encode("utf-8")
    try:
        block.decode("utf-8")
        undecodable = None
    except UnicodeDecodeError:
        undecodable = True
    if undecodable is None:
        # Zero-copy: Arrow offsets are the line starts found by one vectorised newline search.
        newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        offsets = np.empty(len(newlines) + 1, np.int64)
        offsets[0], offsets[1:] = 0, newlines + 1
        arr = pa.LargeStringArray.from_buffers(len(newlines), pa.py_buffer(offsets), pa.py_buffer(block))
        lines = pl.from_arrow(arr).alias("line")
        bad = pl.repeat(False, len(lines), eager=True)
    else:  # rare: only blocks that hold bad bytes take this slower path
        parts = block.split(b"\n")[:-1]
        text, flags = [], []
        for p in parts:
            try:
                text.append(p.decode("utf-8"))
                flags.append(False)
            except UnicodeDecodeError:
                text.append(p.decode("utf-8", "backslashreplace"))  # the raw bytes, visibly escaped
                flags.append(True)
        lines, bad = pl.Series("line", text, pl.String), pl.Series(flags)
    return pl.DataFrame({"line": lines.str.strip_chars_end("\r\n"), "undecodable": bad})


# ----------------------------------------------------------------------------------------------- parsing
_YEAR_2200_S = 7_258_118_400  # 2200-01-01 in unix seconds
_YEAR_1973_MS = 100_000_000_000  # 1973-03-03 in unix milliseconds


def _typed(name: str, spec: ColumnSpec, dtype: pl.DataType | None = None, missing: Sequence[str] = (),
           padded: bool = True) -> tuple[list[pl.Expr], list[tuple[pl.Expr, str, pl.Expr]]]:
    """Expressions turning raw column ``name`` (String, or ``dtype`` where the reader typed it) into its
    typed column(s), and its checks. Spaces around a value are dropped (`a, b` in a csv is `a` and `b`, as a
    number's are in the CSV reader's own parse) where the column is ``padded`` (holds a space: stripping a
    column costs 20-40 times its plain typing, about 0.5 s per 1M rows for 26 columns, and most logs have
    none); a value in ``missing`` is an empty field, and an empty field is missing.

    A check is (failing condition, reason, detail): the reason is a category that metrics count, the
    detail says what exactly was wrong on that line (with the raw value).
    """
    raw = pl.col(name)
    if spec.missing_values is not None:  # the column's own markers replace the dataset's
        missing = spec.missing_values
    if dtype == pl.Float64:  # a numeric column the CSV reader parsed already (the fast path)
        text = value = raw
    else:
        text = raw.str.strip_chars(" ") if padded else raw
        if missing and spec.kind in ("numeric", "categorical", "timestamp"):
            text = pl.when(text.is_in(list(missing))).then(pl.lit("")).otherwise(text)
        value = pl.when(text.str.len_bytes() > 0).then(text)  # empty field -> missing
    if spec.kind == "label":
        if spec.threshold is not None:
            # NaN compares above every number in Polars, so `NaN >= 4` would be a click: a rating that is NaN or
            # infinite has no label, and its line is kept aside.
            num = text.cast(pl.Float64, strict=False)
            bad = num.is_null() | num.is_nan() | num.is_infinite()
            out = pl.when(~bad).then(num >= spec.threshold).cast(pl.Int8)
        else:
            mapping = {v: 1 for v in spec.positive or []} | {v: 0 for v in spec.negative or []}
            out = text.replace_strict(mapping, default=None, return_dtype=pl.Int8)
            bad = out.is_null()
        return [out.alias(LABEL)], [(bad, "label outside mapping",
                                     pl.format("{} = '{}'", pl.lit(name), raw))]
    if spec.kind == "numeric":
        # `nan` is how numpy and many exporters write a missing number: it becomes null. An infinity (`inf`, or
        # a number too large for a float, such as 1e400) is no usable value: its line is kept aside.
        # A marker that is a number (`-1`, `999`) matches by value: the CSV reader's fast path and Parquet hand
        # over numbers, not the text, and a text match would have read -1 as missing in one block and as -1.0 in
        # the next, depending on whether another value there sent the block to the text path.
        infinite = (f"infinite value in {name}", pl.format("{} = '{}'", pl.lit(name), raw))
        checks = []
        if dtype == pl.Float64:  # parsed by the CSV reader already (the fast path): only infinities to check
            num = raw
        else:
            num = value.cast(pl.Float64, strict=False)
            checks.append((value.is_not_null() & num.is_null(), f"non-numeric value in {name}",
                           pl.concat_str(pl.format("{} = '{}'", pl.lit(name), raw), marker_hint(text))))
        absent, infinity = num.is_nan(), num.is_infinite()
        if numbers := numeric_markers(missing):  # (without one, the expressions are what they were before)
            marked = num.is_in(numbers)
            absent, infinity = absent | marked, infinity & ~marked
        return [pl.when(~absent).then(num).alias(name)], [*checks, (infinity, *infinite)]
    if spec.kind == "categorical":
        out = value.str.slice(0, spec.prefix) if spec.prefix else value
        return [out.alias(name)], []
    if spec.kind == "multi_valued":
        token = pl.element().str.strip_chars(" ") if padded else pl.element()
        kept = token.str.len_bytes() > 0
        if missing:
            kept &= ~token.is_in(list(missing))
        tokens = raw.str.split(spec.separator).list.eval(token.filter(kept))
        return [tokens.alias(name)], []
    if spec.kind == "timestamp":
        checks: list[tuple[pl.Expr, str, pl.Expr]] = []
        if spec.time_format in ("unix", "unix_ms"):
            # A fraction is kept (time.time() and pandas write `1709300000.25`, or `1.709649e+09`)
            number = value.cast(pl.Float64, strict=False)
            per_unit = 1e6 if spec.time_format == "unix" else 1e3
            ts = pl.from_epoch((number * per_unit).round(0).cast(pl.Int64, strict=False), time_unit="us")
            # Milliseconds read as seconds are dates after the year 50,000, and seconds read as milliseconds fall
            # in January 1970: both parse, so the mix-up would pass silently into the hour and weekday fields.
            if spec.time_format == "unix":
                wrong, hint = number >= _YEAR_2200_S, "after the year 2200 as unix seconds: milliseconds? " \
                                                      "(time_format: unix_ms)"
            else:
                wrong, hint = number < _YEAR_1973_MS, "before March 1973 as unix milliseconds: seconds? " \
                                                      "(time_format: unix)"
            checks.append((number.is_not_null() & wrong, f"timestamp out of range in {name}",
                           pl.format("{} = '{}' is {}", pl.lit(name), raw, pl.lit(hint))))
        elif spec.time_format == "iso8601":
            ts = iso8601(value)
        else:
            fmt, written = spec.time_format, value
            if "%H" in fmt and "%M" not in fmt:  # Polars wants minutes whenever hours are parsed
                fmt, written = fmt + "%M", value + "00"
            ts = written.str.strptime(pl.Datetime("us"), fmt, strict=False)
        ts = ts.cast(pl.Datetime("us"))
        return [ts.alias(name)], [(value.is_not_null() & ts.is_null(), f"unparseable timestamp in {name}",
                                   pl.concat_str(pl.format("{} = '{}' (format {})", pl.lit(name), raw,
                                                           pl.lit(spec.time_format)),
                                                 marker_hint(text))), *checks]
    if spec.kind == "flag":
        return [], [(~text.is_in(["0", "1"]), f"flag not 0/1 in {name}", pl.format("{} = '{}'", pl.lit(name), raw))]
    return [], []  # drop


# How exports write "no value" (R, SQL, Hive, pandas, Excel): a field holding one of these where a number or a time
# should be is most likely missing, and the rejected line's detail says where to declare it.
COMMON_MISSING_MARKERS = ["NA", "N/A", "n/a", "na", "NULL", "null", "Null", "None", "none", "\\N", "#N/A", "-", "?"]


def numeric_markers(missing: Sequence[str]) -> list[float]:
    """The markers that read as numbers (`-1`, `999`, `inf`), as the numbers a numeric column holds; NaN is missing
    anyway."""
    numbers = []
    for marker in missing:
        try:
            number = float(marker)
        except ValueError:
            continue
        if not math.isnan(number):
            numbers.append(number)
    return numbers


def marker_hint(text: pl.Expr) -> pl.Expr:
    """A detail's suffix where ``text`` is a common missing-value marker (empty otherwise)."""
    return pl.when(text.is_in(COMMON_MISSING_MARKERS)).then(pl.lit(MARKER_HINT)).otherwise(pl.lit(""))


def iso8601(text: pl.Expr) -> pl.Expr:
    """ISO 8601 date-times, mixed within a column as exports write them: `2024-03-05T14:37:33Z`, `+02:00` or
    `+0200` offsets, a space for the `T`, fractions of a second, minutes only, or a date alone. A value with an
    offset is the instant in UTC (so derived hours and weekdays are UTC's, as a unix timestamp's are); one without
    is taken as written. A strptime format cannot say this: `%z` refuses `Z`, and one format fits one shape."""
    text = (text.str.strip_chars(" ").str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T")
            .str.replace(r"[Zz]$", "+00:00").str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}"))
    zoned = [text.str.strptime(pl.Datetime("us", "UTC"), fmt, strict=False).dt.replace_time_zone(None)
             for fmt in ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z")]
    naive = [text.str.strptime(pl.Datetime("us"), fmt, strict=False)
             for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")]
    return pl.coalesce(zoned + naive)


def line_checks(n: int, quote: str | None = None) -> list[tuple[pl.Expr, str, pl.Expr]]:
    """The general path's checks of a line's shape (the columns ``undecodable``, ``line``, ``_n_fields`` and, with
    ``quote``, ``_unbalanced``), in the order their reasons win."""
    checks: list[tuple[pl.Expr, str, pl.Expr]] = [
        (pl.col("undecodable"), "undecodable bytes",
         pl.lit("line is not valid UTF-8 (a Latin-1 or Windows export? set the dataset's `encoding: latin1`)")),
        (pl.col("line").str.strip_chars().str.len_bytes() == 0, EMPTY_LINE, pl.lit("")),
    ]
    if quote is not None:
        checks.append((pl.col("_unbalanced"), UNBALANCED_QUOTES, pl.lit(unbalanced_detail(quote))))
    checks.append((pl.col("_n_fields") != n, WRONG_COLUMN_COUNT,
                   pl.format("{} fields, expected {}", pl.col("_n_fields"), pl.lit(n))))
    return checks


def unbalanced_detail(quote: str) -> str:
    return f"a field opened with {quote} must close on its line"


def parse_lines(lines: pl.DataFrame, columns: dict[str, ColumnSpec], sep: str, libfm: bool = False,
                quote: str | None = None, missing: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split and type a block's lines. Returns (typed rows with ``_line``, rejected lines with reasons).

    ``lines`` has columns line (String), undecodable (Boolean), _line (Int64 line number).
    """
    names = list(columns)
    n = len(names)
    if quote is not None and lines["line"].str.contains(quote, literal=True).any():
        return parse_quoted_lines(lines, columns, sep, quote, missing)
    if libfm:  # `label idx:val idx:val ...`: one token per field, in field order; collapse repeated spaces
        lines = lines.with_columns(pl.col("line").str.strip_chars(" ").str.replace_all(" +", " "))
    df = lines.with_columns(
        _n_fields=pl.col("line").str.count_matches(sep, literal=True) + 1,
        _parts=pl.col("line").str.split_exact(sep, n - 1),
    ).unnest("_parts")
    df = df.rename({f"field_{i}": name for i, name in enumerate(names)})
    checks = line_checks(n)
    if libfm:  # keep the feature index of each `idx:val` token; the value of a one-hot token is ignored
        feature_cols = [c for c, s in columns.items() if s.kind != "label"]
        df = df.with_columns(_no_colon=pl.any_horizontal(~pl.col(c).str.contains(":", literal=True)
                                                         for c in feature_cols))
        checks.append((pl.col("_no_colon"), "libfm token without ':'", pl.lit("every feature token is idx:value")))
        df = df.with_columns(pl.col(c).str.split_exact(":", 1).struct.field("field_0").alias(c)
                             for c in feature_cols)
    return type_fields(df, columns, checks, pl.col("line"), missing)


def parse_quoted_lines(lines: pl.DataFrame, columns: dict[str, ColumnSpec], sep: str, quote: str,
                       missing: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``parse_lines`` for a block with quoted fields, split by Python's csv module, a line at a time: only the
    general path's rare blocks (bad bytes, Latin-1, lone CRs) come here; quoted UTF-8 takes the fast path."""
    names = list(columns)
    texts = lines["line"].to_list()
    fields: list[list[str | None]] = [[None] * len(texts) for _ in names]
    counts, unbalanced = [], []
    for i, text in enumerate(texts):
        try:
            row = next(csv.reader([text], delimiter=sep, quotechar=quote, strict=True), [])
        except csv.Error:  # a quote that never closes, or text after a closing quote
            row = None
        unbalanced.append(row is None)
        counts.append(len(row or []))
        for j, value in enumerate((row or [])[: len(names)]):
            fields[j][i] = value
    df = lines.with_columns(_n_fields=pl.Series(counts, dtype=pl.Int64), _unbalanced=pl.Series(unbalanced),
                            **{name: pl.Series(values, dtype=pl.String) for name, values in zip(names, fields,
                                                                                                strict=True)})
    return type_fields(df, columns, line_checks(len(names), quote), pl.col("line"), missing)


def type_fields(df: pl.DataFrame, columns: dict[str, ColumnSpec], checks: list[tuple[pl.Expr, str, pl.Expr]],
                raw: pl.Expr, missing: Sequence[str] = (), spaces: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Type the raw string columns of ``df`` (one per declared column, plus ``_line``); a row failing any
    check (the given ones first, then the columns' own) is rejected with the first reason and ``raw``.
    ``missing``: the spec's missing-value markers; ``spaces``: False where the block holds no space at all."""
    checks = list(checks)
    outputs: list[pl.Expr] = []
    strings = [n for n, s in columns.items() if s.kind != "drop" and df.schema.get(n) == pl.String]
    padded: set[str] = set()
    if spaces and strings:  # which columns hold a space around a value (or, in a list, anywhere)
        found = df.select((pl.col(n).str.contains(" ", literal=True) if columns[n].kind == "multi_valued" else
                           pl.col(n).str.starts_with(" ") | pl.col(n).str.ends_with(" ")).any()
                          for n in strings).row(0)
        padded = {n for n, has in zip(strings, found, strict=True) if has}
    for name, spec in columns.items():
        exprs, column_checks = _typed(name, spec, df.schema.get(name), missing, name in padded)
        outputs += exprs
        checks += column_checks
    flag_groups: dict[str, list[str]] = {}
    for name, spec in columns.items():
        if spec.kind == "flag":
            flag_groups.setdefault(spec.field or name, []).append(name)
    for field, flags in flag_groups.items():  # 0/1 columns -> one multi-valued field of the names set
        is_set = {f: (pl.col(f).str.strip_chars(" ") if f in padded else pl.col(f)) == "1" for f in flags}
        outputs.append(pl.concat_list([pl.when(is_set[f]).then(pl.lit(f)) for f in flags])
                       .list.drop_nulls().alias(field))

    none = pl.lit(None, pl.String)  # a table with nothing to check (all categorical, no label) rejects nothing
    reason = pl.coalesce([none] + [pl.when(cond).then(pl.lit(r)) for cond, r, _ in checks])
    # One pass types every column and finds each row's first failed check. The details (formatted text)
    # are made for the failing rows only, and a block without a bad row is never filtered: those two were
    # two thirds of this function's time on a clean 10M-row log.
    typed = df.select(pl.col("_line"), *outputs, reason.alias("_reason"))
    bad = typed["_reason"].is_not_null()
    if not bad.any():
        return typed.drop("_reason"), no_rejections()
    detail = pl.coalesce([none] + [pl.when(cond).then(d) for cond, _, d in checks])
    rejected = df.filter(bad).select(pl.col("_line").alias("line"), reason.alias("reason"),
                                     detail.alias("detail"), raw.alias("raw"))
    return typed.filter(~bad).drop("_reason"), rejected


def parse_block_fast(block: bytes, first_line: int, n_lines: int, columns: dict[str, ColumnSpec], sep: str,
                     quote: str | None = None, missing: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The common case at full speed: a valid UTF-8 block, LF line ends, a one-byte separator.

    Polars' multi-threaded CSV reader parses the block as it is, numeric columns as numbers. Its shape is
    checked without finding a single separator: when the block holds exactly (n - 1) separators per line,
    either every line has n fields or one has more, and the reader raises on a line with more. Only a block
    that fails that check (or holds a value that is not a number) takes the exact path, which counts the
    fields of every line, sets the wrong ones aside and types the rest from text, so that the checks can
    name each bad line. Returns None when the block needs the general path.

    CRLF line ends are read as LF. With ``quote``, a block that holds the quote character takes the exact path,
    where a separator between quotes does not count and a line with an odd number of quotes is set aside.
    """
    if len(sep.encode()) != 1:
        return None
    if b"\r" in block:  # Windows line ends (Excel, many exporters): the same lines without the CR
        block = block.replace(b"\r\n", b"\n")
        if b"\r" in block:  # a lone CR: the general path
            return None
    if not block.isascii():  # isascii is a fast scan; only other blocks pay for a full UTF-8 decode
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    n = len(columns)
    text = dict.fromkeys(columns, pl.String)
    typed = text | {c: pl.Float64 for c, s in columns.items() if s.kind == "numeric"}
    quoted = quote is not None and quote.encode() in block
    options = {"separator": sep, "has_header": False, "quote_char": quote if quoted else None,
               "empty_string_is_null": False}
    arr = np.frombuffer(block, np.uint8)
    line_ends: np.ndarray | None = None

    def raw_lines(numbers: list[int]) -> list[str]:
        nonlocal line_ends
        if line_ends is None:
            line_ends = np.flatnonzero(arr == 10)
        out = []
        for number in numbers:
            i = number - first_line
            start = line_ends[i - 1] + 1 if i else 0
            out.append(block[start:line_ends[i]].decode())
        return out

    df = None
    shape_rejected = no_rejections()
    line_numbers = np.arange(first_line, first_line + n_lines, dtype=np.int64)
    if not quoted and count_byte(block, ord(sep)) == n_lines * (n - 1):
        try:
            df = pl.read_csv(block, schema=typed, **options)
        except pl.exceptions.ComputeError:  # a line with too many fields, or a value that is not a number
            df = None
    if df is None:  # the exact path
        line_ends = np.flatnonzero(arr == 10)
        starts = np.empty_like(line_ends)
        starts[0], starts[1:] = 0, line_ends[:-1] + 1
        seps = np.flatnonzero(arr == ord(sep))  # separators per line = separator positions inside it
        unbalanced = np.zeros(len(line_ends), bool)
        if quoted:  # a separator after an odd number of its line's quotes is inside a quoted field
            quotes = np.flatnonzero(arr == ord(quote))
            unbalanced = (np.searchsorted(quotes, line_ends) - np.searchsorted(quotes, starts)) % 2 == 1
            line_of = np.searchsorted(line_ends, seps)
            seps = seps[(np.searchsorted(quotes, seps) - np.searchsorted(quotes, starts[line_of])) % 2 == 0]
        n_fields = np.searchsorted(seps, line_ends) - np.searchsorted(seps, starts) + 1
        n_fields[starts == line_ends] = 0  # an empty line
        good = (n_fields == n) & ~unbalanced
        lines = block
        if not good.all():
            bad = np.flatnonzero(~good)
            raw = raw_lines(line_numbers[bad].tolist())
            reasons = [EMPTY_LINE if not r.strip() else UNBALANCED_QUOTES if u else WRONG_COLUMN_COUNT
                       for r, u in zip(raw, unbalanced[bad], strict=True)]
            details = {EMPTY_LINE: "", UNBALANCED_QUOTES: unbalanced_detail(quote) if quote else ""}
            shape_rejected = pl.DataFrame({
                "line": line_numbers[bad],
                "reason": reasons,
                "detail": [details.get(r, f"{k} fields, expected {n}") for r, k in zip(reasons, n_fields[bad],
                                                                                       strict=True)],
                "raw": raw}, schema=shape_rejected.schema)
            keep = np.repeat(good, line_ends - starts + 1)  # byte mask: whole good lines, newline included
            lines = arr[keep].tobytes()
            line_numbers = line_numbers[good]
        if not good.any():
            return pl.DataFrame({"_line": []}, schema={"_line": pl.Int64}), shape_rejected
        # A quote inside a field (`a"b,c"`) is text to the reader, which then splits where the count above did
        # not: such a block goes to the general path, whose csv module reads quotes as the reader does.
        try:
            try:
                df = pl.read_csv(lines, schema=typed, **options)
            except pl.exceptions.ComputeError:  # a numeric column holds something else: type it from text
                df = pl.read_csv(lines, schema=text, **options)
        except pl.exceptions.PolarsError:
            return None
        if df.height != len(line_numbers):
            return None
    df = df.with_columns(_line=pl.Series(line_numbers))
    rows, rejected = type_fields(df, columns, [], pl.lit(None, pl.String), missing, spaces=b" " in block)
    if rejected.height:  # the raw text of the (few) rejected lines, exactly as in the file
        rejected = rejected.with_columns(raw=pl.Series(raw_lines(rejected["line"].to_list()), dtype=pl.String))
    return rows, pl.concat([shape_rejected, rejected]).sort("line")


# ------------------------------------------------------------------------------------------------ files
def _header_names(first_line: str, sep: str, quote: str | None = None) -> list[str]:
    if quote is not None:
        return [h.strip() for h in next(csv.reader([first_line], delimiter=sep, quotechar=quote), [])]
    return [h.strip().strip('"') for h in first_line.split(sep)]


def check_header(path: Path, first_line: str, sep: str, header: bool | str, expected: list[str],
                 quote: str | None = None) -> bool:
    """Whether the file's first line is a header; a header that does not match the spec stops the stage."""
    got = _header_names(first_line, sep, quote)
    if header is True and got != expected:
        diff = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                    min(len(got), len(expected)))
        raise StageError(
            f"{path}: header does not match the dataset spec at column {diff + 1}: "
            f"expected {expected[diff] if diff < len(expected) else '(end)'!r}, got "
            f"{got[diff] if diff < len(got) else '(end)'!r}\n  expected: {expected}\n  got:      {got}")
    return header is True or (header == "auto" and got == expected)


def strip_byte_order_mark(path: Path, block: bytes, encoding: str) -> bytes:
    """The file's first block without a UTF-8 byte-order mark (Excel's "CSV UTF-8" writes one, and it would
    otherwise stick to the first column's name). A UTF-16 file stops the stage with what to do about it."""
    if block.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StageError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark, as Excel's "
                         f"\"Unicode text\" writes); the reader takes UTF-8 or Latin-1: convert it, for example "
                         f"with `iconv -f UTF-16 -t UTF-8 {path.name} > converted.{path.suffix.lstrip('.') or 'csv'}`")
    if encoding == "utf8" and block.startswith(b"\xef\xbb\xbf"):
        return block[3:]
    return block


def read_table(paths: list[Path], columns: dict[str, ColumnSpec], sep: str, header: bool | str,
               encoding: str, libfm: bool, block_bytes: int, checksums: dict[str, str] | None = None,
               quote: str | None = None, parquet: bool = False, missing: Sequence[str] = (),
               ) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """Parse files block by block: yields (typed rows, rejected lines, counts) per block. Given
    ``checksums``, each file's sha256 is put there once the file has been read; given ``quote``, fields may be
    quoted with it; ``parquet``: the files are Parquet (``read_parquet_file``); ``missing``: the spec's
    missing-value markers."""
    for path in paths:
        if not path.exists():
            raise StageError(f"{path}: input file not found")
        if path.is_dir():
            raise StageError(f"{path}: a directory, not a log file: list the files in it under the spec's `paths`")
        if path.stat().st_size == 0:
            raise StageError(f"{path}: input file is empty")
        if parquet:
            # about 64 bytes of text a row: a block of rows holds about what a block of text does
            yield from read_parquet_file(path, columns, sep, max(block_bytes // 64, 1024), missing)
            if checksums is not None:
                checksums[str(path)] = _sha256(path)
            continue
        check_readable_as_text(path)
        first_block = True
        # A gzip file's checksum is of the file as stored, so it cannot come from the decompressed blocks.
        digest = hashlib.sha256() if checksums is not None and not is_gzip(path) else None
        for block, first_line, n_lines in iter_blocks(path, block_bytes, digest):
            size, header_lines = len(block), 0
            if first_block:
                first_block = False
                block = strip_byte_order_mark(path, block, encoding)
                eol = block.index(b"\n")
                head = block[:eol].decode(encoding, "replace").rstrip("\r")
                if header is not False and check_header(path, head, sep, header, list(columns), quote):
                    block, first_line, header_lines, n_lines = block[eol + 1 :], first_line + 1, 1, n_lines - 1
            if not block:
                continue
            parsed = (parse_block_fast(block, first_line, n_lines, columns, sep, quote, missing)
                      if encoding == "utf8" and not libfm else None)
            if parsed is None:  # the general path: bad bytes, CR line ends, libfm, Latin-1, long separators
                lines = block_lines(block, encoding).with_columns(
                    _line=pl.int_range(first_line, first_line + pl.len(), dtype=pl.Int64))
                parsed = parse_lines(lines, columns, sep, libfm, quote, missing)
            rows, rejected = parsed
            rejected = rejected.with_columns(file=pl.lit(str(path))).select(list(REJECTED_SCHEMA))
            yield rows, rejected, {"lines": n_lines, "header_lines": header_lines, "bytes": size}
        if checksums is not None:
            checksums[str(path)] = digest.hexdigest() if digest is not None else _sha256(path)


def raw_bytes(paths: list[Path]) -> int | None:
    """The raw bytes a progress bar over ``paths`` counts to; None where a file is gzip (its size is unknown)."""
    return None if any(p.exists() and is_gzip(p) for p in paths) else sum(p.stat().st_size for p in paths
                                                                            if p.exists())


def sample_negatives(rows: pl.DataFrame, spec: DatasetSpec, seed: int) -> pl.DataFrame:
    """Implicit feedback -> CTR rows: each logged row is a positive, plus ``negatives`` rows that keep the
    user and context but swap in an item this user never used (uniform over items; the AFM/NFM recipe)."""
    imp = spec.implicit
    assert imp is not None
    rng = np.random.default_rng(seed)
    positives = rows.with_columns(pl.lit(1, pl.Int8).alias(LABEL))
    items = positives[imp.item].unique().sort()
    used = positives.select(imp.user, imp.item).unique()
    negatives = positives.select(pl.exclude(imp.item, *imp.item_columns)).with_columns(
        pl.lit(0, pl.Int8).alias(LABEL)).select(pl.all().repeat_by(imp.negatives).explode())
    draw = pl.Series(imp.item, items.gather(rng.integers(0, len(items), negatives.height)))
    negatives = negatives.with_columns(draw)
    # Resample, all at once, every draw that hit an item the user did use, until none does.
    for _ in range(100):
        hit = negatives.select(imp.user, imp.item).join(used.with_columns(_used=pl.lit(True)), on=[imp.user, imp.item],
                                                        how="left", maintain_order="left")["_used"].is_not_null()
        if not hit.any():
            break
        redraw = items.gather(rng.integers(0, len(items), int(hit.sum())))
        negatives = negatives.with_columns(negatives[imp.item].scatter(hit.arg_true(), redraw))
    else:
        raise StageError("negative sampling: some users have used (nearly) every item; cannot sample negatives")
    attributes = positives.group_by(imp.item).agg(pl.col(c).mode().sort().first() for c in imp.item_columns)
    negatives = negatives.join(attributes, on=imp.item, how="left", maintain_order="left")
    return pl.concat([positives, negatives.select(positives.columns)])


def read_side_table(join: JoinSpec, block_bytes: int, rejected: list[pl.DataFrame], missing: Sequence[str] = (),
                    ) -> tuple[pl.DataFrame, dict[str, int]]:
    """A side table's typed rows, one per key (the first where a key repeats); its bad lines are appended to
    ``rejected`` like the main file's. ``missing``: the dataset's missing-value markers."""
    parts, lines = [], 0
    for typed, bad, counts in read_table([input_path(join.path)], join.columns, join.separator, join.header,
                                         join.encoding, False, block_bytes, quote=join.quote, missing=missing):
        parts.append(typed.drop("_line"))
        rejected.append(bad)
        lines += counts["lines"]
    side = pl.concat(parts)
    duplicated = side.height - side[join.key].n_unique()
    side = side.unique(join.key, keep="first", maintain_order=True)
    return side, {"lines": lines, "rows_ok": side.height, "duplicate_keys": duplicated}


def join_side_table(rows: pl.DataFrame, join: JoinSpec, block_bytes: int, rejected: list[pl.DataFrame],
                    missing: Sequence[str] = ()) -> tuple[pl.DataFrame, dict[str, int]]:
    """Left-join a side table's typed columns onto the rows by ``join.key``. Rows whose key is absent from the
    side table keep nulls (missing)."""
    side, stats = read_side_table(join, block_bytes, rejected, missing)
    out = rows.join(side, on=join.key, how="left", maintain_order="left")
    unmatched = out.height - rows.join(side.select(join.key), on=join.key, how="semi").height
    return out, stats | {"unmatched_rows": unmatched}


# --------------------------------------------------------------------------------------------------- run
class ParquetStream:
    """Appends tables to one Parquet file from a background thread, so that writing one block overlaps
    parsing the next (pyarrow's writer releases the GIL); one write at most is in flight. ingest writes
    rows.parquet with it, and ``tasks.score`` its scores.

    LZ4 and no column statistics: rows.parquet is an intermediate that encode reads whole, column by
    column, and the two cut the writer's time per block by about 30 % (bench/ingest_encode.py's log).
    Tables come as Polars hands them over (strings as string_view), and are written as plain strings.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self.pending: Future | None = None

    def write(self, table: pa.Table) -> None:
        if self.pending is not None:
            self.pending.result()  # raises here if the last write failed
        if self.writer is None:
            text = [f.name for f in table.schema if pa.types.is_string_view(f.type) or pa.types.is_large_string(f.type)
                    or pa.types.is_string(f.type)]
            # Numbers rarely repeat: plain is faster for them. No stored Arrow schema: readers see plain
            # `string` columns, not the string_view that Polars hands over without a copy.
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="lz4", write_statistics=False,
                                           use_dictionary=text, store_schema=False)
        self.pending = self.pool.submit(self.writer.write_table, table)

    def close(self) -> None:
        try:
            if self.pending is not None:
                self.pending.result()
            if self.writer is not None:
                self.writer.close()
        finally:
            self.pool.shutdown()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def run(params: Params) -> dict[str, Any]:
    spec = params.spec
    block_bytes = params.ingest.block_mb << 20
    INTERIM.mkdir(parents=True, exist_ok=True)
    paths = [input_path(p) for p in spec.paths]
    generated = Path(params.generate.out_dir).resolve()
    for path in paths:  # the synthetic log is written by a stage of its own: say so
        if not path.exists() and path.resolve().is_relative_to(generated):
            raise StageError(f"{path}: input file not found; the generate stage writes it: run `dvc repro` (or "
                             f"`python -m tasks.generate` first)")
    rejected: list[pl.DataFrame] = []
    reasons: Counter[str] = Counter()
    totals = {"lines": 0, "header_lines": 0, "rows_ok": 0}
    post_process = bool(spec.joins or spec.implicit)
    kept: list[pl.DataFrame] = []  # only when joins / sampling need the whole table
    writer = ParquetStream(ROWS)
    # Progress in raw bytes (a gzip file's are uncompressed, so its total is unknown).
    total = raw_bytes(paths)
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="ingest", disable=not progress_enabled())
    checksums: dict[str, str] = {}
    for rows, bad, counts in read_table(paths, spec.columns, spec.sep, spec.header, spec.encoding,
                                        spec.format == "libfm", block_bytes, checksums, spec.quote,
                                        spec.format == "parquet", spec.missing_values):
        progress.update(counts["bytes"])
        totals["lines"] += counts["lines"]
        totals["header_lines"] += counts["header_lines"]
        totals["rows_ok"] += rows.height
        reasons.update(bad["reason"].to_list())
        rejected.append(bad)
        rows = rows.drop("_line")
        if post_process:
            kept.append(rows)
        else:  # stream straight to Parquet: a large log never sits in memory whole
            # Polars' own string views, without a copy (the default conversion to large_string rewrote every
            # string: a third of the main thread's time on a 10M-row log).
            writer.write(rows.to_arrow(compat_level=pl.CompatLevel.newest()))
    progress.close()
    writer.close()  # with joins or sampling nothing was written: this only ends its thread pool
    rows_rejected = sum(reasons.values())
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": checksums[str(p)]} for p in paths]
    result: dict[str, Any] = {
        "dataset": params.dataset,
        "rows_in": totals["lines"],
        "rows_ok": totals["rows_ok"],
        "rows_rejected": rows_rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "header_lines": totals["header_lines"],
    }
    if totals["rows_ok"] == 0:
        # Nothing of an earlier run may stay behind for a stage run alone to read as this log's: the rows and
        # the metrics go, and the rejected lines are kept, for the user to look at.
        for stale in (ROWS, MANIFEST, METRICS / "ingest.json"):
            stale.unlink(missing_ok=True)
        pl.concat([pl.DataFrame(schema=REJECTED_SCHEMA), *rejected]).cast(REJECTED_SCHEMA).write_parquet(  # type: ignore[arg-type]
            REJECTED)
        first = next((b.row(0, named=True) for b in rejected if b.height), None)
        example = f"; line {first['line']} of {first['file']}: {first['reason']}" if first else ""
        example += f": {first['detail']}" if first and first["detail"] else ""
        if totals["lines"] == 0:  # an empty file stopped earlier: each holds a header line and nothing else
            raise StageError(f"no data lines in {[str(p) for p in paths]}: only a header")
        raise StageError(f"no usable rows in {[str(p) for p in paths]}: all {rows_rejected} lines rejected "
                         f"({dict(reasons.most_common(3))}){example} (every line is in {REJECTED})")
    if post_process:
        table_rows = pl.concat(kept)
        if spec.implicit:
            table_rows = sample_negatives(table_rows, spec, params.seed)
            result["negatives_sampled"] = table_rows.height - totals["rows_ok"]
        for join in spec.joins:
            before = sum(len(r) for r in rejected)
            table_rows, stats = join_side_table(table_rows, join, block_bytes, rejected, spec.missing_values)
            side_rejected = sum(len(r) for r in rejected) - before
            result.setdefault("joins", {})[join.path] = stats | {"rows_rejected": side_rejected}
        table_rows = table_rows.select(LABEL, pl.exclude(LABEL))
        table_rows.write_parquet(ROWS)
        rows_out = table_rows.height
        schema = table_rows.schema
    else:
        rows_out = totals["rows_ok"]
        schema = pl.read_parquet_schema(ROWS)
    result["rows_out"] = rows_out
    # What was read and what came out, for people and for validate; metrics stay numeric for `dvc exp show`.
    write_json(MANIFEST, {"dataset": params.dataset, "files": files,
                                           "columns": {k: str(v) for k, v in schema.items()}})
    pl.concat(rejected).cast(REJECTED_SCHEMA).write_parquet(REJECTED)  # type: ignore[arg-type]
    write_json(METRICS / "ingest.json", result)
    print(f"ingest: {result['rows_in']:,} lines -> {rows_out:,} rows ({rows_rejected:,} rejected"
          + (f": {', '.join(f'{k} {v}' for k, v in reasons.most_common(4))}" if rows_rejected else "") + ")")
    return result


if __name__ == "__main__":
    stage_main(run)
