"""Summary: `bench.aim_accuracy` runs of one dataset at several seeds, side by side, with the seeds' noise.

    python -m bench.seed_summary bench/results/seeds/aim_accuracy_frappe_seed*.json
                                 [--out bench/results/seeds/summary_frappe.json]

Each input is the result file of one ``python -m bench.aim_accuracy --datasets <set> --set seed=<S>`` run (a
file holding several datasets counts once per dataset). `seed` feeds the negative sampling, the split, the
initial weights and the dropout masks, so every seed is a new draw of data and training. Per dataset it prints,
as markdown:

1. every model's test AUC per seed, its mean and standard deviation, how often it was first, and its mean test
   logloss and calibration error (ECE; where every run has it);
2. the AIM retrain's AUC minus each model's, per seed (with DeLong's paired standard error on that seed's test
   split, where evaluate gave it), their mean, and a paired t-test across seeds (t with n - 1 degrees of
   freedom on the per-seed differences). DeLong's error is the noise of one test split; the t-test's is the
   noise of the whole draw (split, sampling, weights), the one a user of another seed meets;
3. the issue's targets per seed: AIM above every baseline and AutoFIS, the paper's order, pairs kept, and
   parameters against DeepFM's.

Nothing is asserted: the figures are what the runs gave.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from bench.aim_accuracy import PAPER_ORDER, order_holds

AIM = "aim (retrain)"


def seed_of(overrides: list[str]) -> int | None:
    """The run's seed, from its ``seed=S`` override; None without one (the file does not say params.yaml's)."""
    seeds = [value for key, _, value in (item.partition("=") for item in overrides) if key.strip() == "seed"]
    return int(seeds[-1]) if seeds else None


def load_runs(paths: list[Path]) -> dict[str, dict[int, dict[str, Any]]]:
    """dataset -> seed -> that run's dataset entry (with ``head`` added); a seed given twice is an error."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            sys.exit(f"{path}: not a readable bench.aim_accuracy result ({err})")
        if "datasets" not in run:
            sys.exit(f"{path}: not a bench.aim_accuracy result (no 'datasets' key)")
        for dataset, entry in run["datasets"].items():
            seed = seed_of(entry.get("overrides", run.get("overrides", [])))
            if seed is None:
                sys.exit(f"{path}: {dataset} ran without a seed=S override, so its seed is not recorded; "
                         "rerun it with --set seed=S")
            if seed in runs.setdefault(dataset, {}):
                sys.exit(f"{path}: {dataset} seed {seed} is also in {runs[dataset][seed]['file']}")
            runs[dataset][seed] = {**entry, "head": run["head"], "file": str(path)}
    return runs


def t_test(differences: list[float]) -> dict[str, float] | None:
    """Mean of paired differences, its standard error across seeds and the two-sided p of a one-sample t-test."""
    n = len(differences)
    if n < 2:
        return None
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    se = sd / math.sqrt(n)
    p = 1.0 if se == 0 and mean == 0 else (0.0 if se == 0 else 2 * student_t.sf(abs(mean / se), n - 1))
    return {"mean": mean, "se": se, "p_value": p, "seeds": n}


def summarize(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The seeds' table, AIM's paired differences and the targets, for one dataset."""
    seeds = sorted(by_seed)
    rows = {seed: {m["model"]: m for m in by_seed[seed]["models"]} for seed in seeds}
    models = [name for name in rows[seeds[0]] if all(name in rows[s] for s in seeds)]
    firsts = {seed: max(rows[seed], key=lambda name: rows[seed][name]["test_auc"]) for seed in seeds}
    table = []
    for name in models:
        aucs = [rows[s][name]["test_auc"] for s in seeds]
        entry: dict[str, Any] = {
            "model": name, "kind": rows[seeds[0]][name]["kind"], "test_auc": dict(zip(seeds, aucs, strict=True)),
            "mean": statistics.fmean(aucs), "std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "first_in": sum(firsts[s] == name for s in seeds)}
        for key in ("test_logloss", "calibration_error"):  # where every seed's run reported it
            values = [rows[s][name].get(key) for s in seeds]
            entry[f"mean_{key}"] = statistics.fmean(values) if None not in values else None
        if name != AIM and AIM in models:
            diffs = [rows[s][AIM]["test_auc"] - rows[s][name]["test_auc"] for s in seeds]
            entry["aim_minus_this"] = {
                "per_seed": {s: {"difference": d, "delong": rows[s][name].get("aim_retrain_minus_this")}
                             for s, d in zip(seeds, diffs, strict=True)},
                "aim_above_in": sum(d > 0 for d in diffs),
                "across_seeds": t_test(diffs)}
        table.append(entry)
    table.sort(key=lambda e: -e["mean"])
    return {"seeds": seeds, "heads": sorted({by_seed[s]["head"] for s in seeds}), "models": table,
            "targets": {s: by_seed[s]["targets"] for s in seeds},
            "mean_order_holds": order_holds({e["model"]: e["mean"] for e in table})}


def _pm(d: dict[str, Any] | None) -> str:
    return f"{d['difference']:+.4f} ± {d['se']:.4f} (p {d['p_value']:.2g})" if d else "n/a"


def markdown(dataset: str, s: dict[str, Any], digits: int) -> str:
    """The summary as markdown tables (what the README quotes)."""
    seeds, fmt = s["seeds"], f"{{:.{digits}f}}"
    out = [f"### {dataset}: {len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))}), code at "
           f"{', '.join(s['heads'])}", "",
           "| model | " + " | ".join(f"seed {x}" for x in seeds)
           + " | mean | std | first in | mean logloss | mean ECE |",
           "|---|" + "---|" * (len(seeds) + 5)]
    for e in s["models"]:
        name = f"**{e['model']}**" if e["model"] == AIM else e["model"]
        extra = " | ".join("–" if e[k] is None else f"{e[k]:.4f}"
                           for k in ("mean_test_logloss", "mean_calibration_error"))
        out.append(f"| {name} | " + " | ".join(fmt.format(e["test_auc"][x]) for x in seeds)
                   + f" | {fmt.format(e['mean'])} | {fmt.format(e['std'])} | {e['first_in']} of {len(seeds)} | "
                   + extra + " |")
    out += ["", "AIM retrain − model, paired on each seed's test split (DeLong ± se, p), and across seeds "
            "(mean ± se of the per-seed differences, t-test with n − 1 df):", "",
            "| model | " + " | ".join(f"seed {x}" for x in seeds) + " | AIM above in | across seeds |",
            "|---|" + "---|" * (len(seeds) + 2)]
    for e in s["models"]:
        d = e.get("aim_minus_this")
        if not d or e["kind"] == "aim search":
            continue
        cells = [_pm(d["per_seed"][x]["delong"]) if d["per_seed"][x]["delong"]
                 else f"{d['per_seed'][x]['difference']:+.4f}" for x in seeds]
        a = d["across_seeds"]
        across = f"{a['mean']:+.4f} ± {a['se']:.4f} (p {a['p_value']:.2g})" if a else "n/a"
        out.append(f"| {e['model']} | " + " | ".join(cells) + f" | {d['aim_above_in']} of {len(seeds)} | {across} |")
    t = s["targets"]
    out += ["", "| target | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---|" * len(seeds),
            "| AIM above every baseline and AutoFIS | "
            + " | ".join("met" if t[x]["aim_above_every_baseline_and_autofis"]
                         else f"missed ({t[x]['best_other']['model']})" for x in seeds) + " |",
            "| order-2 pairs kept (≤ 30 %) | " + " | ".join(f"{t[x]['order2_pairs_kept']:.1%}" for x in seeds) + " |",
            "| parameters / DeepFM's (≤ 1.5×) | " + " | ".join(f"{t[x]['params_vs_deepfm']:.2f}×" for x in seeds)
            + " |",
            "| paper's order " + " > ".join(PAPER_ORDER) + " | "
            + " | ".join("holds" if t[x]["paper_order_holds"] else "does not" for x in seeds) + " |",
            "", f"On the seeds' mean AUCs the paper's order {'holds' if s['mean_order_holds'] else 'does not hold'}."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="bench.aim_accuracy result files, one seed each")
    ap.add_argument("--digits", type=int, default=4, help="AUC digits in the tables")
    ap.add_argument("--out", type=Path, help="also write the summary as JSON here")
    args = ap.parse_args()
    summaries = {dataset: summarize(by_seed) for dataset, by_seed in load_runs(args.results).items()}
    for dataset, s in summaries.items():
        print(markdown(dataset, s, args.digits) + "\n")
        if len(s["heads"]) > 1:
            print(f"note: {dataset}'s runs come from more than one commit ({', '.join(s['heads'])})\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summaries, indent=1) + "\n")


if __name__ == "__main__":
    main()
