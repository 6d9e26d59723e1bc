"""summary: what each stage produced, printed at the end of `make run` (reads the metrics files only)."""

from __future__ import annotations

import json

from tasks.common import FEATURE_MAP, METRICS
from tasks.common import read_json_if_present as _load


def render() -> str:
    lines = ["", "=== AIM pipeline summary ==="]
    ingest = _load(METRICS / "ingest.json")
    if ingest:
        lines.append(f"ingest    dataset {ingest['dataset']}: {ingest['rows_in']:,} lines in, "
                     f"{ingest['rows_ok']:,} ok, {ingest['rows_rejected']:,} rejected -> {ingest['rows_out']:,} rows")
        for reason, n in ingest["rejected_by_reason"].items():
            lines.append(f"            rejected {n:>7,}  {reason}")
        if ingest.get("negatives_sampled"):
            lines.append(f"            sampled {ingest['negatives_sampled']:,} negatives (implicit feedback)")
    encode, fmap = _load(METRICS / "encode.json"), _load(FEATURE_MAP)
    if encode and fmap:
        r, p = encode["rows"], encode["positive_ratio"]
        lines.append(f"encode    {encode['num_fields']} fields, {encode['total_vocab']:,} codes (largest field "
                     f"{encode['max_vocab']:,}); train {r['train']:,} / valid {r['valid']:,} / test {r['test']:,}")
        lines.append(f"            click rate train {p['train']:.4f} valid {p['valid']:.4f} test {p['test']:.4f}; "
                     f"out-of-vocabulary valid {encode['oov_rate']['valid']:.2%} test {encode['oov_rate']['test']:.2%}")
        sizes = ", ".join(f"{f['name']} {f['vocab_size']:,}" for f in fmap["fields"])
        lines.append(f"            vocab sizes: {sizes}")
    validate = _load(METRICS / "validate.json")
    if validate:
        verdict = "PASSED" if validate["success"] else "FAILED"
        lines.append(f"validate  {verdict}: {validate['evaluated'] - validate['failed']}/{validate['evaluated']} "
                     f"expectations (report: reports/validation/data_docs/index.html)")
    runs = sorted((METRICS / "baselines").glob("*.json")) if (METRICS / "baselines").exists() else []
    if runs:
        lines.append("baselines test AUC   logloss   params     epochs  train samples/s  (metrics/baselines/)")
        for path in runs:
            m = json.loads(path.read_text())
            lines.append(f"  {m['model']:14s} {m['test_auc']:.4f}   {m['test_logloss']:.4f}  {m['parameters']:>9,}  "
                         f"{m['epochs']:>4}   {m['train_samples_per_second']:>12,.0f}")
    evaluation = _load(METRICS / "evaluate.json")
    if evaluation:
        from tasks.evaluate import render as render_evaluation

        lines += ["", "evaluate  every model on the test split (metrics/evaluate.json, reports/evaluate/report.md)",
                  render_evaluation(evaluation, warnings=False)]  # they are in the warnings below
    # The stages' warnings again: in a `dvc repro` log they scroll past between hundreds of epoch lines.
    warnings = []
    if encode and encode.get("uninformative_fields"):
        warnings.append(f"encode: no signal in the fields {', '.join(encode['uninformative_fields'])} (one value in "
                        "every train row, or none seen min_count times)")
    warnings += (encode or {}).get("warnings", [])
    for stage in ("search_interaction", "autofis", "evaluate"):
        warnings += (_load(METRICS / f"{stage}.json") or {}).get("warnings", [])
    if warnings:
        lines += ["", "warnings", *(f"  {w}" for w in warnings)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
