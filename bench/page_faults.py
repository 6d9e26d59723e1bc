"""Benchmark: minor page faults and time per MLP training step, glibc's malloc defaults vs ``keep_freed_memory``.

    python -m bench.page_faults [--runs 6] [--steps 30] [--out bench/results/page_faults.json]

Each run is a fresh process (the setting is process-wide and glibc's dynamic mmap threshold remembers earlier
frees), alternating the two settings so that machine noise falls on both. A run trains a [400, 400, 400] MLP
(DeepFM's tower, dropout and batch norm) on one batch of 4096 rows, discards the first 3 steps and reports the
minor page faults (``getrusage``) and the median milliseconds of the others. The counts vary a lot between runs
and machines (the CI machine once counted 797 faults for the defaults and 960 kept, this one 3,200 against 320
a minute later), which is why this is a benchmark and not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.train_throughput import cpu_busy, log, machine_info, warn_if_busy

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "page_faults.json"
ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import resource, statistics, sys, time, torch
from aim.layers import MLP
from aim.train import keep_freed_memory
torch.set_num_threads(int(sys.argv[3]))
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
mlp = MLP(100, [400, 400, 400], dropout=0.2, batch_norm=True)
optimizer = torch.optim.Adam(mlp.parameters())
x = torch.randn(4096, 100)
times = []
for step in range(3 + int(sys.argv[2])):
    if step == 3:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    optimizer.zero_grad()
    mlp(x).sum().backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults / int(sys.argv[2]), statistics.median(times[3:]) * 1e3)
"""


def one_run(setting: str, steps: int, threads: int) -> tuple[float, float]:
    """(faults per step, median ms per step) of one fresh process."""
    out = subprocess.run([sys.executable, "-c", ONE_RUN, setting, str(steps), str(threads)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split()
    return float(out[-2]), float(out[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6, help="fresh processes per setting, alternating")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per process")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    busy = cpu_busy()
    warn_if_busy(busy)
    runs: dict[str, list[tuple[float, float]]] = {"default": [], "keep": []}
    for i in range(args.runs):
        for setting in ("default", "keep"):
            runs[setting].append(one_run(setting, args.steps, args.threads))
            log(f"run {i + 1}/{args.runs} {setting}: {runs[setting][-1][0]:.0f} faults, {runs[setting][-1][1]:.1f} ms")
    summary = {
        setting: {
            "faults_per_step": [round(f, 1) for f, _ in r],
            "ms_per_step": [round(t, 2) for _, t in r],
            "median_faults_per_step": round(statistics.median(f for f, _ in r), 1),
            "median_ms_per_step": round(statistics.median(t for _, t in r), 2),
        }
        for setting, r in runs.items()
    }
    result = {
        "benchmark": "minor page faults and ms per [400,400,400] MLP training step at batch 4096: "
                     "glibc defaults vs aim.train.keep_freed_memory, fresh processes, alternating",
        "runs": args.runs, "steps": args.steps, "threads": args.threads, "cpu_busy_before_percent": busy,
        "machine": machine_info(), **summary,
        "faults_ratio": round(summary["default"]["median_faults_per_step"]
                              / max(summary["keep"]["median_faults_per_step"], 0.1), 2),
        "time_ratio": round(summary["default"]["median_ms_per_step"] / summary["keep"]["median_ms_per_step"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    d, k = summary["default"], summary["keep"]
    print(f"faults per step, median: default {d['median_faults_per_step']:.0f}, kept {k['median_faults_per_step']:.0f} "
          f"({result['faults_ratio']}x); ms per step: {d['median_ms_per_step']:.1f} vs {k['median_ms_per_step']:.1f} "
          f"({result['time_ratio']}x)")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
