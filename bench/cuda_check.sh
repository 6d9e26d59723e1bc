#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (an H200 was lent through the session's device tool):
#   bench/cuda_check.sh OUT_DIR
# 1. tests/test_cuda.py: every model, the AIM search step and the fused pair term give the CPU's numbers on CUDA;
# 2. bench.aim_overhead --device cuda: search epoch vs DeepFM epoch, train rows/s, inference per 100k rows;
# 3. the stages search_interaction -> search_embed -> retrain as `dvc repro` runs them (device: auto), timed,
#    on the encoded default data (data/encoded must be there: run `make run` first, or carry it);
# 4. bench.aim_overhead --device cpu on the same machine's cores, for the GPU/CPU ratio.
# OUT_DIR gets cuda_check.log (all output), the two benchmark JSONs and stages.tar (the stages' metrics and gates).
# Each step has a time limit, and all of them together end within BUDGET seconds (default 540).
set -uo pipefail
out=${1:?usage: bench/cuda_check.sh OUT_DIR}
mkdir -p "$out"
log="$out/cuda_check.log"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
budget=${BUDGET:-540}
limit() {  # seconds for the next step: its own limit, or what is left of the budget
  local left=$(( budget - SECONDS ))
  echo $(( left < $1 ? (left > 1 ? left : 1) : $1 ))
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$log"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$log"

timeout $(limit 120) $py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee -a "$log"

timeout $(limit 150) $py -m bench.aim_overhead --device cuda --out "$out/aim_overhead_cuda.json" 2>&1 | tee -a "$log"

for stage in search_interaction search_embed retrain; do
  start=$(date +%s%N)
  timeout $(limit 200) $py -m tasks.$stage 2>&1 | tail -n 20 | tee -a "$log"
  echo "stage $stage: $(( ($(date +%s%N) - start) / 1000000 )) ms wall" | tee -a "$log"
done
tar cf "$out/stages.tar" metrics/search_interaction.json metrics/search_embed.json metrics/retrain.json \
  gates/interaction.json gates/embed.json 2>&1 | tee -a "$log"

timeout $(limit 150) $py -m bench.aim_overhead --device cpu --out "$out/aim_overhead_cpu.json" 2>&1 | tee -a "$log"
