"""Benchmark: AIM's accuracy targets on real data, by running the real pipeline on each dataset.

    python -m bench.aim_accuracy [--datasets movielens_100k frappe] [--set KEY=VALUE ...] [--keep]
                                 [--out bench/results/aim_accuracy.json]

For each dataset preset of params.yaml:

1. Clones this repository's HEAD (``git clone --local``) into a scratch directory beside it, so that the
   presets' ``../shared/data`` paths resolve as they do here, and nothing in this checkout changes.
2. Sets ``dataset=<name>`` plus any ``--set`` overrides (DVC's ``-S`` syntax, checked by the config schema;
   ``--set movielens_100k:search.grda.c=0.2`` applies to that dataset only, as the preset's own override
   ``datasets.movielens_100k.overrides.search.grda.c``; a preset's overrides in params.yaml, such as
   ml-100k's ``c`` 0.1, win over unprefixed ones) and runs ``dvc repro``: every
   stage, from ingest to evaluate, exactly as a user runs it. Its log goes to ``<scratch>/repro.log``.
3. Reads ``metrics/evaluate.json`` and ``metrics/retrain.json`` and reports the issue's targets:
   AIM (retrain) test AUC above every baseline and above AutoFIS; at most 30 % of the 2nd-order pairs kept;
   AIM's parameters after EDS at most 1.5x DeepFM's; and the paper's order AIM > AutoFIS > IPNN > DeepFM > FM.
   It keeps every training run's validation AUC and learning rate per epoch too (``curves``, from the stages'
   ``reports/**/*.csv``), so that an early stop can be read from the results file once the clone is gone.

Met/missed is computed and printed, never asserted. Run it on a quiet machine: it takes minutes per dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.train_throughput import log, machine_info

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "aim_accuracy.json"
MAX_PAIR_RATIO, MAX_PARAM_RATIO = 0.30, 1.5
PAPER_ORDER = ["aim (retrain)", "autofis", "ipnn", "deepfm", "fm"]  # AIM paper, Tables 4-5


def dvc_env() -> dict[str, str]:
    """The stages' commands say `python`: this interpreter's environment first on PATH, as `make run` does."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_pipeline(dataset: str, overrides: list[str], scratch: Path) -> float:
    """Clone HEAD into ``scratch``, apply the overrides, ``dvc repro``; returns its wall seconds."""
    from flows.aim_pipeline import apply_overrides

    subprocess.run(["git", "clone", "--quiet", "--local", str(ROOT), str(scratch)], check=True)
    apply_overrides.fn(str(scratch), [f"dataset={dataset}", *overrides])
    log(f"{dataset}: dvc repro in {scratch} (log: {scratch / 'repro.log'})")
    t0 = time.perf_counter()
    with open(scratch / "repro.log", "w") as out:
        done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=scratch, stdout=out,
                              stderr=subprocess.STDOUT, env=dvc_env())
    if done.returncode:
        tail = (scratch / "repro.log").read_text().splitlines()[-20:]
        raise RuntimeError(f"{dataset}: dvc repro failed ({done.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0


def split_prefix(item: str) -> tuple[str | None, str]:
    """``"movielens_100k:search.grda.c=0.1"`` -> ``("movielens_100k", "search.grda.c=0.1")``; no prefix -> None."""
    prefix, sep, rest = item.partition(":")
    return (prefix, rest) if sep and "=" not in prefix else (None, item)


def overrides_for(dataset: str, overrides: list[str]) -> list[str]:
    """The ``KEY=VALUE`` overrides that apply to ``dataset``: unprefixed ones as they are, and those prefixed
    ``dataset:`` as the preset's own overrides (``datasets.<dataset>.overrides.KEY``), which win over both the
    top-level sections and what the preset already overrides."""
    return [rest if prefix is None else f"datasets.{dataset}.overrides.{rest}"
            for prefix, rest in map(split_prefix, overrides) if prefix in (None, dataset)]


def order_holds(auc: dict[str, float]) -> bool:
    """Whether the models of ``auc`` (name -> test AUC) that the paper's order names stand in that order."""
    aucs = [auc[name] for name in PAPER_ORDER if name in auc]
    return all(a > b for a, b in zip(aucs, aucs[1:], strict=False))


def targets(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's accuracy targets from evaluate.json's rows."""
    by_name = {m["model"]: m for m in models}
    aim = by_name["aim (retrain)"]
    baselines = {m["model"]: m["test_auc"] for m in models if m["kind"] == "baseline"}  # AutoFIS included
    best_name = max(baselines, key=baselines.__getitem__)
    ordered = [name for name in PAPER_ORDER if name in by_name]
    return {
        "aim_retrain_auc": aim["test_auc"],
        "best_other": {"model": best_name, "test_auc": baselines[best_name],
                       # the AIM retrain's AUC minus it, with DeLong's paired standard error and p-value
                       "aim_retrain_minus_this": by_name[best_name].get("aim_retrain_minus_this")},
        "aim_above_every_baseline_and_autofis": all(aim["test_auc"] > v for v in baselines.values()),
        "order2_pairs_kept": aim["order2_selection_ratio"],
        "pairs_kept_within_30pct": aim["order2_selection_ratio"] <= MAX_PAIR_RATIO,
        "params_vs_deepfm": aim["parameters"] / by_name["deepfm"]["parameters"],
        "params_within_1.5x_deepfm": aim["parameters"] <= MAX_PARAM_RATIO * by_name["deepfm"]["parameters"],
        "paper_order": ordered,
        "paper_order_holds": order_holds({name: m["test_auc"] for name, m in by_name.items()}),
    }


def paired(row: dict[str, Any]) -> str:
    """", difference +0.0010 ± 0.0004, p 0.01 (DeLong)" where evaluate gave the paired comparison, else ""."""
    d = row.get("aim_retrain_minus_this")
    return f"; AIM − it {d['difference']:+.4f} ± {d['se']:.4f}, p {d['p_value']:.2g} (DeLong)" if d else ""


def report(dataset: str, models: list[dict[str, Any]], result: dict[str, Any]) -> None:
    print(f"\n{dataset}: test AUC, best first")
    for m in sorted(models, key=lambda m: -m["test_auc"]):
        print(f"  {m['model']:22s} {m['kind']:11s} {m['test_auc']:.4f}  logloss {m['test_logloss']:.4f}  "
              f"params {m['parameters']:>10,}")
    flag = {True: "met", False: "MISSED"}
    print(f"  AIM retrain above every baseline and AutoFIS: {flag[result['aim_above_every_baseline_and_autofis']]} "
          f"({result['aim_retrain_auc']:.4f} vs best other {result['best_other']['model']} "
          f"{result['best_other']['test_auc']:.4f}{paired(result['best_other'])})")
    print(f"  order-2 pairs kept <= 30 %: {flag[result['pairs_kept_within_30pct']]} "
          f"({result['order2_pairs_kept']:.1%})")
    print(f"  parameters <= 1.5x DeepFM: {flag[result['params_within_1.5x_deepfm']]} "
          f"({result['params_vs_deepfm']:.2f}x)")
    print(f"  paper's order {' > '.join(result['paper_order'])}: {flag[result['paper_order_holds']]}")


def training_curves(root: Path) -> dict[str, dict[str, list[float]]]:
    """Each training run's validation AUC and learning rate per epoch, by its report's path under ``reports/``
    (``retrain``, ``baselines/deepfm``, ``search_interaction/order2``, ...)."""
    curves = {}
    for path in sorted((root / "reports").rglob("*.csv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and {"epoch", "valid_auc", "lr"} <= rows[0].keys():
            curves[path.relative_to(root / "reports").with_suffix("").as_posix()] = {
                "valid_auc": [round(float(r["valid_auc"]), 6) for r in rows], "lr": [float(r["lr"]) for r in rows]}
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["movielens_100k", "frappe"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="[DATASET:]KEY=VALUE",
                    help="a params.yaml override (DVC -S syntax), for every dataset or, prefixed, for one; "
                         "repeatable")
    ap.add_argument("--keep", action="store_true", help="keep the scratch clones")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    prefixes = {prefix for prefix, _ in map(split_prefix, args.overrides)} - {None}
    if prefixes - set(args.datasets):
        sys.exit(f"--set names datasets not run here: {sorted(prefixes - set(args.datasets))}")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    if dirty:
        log("warning: uncommitted changes are not in the clone; the bench runs HEAD " + head)
    results: dict[str, Any] = {"benchmark": "AIM accuracy targets (dvc repro per dataset)", "head": head,
                               "overrides": args.overrides, "machine": machine_info(), "datasets": {}}
    for dataset in args.datasets:
        overrides = overrides_for(dataset, args.overrides)
        scratch = Path(tempfile.mkdtemp(prefix=f".aim-accuracy-{dataset}-", dir=ROOT.parent))
        shutil.rmtree(scratch)  # git clone wants to create it
        try:
            seconds = run_pipeline(dataset, overrides, scratch)
            models = json.loads((scratch / "metrics" / "evaluate.json").read_text())["models"]
            retrain = json.loads((scratch / "metrics" / "retrain.json").read_text())
            result = targets(models)
            report(dataset, models, result)
            results["datasets"][dataset] = {"overrides": overrides, "repro_seconds": round(seconds, 1),
                                            "targets": result,
                                            "models": models, "retrain": retrain,
                                            "curves": training_curves(scratch)}
        finally:
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each dataset: partial results survive
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
