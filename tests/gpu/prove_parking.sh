#!/usr/bin/env bash
# One GPU-machine call for park and resume (issues 12, 23): the proof, then the bench against the driver itself.
#   here:   the project's wheel into .gpu-carry/wheels (see prove_wave2.sh), then
#   there:  (device tool `run`, carry [".gpu-carry"]) bash tests/gpu/prove_parking.sh
# What comes back in $OUT: parking.log (everything printed), parking.json, park_resume.json (the kernel against the
# driver called directly, park and resume twice per size, with the server's phase timelines; the waiting cell's
# wake), the servers' logs (one line per park/resume with its phases).
set -uo pipefail
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/parking.log") 2>&1
started=$(date +%s)
source .gpu-carry/start-dockerd.sh || { echo "FAIL: engine"; exit 1; }
bash .gpu-carry/make-torch-image.sh >/tmp/torch-image.log 2>&1 || { echo "FAIL: torch image"; tail -20 /tmp/torch-image.log; exit 1; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
echo "== proof ($(($(date +%s) - started)) s)"
timeout 330 python3 tests/gpu/prove_parking.py --out "$OUT"
echo "prove_parking rc=$?"
echo "== bench ($(($(date +%s) - started)) s)"
timeout 220 python3 bench/park_resume.py --sizes 1 4 --out "$OUT"
echo "bench rc=$?"
echo "== done in $(($(date +%s) - started)) s"
