#!/usr/bin/env bash
# One GPU-machine call for this wave: the earlier proof again on the rebuilt container half, the shared host
# (broker, two Unix users, the exporter against nvidia-smi), and container-kernel start times on CUDA images.
#
#   here:   ../shared/gpu-machine/make-gpu-carry.sh .gpu-carry jupyterlab-nvdashboard pytest websocket-client
#           (remove the wheels nothing there imports: jupyterlab, babel, jupyter_builder, jupyterlab_server,
#            jupyter_lsp, json5, async_lru), then
#           HATCH_JUPYTER_BUILDER_SKIP_NPM=1 pip wheel --no-deps --no-build-isolation -w .gpu-carry/wheels .
#   there:  (device tool `run`, carry [".gpu-carry"]) bash tests/gpu/prove_wave2.sh
# What comes back in $OUT: wave2.log (everything printed), results.tgz (every file the steps wrote).
set -uo pipefail
export PYTHONUNBUFFERED=1
WORK=/tmp/gpuenv-wave2
mkdir -p "$WORK"
exec > >(tee "$OUT/wave2.log") 2>&1
started=$(date +%s)
source .gpu-carry/start-dockerd.sh || { echo "FAIL: engine"; exit 1; }
bash .gpu-carry/make-torch-image.sh || { echo "FAIL: torch image"; exit 1; }
echo "== 1. the proof of issues 2-7 on the rebuilt container half ($(($(date +%s) - started)) s)"
BENCH_SECONDS=${BENCH_SECONDS:-5} OUT="$WORK/prove" bash tests/gpu/prove_on_gpu.sh > "$WORK/prove.log" 2>&1
echo "prove_on_gpu.sh rc=$?"; grep -E "^(PASS|FAIL)|passed|failed" "$WORK/prove.log" | tail -60
echo "== 2. shared host ($(($(date +%s) - started)) s)"
python3 tests/gpu/prove_shared_host.py --out "$WORK/shared"
echo "== 3. container kernel start times on a CUDA image ($(($(date +%s) - started)) s)"
if [ -f bench/kernel_ready.py ]; then
  timeout 300 python3 bench/kernel_ready.py --runs 6 --burst 20 --burst-runs 2 --out "$WORK/kernel_ready.json" || echo "bench rc=$?"
fi
echo "== done in $(($(date +%s) - started)) s"
tar -C "$WORK" -czf "$OUT/results.tgz" . 2>/dev/null
