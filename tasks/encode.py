"""encode: typed rows -> train/valid/test splits of int32 codes, plus the feature map.

Order matters, to keep test data out of every fitted statistic:
  1. split first (a seeded permutation cut at the fractions, or by time),
  2. fit on train only: vocabularies (train counts per value; values under ``min_count`` -> out-of-
     vocabulary) and quantile boundaries,
  3. map every split with the train vocabularies; values never seen in train become out-of-vocabulary.

Each field's codes: 0 padding (multi-valued lists only), 1 out-of-vocabulary, 2 missing, 3.. the
train values by descending frequency (ties in order of first appearance, so the same data always
gives the same codes).

Work is done field by field, two at a time on two threads: the column is read from Parquet,
dictionary-encoded once in Arrow (C++ hashing), counted with a bincount over the dictionary indices and
mapped through a lookup table. Only int32 codes are held for the whole table, so memory stays low on
large logs.
Outputs: data/encoded/{train,valid,test}.parquet, feature_map.json, vocab.parquet; metrics/encode.json.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.common import (
    ENCODED,
    FEATURE_MAP,
    FIRST_CODE,
    LABEL,
    MANIFEST,
    METRICS,
    MISSING,
    OOV,
    PADDING,
    ROWS,
    SPLITS,
    VOCAB,
    StageError,
    check_same_dataset,
    progress_enabled,
    read_json_if_present,
    split_path,
    stage_main,
    write_json,
)
from tasks.config import DatasetSpec, Params, derived_field_name


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
                fields += [Field(derived_field_name(name, d), "categorical", name, derive=d) for d in col.derive]
            elif col.kind == "flag" and col.field not in flag_fields:
                flag_fields.add(col.field or name)
                n_flags = sum(c.kind == "flag" and c.field == col.field for c in columns.values())
                fields.append(Field(col.field or name, "multi_valued", col.field or name, max_length=n_flags))
    return fields


def assign_splits(n: int, params: Params, warnings: list[str] | None = None) -> np.ndarray:
    """Split id per row (0 train, 1 valid, 2 test), exact fractions, seeded.

    A time split puts the rows without a time (null, or NaN in a float column) in train, never in valid or test,
    and appends a warning with their count to ``warnings``; more of them than train holds is an error."""
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
        if not (schema[column].is_temporal() or schema[column].is_numeric()):  # a string would sort as text
            orderable = [name for name, dtype in schema.items()
                         if name != LABEL and (dtype.is_temporal() or dtype.is_numeric())]
            raise StageError(f"params.yaml: encode.split.column {column!r} is {schema[column]} in {ROWS}; a time "
                             f"split orders the rows by a timestamp or a number (such columns: {orderable})")
        times = pl.read_parquet(ROWS, columns=[column])[column]
        if times.dtype.is_float():  # NaN sorts after every number: it would land in test
            times = times.fill_nan(None)
        untimed = times.null_count()
        if untimed > cuts[0]:
            raise StageError(f"params.yaml: encode.split.column {column!r} is missing in {untimed:,} of {n:,} rows of "
                             f"{ROWS}, more than the {cuts[0]:,} rows of train, where a time split puts the rows "
                             "without a time: fill the column, or split at random (encode.split.method: random)")
        if untimed and warnings is not None:
            warnings.append(f"encode: warning: {untimed:,} of {n:,} rows ({untimed / n:.1%}) have no {column!r} "
                            "(encode.split.column): a time split cannot place them, so they are all in train, none "
                            "in valid or test")
        # Rows without a time sort first, so they fall in train (checked above); then earliest train, latest test.
        order = np.argsort(times.to_physical().fill_null(np.iinfo(np.int64).min).to_numpy(), kind="stable")
    split = np.empty(n, np.int8)
    split[order[: cuts[0]]], split[order[cuts[0] : cuts[1]]], split[order[cuts[1] :]] = 0, 1, 2
    return split


def field_tokens(f: Field, column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray | None]:
    """The values a field's vocabulary is built over, for every row (multi-valued: flattened, with the
    number of tokens per row; a null list gets -1)."""
    if f.kind == "multi_valued":
        lists = pc.list_slice(column.combine_chunks(), 0, f.max_length)
        lengths = pc.list_value_length(lists).fill_null(-1).to_numpy()
        return pc.list_flatten(lists), lengths
    if f.kind == "numeric" and f.bucketing != "quantile":
        x = pl.col(f.name)
        if f.bucketing == "criteo_log":  # floor(ln(x)^2) for x > 2, else the integer itself (the cast truncates)
            x = pl.when(x > 2).then(x.log().pow(2).floor()).otherwise(x)
        # One Polars expression over a frame, not eager Series steps: about 5x faster than numpy's log and
        # 2x faster than the same steps on a Series. NaN and inf are missing.
        frame = pl.DataFrame({f.name: pl.from_arrow(column)})
        return frame.select(x.cast(pl.Int64, strict=False)).to_series().to_arrow(), None
    if f.derive:
        ts = pl.from_arrow(column)
        assert isinstance(ts, pl.Series)
        part = {"hour": ts.dt.hour(), "weekday": ts.dt.weekday(), "weekend": ts.dt.weekday() >= 6,
                "day": ts.dt.day(), "month": ts.dt.month()}[f.derive]
        return part.cast(pl.Int64).to_arrow(), None
    if pa.types.is_dictionary(column.type):  # read_column's text columns: already dictionary-encoded
        return column, None
    values = column.combine_chunks()
    # Polars hands over large_string; Arrow hashes plain string (32-bit offsets) about a third faster.
    if pa.types.is_large_string(values.type) and values.nbytes < 1 << 31:
        values = values.cast(pa.string())
    return values, None


INT64_LIMIT = 2.0**63  # Int64 holds [-2**63, 2**63): a float outside it casts to null


def integer_token_warnings(f: Field, column: pa.ChunkedArray) -> list[str]:
    """What a numeric field's integer tokens lose, as warning lines: under ``identity`` the fractional part of
    every non-integer value (the cast truncates), and under ``identity`` or ``criteo_log`` (whose values up to 2
    are cast as they are) any value beyond the 64-bit integer range, which the cast makes missing. Counted over
    every row of the log; NaN and null are missing values already, not counted."""
    if f.kind != "numeric" or f.bucketing == "quantile":
        return []
    x = pl.from_arrow(column)
    assert isinstance(x, pl.Series)
    finite = x.is_finite().fill_null(False)
    present = int(finite.sum())
    cast_as_is = finite if f.bucketing == "identity" else finite & (x <= 2)  # criteo_log: the log of larger ones
    beyond = cast_as_is & ((x >= INT64_LIMIT) | (x < -INT64_LIMIT))
    found = []
    if n_beyond := int(beyond.sum()):
        largest = float(x.filter(beyond).abs().max())  # type: ignore[arg-type]
        found.append(f"encode: warning: field {f.name!r} (bucketing: {f.bucketing}) has {n_beyond:,} values beyond "
                     f"the 64-bit integer range (largest magnitude {largest:.3g}), which cannot become integer tokens: "
                     "they were coded as missing. Use `bucketing: quantile`")
    if f.bucketing == "identity":
        fractional = int((finite & (x != x.floor())).sum())
        if fractional:
            found.append(f"encode: warning: field {f.name!r} (bucketing: identity) has {fractional:,} non-integer "
                         f"values ({fractional / present:.1%} of its {present:,} values): identity reads integers and "
                         "truncates the rest toward zero (0.2 and 0.9 both become token 0). For a continuous number "
                         "use `bucketing: quantile` (with `buckets: n`)")
    return found


def dictionary_indices(tokens: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Distinct values in first-appearance order, and each token's index into them (int32, -1 = null).

    Dictionary chunks (one per Parquet row group) are unified, which hashes only the chunks' dictionaries,
    not every row, and gives the same order and indices as ``dictionary_encode`` of the plain values.
    """
    if isinstance(tokens, pa.ChunkedArray) and pa.types.is_dictionary(tokens.type):
        unified = tokens.unify_dictionaries()
        if unified.num_chunks == 0:
            return pa.array([], tokens.type.value_type), np.empty(0, np.int32)
        idx = np.concatenate([c.indices.fill_null(-1).to_numpy() for c in unified.chunks]).astype(np.int32, copy=False)
        return unified.chunk(0).dictionary, idx
    encoded = tokens.dictionary_encode()
    return encoded.dictionary, encoded.indices.fill_null(-1).to_numpy()


def read_column(source: str, column_type: pa.DataType) -> pa.ChunkedArray:
    """One column of rows.parquet. Text comes straight from Parquet's dictionary pages as dictionary chunks
    (3x faster for low-cardinality columns and a third faster for high ones than reading strings and hashing
    every row again); everything else through Polars, whose reader is several times faster than pyarrow's."""
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        return pq.read_table(ROWS, columns=[source], read_dictionary=[source]).column(0)
    return pl.read_parquet(ROWS, columns=[source]).to_arrow().column(0)


def encode_field(f: Field, column: pa.ChunkedArray, train_rows: np.ndarray, min_count: int,
                 ) -> tuple[np.ndarray | pa.Array, pl.DataFrame, list[float] | None]:
    """One field: fit its vocabulary on the train rows (``train_rows``, ascending row indices), then code
    every row.

    Returns (codes: int32 per row, or a List(Int32) array), the vocabulary (token, count, code) and, for
    quantile fields, the bucket boundaries. Values are dictionary-encoded once in Arrow's C++ hash table;
    counting is a bincount over the dictionary indices and mapping is a lookup table: no string is
    touched per row after that.
    """
    if f.kind == "numeric" and f.bucketing == "quantile":
        x = column.to_numpy()
        train_x = x[train_rows]
        present = ~np.isnan(train_x)
        train = train_x[present]
        cuts = quantile_cuts(train, f.buckets or 1)
        codes = bucket_codes(x, cuts)
        counts = np.bincount(codes[train_rows][present] - FIRST_CODE, minlength=len(cuts) + 1)
        vocab = pl.DataFrame({"token": [str(i) for i in range(len(cuts) + 1)], "count": counts.astype(np.int64),
                              "code": np.arange(FIRST_CODE, FIRST_CODE + len(cuts) + 1, dtype=np.int32)})
        return codes, vocab, cuts

    tokens, lengths = field_tokens(f, column)
    dictionary, idx = dictionary_indices(tokens)  # idx: int32 per token; -1 = missing
    # Train counts by one gather of the train rows' indices, shifted so that missing (-1) counts in slot 0.
    if lengths is None:
        train_idx = idx[train_rows]
    else:  # each token belongs to the row it came from
        in_train = np.zeros(len(lengths), bool)
        in_train[train_rows] = True
        train_idx = idx[np.repeat(in_train, np.maximum(lengths, 0))]
    counts = np.bincount(train_idx + 1, minlength=len(dictionary) + 1)[1:]
    # Most frequent first; ties keep first-appearance order, so the same data always gives the same codes.
    order = np.argsort(-counts, kind="stable")
    kept = order[counts[order] >= min_count]
    lut = np.full(len(counts) + 1, OOV, np.int32)  # the extra last slot is for idx == -1
    lut[kept] = np.arange(FIRST_CODE, FIRST_CODE + len(kept), dtype=np.int32)
    lut[-1] = MISSING
    vocab = pl.DataFrame({"token": pc.cast(dictionary.take(pa.array(kept)), pa.string()),
                          "count": counts[kept].astype(np.int64),
                          "code": np.arange(FIRST_CODE, FIRST_CODE + len(kept), dtype=np.int32)})
    return codes_from_lut(lut, idx, lengths), vocab, None


def apply_vocabulary(f: Field, column: pa.ChunkedArray, vocab: pl.DataFrame, cuts: list[float] | None,
                     ) -> np.ndarray | pa.Array:
    """Code a column with a vocabulary fitted before: ``vocab`` holds the field's rows of vocab.parquet (token,
    code) and ``cuts`` a quantile field's boundaries. How ``tasks.score`` codes new logs; a value not in the
    vocabulary is out-of-vocabulary, as in the valid and test splits (a test holds this equal to the codes
    ``encode_field`` gives every split)."""
    if f.kind == "numeric" and f.bucketing == "quantile":
        return bucket_codes(column.to_numpy(), cuts or [])
    tokens, lengths = field_tokens(f, column)
    dictionary, idx = dictionary_indices(tokens)
    # Vocabulary tokens are stored as text, so this data's distinct values are looked up as text too.
    position = pc.index_in(pc.cast(dictionary, pa.string()), value_set=vocab["token"].to_arrow().cast(pa.string()))
    found = position.is_valid().to_numpy(zero_copy_only=False)
    lut = np.full(len(dictionary) + 1, OOV, np.int32)  # the extra last slot is for idx == -1
    lut[:-1][found] = vocab["code"].to_numpy()[position.drop_null().to_numpy()]
    lut[-1] = MISSING
    return codes_from_lut(lut, idx, lengths)


def quantile_cuts(train: np.ndarray, buckets: int) -> list[float]:
    """A quantile field's boundaries: the train values' quantiles at 1/buckets .. (buckets-1)/buckets, less any
    boundary that would leave a bucket without train rows (its code would have no train row to learn from).

    A value equal to a boundary goes to the bucket below it (``bucket_codes``), so a boundary at the train maximum
    leaves the top bucket empty: a constant column gave two codes, one of them never seen, and hid that it is
    constant. Such a boundary moves down to the largest value below the maximum (the maximum's rows then get their
    own bucket), or goes where there is none. A boundary with no train value between it and the one below
    (interpolated quantiles on a few distinct values) is dropped, merging that bucket into the next.
    """
    if not train.size:
        return []
    cuts = np.unique(np.quantile(train, np.arange(1, buckets) / buckets))
    counts = np.bincount(np.searchsorted(cuts, train, side="left"), minlength=len(cuts) + 1)
    kept = cuts[counts[:-1] > 0]
    top = train.max()
    if kept.size and kept[-1] >= top:  # nothing above the last boundary: the top bucket would be empty
        kept = kept[:-1]
        below = train[train < top]
        if below.size and (not kept.size or below.max() > kept[-1]):
            kept = np.append(kept, below.max())
    return kept.tolist()


def bucket_codes(x: np.ndarray, cuts: list[float]) -> np.ndarray:
    """A quantile field's codes: the first code plus the number of boundaries below the value; NaN is missing."""
    bucket = np.searchsorted(np.asarray(cuts), x, side="left")
    return np.where(np.isnan(x), MISSING, FIRST_CODE + bucket).astype(np.int32)


def codes_from_lut(lut: np.ndarray, idx: np.ndarray, lengths: np.ndarray | None) -> np.ndarray | pa.Array:
    """Each token's code, ``lut[idx]`` (idx -1, a missing value, reads the last slot); a multi-valued field's codes
    go back into their rows' lists, where a null list becomes [MISSING] and an empty one stays empty (padding)."""
    codes = lut[idx]
    if lengths is None:
        return codes
    out_lengths = np.where(lengths < 0, 1, lengths)
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(out_lengths, out=offsets[1:])
    flat = np.full(offsets[-1], MISSING, np.int32)
    src_starts = np.zeros(len(lengths), np.int64)
    np.cumsum(np.maximum(lengths, 0)[:-1], out=src_starts[1:])
    shift = np.repeat(offsets[:-1] - src_starts, np.maximum(lengths, 0))
    flat[np.arange(len(codes)) + shift] = codes
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _oov_by_split(codes: np.ndarray | pa.Array, split: np.ndarray) -> np.ndarray:
    if isinstance(codes, pa.ListArray):
        lengths = pc.list_value_length(codes).to_numpy()
        split, codes = np.repeat(split, lengths), pc.list_flatten(codes).to_numpy()
    return np.bincount(split[codes == OOV], minlength=3)


def run(params: Params) -> dict[str, Any]:
    if not ROWS.exists():
        raise StageError(f"{ROWS} not found: run the ingest stage first (dvc repro ingest)")
    manifest = read_json_if_present(MANIFEST)
    check_same_dataset(ROWS, manifest and manifest.get("dataset"), params.dataset)
    ENCODED.mkdir(parents=True, exist_ok=True)
    fields = plan_fields(params.spec)
    if not fields:
        raise StageError(f"params.yaml: dataset {params.dataset!r} has no feature columns (all label/drop)")
    rows_file = pq.ParquetFile(ROWS)
    schema = rows_file.schema_arrow
    warnings: list[str] = []  # printed, and kept in metrics/encode.json for the summary to repeat
    split = assign_splits(rows_file.metadata.num_rows, params, warnings)
    train_rows = np.flatnonzero(split == 0)  # found once: every field's vocabulary is fitted on these rows
    label = rows_file.read(columns=[LABEL]).column(LABEL).to_numpy()
    coded: dict[str, np.ndarray | pa.Array] = {}
    vocabs: dict[str, pl.DataFrame] = {}
    boundaries: dict[str, list[float]] = {}
    oov: dict[str, np.ndarray] = {}
    train_code: dict[str, int | None] = {}  # the one code every train row has, where they all share one
    field_warnings: dict[str, list[str]] = {}

    def encode_column(f: Field) -> tuple[np.ndarray | pa.Array, pl.DataFrame, list[float] | None, np.ndarray,
                                         int | None, list[str]]:
        column = read_column(f.source, schema.field(f.source).type)  # one column at a time: memory stays low
        codes, vocab, cuts = encode_field(f, column, train_rows, params.encode.min_count)
        return (codes, vocab, cuts, _oov_by_split(codes, split), single_code(codes, train_rows),
                integer_token_warnings(f, column))

    # Two fields at a time: Arrow's hashing and numpy's gathers release the GIL, so both cores work. Results
    # are taken in field order, so the output does not depend on which thread finished first.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = pool.map(encode_column, fields)
        bar = tqdm(done, total=len(fields), desc="encode", unit="field", disable=not progress_enabled())
        for f, (codes, vocab, cuts, field_oov, one_code, lost) in zip(fields, bar, strict=True):
            coded[f.name], vocabs[f.name], oov[f.name] = codes, vocab, field_oov
            train_code[f.name], field_warnings[f.name] = one_code, lost
            if cuts is not None:
                boundaries[f.name] = cuts

    # Every field's codes side by side (numpy columns without a copy), then each split a filter of them.
    codes_table = pl.DataFrame({LABEL: label, **{k: pl.from_arrow(v) if isinstance(v, pa.Array) else v
                                                 for k, v in coded.items()}})
    stats: dict[str, dict[str, Any]] = {}
    for split_id, name in enumerate(SPLITS):
        part = codes_table.filter(pl.Series(split == split_id))  # each split keeps the log's row order
        # zstd (the default) writes a third slower; column statistics cost another third and no reader here
        # filters on them.
        part.write_parquet(split_path(name), compression="lz4", statistics=False)
        stats[name] = {"rows": part.height, "positives": int(part[LABEL].sum()),
                       "oov": {k: int(v[split_id]) for k, v in oov.items()}}

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
    uninformative = uninformative_fields(fields, vocabs, train_code, params.encode.min_count)
    metrics["uninformative_fields"] = sorted(uninformative)
    warnings += [w for f in fields for w in field_warnings[f.name]]
    if warnings:  # only when there is something to say: a clean log's metrics stay as they were
        metrics["warnings"] = warnings
    write_json(METRICS / "encode.json", metrics)
    r = metrics["rows"]
    print(f"encode: {len(fields)} fields, {metrics['total_vocab']:,} codes; train {r['train']:,} / valid "
          f"{r['valid']:,} / test {r['test']:,} rows (click rate {metrics['positive_ratio']['train']:.3f})")
    for line in warnings:
        print(line)
    for name, why in uninformative.items():
        print(f"encode: warning: field {name!r} {why}: it carries no signal (leave it out of the spec: `kind: drop`, "
              "or out of a timestamp's `derive`)")
    return metrics


def single_code(codes: np.ndarray | pa.Array, train_rows: np.ndarray) -> int | None:
    """The code every train row of a single-valued field has, if they all have the same one (else None)."""
    if isinstance(codes, pa.Array) or not train_rows.size:  # multi-valued: lists are not checked
        return None
    train = codes[train_rows]
    return int(train[0]) if (train == train[0]).all() else None


def uninformative_fields(fields: list[Field], vocabs: dict[str, pl.DataFrame], train_code: dict[str, int | None],
                         min_count: int) -> dict[str, str]:
    """Fields whose train rows all share one code, or with no value seen ``min_count`` times: a constant column,
    an empty one, or one whose every value is rare. A model reads them as a constant; the user should know.

    ``train_code``: per field, the one code of all its train rows, or None. Codes, not vocabulary counts, so that
    a numeric field's buckets are judged as the model sees them (a constant column's quantile bucketing gave a
    second bucket that no train row fell in, and passed a check for a one-row vocabulary)."""
    found = {}
    for f in fields:
        vocab, code = vocabs[f.name], train_code.get(f.name)
        if vocab.height == 0:
            found[f.name] = f"has no value seen at least {min_count} times in train (every value missing or rarer)"
        elif code == MISSING:
            found[f.name] = "is missing in every train row"
        elif code is not None and f.bucketing == "quantile":
            found[f.name] = "has one value in every train row (one quantile bucket)"
        elif code is not None:
            token = vocab.filter(pl.col("code") == code)["token"]
            found[f.name] = f"has the one value {token[0]!r} in every train row"
    return found


def decode(codes: list[int], field: str, vocab_path: Path = VOCAB) -> list[str | None]:
    """Codes of one field back to their values (reserved codes -> None): for reports and tests."""
    vocab = pl.read_parquet(vocab_path).filter(pl.col("field") == field)
    lookup = dict(zip(vocab["code"].to_list(), vocab["token"].to_list(), strict=True))
    return [lookup.get(c) for c in codes]


if __name__ == "__main__":
    stage_main(run)
