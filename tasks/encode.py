"""encode: typed rows -> train/valid/test splits of int32 codes, plus the feature map.

Order matters, to keep test data out of every fitted statistic:
  1. split first (a seeded permutation cut at the fractions, or by time),
  2. fit on train only: vocabularies (DuckDB group-by counts, values under ``min_count`` -> out-of-
     vocabulary) and quantile boundaries,
  3. map every split with the train vocabularies; values never seen in train become out-of-vocabulary.

Each field's codes: 0 padding (multi-valued lists only), 1 out-of-vocabulary, 2 missing, 3.. the
train values by descending frequency (ties by value, so the same data always gives the same codes).

Work is done in batches of rows through a temporary token file, so memory stays flat on large logs.
Outputs: data/encoded/{train,valid,test}.parquet, feature_map.json, vocab.parquet; metrics/encode.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from tasks.common import (
    ENCODED,
    FEATURE_MAP,
    FIRST_CODE,
    LABEL,
    METRICS,
    MISSING,
    OOV,
    PADDING,
    ROWS,
    SPLITS,
    VOCAB,
    StageError,
    split_path,
    stage_main,
    write_json,
)
from tasks.config import DatasetSpec, Params

BATCH_ROWS = 1 << 20
TOKENS = ENCODED / ".tokens.parquet"  # temporary: split id + one token column per field


@dataclass(frozen=True)
class Field:
    """One model input field, derived from the dataset spec."""

    name: str
    kind: str  # categorical | numeric | multi_valued
    source: str  # the interim column it comes from
    bucketing: str | None = None  # numeric: criteo_log | quantile | identity
    buckets: int | None = None
    derive: str | None = None  # timestamp part: hour | weekday | weekend | day | month
    max_length: int | None = None  # multi_valued


def plan_fields(spec: DatasetSpec) -> list[Field]:
    """The encoded fields, in column order: main file first, then joined tables."""
    fields: list[Field] = []
    tables = [(spec.columns, None)] + [(j.columns, j.key) for j in spec.joins]
    flag_fields: set[str] = set()
    for columns, key in tables:
        for name, col in columns.items():
            if name == key:
                continue  # a join key is already a field of the main table
            if col.kind == "categorical":
                fields.append(Field(name, "categorical", name))
            elif col.kind == "numeric":
                fields.append(Field(name, "numeric", name, col.bucketing, col.buckets))
            elif col.kind == "multi_valued":
                fields.append(Field(name, "multi_valued", name, max_length=col.max_length))
            elif col.kind == "timestamp":
                fields += [Field(f"{name}_{d}", "categorical", name, derive=d) for d in col.derive]
            elif col.kind == "flag" and col.field not in flag_fields:
                flag_fields.add(col.field or name)
                n_flags = sum(c.kind == "flag" and c.field == col.field for c in columns.values())
                fields.append(Field(col.field or name, "multi_valued", col.field or name, max_length=n_flags))
    return fields


def token_expr(f: Field) -> pl.Expr:
    """The value a field's vocabulary is built over (quantile fields stay numeric until boundaries exist)."""
    x = pl.col(f.source)
    if f.kind == "numeric" and f.bucketing == "criteo_log":
        # Criteo winners' rule: floor(ln(x)^2) for x > 2, else the integer itself (int() truncates).
        bucket = pl.when(x > 2).then((x.log() ** 2).floor()).otherwise(x).cast(pl.Int64)
        return bucket.cast(pl.String).alias(f.name)
    if f.kind == "numeric" and f.bucketing == "identity":
        return x.cast(pl.String).alias(f.name)
    if f.kind == "numeric":  # quantile: bucketed at mapping time
        return x.alias(f.name)
    if f.derive:
        part = {"hour": x.dt.hour(), "weekday": x.dt.weekday(), "weekend": x.dt.weekday() >= 6,
                "day": x.dt.day(), "month": x.dt.month()}[f.derive]
        return part.cast(pl.String).alias(f.name)
    if f.kind == "multi_valued":
        return x.list.head(f.max_length).alias(f.name)
    return x.alias(f.name)


def assign_splits(n: int, params: Params) -> np.ndarray:
    """Split id per row (0 train, 1 valid, 2 test), exact fractions, seeded."""
    cfg = params.encode.split
    cuts = np.round(np.cumsum(cfg.fractions)[:2] * n).astype(np.int64)
    if cfg.method == "random":
        order = np.random.default_rng(params.seed).permutation(n)
    else:
        column = cfg.column
        schema = pl.read_parquet_schema(ROWS)
        if column not in schema:
            raise StageError(f"params.yaml: encode.split.column {column!r} is not a column of {ROWS} "
                             f"(columns: {list(schema)})")
        times = pl.read_parquet(ROWS, columns=[column])[column].to_physical().fill_null(np.iinfo(np.int64).min)
        order = np.argsort(times.to_numpy(), kind="stable")  # earliest rows train, latest test
    split = np.empty(n, np.int8)
    split[order[: cuts[0]]], split[order[cuts[0] : cuts[1]]], split[order[cuts[1] :]] = 0, 1, 2
    return split


def write_tokens(fields: list[Field], split: np.ndarray) -> None:
    """Pass 1: tokens of every row with its split id, batch by batch, to a temporary Parquet file."""
    writer, start = None, 0
    for batch in pq.ParquetFile(ROWS).iter_batches(batch_size=BATCH_ROWS):
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        tokens = df.select(pl.lit(split[start : start + df.height]).alias("_split"), pl.col(LABEL),
                           *[token_expr(f) for f in fields])
        start += df.height
        table = tokens.to_arrow()
        writer = writer or pq.ParquetWriter(TOKENS, table.schema)
        writer.write_table(table)
    if writer:
        writer.close()


def fit_vocabularies(fields: list[Field], min_count: int) -> tuple[dict[str, pl.DataFrame], dict[str, list]]:
    """Fit on train rows only (DuckDB reads the token file column by column, in parallel).

    Returns per field a frame (token, count, code) and, for quantile fields, the bucket boundaries.
    """
    con = duckdb.connect()
    src = f"read_parquet('{TOKENS.as_posix()}') WHERE _split = 0"
    vocabs: dict[str, pl.DataFrame] = {}
    boundaries: dict[str, list] = {}
    for f in fields:
        col = f'"{f.name}"'
        if f.kind == "numeric" and f.bucketing == "quantile":
            qs = [i / f.buckets for i in range(1, f.buckets)]
            row = con.sql(f"SELECT quantile_cont({col}, {qs}) FROM {src}").fetchall()[0]
            cuts = sorted({float(q) for q in (row[0] if row and row[0] else [])})
            boundaries[f.name] = cuts
            vocab = pl.DataFrame({"token": [str(i) for i in range(len(cuts) + 1)]})
            counts = pl.DataFrame({"token": vocab["token"], "count": [0] * vocab.height})
            vocabs[f.name] = counts.with_columns(code=pl.int_range(FIRST_CODE, FIRST_CODE + pl.len(), dtype=pl.Int32))
            continue
        values = f"unnest({col})" if f.kind == "multi_valued" else col
        rel = con.sql(
            f"SELECT token, count(*) AS count FROM (SELECT {values} AS token FROM {src}) "
            f"WHERE token IS NOT NULL GROUP BY token HAVING count(*) >= {min_count} ORDER BY count DESC, token"
        ).pl()
        vocabs[f.name] = rel.with_columns(
            pl.col("token").cast(pl.String), pl.col("count").cast(pl.Int64),
            code=pl.int_range(FIRST_CODE, FIRST_CODE + pl.len(), dtype=pl.Int32))
    return vocabs, boundaries


def code_expr(f: Field, vocab: pl.DataFrame, cuts: list[float] | None) -> pl.Expr:
    """Token -> int32 code: unseen -> OOV, null -> MISSING; multi-valued lists element-wise."""
    x = pl.col(f.name)
    if cuts is not None:  # quantile bucket = number of boundaries below the value
        bucket = pl.sum_horizontal([(x > c).cast(pl.Int32) for c in cuts]) if cuts else pl.lit(0, pl.Int32)
        return pl.when(x.is_null()).then(MISSING).otherwise(bucket + FIRST_CODE).cast(pl.Int32).alias(f.name)
    mapping = dict(zip(vocab["token"].to_list(), vocab["code"].to_list(), strict=True))
    if f.kind == "multi_valued":
        inner = pl.element().replace_strict(mapping, default=OOV, return_dtype=pl.Int32)
        return (pl.when(x.is_null()).then(pl.lit([MISSING], pl.List(pl.Int32)))
                .otherwise(x.list.eval(inner)).cast(pl.List(pl.Int32)).alias(f.name))
    coded = x.replace_strict(mapping, default=OOV, return_dtype=pl.Int32)
    return pl.when(x.is_null()).then(pl.lit(MISSING, pl.Int32)).otherwise(coded).alias(f.name)


def write_splits(fields: list[Field], vocabs: dict[str, pl.DataFrame], boundaries: dict[str, list],
                 ) -> dict[str, dict[str, Any]]:
    """Pass 2: map tokens to codes and append each row to its split's Parquet file."""
    exprs = [code_expr(f, vocabs[f.name], boundaries.get(f.name)) for f in fields]
    writers: dict[int, pq.ParquetWriter] = {}
    stats = {s: {"rows": 0, "positives": 0, "oov": dict.fromkeys((f.name for f in fields), 0)} for s in SPLITS}
    for batch in pq.ParquetFile(TOKENS).iter_batches(batch_size=BATCH_ROWS):
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        coded = df.select(pl.col("_split"), pl.col(LABEL), *exprs)
        for split_id, name in enumerate(SPLITS):
            part = coded.filter(pl.col("_split") == split_id).drop("_split")
            s = stats[name]
            s["rows"] += part.height
            s["positives"] += int(part[LABEL].sum())
            for f in fields:
                col = part[f.name]
                s["oov"][f.name] += int((col.explode() if f.kind == "multi_valued" else col).eq(OOV).sum())
            table = part.to_arrow()
            if split_id not in writers:
                writers[split_id] = pq.ParquetWriter(split_path(name), table.schema)
            writers[split_id].write_table(table)
    for w in writers.values():
        w.close()
    return stats


def run(params: Params) -> dict[str, Any]:
    if not ROWS.exists():
        raise StageError(f"{ROWS} not found: run the ingest stage first (dvc repro ingest)")
    ENCODED.mkdir(parents=True, exist_ok=True)
    fields = plan_fields(params.spec)
    if not fields:
        raise StageError(f"params.yaml: dataset {params.dataset!r} has no feature columns (all label/drop)")
    n = pq.ParquetFile(ROWS).metadata.num_rows
    split = assign_splits(n, params)
    try:
        write_tokens(fields, split)
        vocabs, boundaries = fit_vocabularies(fields, params.encode.min_count)
        stats = write_splits(fields, vocabs, boundaries)
    finally:
        TOKENS.unlink(missing_ok=True)

    vocab_sizes = {f.name: FIRST_CODE + vocabs[f.name].height for f in fields}
    feature_map = {
        "dataset": params.dataset,
        "label": LABEL,
        "reserved": {"padding": PADDING, "oov": OOV, "missing": MISSING},
        "first_code": FIRST_CODE,
        "min_count": params.encode.min_count,
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        "fields": [
            {k: v for k, v in asdict(f).items() if v is not None}
            | {"vocab_size": vocab_sizes[f.name]}
            | ({"boundaries": boundaries[f.name]} if f.name in boundaries else {})
            | {"oov_rate": {s: round(stats[s]["oov"][f.name] / max(stats[s]["rows"], 1), 6) for s in ("valid", "test")}}
            for f in fields
        ],
    }
    write_json(FEATURE_MAP, feature_map)
    pl.concat([v.select(pl.lit(name).alias("field"), "code", "token", "count") for name, v in vocabs.items()]
              ).write_parquet(VOCAB)
    metrics = {
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        "positive_ratio": {s: stats[s]["positives"] / max(stats[s]["rows"], 1) for s in SPLITS},
        "num_fields": len(fields),
        "total_vocab": sum(vocab_sizes.values()),
        "max_vocab": max(vocab_sizes.values()),
        # share of (field, row) values that were unseen in train: per field in feature_map.json
        "oov_rate": {s: round(sum(stats[s]["oov"].values()) / max(stats[s]["rows"] * len(fields), 1), 6)
                     for s in ("valid", "test")},
    }
    write_json(METRICS / "encode.json", metrics)
    r = metrics["rows"]
    print(f"encode: {len(fields)} fields, {metrics['total_vocab']:,} codes; train {r['train']:,} / valid "
          f"{r['valid']:,} / test {r['test']:,} rows (click rate {metrics['positive_ratio']['train']:.3f})")
    return metrics


def decode(codes: list[int], field: str, vocab_path: Path = VOCAB) -> list[str | None]:
    """Codes of one field back to their values (reserved codes -> None): for reports and tests."""
    vocab = pl.read_parquet(vocab_path).filter(pl.col("field") == field)
    lookup = dict(zip(vocab["code"].to_list(), vocab["token"].to_list(), strict=True))
    return [lookup.get(c) for c in codes]


if __name__ == "__main__":
    stage_main(run)
