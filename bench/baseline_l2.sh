#!/bin/bash
# Benchmark: FM's and FwFM's embedding L2 on one dataset preset, chosen on validation AUC.
#
#     bench/baseline_l2.sh DATASET [L2 ...]        (default grid: 0.001 0.0001 0.00001 0.000005 0.000001)
#
# Clones HEAD beside the checkout (as bench.aim_accuracy does, so the presets' ../shared/data paths hold), sets
# dataset=DATASET, runs `dvc repro validate`, then trains `python -m tasks.baselines fm` and `fwfm` at each L2
# (set with DVC's -S writer over the preset's own value) and appends "dataset model l2 valid_auc test_auc epochs"
# lines to bench/results/baseline_l2.txt. The presets' values in params.yaml are the ones with the best valid AUC.
set -euo pipefail
dataset=${1:?usage: bench/baseline_l2.sh DATASET [L2 ...]}
shift
grid=${*:-0.001 0.0001 0.00001 0.000005 0.000001}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
out=$root/bench/results/baseline_l2.txt
scratch=$(mktemp -d "$root/../.baseline-l2-$dataset-XXXX")
trap 'rm -rf "$scratch"' EXIT
git clone --quiet --local "$root" "$scratch"
cd "$scratch"
export PATH=$(dirname "$python"):$PATH
set_params() { "$python" -c "import sys; from flows.aim_pipeline import apply_overrides; apply_overrides.fn('.', sys.argv[1:])" "$@"; }
set_params "dataset=$dataset"
"$python" -m dvc repro validate > repro.log 2>&1
cp params.yaml params.base.yaml
for model in fm fwfm; do
  for l2 in $grid; do
    cp params.base.yaml params.yaml
    set_params "datasets.$dataset.overrides.baselines.models.$model.embedding_l2=$l2" 2>/dev/null ||
      set_params "baselines.models.$model.embedding_l2=$l2"
    "$python" -m tasks.baselines "$model" > "log.$model.$l2" 2>&1
    "$python" -c "import json, sys; m = json.load(open(f'metrics/baselines/{sys.argv[2]}.json'))
print(*sys.argv[1:], m['valid_auc'], m['test_auc'], m['epochs'])" "$dataset" "$model" "$l2" | tee -a "$out"
  done
done
