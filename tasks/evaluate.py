"""evaluate: every model on the test split in one table, the figures, and what the search recovered.

Reads the metrics every training stage wrote (baselines, AutoFIS, the AIM search model, AIM retrain, the
transfers), the gate files and the saved test predictions. Writes

* ``metrics/evaluate.json``: the table (AUC with its standard error, logloss, parameters, train time, inference
  time per 100k rows, selection ratios), each model's AUC difference from the AIM retrain with its paired standard
  error and p-value (DeLong, ``aim/metrics.py``: the same test rows, so the models' errors are correlated), and, on
  the synthetic default, how many planted interactions the searches recovered;
  Each model's calibration too: its mean predicted CTR over the observed click rate, and its expected calibration
  error over ten equal-count bins (``aim.metrics.calibration``);
* ``reports/evaluate/report.md`` with the same table, and PNGs: the gate matrix per function, kept
  functions per order, embedding size per field, ROC curves, reliability curves (predicted against observed click
  rate), gate against statistics_AUC per pair (Fig. 7).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aim.data import CTRData
from aim.metrics import auc_difference, calibration, delong
from tasks import plots
from tasks.common import GATES, METRICS, PREDICTIONS, REPORTS, read_gates, stage_main, write_json
from tasks.common import read_json_if_present as _load
from tasks.config import Params
from tasks.training import load_encoded

OUT = REPORTS / "evaluate"
TRUTH = Path("data/raw/synthetic/truth.json")
COLUMNS = ("model", "kind", "test_auc", "test_logloss", "parameters", "train_seconds", "inference_seconds_per_100k",
           "order2_selection_ratio", "interactions")


def table(params: Params, gates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model configured in params.yaml, best test AUC first, ``gates`` the searched interactions
    (``gates/interaction.json``). Only configured ones: the metrics of a model since removed from
    ``baselines.models`` may still lie in metrics/ (committed by an older run)."""
    rows: list[dict[str, Any]] = []

    def add(kind: str, m: dict[str, Any] | None, **extra: Any) -> None:
        if m:
            rows.append({c: m.get(c) for c in COLUMNS} | {"kind": kind} | extra)

    for name in params.baselines.models:
        add("baseline", _load(METRICS / "baselines" / f"{name}.json"))
    add("baseline", _load(METRICS / "autofis.json"))
    orders = gates["orders"]
    search = _load(METRICS / "search_interaction.json") or {}
    add("aim search", {**gates["search_model"], "model": "aim (search model)",
                       "train_seconds": search.get("train_seconds"),
                       "order2_selection_ratio": orders["2"]["selection_ratio"],
                       "interactions": len(gates["interactions"])})
    retrain = _load(METRICS / "retrain.json")
    if retrain:
        add("aim", {**retrain, "model": "aim (retrain)", "order2_selection_ratio": orders["2"]["selection_ratio"]})
    for name in params.transfer.models:
        add("transfer", _load(METRICS / "transfer" / f"{name}.json"))
    return sorted(rows, key=lambda r: -(r["test_auc"] or 0))


# Fewer test rows than this of either class and the ranking is noise: DeLong's test is a normal approximation,
# commonly trusted from about 30 per class, and at 30 positives an AUC near 0.8 has a standard error near 0.05
# (Hanley and McNeil), more than the gaps between the models of the table. The default log's test split has
# about 4,800 positives.
MIN_CLASS_ROWS = 30


def test_split_warnings(labels: np.ndarray, refused: str | None) -> list[str]:
    """The warning, as a list of at most one line, when the test split has too few rows of a class to rank the
    models by AUC; ``refused``: why ``significance`` gave no standard errors, if it gave none."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if min(positives, negatives) >= MIN_CLASS_ROWS and refused is None:
        return []
    line = (f"evaluate: warning: the test split has {positives:,} positive{'s' * (positives != 1)} and "
            f"{negatives:,} negative{'s' * (negatives != 1)}")
    if min(positives, negatives) < MIN_CLASS_ROWS:
        line += (f", fewer than {MIN_CLASS_ROWS} of a class: its AUCs are too noisy to rank the models, so the "
                 "ranking is not meaningful. Evaluate on a larger log or test fraction (encode.split.fractions)")
    if refused is not None:
        line += f". AUC standard errors and p-values are left out (–): the differences are not testable ({refused})"
    return [line]


REFERENCE = "aim (retrain)"  # the model every other one is compared with
PREDICTION_FILES = {"aim (search model)": "search_interaction", "aim (retrain)": "retrain"}  # else the model's name


def test_predictions(rows: list[dict[str, Any]], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's saved test probabilities (``reports/predictions``), where present and of this test split."""
    out = {}
    for r in rows:
        path = PREDICTIONS / f"{PREDICTION_FILES.get(r['model'], r['model'])}.npy"
        if path.exists() and len(p := np.load(path)) == len(labels):  # a stale file of other data: skip
            out[r["model"]] = p
    return out


def significance(rows: list[dict[str, Any]], labels: np.ndarray, predictions: dict[str, np.ndarray]) -> str | None:
    """Add each row's AUC standard error and, against the AIM retrain, the paired AUC difference (DeLong).

    Returns why there are none, where DeLong refused the test split (else None), for the report to say."""
    names = [r["model"] for r in rows if r["model"] in predictions]
    if not names:
        return None
    try:
        aucs, cov = delong(labels, np.stack([predictions[n] for n in names]))
    except ValueError as err:  # fewer than two rows of a class: no covariance to give
        return str(err)
    # Predictions left by another run of the same split size give another AUC than the stage reported: not used.
    by_name = {r["model"]: r for r in rows}
    index = {n: i for i, n in enumerate(names) if abs(aucs[i] - by_name[n]["test_auc"]) < 1e-6}
    for r in rows:
        i = index.get(r["model"])
        if i is None:
            continue
        r["test_auc_se"] = float(np.sqrt(cov[i, i]))
        if REFERENCE in index and r["model"] != REFERENCE:
            r["aim_retrain_minus_this"] = auc_difference(aucs, cov, index[REFERENCE], i)


def add_calibration(rows: list[dict[str, Any]], labels: np.ndarray,
                    predictions: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Add each row's predicted-over-observed CTR and calibration error; returns the reliability curves to plot."""
    curves = {}
    for r in rows:
        if r["model"] in predictions:
            c = calibration(labels, predictions[r["model"]])
            r |= {key: c[key] for key in ("predicted_over_observed", "calibration_error")}
            curves[r["model"]] = c["bins"]
    return curves


def recovery(gates: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """Planted interactions against kept field sets. A pair inside a planted triple carries real signal at
    order 2 too (the triple's marginal), so order-2 precision is given strictly and counting those pairs."""
    kept: dict[int, set[frozenset[str]]] = {}
    for it in gates["interactions"]:
        kept.setdefault(it["order"], set()).add(frozenset(it["fields"]))
    pairs = {frozenset(p) for p in truth["planted_pairs"]}
    triples = {frozenset(t) for t in truth["planted_triples"]}
    sub_pairs = {frozenset(p) for t in truth["planted_triples"] for p in itertools.combinations(sorted(t), 2)}
    k2, k3 = kept.get(2, set()), kept.get(3, set())
    out = {
        "planted_pairs": len(pairs),
        "pairs_recovered": len(pairs & k2),
        "pair_recall": len(pairs & k2) / len(pairs) if pairs else None,
        "pairs_kept": len(k2),
        "pair_precision": len(pairs & k2) / len(k2) if k2 else None,
        "pair_precision_with_triple_subpairs": len((pairs | sub_pairs) & k2) / len(k2) if k2 else None,
        "planted_triples": len(triples),
    }
    if gates["max_order"] >= 3:
        out |= {"triples_recovered": len(triples & k3), "triple_recall": len(triples & k3) / len(triples)
                if triples else None, "triples_kept": len(k3),
                "triple_precision": len(triples & k3) / len(k3) if k3 else None}
    return out


def figures(gates: dict[str, Any], embed: dict[str, Any] | None, planted: set[str], fields: list,
            splits: dict[str, CTRData], reliability: dict[str, dict[str, list[float]]]) -> list[Path]:
    """The PNGs of the report; ``reliability``: each model's calibration bins."""
    paths = [plots.gate_heatmaps(gates, OUT / "gates_heatmap.png"), plots.function_counts(gates, OUT / "functions.png")]
    if embed:
        paths.append(plots.embedding_sizes(embed, OUT / "embedding_sizes.png"))
    labels = splits["test"].label.numpy()
    curves = {p.stem: (labels, np.load(p)) for p in sorted(PREDICTIONS.glob("*.npy"))}
    curves = {k: v for k, v in curves.items() if len(v[1]) == len(labels)}  # a stale file of other data: skip
    if curves:
        paths.append(plots.roc_curves(curves, OUT / "roc.png"))
    if reliability:
        paths.append(plots.reliability_curves(reliability, OUT / "calibration.png"))
    # Fig. 7: statistics_AUC of every pair of single-valued fields against its gate (summed over functions).
    single = [f.name for f in fields if not f.multi_valued]
    pairs = np.array(list(itertools.combinations(range(len(single)), 2)))
    if len(pairs):
        stat = plots.pair_statistics_auc(splits["train"].single.numpy(), splits["train"].label.numpy(),
                                         splits["test"].single.numpy(), labels, pairs)
        gate = {}
        for it in gates["interactions"]:
            if it["order"] == 2:
                key = tuple(sorted(it["fields"], key=single.index)) if set(it["fields"]) <= set(single) else None
                if key:
                    gate[key] = gate.get(key, 0.0) + it["gate"]
        names = [(single[i], single[j]) for i, j in pairs]
        values = np.array([gate.get(n, 0.0) for n in names])
        paths.append(plots.gate_vs_statistics_auc(values, stat, [f"{a}×{b}" for a, b in names],
                                                  OUT / "gate_vs_statistics_auc.png", highlight=planted))
    return paths


def markdown(rows: list[dict[str, Any]], recovered: dict[str, Any], images: list[Path],
             warnings: Sequence[str] = ()) -> str:
    def fmt(v: Any, digits: int = 4) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    def versus(r: dict[str, Any]) -> str:
        d = r.get("aim_retrain_minus_this")
        return f"{d['difference']:+.4f} ± {d['se']:.4f} (p {d['p_value']:.2g})" if d else "–"

    lines = ["# Evaluation on the test split", "",
             "AUC se: DeLong's standard error. AIM retrain − it: the AIM retrain's AUC minus this model's, with the "
             "standard error and two-sided p-value of that difference on the same test rows (DeLong). Predicted / "
             "observed: the mean predicted CTR over the test click rate. ECE: the expected calibration error over "
             "ten equal-count bins of the predictions.", "",
             "| model | kind | test AUC | AUC se | AIM retrain − it | logloss | predicted / observed | ECE | "
             "parameters | train s | inference s / 100k | order-2 kept | interactions |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {fmt(r['test_auc'])} | {fmt(r.get('test_auc_se'))} | "
                     f"{versus(r)} | {fmt(r['test_logloss'])} | {fmt(r.get('predicted_over_observed'), 3)} | "
                     f"{fmt(r.get('calibration_error'))} | {fmt(r['parameters'])} | {fmt(r['train_seconds'], 1)} | "
                     f"{fmt(r['inference_seconds_per_100k'], 3)} | {fmt(r['order2_selection_ratio'], 3)} | "
                     f"{fmt(r['interactions'])} |")
    if warnings:
        lines += ["", *(f"**Warning.** {w.removeprefix('evaluate: warning: ')}" for w in warnings)]
    for name, rec in recovered.items():
        lines += ["", f"## Planted interactions recovered by {name}", ""]
        lines += [f"- {k}: {fmt(v, 3)}" for k, v in rec.items()]
    lines += ["", "## Figures", "", *(f"![{p.stem}]({p.name})" for p in images)]
    return "\n".join(lines) + "\n"


def run(params: Params) -> dict[str, Any]:
    gates = read_gates("interaction.json", params.dataset)
    rows = table(params, gates)
    if not rows:
        raise FileNotFoundError("no metrics to evaluate: run the training stages first (dvc repro)")
    recovered: dict[str, Any] = {}
    truth = _load(TRUTH) if params.dataset == "synthetic" else None
    if truth:
        recovered["aim"] = recovery(gates, truth)
        autofis = _load(GATES / "autofis.json")
        if autofis:
            recovered["autofis"] = recovery(autofis, truth)
    planted = {"×".join(p) for p in (truth or {}).get("planted_pairs", [])}
    fields, splits = load_encoded(params.dataset)
    labels = splits["test"].label.numpy()
    predictions = test_predictions(rows, labels)
    refused = significance(rows, labels, predictions)
    reliability = add_calibration(rows, labels, predictions)
    warnings = test_split_warnings(labels, refused)
    images = figures(gates, _load(GATES / "embed.json"), planted, fields, splits, reliability)
    result: dict[str, Any] = {"models": rows, "recovered": recovered}
    if warnings:  # only when there is something to say: a sound test split's metrics stay as they were
        result["warnings"] = warnings
    write_json(METRICS / "evaluate.json", result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(markdown(rows, recovered, images, warnings))
    print(render(result))
    return result


def render(result: dict[str, Any], warnings: bool = True) -> str:
    """The table as printed at the end of ``make run``; with its warnings below it unless ``warnings`` is false
    (the summary lists every stage's warnings together)."""
    lines = ["model                  kind         test AUC  ± se    p vs AIM  logloss  pred/obs     ECE  parameters  "
             "train s  inf s/100k  order-2 kept"]
    for r in result["models"]:
        ratio = f"{r['order2_selection_ratio']:.3f}" if r.get("order2_selection_ratio") is not None else "–"
        inference = f"{r['inference_seconds_per_100k']:.3f}" if r.get("inference_seconds_per_100k") else "–"
        se = f"{r['test_auc_se']:.4f}" if r.get("test_auc_se") is not None else "–"
        versus = r.get("aim_retrain_minus_this")
        p = f"{versus['p_value']:.2g}" if versus else "–"
        ratio_ctr = f"{r['predicted_over_observed']:.3f}" if r.get("predicted_over_observed") is not None else "–"
        ece = f"{r['calibration_error']:.4f}" if r.get("calibration_error") is not None else "–"
        lines.append(f"{r['model']:22s} {r['kind']:11s}  {r['test_auc']:.4f}   {se:6s}  {p:>8}   "
                     f"{r['test_logloss']:.4f}  {ratio_ctr:>8}  {ece:>6}  {r['parameters'] or 0:>10,}  "
                     f"{r['train_seconds'] or 0:>7.1f}  {inference:>10}  {ratio:>12}")
    if any(r.get("aim_retrain_minus_this") for r in result["models"]):
        lines.append("± se: the AUC's standard error; p vs AIM: the p-value of the AIM retrain's AUC difference "
                     "from the model's, paired on the same test rows (DeLong)")
    if any(r.get("calibration_error") is not None for r in result["models"]):
        lines.append("pred/obs: mean predicted CTR over the test click rate (1 = calibrated on the whole); ECE: "
                     "expected calibration error over ten equal-count bins (reports/evaluate/calibration.png)")
    for name, rec in result["recovered"].items():
        line = (f"{name}: planted pairs recovered {rec['pairs_recovered']}/{rec['planted_pairs']} "
                f"(kept {rec['pairs_kept']} pairs: precision {rec['pair_precision'] or 0:.2f}, "
                f"{rec['pair_precision_with_triple_subpairs'] or 0:.2f} counting pairs inside planted triples)")
        if "triples_recovered" in rec:
            line += f"; triples {rec['triples_recovered']}/{rec['planted_triples']} (kept {rec['triples_kept']})"
        lines.append(line)
    if warnings:
        lines += result.get("warnings", [])
    return "\n".join(lines)


if __name__ == "__main__":
    stage_main(run)
