"""score: click probabilities for new raw logs, from a model that a training stage saved.

    python -m tasks.score LOG [LOG ...] [--model models/aim.pt] [--out reports/score/scores.parquet] [--unlabelled]

The logs are read as ``ingest`` reads the dataset's own log (``params.yaml``'s ``dataset``: its columns, separator,
header and side-table joins); a line that cannot be used is kept aside with its file, line and reason
(``<out>.rejected.parquet``) and counted, never dropped silently. The rows are then coded with what ``encode``
fitted on train (``data/encoded/feature_map.json``, ``vocab.parquet``): a value never seen in train is
out-of-vocabulary, as in the valid and test splits. ``--unlabelled`` reads logs without the label column (a
serving log); an implicit-feedback dataset's log (Frappe) has none in any case.

Writes one row per usable line, in the logs' order: file, line, the click probability, and the label where the log
has one (then AUC and logloss are printed). Not a DVC stage: the logs to score are not part of the pipeline.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from aim.data import from_arrow
from aim.train import metrics, predict
from tasks.common import FEATURE_MAP, LABEL, REPORTS, VOCAB, StageError, read_json, write_json
from tasks.config import ConfigError, Params, load_params
from tasks.encode import Field, apply_vocabulary
from tasks.ingest import REJECTED_SCHEMA, join_side_table, read_table
from tasks.training import MODELS_DIR, load_model

DEFAULT_OUT = REPORTS / "score" / "scores.parquet"


def read_logs(paths: list[Path], params: Params, labelled: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The usable rows of ``paths`` (with ``_file`` and ``_line``), typed as ingest types them, side tables joined;
    and the lines kept aside, with their reasons."""
    spec = params.spec
    columns = {k: c for k, c in spec.columns.items() if labelled or c.kind != "label"}
    block_bytes = params.ingest.block_mb << 20
    parts, rejected = [], []
    for path in paths:  # one file at a time, so each row knows its file
        for rows, bad, _ in read_table([path], columns, spec.sep, spec.header, spec.encoding, spec.format == "libfm",
                                       block_bytes):
            parts.append(rows.with_columns(_file=pl.lit(str(path))))
            rejected.append(bad)
    rows = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
    for join in spec.joins:
        if rows.height:
            rows, _ = join_side_table(rows, join, block_bytes, rejected)
    return rows, pl.concat(rejected).cast(REJECTED_SCHEMA)  # type: ignore[arg-type]


def encode_rows(rows: pl.DataFrame, feature_map: dict[str, Any], vocab: pl.DataFrame) -> pa.Table:
    """Every field of ``feature_map`` coded with the train vocabularies (and quantile boundaries)."""
    field_keys = set(Field.__dataclass_fields__)
    coded: dict[str, Any] = {}
    for entry in feature_map["fields"]:
        field = Field(**{k: v for k, v in entry.items() if k in field_keys})
        if field.source not in rows.columns:
            raise StageError(f"the logs have no column {field.source!r}, which field {field.name!r} of {FEATURE_MAP} "
                             f"is made from: score logs of the dataset the model was trained on")
        column = pa.chunked_array([rows[field.source].to_arrow()])
        coded[field.name] = apply_vocabulary(field, column, vocab.filter(pl.col("field") == field.name),
                                             entry.get("boundaries"))
    return pa.table(coded)


def run(params: Params, paths: list[Path], model_path: Path, out: Path, unlabelled: bool = False) -> dict[str, Any]:
    for needed in (FEATURE_MAP, VOCAB, model_path):
        if not needed.exists():
            raise StageError(f"{needed} not found: run the pipeline first (dvc repro)")
    feature_map = read_json(FEATURE_MAP)
    if feature_map["dataset"] != params.dataset:
        raise StageError(f"{FEATURE_MAP} was encoded from dataset {feature_map['dataset']!r}, but params.yaml has "
                         f"dataset {params.dataset!r}: score with the params the model was trained with")
    labelled = not unlabelled and any(c.kind == "label" for c in params.spec.columns.values())
    model, fields = load_model(model_path)
    rows, rejected = read_logs(paths, params, labelled)
    reasons = Counter(rejected["reason"].to_list())
    if rows.height == 0:
        raise StageError(f"no usable rows in {[str(p) for p in paths]}: all {len(rejected)} lines rejected "
                         f"({dict(reasons.most_common(3))})")
    codes = encode_rows(rows, feature_map, pl.read_parquet(VOCAB))
    label = rows[LABEL].to_numpy().astype(np.float32) if labelled else np.zeros(rows.height, np.float32)
    data = from_arrow(codes.append_column(LABEL, pa.array(label)), fields)
    probabilities = predict(model, data)
    scores = pl.DataFrame({"file": rows["_file"], "line": rows["_line"], "probability": probabilities})
    if labelled:
        scores = scores.with_columns(label=pl.Series(label.astype(np.int8)))
    out.parent.mkdir(parents=True, exist_ok=True)
    scores.write_parquet(out)
    rejected_path = out.with_suffix(".rejected.parquet")
    rejected.write_parquet(rejected_path)
    summary: dict[str, Any] = {"model": str(model_path), "rows_scored": rows.height, "rows_rejected": len(rejected),
                               "rejected_by_reason": dict(sorted(reasons.items())), "out": str(out),
                               "rejected": str(rejected_path)}
    if labelled:
        summary |= metrics(label, probabilities)
    write_json(out.with_suffix(".json"), summary)
    print(f"score: {rows.height:,} rows scored with {model_path} -> {out} ({len(rejected):,} lines rejected"
          + (f": {', '.join(f'{k} {v}' for k, v in reasons.most_common(4))}" if reasons else "") + ")"
          + (f"; AUC {summary['auc']:.4f}, logloss {summary['logloss']:.4f}" if labelled else ""))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="raw log files in the dataset's format")
    parser.add_argument("--model", type=Path, default=MODELS_DIR / "aim.pt",
                        help="a saved model (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the scores' Parquet file (default: %(default)s)")
    parser.add_argument("--unlabelled", action="store_true", help="the logs have no label column")
    args = parser.parse_args(argv)
    try:
        run(load_params(), args.logs, args.model, args.out, args.unlabelled)
    except (ConfigError, StageError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
