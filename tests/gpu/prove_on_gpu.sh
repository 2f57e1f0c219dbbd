#!/usr/bin/env bash
# The proof on a real GPU (issues #2 and #5): our server extension and container kernels on an H100/H200,
# the NVML recording for CI, and the GET gpus / event-loop bench side by side with jupyterlab-nvdashboard.
#
# How to run (see docs/gpu-validation.md and ../shared/gpu-machine/README.md):
#   here, once:   echo /.gpu-carry/ >> .git/info/exclude
#                 ../shared/gpu-machine/make-gpu-carry.sh .gpu-carry jupyterlab-nvdashboard pytest websocket-client
#                 (then delete the wheels nothing here imports, to stay under 64 MiB: jupyterlab, babel,
#                  jupyter_builder, jupyterlab_server, jupyter_lsp, json5, async_lru)
#                 HATCH_JUPYTER_BUILDER_SKIP_NPM=1 pip wheel --no-deps --no-build-isolation -w .gpu-carry/wheels .
#   there (device tool `run`, carry [".gpu-carry"], timeout 600):
#                 set -o pipefail; export PYTHONUNBUFFERED=1; source .gpu-carry/start-dockerd.sh &&
#                 bash .gpu-carry/make-torch-image.sh && bash tests/gpu/prove_on_gpu.sh 2>&1 | tee $OUT/log.txt
#   without a GPU (tries the script itself: recorded NVML, a CPU image whose ipykernel is on a PYTHONPATH):
#                 LOCAL=1 IMAGE=gpuenv-fake-torch:local PY_IN_IMAGE=python3 bash tests/gpu/prove_on_gpu.sh
#
# Writes to $OUT: results.json (every check), server.log, h100-real.json (NVML recording; copy it to
# tests/recordings/), bench.json, table.md (the table printed at the end). Every step prints
# PASS/FAIL/SKIP and the script goes on; kernel containers are removed at the end whatever happened.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpuenv-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
IMAGE=${IMAGE:-gpuenv-torch:local}
PY_IN_IMAGE=${PY_IN_IMAGE:-/opt/torch/.venv/bin/python3}
BENCH_SECONDS=${BENCH_SECONDS:-10}
local_args=(--wheels .gpu-carry/wheels); bench_args=()   # prepare-runtime: no index there
if [ "${LOCAL:-0}" = 1 ]; then
  local_args=(--local); bench_args=(--fake-nvml tests/recordings/h100x2.json)
fi

cleanup() {
  "$PY" - <<'PY' || true
import docker
c = docker.from_env(timeout=30)
left = c.containers.list(all=True, filters={"label": "io.jupyter.gpuenv.kernel-id"})
for x in left:
    x.remove(force=True)
print(f"cleanup: removed {len(left)} kernel container(s)")
PY
}
trap cleanup EXIT

echo "== machine"
date -u +%Y-%m-%dT%H:%M:%SZ
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
"$PY" -c 'import sys, jupyter_server, jupyter_gpuenv, docker; print("python", sys.version.split()[0], "jupyter_server", jupyter_server.__version__, "jupyter_gpuenv", jupyter_gpuenv.__file__)'
"$PY" -c 'import docker; v = docker.from_env().version(); print("docker engine", v["Version"])' || echo "FAIL: no Docker engine"
"$PY" -c 'import jupyterlab_nvdashboard as n; print("jupyterlab-nvdashboard", n.__version__)' || echo "no jupyterlab-nvdashboard"

echo "== prove (steps a-g)"
"$PY" tests/gpu/prove.py --out "$OUT" --image "$IMAGE" --python "$PY_IN_IMAGE" "${local_args[@]}"
prove_rc=$?
cleanup

echo "== bench (step h, i)"
"$PY" bench/gpus_api.py --out "$OUT/bench.json" --duration "$BENCH_SECONDS" "${bench_args[@]}"
bench_rc=$?

echo "== table"
"$PY" tests/gpu/report.py "$OUT" | tee "$OUT/table.md"
echo "prove rc=$prove_rc bench rc=$bench_rc"
exit $(( prove_rc || bench_rc ))
