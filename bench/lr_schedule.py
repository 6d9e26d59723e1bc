"""Benchmark: choose the training schedule on validation AUC, over seeds and every trained model.

    python -m bench.lr_schedule --dataset frappe --seeds 2024 7 11 \\
        --candidate train.patience=3 --candidate train.lr_decay_patience=2 \\
        [--out bench/results/lr_schedule_frappe.json]

For each seed it clones HEAD and runs the whole pipeline as ``bench.aim_accuracy`` does (the shipped schedule),
then applies the candidate's overrides and re-runs, with ``dvc repro --single-item``, only the stages that train
with the shared schedule (baselines, AutoFIS, retrain, transfers, evaluate). The architecture searches are not
re-run: they train a fixed number of epochs with ``lr_decay: 1.0`` and no early stop, so a plateau schedule
cannot change them, and both schedules retrain from the same gates.

The choice is read from each training run's best validation AUC (its curve's maximum, which early stopping keeps),
paired by seed and run; the test AUCs are recorded beside them, for reporting once the choice is made, not for
making it. Nothing is asserted; the summary prints the mean paired difference per run and over all of them.

The rule, written before the first run (Frappe and ml-100k, seeds 11, 7, 2024; candidate patience 3 with
lr_decay_patience 2): the candidate becomes the default if, over both datasets, its mean paired difference in best
validation AUC is positive and it is better in more (seed, run) pairs than it is worse.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from bench.aim_accuracy import ROOT, dvc_env, run_pipeline, training_curves
from bench.train_throughput import log, machine_info

# Stages whose training a plateau schedule cannot change (data stages, and searches without decay or early stop).
UNCHANGED_STAGES = {"generate", "ingest", "encode", "validate", "search_interaction", "search_embed"}
SEARCH_CURVES = ("search_interaction/", "search_embed", "autofis_search/")  # their curves: not compared


def outcome(root: Path) -> dict[str, dict[str, Any]]:
    """Per training run: best validation AUC and epochs; per evaluated model: test AUC."""
    curves = {run: c for run, c in training_curves(root).items() if not run.startswith(SEARCH_CURVES)}
    models = json.loads((root / "metrics" / "evaluate.json").read_text())["models"]
    return {"best_valid_auc": {run: max(c["valid_auc"]) for run, c in curves.items()},
            "epochs": {run: len(c["valid_auc"]) for run, c in curves.items()},
            "test_auc": {m["model"]: m["test_auc"] for m in models}}


def rerun_training(root: Path, overrides: list[str]) -> float:
    """Apply ``overrides`` in the clone and re-run the training stages alone; returns their wall seconds."""
    from flows.aim_pipeline import apply_overrides

    apply_overrides.fn(str(root), overrides)
    env = dvc_env()
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=root, env=env,
                            capture_output=True, text=True, check=True).stdout.split()
    stages = [s for s in listed if s.split("@")[0] not in UNCHANGED_STAGES]  # dvc.yaml's order: DAG order
    log(f"re-running {len(stages)} training stages with {overrides}")
    t0 = time.perf_counter()
    with open(root / "repro_candidate.log", "w") as out:
        done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", *stages], cwd=root, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = (root / "repro_candidate.log").read_text().splitlines()[-20:]
        raise RuntimeError("dvc repro of the training stages failed:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def summarize(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean paired difference candidate − shipped, per run and over every (seed, run), for validation and test."""
    def differences(metric: str) -> dict[str, list[float]]:
        by_run: dict[str, list[float]] = {}
        for result in seeds.values():
            shipped, candidate = result["shipped"][metric], result["candidate"][metric]
            for run in sorted(shipped.keys() & candidate.keys()):
                by_run.setdefault(run, []).append(candidate[run] - shipped[run])
        return by_run

    summary: dict[str, Any] = {}
    for metric in ("best_valid_auc", "test_auc"):
        by_run = differences(metric)
        every = [d for ds in by_run.values() for d in ds]
        summary[metric] = {"mean_difference": mean(every) if every else None,
                           "runs_better": sum(d > 0 for d in every), "runs_worse": sum(d < 0 for d in every),
                           "per_run": {run: {"mean": mean(ds), "per_seed": ds} for run, ds in by_run.items()}}
    return summary


def summary_of_files(paths: list[Path]) -> dict[str, Any]:
    """``summarize`` over the seeds of several results files (one per dataset, or a later run's extra seeds), whose
    candidates must be the same; a run is named by its dataset too."""
    results = [json.loads(path.read_text()) for path in paths]
    candidates = {tuple(r["candidate"]) for r in results}
    if len(candidates) > 1:
        raise SystemExit(f"the files test different candidates: {sorted(candidates)}")
    return summarize({f"{r['dataset']}/{seed}": {arm: {metric: {f"{r['dataset']}/{run}": v for run, v in values.items()}
                                                         for metric, values in result[arm].items()}
                                                   for arm in ("shipped", "candidate")}
                      for r in results for seed, result in r["seeds"].items()})


def report(summary: dict[str, Any]) -> None:
    for metric, label in (("best_valid_auc", "validation AUC (the choice)"), ("test_auc", "test AUC (reported)")):
        s = summary[metric]
        if s["mean_difference"] is None:
            continue
        print(f"\n{label}: candidate − shipped, mean over seeds")
        for run, d in sorted(s["per_run"].items(), key=lambda kv: -kv[1]["mean"]):
            print(f"  {run:34s} {d['mean']:+.5f}   per seed " + " ".join(f"{x:+.5f}" for x in d["per_seed"]))
        print(f"  all: {s['mean_difference']:+.5f}; better in {s['runs_better']}, worse in {s['runs_worse']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="a dataset preset of params.yaml")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--candidate", action="append", metavar="KEY=VALUE",
                    help="an override of the candidate schedule (DVC -S syntax); repeatable")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--summary", nargs="+", type=Path, metavar="RESULTS",
                    help="run nothing: the summary over these results files' seeds (datasets and runs together)")
    args = ap.parse_args()
    if args.summary:
        report(summary_of_files(args.summary))
        return
    if not (args.dataset and args.seeds and args.candidate):
        ap.error("--dataset, --seeds and --candidate are needed to run (or --summary to read results)")
    out = args.out or ROOT / "bench" / "results" / f"lr_schedule_{args.dataset}.json"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    results: dict[str, Any] = {"benchmark": "training schedule chosen on validation AUC", "head": head,
                               "dataset": args.dataset, "candidate": args.candidate, "machine": machine_info(),
                               "seeds": {}}
    for seed in args.seeds:
        scratch = Path(tempfile.mkdtemp(prefix=f".lr-schedule-{args.dataset}-{seed}-", dir=ROOT.parent))
        shutil.rmtree(scratch)  # git clone wants to create it
        try:
            shipped_seconds = run_pipeline(args.dataset, [f"seed={seed}"], scratch)
            shipped = outcome(scratch)
            candidate_seconds = rerun_training(scratch, args.candidate)
            results["seeds"][str(seed)] = {"shipped": shipped, "candidate": outcome(scratch),
                                           "seconds": {"shipped_repro": round(shipped_seconds, 1),
                                                       "candidate_training": round(candidate_seconds, 1)}}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        results["summary"] = summarize(results["seeds"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")  # after each seed: partial results survive
        log(f"seed {seed} done; wrote {out}")
    report(results["summary"])


if __name__ == "__main__":
    main()
