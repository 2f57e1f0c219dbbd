#!/usr/bin/env bash
# This wave on the GPU machine, in two calls kept back to back (the machine stays warm between them, with its
# engine and torch image): the package laid out in wings (issue 21) must pass every earlier proof, and issue 23's
# benches (warm kernels with `import torch` done ahead, park/resume beside the driver) get their numbers.
#
#   here:   ../shared/gpu-machine/make-gpu-carry.sh .gpu-carry jupyterlab-nvdashboard pytest websocket-client
#           (remove the wheels nothing there imports: jupyterlab, babel, jupyter_builder, jupyterlab_server,
#            jupyter_lsp, json5, async_lru), then
#           HATCH_JUPYTER_BUILDER_SKIP_NPM=1 pip wheel --no-deps --no-build-isolation -w .gpu-carry/wheels .
#   there:  (device tool `run`, carry [".gpu-carry"]) bash tests/gpu/prove_wave3.sh 1, then ... 2 (3: issue 24's
#           processes table, which came later)
# Part 1: the earlier proof (container kernels through REST on the H200), the shared host (broker, two Unix
#         users), park/resume against the driver. Part 2: the parking proof, warm kernels against a local kernel
#         (ready, first cell with torch imported ahead, twenty at once), container start times.
# What comes back in $OUT: wave3-N.log (everything printed), results-N.tgz (every file the steps wrote).
set -uo pipefail
export PYTHONUNBUFFERED=1
part=${1:?part 1, 2 or 3}
WORK=/tmp/gpuenv-wave3-$part
mkdir -p "$WORK"
exec > >(tee "$OUT/wave3-$part.log") 2>&1
started=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - started)) s)"; }
source .gpu-carry/start-dockerd.sh || { echo "FAIL: engine"; exit 1; }
[ "$part" = 3 ] || docker image inspect gpuenv-torch:local >/dev/null 2>&1 || bash .gpu-carry/make-torch-image.sh >"$WORK/torch-image.log" 2>&1 \
  || { echo "FAIL: torch image"; tail -20 "$WORK/torch-image.log"; exit 1; }
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv
if [ "$part" = 3 ]; then
  step "the processes table's columns on the GPU (issue 24)"
  timeout 90 python3 tests/gpu/prove_processes.py --out "$WORK"; echo "prove_processes rc=$?"
elif [ "$part" = 1 ]; then
  step "the earlier proof on the laid-out package"
  BENCH_SECONDS=3 OUT="$WORK/prove" timeout 200 bash tests/gpu/prove_on_gpu.sh > "$WORK/prove.log" 2>&1
  echo "prove_on_gpu.sh rc=$?"; grep -E "^(PASS|FAIL)|passed|failed" "$WORK/prove.log" | tail -60
  step "shared host"
  timeout 150 python3 tests/gpu/prove_shared_host.py --out "$WORK/shared"; echo "prove_shared_host rc=$?"
  step "park and resume against the driver"
  timeout 150 python3 bench/park_resume.py --sizes 1 4 --out "$WORK"; echo "park_resume rc=$?"
else
  step "the parking proof"
  timeout 200 python3 tests/gpu/prove_parking.py --out "$WORK"; echo "prove_parking rc=$?"
  step "warm kernels against a local kernel, torch imported ahead"
  timeout 220 python3 bench/warm_kernels.py --runs 5 --burst 20 --warm-imports torch --out "$WORK/warm_kernels.json"
  echo "warm_kernels rc=$?"
  step "container start times"
  timeout 120 python3 bench/kernel_ready.py --runs 4 --burst 10 --burst-runs 1 --out "$WORK/kernel_ready.json"
  echo "kernel_ready rc=$?"
fi
step "done"
tar -C "$WORK" -czf "$OUT/results-$part.tgz" . 2>/dev/null
