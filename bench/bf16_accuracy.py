"""Benchmark: bf16 autocast against fp32 at convergence, over several seeds, on the Frappe CTR set.

    python -m bench.bf16_accuracy [--models deepfm,ipnn] [--seeds 3] [--max-epochs 100] [--out FILE] [--resume]

The model issue's bf16 target is "≥ 1.5× faster at equal AUC (within 0.0005)". bench/train_throughput.py
measures the speed, but its AUC comes after 3 epochs, before either model has converged, so a gap there says
little. Here every run trains to early stopping, as bench/frappe_accuracy.py does (the same BARS configs,
patience 2, best weights), for seeds 0..k-1 in both precisions. The data split is the same for every seed;
the seed sets the initial weights, the dropout masks and the batch order. The test AUC is scored in the
run's own precision.

For each model it reports the mean test AUC of each precision, the mean of the paired differences
(bf16 − fp32, same seed), the seed-to-seed standard deviation of fp32 (what 0.0005 means next to the noise of
the model itself), and the speed ratio (median over seeds of bf16 / fp32 train samples/s, measured in this
one process). Run it on a quiet machine: the runs take turns, but other work on the cores moves the speeds.

A run is long (AutoInt+ at BARS' config: about 25 min per seed and precision on 2 cores), and the results file
is rewritten after every run. `--resume` keeps the runs already in --out (same machine and settings, checked)
and trains only the missing (model, seed, precision) triples, so `--seeds 3 --resume` after `--seeds 1` adds
seeds 1 and 2 and summarizes all three.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from aim.train import Trainer, bf16_is_native, evaluate
from bench.frappe_accuracy import frappe_run, known_models
from bench.train_throughput import build_frappe, machine_info

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP, TARGET_AUC = 1.5, 0.0005
PRECISIONS = ("fp32", "bf16")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: mean AUC per precision, paired bf16 − fp32 difference, fp32 seed std, speed ratio, targets."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        by = {(r["seed"], r["precision"]): r for r in runs if r["model"] == model}
        seeds = sorted({s for s, p in by if all((s, q) in by for q in PRECISIONS)})
        if not seeds:
            continue
        auc = {p: [by[s, p]["test_auc"] for s in seeds] for p in PRECISIONS}
        diffs = [b - f for f, b in zip(auc["fp32"], auc["bf16"], strict=True)]
        speed = [by[s, "bf16"]["train_samples_per_second"] / by[s, "fp32"]["train_samples_per_second"] for s in seeds]
        mean_diff = statistics.fmean(diffs)
        out[model] = {
            "seeds": seeds,
            "mean_test_auc": {p: statistics.fmean(v) for p, v in auc.items()},
            "mean_diff_bf16_minus_fp32": mean_diff,
            "diffs": diffs,
            "fp32_seed_std": statistics.stdev(auc["fp32"]) if len(seeds) > 1 else None,
            "speedup_bf16_over_fp32": statistics.median(speed),
            "speed_met": statistics.median(speed) >= TARGET_SPEEDUP,
            "auc_met": abs(mean_diff) <= TARGET_AUC,
        }
    return out


def previous_runs(path: Path, setup: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of an earlier invocation that wrote `path`, if it ran on this machine with these settings."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    for key in ("machine", "cpu", "torch_threads", "batch_size", "embedding_dim", "early_stopping"):
        if key in old["setup"] and old["setup"][key] != setup[key]:  # files from before "cpu" was recorded lack it
            raise SystemExit(f"--resume: {path} was written with setup.{key} = {old['setup'].get(key)!r}, this run "
                             f"has {setup[key]!r}; its runs cannot be pooled with these. Use another --out.")
    print(f"--resume: keeping {len(old['runs'])} runs from {path}", flush=True)
    setup["resumed_from"] = old["setup"]["command"]
    return old["runs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deepfm,ipnn")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/bf16_accuracy.json")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out, train only the rest")
    args = ap.parse_args()
    models = known_models(args.models)
    if not bf16_is_native(torch.device("cpu")):
        ap.error("this CPU has no native bf16 products (oneDNN needs AVX-512 or AVX2-VNNI-2): torch would emulate "
                 "them, 57x slower than fp32 for one product on an AVX2-only AMD Zen 3, so the runs would measure the "
                 "emulation. Run this bench on a CPU with AVX-512.")
    setup = {"command": "python -m bench.bf16_accuracy " + " ".join(sys.argv[1:]),
             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                        f"torch {torch.__version__}", "cpu": machine_info()["cpu_model"],
             "torch_threads": torch.get_num_threads(), "batch_size": 4096, "embedding_dim": 10,
             "early_stopping": f"patience 2 on validation AUC, lr x0.1 per epoch without gain, max {args.max_epochs}"}
    runs = previous_runs(args.out, setup) if args.resume else []
    with tempfile.TemporaryDirectory() as tmp:
        fields, data = build_frappe(Path(tmp))
        for name in models:
            for seed in range(args.seeds):
                for precision in PRECISIONS:
                    if any((r["model"], r["seed"], r["precision"]) == (name, seed, precision) for r in runs):
                        continue
                    model, config = frappe_run(name, fields, seed, args.max_epochs, precision)
                    start = time.perf_counter()
                    result = Trainer(model, config).fit(data["train"], data["valid"])
                    scores = evaluate(model, data["test"], precision=precision)
                    runs.append({"model": name, "seed": seed, "precision": precision, "test_auc": scores["auc"],
                                 "test_logloss": scores["logloss"], "epochs": result.epochs_run,
                                 "train_samples_per_second": result.train_samples_per_second,
                                 "wall_seconds": round(time.perf_counter() - start, 1)})
                    print(f"{name:8s} seed {seed} {precision}: test AUC {scores['auc']:.5f}, {result.epochs_run} "
                          f"epochs, {result.train_samples_per_second:,.0f} samples/s", flush=True)
                    summary = summarize(runs)
                    args.out.parent.mkdir(parents=True, exist_ok=True)  # written as it goes: a long run keeps its part
                    args.out.write_text(json.dumps({"setup": setup, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(f"\n{'model':8s} {'fp32 AUC':>9s} {'bf16 AUC':>9s} {'bf16-fp32':>10s} {'fp32 std':>9s} "
          f"{'speed':>6s}  targets")
    for name, s in summarize(runs).items():
        std = f"{s['fp32_seed_std']:.5f}" if s["fp32_seed_std"] is not None else "-"
        print(f"{name:8s} {s['mean_test_auc']['fp32']:9.5f} {s['mean_test_auc']['bf16']:9.5f} "
              f"{s['mean_diff_bf16_minus_fp32']:+10.5f} {std:>9s} {s['speedup_bf16_over_fp32']:5.2f}x  "
              f"speed >= {TARGET_SPEEDUP}x {'met' if s['speed_met'] else 'MISSED'}, "
              f"|dAUC| <= {TARGET_AUC} {'met' if s['auc_met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
