"""validate: a data-quality gate between encode and training, run with Great Expectations.

One suite per data asset:
  interim          label exists, is 0/1, never null, both labels present; row count equals ingest's ``rows_out``
  train/valid/test label is 0/1 with both labels present; no column is null; every code lies in its field's vocabulary
                   [0, vocab_size); row count equals encode's; positive ratio within train's ± tolerance

Multi-valued fields are lists, which GX cannot check, so each becomes two scalar columns, ``<field>__min``
and ``<field>__max`` (an empty list counts as padding, 0; a null list stays null and fails not-null).

Writes reports/validation/results.json (every GX result, per asset), reports/validation/data_docs/
(HTML) and metrics/validate.json; if anything failed it raises StageError naming each failure, after
all outputs are written, so the report of a failed gate is there to read.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import polars.selectors as cs

from tasks.common import (
    FEATURE_MAP,
    LABEL,
    MARKER_HINT,
    METRICS,
    REJECTED,
    REPORTS,
    ROWS,
    SPLITS,
    StageError,
    check_same_dataset,
    input_path,
    read_json,
    split_path,
    stage_main,
    write_json,
)
from tasks.config import Params

OUT = REPORTS / "validation"
RESULTS = OUT / "results.json"
DATA_DOCS = OUT / "data_docs"
METRICS_FILE = METRICS / "validate.json"

# One expectation as plain data until GX is imported: (GX class name, kwargs, readable name).
Check = tuple[str, dict[str, Any], str]


def label_checks(asset: str) -> list[Check]:
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": LABEL}, f"{asset}: label not null"),
        ("ExpectColumnValuesToBeInSet", {"column": LABEL, "value_set": [0, 1]}, f"{asset}: label is 0/1"),
        # AUC, which the search, early stopping and the evaluation rest on, needs both labels in every split.
        # (a mean strictly between 0 and 1: GX's distinct-values check reports no observed set and breaks its docs)
        ("ExpectColumnMeanToBeBetween", {"column": LABEL, "min_value": 0, "max_value": 1, "strict_min": True,
                                         "strict_max": True}, f"{asset}: both labels present (0 < click rate < 1)"),
    ]


def interim_asset(rows_out: int) -> tuple[pl.DataFrame, list[Check]]:
    # Only the label is checked here, so only the label is read: converting every String / List /
    # Datetime column of the full table to pandas would cost more than the whole rest of the gate.
    # Without a label we still read one column, so the row count stays true and `label` fails to exist.
    names = list(pl.read_parquet_schema(ROWS))
    df = pl.read_parquet(ROWS, columns=[LABEL] if LABEL in names else names[:1])
    checks: list[Check] = [
        ("ExpectColumnToExist", {"column": LABEL}, "interim: label column exists"),
        *label_checks("interim"),
        ("ExpectTableRowCountToEqual", {"value": rows_out}, f"interim: row count equals ingest's {rows_out}"),
    ]
    return df, checks


def rejected_asset(spec_paths: list[str], rows_in: int, max_fraction: float) -> tuple[pl.DataFrame, list[Check]]:
    """The log's rejected lines (side tables' are counted apart, under ingest's `joins`), at most a share of it.

    Each rejected line is kept with its reason, but the rows that remain can be a biased rest: a Latin-1 file
    read as UTF-8 loses exactly the rows with accented values, a label spelled two ways loses one spelling's.
    """
    files = [str(input_path(p)) for p in spec_paths]  # as ingest names them
    df = pl.read_parquet(REJECTED, columns=["file"]).filter(pl.col("file").is_in(files))
    allowed = math.floor(max_fraction * rows_in)
    return df, [("ExpectTableRowCountToBeBetween", {"min_value": 0, "max_value": allowed},
                 f"ingest: rejected lines at most {max_fraction:.0%} of the {rows_in:,} read ({allowed:,})")]


def split_asset(
    split: str, fields: list[dict[str, Any]], rows: int, ratio: float, tolerance: float
) -> tuple[pl.DataFrame, list[Check]]:
    df = pl.read_parquet(split_path(split))
    # The band is the configured tolerance plus 4 binomial standard errors: a small split's click rate
    # wanders by chance (300 rows: sd 0.025), and the gate is for real drift, not for sampling noise.
    band = tolerance + 4 * math.sqrt(ratio * (1 - ratio) / max(rows, 1))
    checks: list[Check] = [
        *label_checks(split),
        ("ExpectTableRowCountToEqual", {"value": rows}, f"{split}: row count equals encode's {rows}"),
        (
            "ExpectColumnMeanToBeBetween",
            {"column": LABEL, "min_value": ratio - band, "max_value": ratio + band},
            f"{split}: positive ratio within train's {ratio:.4f} ± {band:.4f}",
        ),
    ]
    for field in fields:
        name, vocab = field["name"], int(field["vocab_size"])
        within = {"min_value": 0, "max_value": vocab - 1}
        if name in df.columns and isinstance(df.schema[name], pl.List):
            # Lists become per-row min and max codes; the list column itself is dropped (GX would get
            # one numpy array per row, slow and unchecked anyway).
            empty = pl.col(name).list.len() == 0
            df = df.with_columns(
                pl.when(empty).then(0).otherwise(pl.col(name).list.min()).alias(f"{name}__min"),
                pl.when(empty).then(0).otherwise(pl.col(name).list.max()).alias(f"{name}__max"),
            ).drop(name)
            checks += [
                ("ExpectColumnValuesToNotBeNull", {"column": f"{name}__min"}, f"{split}: {name} not null"),
                (
                    "ExpectColumnValuesToBeBetween",
                    {"column": f"{name}__min", **within},
                    f"{split}: {name} smallest code per row within vocabulary [0, {vocab})",
                ),
                (
                    "ExpectColumnValuesToBeBetween",
                    {"column": f"{name}__max", **within},
                    f"{split}: {name} largest code per row within vocabulary [0, {vocab})",
                ),
            ]
        else:
            # A field missing from the split lands here too: GX reports the missing column as a failure.
            checks += [
                ("ExpectColumnValuesToNotBeNull", {"column": name}, f"{split}: {name} not null"),
                (
                    "ExpectColumnValuesToBeBetween",
                    {"column": name, **within},
                    f"{split}: {name} codes within vocabulary [0, {vocab})",
                ),
            ]
    return df, checks


def run_gx(assets: dict[str, tuple[pl.DataFrame, list[Check]]]) -> dict[str, dict[str, Any]]:
    """Validate every asset in one throwaway file-backed context; build data docs; return results."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if DATA_DOCS.exists():  # a fresh site each run: no pages left over from assets of an earlier run
        shutil.rmtree(DATA_DOCS)
    results: dict[str, dict[str, Any]] = {}
    # The GX project (stores, config) lives in a temp dir: results.json and the docs are what we keep.
    with tempfile.TemporaryDirectory(prefix="gx-") as root:
        context = gx.get_context(mode="file", project_root_dir=root)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm noise in DVC logs
        # Replace the default site (inside the temp project) with one in reports/.
        context.delete_data_docs_site("local_site")
        context.add_data_docs_site(
            "local_site",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(DATA_DOCS.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        source = context.data_sources.add_pandas("pipeline")
        for asset_name, (df, checks) in assets.items():
            batch = source.add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all")
            # description shows in the data docs; meta.name is the stable handle we read back. The suite
            # is built whole, then added: suite.add_expectation would re-save the suite file per call.
            expectations = [
                getattr(gx.expectations, cls)(**kwargs, description=readable, meta={"name": readable})
                for cls, kwargs, readable in checks
            ]
            suite = context.suites.add(gx.ExpectationSuite(name=asset_name, expectations=expectations))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=asset_name, data=batch, suite=suite)
            )
            # GX's pandas "between" is vectorised only for int64/float64 columns; an Int32 column falls back
            # to a Python call per value (~10x slower metrics at 200k rows). Widening costs one copy.
            frame = df.with_columns(cs.integer().cast(pl.Int64)).to_pandas()
            result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            results[asset_name] = result.to_json_dict()
        context.build_data_docs()
    return results


def readable_name(r: dict[str, Any]) -> str:
    config = r["expectation_config"]
    return (config.get("meta") or {}).get("name") or config.get("description") or config["type"]


def describe_failure(r: dict[str, Any]) -> str:
    """'<readable name> (unexpected: 3 rows, e.g. 99999)' from one GX expectation result."""
    name = readable_name(r)
    info = r.get("exception_info") or {}
    # exception_info is flat for one expectation, or keyed by metric when several metrics raised.
    infos = [info] if "raised_exception" in info else list(info.values())
    errors = [i["exception_message"] for i in infos if i.get("raised_exception")]
    if errors:
        return f"{name} (error: {str(errors[0]).splitlines()[0]})"
    result = r.get("result") or {}
    if result.get("unexpected_count"):
        examples = [str(c["value"]) for c in (result.get("partial_unexpected_counts") or [])[:3]]
        detail = f"unexpected: {result['unexpected_count']} rows"
        return f"{name} ({detail}, e.g. {', '.join(examples)})" if examples else f"{name} ({detail})"
    if "observed_value" in result:
        return f"{name} (observed: {result['observed_value']})"
    return name


def run(params: Params) -> dict[str, Any]:
    ingest = read_json(METRICS / "ingest.json")
    encode = read_json(METRICS / "encode.json")
    feature_map = read_json(FEATURE_MAP)
    check_same_dataset(METRICS / "ingest.json", ingest.get("dataset"), params.dataset)
    check_same_dataset(FEATURE_MAP, feature_map.get("dataset"), params.dataset)
    fields = feature_map["fields"]
    tolerance = params.validate_.positive_ratio_tolerance
    train_ratio = float(encode["positive_ratio"]["train"])
    for path in [ROWS, *(split_path(s) for s in SPLITS)]:
        if not Path(path).exists():
            raise StageError(f"{path} not found: run the stage that writes it first (dvc repro)")

    assets = {"interim": interim_asset(int(ingest["rows_out"])),
              "rejected": rejected_asset(params.spec.paths, int(ingest["rows_in"]),
                                         params.validate_.max_rejected_fraction)}
    for split in SPLITS:
        assets[split] = split_asset(split, fields, int(encode["rows"][split]), train_ratio, tolerance)
    results = run_gx(assets)
    write_json(RESULTS, results)

    failures: list[str] = []  # readable names (stable across runs, so `dvc metrics diff` stays quiet)
    details: list[str] = []  # the same, with what GX saw, for the error message
    per_asset: dict[str, dict[str, int]] = {}
    for asset_name, result in results.items():
        failed = [r for r in result["results"] if not r["success"]]
        failures += [readable_name(r) for r in failed]
        details += [describe_failure(r) for r in failed]
        per_asset[asset_name] = {"evaluated": len(result["results"]), "failed": len(failed)}
    evaluated = sum(a["evaluated"] for a in per_asset.values())
    metrics = {
        "success": not failures,
        "evaluated": evaluated,
        "failed": len(failures),
        "failures": failures,
        "per_asset": per_asset,
    }
    write_json(METRICS_FILE, metrics)

    if failures:
        if any(name.startswith("ingest: rejected") for name in failures):
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(
                ingest.get("rejected_by_reason", {}).items(), key=lambda item: -item[1])[:4])
            details.append(f"the rejected lines ({reasons}) are in {REJECTED} with their reasons; if they are "
                           f"expected, raise validate.max_rejected_fraction")
            marked = pl.read_parquet(REJECTED, columns=["detail"]).filter(pl.col("detail").str.ends_with(MARKER_HINT))
            if marked.height:  # the common case of a real export: R's NA or Hive's \N where a number should be
                example = marked["detail"][0].removesuffix(MARKER_HINT)
                details.append(f"{marked.height:,} of them hold a missing-value marker ({example}): list it in "
                               f"the dataset's `missing_values` to read it as missing")
        lines = "\n".join(f"  {d}" for d in details)
        raise StageError(
            f"validation failed: {len(failures)} of {evaluated} expectations "
            f"(report: {DATA_DOCS / 'index.html'})\n{lines}"
        )
    print(f"validate: {evaluated}/{evaluated} expectations passed ({', '.join(results)})")
    return metrics


if __name__ == "__main__":
    stage_main(run)
