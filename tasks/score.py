"""score: click probabilities for new raw logs, from a model that a training stage saved.

    python -m tasks.score LOG [LOG ...] [--model models/aim.pt] [--out reports/score/scores.parquet] [--unlabelled]

The logs are read as ``ingest`` reads the dataset's own log (``params.yaml``'s ``dataset``: its columns, separator,
header and side-table joins), in blocks of whole lines, so memory stays flat on a large log: each block is coded,
scored and written before the next is read. A line that cannot be used is kept aside with its file, line and reason
(``<out>.rejected.parquet``) and counted, never dropped silently. Rows are coded with what ``encode`` fitted on train
(``data/encoded/feature_map.json``, ``vocab.parquet``): a value never seen in train is out-of-vocabulary, as in the
valid and test splits. ``--unlabelled`` reads logs without the label column (a serving log); an implicit-feedback
dataset's log (Frappe) has none in any case.

Writes one row per usable line, in the logs' order: file, line, the click probability, and the label where the log
has one (then AUC, logloss and calibration, the mean predicted CTR over the observed click rate and the expected
calibration error, are printed and kept in ``<out>.json`` with the counts: has a new day's click rate drifted from
the one the model learned?). Not a DVC stage: the logs to
score are not the pipeline's inputs.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from aim.data import from_arrow
from aim.metrics import calibration
from aim.train import metrics, predict
from tasks.common import (
    FEATURE_MAP,
    LABEL,
    REPORTS,
    VOCAB,
    StageError,
    progress_enabled,
    read_json,
    stage_main,
    write_json,
)
from tasks.config import Params
from tasks.encode import Field, apply_vocabulary
from tasks.ingest import REJECTED_SCHEMA, ParquetStream, raw_bytes, read_side_table, read_table
from tasks.training import MODELS_DIR, load_fields, load_model

DEFAULT_OUT = REPORTS / "score" / "scores.parquet"


def read_vocabularies(path: Path = VOCAB) -> dict[str, pl.DataFrame]:
    """vocab.parquet as one (token, code) table per field."""
    vocab = pl.read_parquet(path, columns=["field", "token", "code"])
    return {name: part.drop("field") for (name,), part in vocab.partition_by("field", as_dict=True).items()}


def encode_rows(rows: pl.DataFrame, feature_map: dict[str, Any], vocabularies: dict[str, pl.DataFrame]) -> pa.Table:
    """Every field of ``feature_map`` coded with the train vocabularies (and quantile boundaries)."""
    field_keys = set(Field.__dataclass_fields__)
    empty = pl.DataFrame(schema={"token": pl.String, "code": pl.Int32})  # a field whose every value was too rare
    coded: dict[str, Any] = {}
    for entry in feature_map["fields"]:
        field = Field(**{k: v for k, v in entry.items() if k in field_keys})
        if field.source not in rows.columns:
            raise StageError(f"the logs have no column {field.source!r}, which field {field.name!r} of {FEATURE_MAP} "
                             f"is made from: score logs of the dataset the model was trained on")
        column = pa.chunked_array([rows[field.source].to_arrow()])
        coded[field.name] = apply_vocabulary(field, column, vocabularies.get(field.name, empty),
                                             entry.get("boundaries"))
    return pa.table(coded)


def check_paths(paths: list[Path], out: Path) -> None:
    """Refuse, before any work, a directory given as a log and an ``--out`` that does not end in ``.parquet`` (the
    scores were written as Parquet whatever the name said, so ``--out s.csv`` gave a csv-named Parquet file)."""
    for path in paths:
        if path.is_dir():
            raise StageError(f"{path} is a directory: give the log files to score (e.g. {path / '*'})")
    if out.suffix != ".parquet":
        raise StageError(f"--out {out}: the scores are written as Parquet, so the name must end in .parquet "
                         f"(e.g. --out {out.with_suffix('.parquet')}); polars' read_parquet(...).write_csv() gives "
                         "a csv")


def label_hint(rejected: pl.DataFrame, n: int, labelled: bool) -> str:
    """Where most lines are one field short of a labelled spec (or one over an unlabelled one), the flag is the
    likelier mistake than the log: say so."""
    details = Counter(rejected["detail"].to_list())
    short, long = details[f"{n - 1} fields, expected {n}"], details[f"{n + 1} fields, expected {n}"]
    if labelled and short >= 0.9 * rejected.height:
        return f": {short:,} lines are one field short of the spec, as a log without its label column is (--unlabelled)"
    if not labelled and long >= 0.9 * rejected.height:
        return f": {long:,} lines have one field more than the spec without its label: labelled? (drop --unlabelled)"
    return ""


def run(params: Params, paths: list[Path], model_path: Path, out: Path, unlabelled: bool = False) -> dict[str, Any]:
    check_paths(paths, out)
    for needed in (FEATURE_MAP, VOCAB, model_path):
        if not needed.exists():
            raise StageError(f"{needed} not found: run the pipeline first (dvc repro)")
    feature_map = read_json(FEATURE_MAP)
    if feature_map["dataset"] != params.dataset:
        raise StageError(f"{FEATURE_MAP} was encoded from dataset {feature_map['dataset']!r}, but params.yaml has "
                         f"dataset {params.dataset!r}: score with the params the model was trained with")
    spec = params.spec
    labelled = not unlabelled and any(c.kind == "label" for c in spec.columns.values())
    columns = {k: c for k, c in spec.columns.items() if labelled or c.kind != "label"}
    try:
        model, fields = load_model(model_path)
    except ValueError as err:  # an older file, or a model of fields these data lack: the message says which
        raise StageError(str(err)) from None
    encoded = load_fields(feature_map)
    if fields != encoded:  # codes from another vocabulary would index other rows of the model's tables
        diff = next((f"field {a.name!r}: {a} in the model, {b} there" for a, b in zip(fields, encoded, strict=False)
                     if a != b), f"{len(fields)} fields in the model, {len(encoded)} there")
        raise StageError(f"{model_path} was trained on other encoded data than {FEATURE_MAP} ({diff}): score with a "
                         f"model of the last `dvc repro`, or run it again")
    vocabularies = read_vocabularies()
    block_bytes = params.ingest.block_mb << 20
    rejected: list[pl.DataFrame] = []
    sides = [(join.key, read_side_table(join, block_bytes, rejected, spec.missing_values)[0])
             for join in spec.joins]  # read once
    labels, probabilities = [], []
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = ParquetStream(out)
    progress = tqdm(total=raw_bytes(paths), unit="B", unit_scale=True, desc="score", disable=not progress_enabled())
    try:
        for path in paths:  # one file at a time, so each row knows its file
            for rows, bad, counts in read_table([path], columns, spec.sep, spec.header, spec.encoding,
                                                spec.format == "libfm", block_bytes, quote=spec.quote,
                                                parquet=spec.format == "parquet", missing=spec.missing_values):
                progress.update(counts["bytes"])
                rejected.append(bad)
                if rows.height == 0:
                    continue
                for key, side in sides:
                    rows = rows.join(side, on=key, how="left", maintain_order="left")
                label = (rows[LABEL].to_numpy().astype(np.float32) if labelled
                         else np.zeros(rows.height, np.float32))
                data = from_arrow(encode_rows(rows, feature_map, vocabularies).append_column(LABEL, pa.array(label)),
                                  fields)
                probability = predict(model, data)
                scores = {"file": pa.repeat(str(path), rows.height), "line": rows["_line"].to_arrow(),
                          "probability": pa.array(probability)}
                if labelled:
                    scores["label"] = pa.array(label.astype(np.int8))
                    labels.append(label)
                probabilities.append(probability)
                writer.write(pa.table(scores))
    finally:
        progress.close()
        writer.close()
    bad_lines = pl.concat(rejected).cast(REJECTED_SCHEMA) if rejected else pl.DataFrame(schema=REJECTED_SCHEMA)  # type: ignore[arg-type]
    reasons = Counter(bad_lines["reason"].to_list())
    scored = sum(len(p) for p in probabilities)
    if scored == 0:
        out.unlink(missing_ok=True)
        raise StageError(f"no usable rows in {[str(p) for p in paths]}: all {bad_lines.height} lines rejected "
                         f"({dict(reasons.most_common(3))}){label_hint(bad_lines, len(columns), labelled)}")
    rejected_path = out.with_suffix(".rejected.parquet")
    bad_lines.write_parquet(rejected_path)
    summary: dict[str, Any] = {"model": str(model_path), "rows_scored": scored, "rows_rejected": bad_lines.height,
                               "rejected_by_reason": dict(sorted(reasons.items())), "out": str(out),
                               "rejected": str(rejected_path)}
    if labelled:
        labels_all, probabilities_all = np.concatenate(labels), np.concatenate(probabilities)
        summary |= metrics(labels_all, probabilities_all)
        c = calibration(labels_all, probabilities_all)  # a new day's log: has the click rate drifted from training's?
        summary |= {key: c[key] for key in ("predicted_over_observed", "calibration_error")}
    write_json(out.with_suffix(".json"), summary)
    print(f"score: {scored:,} rows scored with {model_path} -> {out} ({bad_lines.height:,} lines rejected"
          + (f": {', '.join(f'{k} {v}' for k, v in reasons.most_common(4))}" if reasons else "") + ")"
          + (f"; AUC {summary['auc']:.4f}, logloss {summary['logloss']:.4f}, mean predicted / observed CTR "
             f"{_ratio(summary['predicted_over_observed'])}, calibration error {summary['calibration_error']:.4f}"
             if labelled else ""))
    return summary


def _ratio(value: float | None) -> str:
    return "n/a (no clicks)" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="raw log files in the dataset's format")
    parser.add_argument("--model", type=Path, default=MODELS_DIR / "aim.pt",
                        help="a saved model (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the scores' Parquet file, named *.parquet (default: %(default)s)")
    parser.add_argument("--unlabelled", action="store_true", help="the logs have no label column")
    args = parser.parse_args(argv)
    stage_main(lambda params: run(params, args.logs, args.model, args.out, args.unlabelled), checked=True)


if __name__ == "__main__":
    main()
