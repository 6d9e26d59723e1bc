#!/bin/bash
# The walkthrough of docs/own_log.md, end to end: a user's own log through the whole pipeline, six ways.
#
#     examples/own_log.sh                 (about 12 minutes on 2 cores)
#
# Clones HEAD beside the checkout, writes examples/ad_log.py's log to data/logs/ads.csv, pastes examples/ads.yaml
# under `datasets:` in params.yaml, and runs `dvc exp run -S dataset=ads` with the shipped settings, then with
# the search's c scaled to its length, with a smaller training batch, with both, and with train.min_epochs 10 (with
# the shipped c and the scaled one). Each run's evaluate table and
# search lines go to examples/results/<run>.txt and its metrics/evaluate.json to examples/results/<run>.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
out=$root/examples/results
scratch=$(mktemp -d "$root/../.own-log-XXXX")
trap 'rm -rf "$scratch"' EXIT
git clone --quiet --local "$root" "$scratch"
cd "$scratch"
export PATH=$(dirname "$python"):$PATH
mkdir -p "$out"
"$python" examples/ad_log.py | tee "$out/log.txt"
"$python" - <<'PY'
from pathlib import Path
spec = "".join("  " + line for line in Path("examples/ads.yaml").read_text().splitlines(True) if not line.startswith("#"))
text = Path("params.yaml").read_text()
Path("params.yaml").write_text(text.replace("\ndatasets:\n", "\ndatasets:\n" + spec + "\n", 1))
PY
git add params.yaml && git commit --quiet -m "the ads spec" && cp params.yaml params.base.yaml
run() {  # run NAME [KEY=VALUE ...]
  local name=$1; shift
  cp params.base.yaml params.yaml
  dvc exp run -S dataset=ads "${@/#/-S}" > "log.$name" 2>&1 || { tail -30 "log.$name"; exit 1; }
  { echo "# dvc exp run -S dataset=ads ${*/#/-S }"; grep -E "^(ingest|search_interaction|autofis_search): " "log.$name";
    "$python" -c "import json; from tasks.evaluate import render; print(render(json.load(open('metrics/evaluate.json'))))"
    "$python" - <<'PY'
import json
for name in ("interaction", "autofis"):  # what each search kept, when it kept a handful
    kept = json.load(open(f"gates/{name}.json"))["interactions"]
    if len(kept) <= 10:
        print(f"{name} kept:", ", ".join(f"{' x '.join(it['fields'])} {it['function']} {it['gate']:.3f}" for it in kept))
PY
  } > "$out/$name.txt"
  cp metrics/evaluate.json "$out/$name.json"
  cat "$out/$name.txt"
}
run shipped
run scaled_c search.grda.reference_steps=1584
run batch_512 train.batch_size=512
run both search.grda.reference_steps=1584 train.batch_size=512
run min_epochs train.min_epochs=10
run scaled_c_min_epochs search.grda.reference_steps=1584 train.min_epochs=10
