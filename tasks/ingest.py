"""ingest: raw click logs -> typed rows (data/interim/rows.parquet), bad lines kept aside with a reason.

Files are read in blocks of whole lines (``ingest.block_mb``), so memory stays flat on large logs. A
block's lines are cut with one vectorised newline search and handed to Polars without a copy; every
check (column count, numbers, label mapping, timestamps, bytes that are not UTF-8) is a column
expression, never a Python loop over rows. A line that fails any check goes to
data/interim/rejected.parquet with its file, line number, reason and raw text; metrics/ingest.json
records ``rows_in == rows_ok + rows_rejected`` with the count per reason.

Typed columns: label Int8 (0/1), categorical String, numeric Float64, multi_valued List(String),
timestamp Datetime, flag groups List(String). A missing value is null.
"""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from collections.abc import Iterator
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
    METRICS,
    REJECTED,
    ROWS,
    StageError,
    progress_enabled,
    stage_main,
    write_json,
)
from tasks.config import ColumnSpec, DatasetSpec, JoinSpec, Params

# Line-shape reasons, shared by the general and the fast parse path.
EMPTY_LINE, WRONG_COLUMN_COUNT = "empty line", "wrong column count"

REJECTED_SCHEMA = {"file": pl.String, "line": pl.Int64, "reason": pl.String, "detail": pl.String,
                   "raw": pl.String}


# ----------------------------------------------------------------------------------------------- reading
def iter_blocks(path: Path, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Yield (bytes of whole lines, number of the block's first line); gzip is read transparently."""
    opener = gzip.open if path.suffix == ".gz" else open
    carry, first_line = b"", 1
    with opener(path, "rb") as f:
        while chunk := f.read(block_bytes):
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:  # a single line longer than a block: keep reading
                carry = data
                continue
            block, carry = data[: cut + 1], data[cut + 1 :]
            yield block, first_line
            first_line += block.count(b"\n")
    if carry:
        yield carry + b"\n", first_line


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
def _typed(name: str, spec: ColumnSpec) -> tuple[list[pl.Expr], list[tuple[pl.Expr, str, pl.Expr]]]:
    """Expressions turning raw string column ``name`` into its typed column(s), and its checks.

    A check is (failing condition, reason, detail): the reason is a category that metrics count, the
    detail says what exactly was wrong on that line.
    """
    raw = pl.col(name)
    value = pl.when(raw.str.len_bytes() > 0).then(raw)  # empty field -> missing
    if spec.kind == "label":
        if spec.threshold is not None:
            num = value.cast(pl.Float64, strict=False)
            out = (num >= spec.threshold).cast(pl.Int8)
            bad = num.is_null()
        else:
            mapping = {v: 1 for v in spec.positive or []} | {v: 0 for v in spec.negative or []}
            out = raw.replace_strict(mapping, default=None, return_dtype=pl.Int8)
            bad = out.is_null()
        return [out.alias(LABEL)], [(bad, "label outside mapping",
                                     pl.format("{} = '{}'", pl.lit(name), raw))]
    if spec.kind == "numeric":
        num = value.cast(pl.Float64, strict=False)
        return [num.alias(name)], [(value.is_not_null() & num.is_null(), f"non-numeric value in {name}",
                                    pl.format("{} = '{}'", pl.lit(name), raw))]
    if spec.kind == "categorical":
        out = value.str.slice(0, spec.prefix) if spec.prefix else value
        return [out.alias(name)], []
    if spec.kind == "multi_valued":
        tokens = raw.str.split(spec.separator).list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))
        return [tokens.alias(name)], []
    if spec.kind == "timestamp":
        if spec.time_format == "unix":
            secs = value.cast(pl.Int64, strict=False)
            ts = pl.from_epoch(secs, time_unit="s")
        else:
            fmt, text = spec.time_format, value
            if "%H" in fmt and "%M" not in fmt:  # Polars wants minutes whenever hours are parsed
                fmt, text = fmt + "%M", value + "00"
            ts = text.str.strptime(pl.Datetime("us"), fmt, strict=False)
        ts = ts.cast(pl.Datetime("us"))
        return [ts.alias(name)], [(value.is_not_null() & ts.is_null(), f"unparseable timestamp in {name}",
                                   pl.format("{} = '{}' (format {})", pl.lit(name), raw,
                                             pl.lit(spec.time_format)))]
    if spec.kind == "flag":
        return [], [(~raw.is_in(["0", "1"]), f"flag not 0/1 in {name}", pl.format("{} = '{}'", pl.lit(name), raw))]
    return [], []  # drop


def parse_lines(lines: pl.DataFrame, columns: dict[str, ColumnSpec], sep: str, libfm: bool = False,
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split and type a block's lines. Returns (typed rows with ``_line``, rejected lines with reasons).

    ``lines`` has columns line (String), undecodable (Boolean), _line (Int64 line number).
    """
    names = list(columns)
    n = len(names)
    if libfm:  # `label idx:val idx:val ...`: one token per field, in field order; collapse repeated spaces
        lines = lines.with_columns(pl.col("line").str.strip_chars(" ").str.replace_all(" +", " "))
    df = lines.with_columns(
        _n_fields=pl.col("line").str.count_matches(sep, literal=True) + 1,
        _parts=pl.col("line").str.split_exact(sep, n - 1),
    ).unnest("_parts")
    df = df.rename({f"field_{i}": name for i, name in enumerate(names)})
    checks: list[tuple[pl.Expr, str, pl.Expr]] = [
        (pl.col("undecodable"), "undecodable bytes", pl.lit("line is not valid UTF-8")),
        (pl.col("line").str.strip_chars().str.len_bytes() == 0, EMPTY_LINE, pl.lit("")),
        (pl.col("_n_fields") != n, WRONG_COLUMN_COUNT,
         pl.format("{} fields, expected {}", pl.col("_n_fields"), pl.lit(n))),
    ]
    if libfm:  # keep the feature index of each `idx:val` token; the value of a one-hot token is ignored
        feature_cols = [c for c, s in columns.items() if s.kind != "label"]
        df = df.with_columns(_no_colon=pl.any_horizontal(~pl.col(c).str.contains(":", literal=True)
                                                         for c in feature_cols))
        checks.append((pl.col("_no_colon"), "libfm token without ':'", pl.lit("every feature token is idx:value")))
        df = df.with_columns(pl.col(c).str.split_exact(":", 1).struct.field("field_0").alias(c)
                             for c in feature_cols)
    return type_fields(df, columns, checks, pl.col("line"))


def type_fields(df: pl.DataFrame, columns: dict[str, ColumnSpec], checks: list[tuple[pl.Expr, str, pl.Expr]],
                raw: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Type the raw string columns of ``df`` (one per declared column, plus ``_line``); a row failing any
    check (the given ones first, then the columns' own) is rejected with the first reason and ``raw``."""
    checks = list(checks)
    outputs: list[pl.Expr] = []
    for name, spec in columns.items():
        exprs, column_checks = _typed(name, spec)
        outputs += exprs
        checks += column_checks
    flag_groups: dict[str, list[str]] = {}
    for name, spec in columns.items():
        if spec.kind == "flag":
            flag_groups.setdefault(spec.field or name, []).append(name)
    for field, flags in flag_groups.items():  # 0/1 columns -> one multi-valued field of the names set
        outputs.append(pl.concat_list([pl.when(pl.col(f) == "1").then(pl.lit(f)) for f in flags])
                       .list.drop_nulls().alias(field))

    none = pl.lit(None, pl.String)  # a table with nothing to check (all categorical, no label) rejects nothing
    reason = pl.coalesce([none] + [pl.when(cond).then(pl.lit(r)) for cond, r, _ in checks])
    detail = pl.coalesce([none] + [pl.when(cond).then(d) for cond, _, d in checks])
    df = df.with_columns(_reason=reason, _detail=detail)
    bad = df["_reason"].is_not_null()
    rejected = df.filter(bad).select(pl.col("_line").alias("line"), pl.col("_reason").alias("reason"),
                                     pl.col("_detail").alias("detail"), raw.alias("raw"))
    rows = df.filter(~bad).select(pl.col("_line"), *outputs)
    return rows, rejected


def parse_block_fast(block: bytes, first_line: int, columns: dict[str, ColumnSpec], sep: str,
                     ) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The common case at full speed: a valid UTF-8 block, LF line ends, a one-byte separator.

    Lines of the wrong shape are set aside by a vectorised separator count; the rest go to Polars' native
    multi-threaded CSV reader as they are. Returns None when the block needs the general path.
    """
    if len(sep.encode()) != 1 or b"\r" in block:
        return None
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    arr = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(arr == 10)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    n = len(columns)
    seps = np.flatnonzero(arr == ord(sep))  # separators per line = how many separator positions fall inside it
    n_fields = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    n_fields[starts == ends] = 0  # an empty line
    good = n_fields == n
    line_numbers = np.arange(first_line, first_line + len(ends), dtype=np.int64)
    shape_rejected = pl.DataFrame(schema={"line": pl.Int64, "reason": pl.String, "detail": pl.String,
                                          "raw": pl.String})
    if not good.all():
        bad = np.flatnonzero(~good)
        raw = [block[starts[i]:ends[i]].decode() for i in bad]
        shape_rejected = pl.DataFrame({
            "line": line_numbers[bad],
            "reason": [EMPTY_LINE if not r.strip() else WRONG_COLUMN_COUNT for r in raw],
            "detail": ["" if not r.strip() else f"{k} fields, expected {n}" for r, k in zip(raw, n_fields[bad],
                                                                                            strict=True)],
            "raw": raw}, schema=shape_rejected.schema)
        keep = np.repeat(good, ends - starts + 1)  # byte mask: whole good lines, newline included
        block = arr[keep].tobytes()
    if not good.any():
        return pl.DataFrame({"_line": []}, schema={"_line": pl.Int64}), shape_rejected
    names = list(columns)
    df = pl.read_csv(block, separator=sep, has_header=False, quote_char=None, empty_string_is_null=False,
                     schema=dict.fromkeys(names, pl.String))
    df = df.with_columns(_line=pl.Series(line_numbers[good]))
    raw = pl.concat_str([pl.col(c) for c in names], separator=sep)  # the line exactly, for rejected rows only
    rows, rejected = type_fields(df, columns, [], raw)
    return rows, pl.concat([shape_rejected, rejected]).sort("line")


# ------------------------------------------------------------------------------------------------ files
def _header_names(first_line: str, sep: str) -> list[str]:
    return [h.strip().strip('"') for h in first_line.split(sep)]


def check_header(path: Path, first_line: str, sep: str, header: bool | str, expected: list[str]) -> bool:
    """Whether the file's first line is a header; a header that does not match the spec stops the stage."""
    got = _header_names(first_line, sep)
    if header is True and got != expected:
        diff = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                    min(len(got), len(expected)))
        raise StageError(
            f"{path}: header does not match the dataset spec at column {diff + 1}: "
            f"expected {expected[diff] if diff < len(expected) else '(end)'!r}, got "
            f"{got[diff] if diff < len(got) else '(end)'!r}\n  expected: {expected}\n  got:      {got}")
    return header is True or (header == "auto" and got == expected)


def read_table(paths: list[Path], columns: dict[str, ColumnSpec], sep: str, header: bool | str,
               encoding: str, libfm: bool, block_bytes: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """Parse files block by block: yields (typed rows, rejected lines, counts) per block."""
    for path in paths:
        if not path.exists():
            raise StageError(f"{path}: input file not found")
        if path.stat().st_size == 0:
            raise StageError(f"{path}: input file is empty")
        first_block = True
        for block, first_line in iter_blocks(path, block_bytes):
            size, header_lines = len(block), 0
            if first_block:
                first_block = False
                eol = block.index(b"\n")
                head = block[:eol].decode(encoding, "replace").rstrip("\r")
                if header is not False and check_header(path, head, sep, header, list(columns)):
                    block, first_line, header_lines = block[eol + 1 :], first_line + 1, 1
            if not block:
                continue
            parsed = parse_block_fast(block, first_line, columns, sep) if encoding == "utf8" and not libfm else None
            if parsed is None:  # the general path: bad bytes, CR line ends, libfm, Latin-1, long separators
                lines = block_lines(block, encoding).with_columns(
                    _line=pl.int_range(first_line, first_line + pl.len(), dtype=pl.Int64))
                parsed = parse_lines(lines, columns, sep, libfm)
            rows, rejected = parsed
            rejected = rejected.with_columns(file=pl.lit(str(path))).select(list(REJECTED_SCHEMA))
            yield rows, rejected, {"lines": block.count(b"\n"), "header_lines": header_lines, "bytes": size}


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


def join_side_table(rows: pl.DataFrame, join: JoinSpec, block_bytes: int, rejected: list[pl.DataFrame],
                    ) -> tuple[pl.DataFrame, dict[str, int]]:
    """Left-join a side table's typed columns onto the rows by ``join.key``; its bad lines are rejected
    like the main file's. Rows whose key is absent from the side table keep nulls (missing)."""
    parts, lines = [], 0
    for typed, bad, counts in read_table([Path(join.path)], join.columns, join.separator, join.header,
                                         join.encoding, False, block_bytes):
        parts.append(typed.drop("_line"))
        rejected.append(bad)
        lines += counts["lines"]
    side = pl.concat(parts)
    duplicated = side.height - side[join.key].n_unique()
    side = side.unique(join.key, keep="first", maintain_order=True)
    out = rows.join(side, on=join.key, how="left", maintain_order="left")
    unmatched = out.height - rows.join(side.select(join.key), on=join.key, how="semi").height
    return out, {"lines": lines, "rows_ok": side.height, "duplicate_keys": duplicated, "unmatched_rows": unmatched}


# --------------------------------------------------------------------------------------------------- run
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
    paths = [Path(p) for p in spec.paths]
    rejected: list[pl.DataFrame] = []
    reasons: Counter[str] = Counter()
    totals = {"lines": 0, "header_lines": 0, "rows_ok": 0}
    post_process = bool(spec.joins or spec.implicit)
    kept: list[pl.DataFrame] = []  # only when joins / sampling need the whole table
    writer: pq.ParquetWriter | None = None
    # Progress in raw bytes (a gzip file's are uncompressed, so its total is unknown).
    total = None if any(p.suffix == ".gz" for p in paths) else sum(p.stat().st_size for p in paths if p.exists())
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="ingest", disable=not progress_enabled())
    for rows, bad, counts in read_table(paths, spec.columns, spec.sep, spec.header, spec.encoding,
                                        spec.format == "libfm", block_bytes):
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
            table = rows.to_arrow()
            writer = writer or pq.ParquetWriter(ROWS, table.schema)
            writer.write_table(table)
    progress.close()
    rows_rejected = sum(reasons.values())
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in paths]
    result: dict[str, Any] = {
        "dataset": params.dataset,
        "rows_in": totals["lines"],
        "rows_ok": totals["rows_ok"],
        "rows_rejected": rows_rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "header_lines": totals["header_lines"],
    }
    if totals["rows_ok"] == 0:
        raise StageError(f"no usable rows in {[str(p) for p in paths]}: all {rows_rejected} lines rejected "
                         f"({dict(reasons.most_common(3))})")
    if post_process:
        table_rows = pl.concat(kept)
        if spec.implicit:
            table_rows = sample_negatives(table_rows, spec, params.seed)
            result["negatives_sampled"] = table_rows.height - totals["rows_ok"]
        for join in spec.joins:
            before = sum(len(r) for r in rejected)
            table_rows, stats = join_side_table(table_rows, join, block_bytes, rejected)
            side_rejected = sum(len(r) for r in rejected) - before
            result.setdefault("joins", {})[join.path] = stats | {"rows_rejected": side_rejected}
        table_rows = table_rows.select(LABEL, pl.exclude(LABEL))
        table_rows.write_parquet(ROWS)
        rows_out = table_rows.height
        schema = table_rows.schema
    else:
        assert writer is not None
        writer.close()
        rows_out = totals["rows_ok"]
        schema = pl.read_parquet_schema(ROWS)
    result["rows_out"] = rows_out
    # What was read and what came out, for people and for validate; metrics stay numeric for `dvc exp show`.
    write_json(INTERIM / "manifest.json", {"files": files, "columns": {k: str(v) for k, v in schema.items()}})
    pl.concat(rejected).cast(REJECTED_SCHEMA).write_parquet(REJECTED)  # type: ignore[arg-type]
    write_json(METRICS / "ingest.json", result)
    print(f"ingest: {result['rows_in']:,} lines -> {rows_out:,} rows ({rows_rejected:,} rejected"
          + (f": {', '.join(f'{k} {v}' for k, v in reasons.most_common(4))}" if rows_rejected else "") + ")")
    return result


if __name__ == "__main__":
    stage_main(run)
