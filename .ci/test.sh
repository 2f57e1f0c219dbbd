#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls it). On a fresh Debian machine, as root, it
# installs what the tests need (Docker engine, Chromium, debootstrap), starts dockerd, builds the small
# kernel image the container tests use, installs the project with its test extras into .venv and runs
# every test: Python (server, provisioner, JupyterHub, browser) and the labextension's unit tests.
# Extra arguments go to pytest, e.g. `bash .ci/test.sh -k history`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-system.sh
bash .ci/start-dockerd.sh
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
command -v configurable-http-proxy >/dev/null || npm install -g --silent configurable-http-proxy
bash tests/images/build-kernel-image.sh

python -m pytest "$@"
