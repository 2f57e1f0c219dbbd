#!/usr/bin/env bash
# One GPU-machine call for issue 23: park and resume against the driver itself, and warm kernels against a local
# kernel, after the parking proof again (the release wake and the timeline changed its code paths).
#   here:   ../shared/gpu-machine/make-gpu-carry.sh .gpu-carry   (remove the wheels nothing there imports:
#           jupyterlab, babel, jupyter_builder, jupyterlab_server, jupyter_lsp, json5, async_lru), then
#           HATCH_JUPYTER_BUILDER_SKIP_NPM=1 pip wheel --no-deps --no-build-isolation -w .gpu-carry/wheels .
#   there:  (device tool `run`, carry [".gpu-carry"]) bash tests/gpu/prove_issue23.sh
# What comes back in $OUT: issue23.log (everything printed), parking.json, park_resume.json (each size parked and
# resumed twice through REST beside the driver called directly on a host process holding the same tensor, with
# the server's phase timelines; the waiting cell's wake), warm_kernels.json, the servers' logs.
set -uo pipefail
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/issue23.log") 2>&1
started=$(date +%s)
source .gpu-carry/start-dockerd.sh || { echo "FAIL: engine"; exit 1; }
bash .gpu-carry/make-torch-image.sh >/tmp/torch-image.log 2>&1 || { echo "FAIL: torch image"; tail -20 /tmp/torch-image.log; exit 1; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
echo "== parking proof ($(($(date +%s) - started)) s)"
timeout 240 python3 tests/gpu/prove_parking.py --out "$OUT"
echo "prove_parking rc=$?"
echo "== park/resume against the driver ($(($(date +%s) - started)) s)"
timeout 150 python3 bench/park_resume.py --sizes 1 4 --out "$OUT"
echo "park_resume rc=$?"
echo "== warm kernels against a local kernel ($(($(date +%s) - started)) s)"
timeout 120 python3 bench/warm_kernels.py --runs 5 --burst 20 --out "$OUT/warm_kernels.json"
echo "warm_kernels rc=$?"
echo "== done in $(($(date +%s) - started)) s"
