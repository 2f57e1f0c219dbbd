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
bash .ci/start-registry.sh   # 127.0.0.1 only: the registry tests/pulls/test_pulls.py pulls from
# The broker tests put a hostile user in the broker's way on a host set as stock Debian sets it: links, FIFOs and
# files in world-writable sticky folders protected (issue 20). Where /proc/sys is read-only (a container), the
# host's values stay: said, not fatal.
if sysctl -q -w fs.protected_regular=2 fs.protected_fifos=2 fs.protected_symlinks=1 2>/dev/null; then
  echo "test.sh: fs.protected_regular=2 fs.protected_fifos=2 fs.protected_symlinks=1"
else
  echo "test.sh: cannot set fs.protected_* here; the tests run with" \
    "$(sysctl -n fs.protected_regular fs.protected_fifos fs.protected_symlinks 2>/dev/null | tr '\n' ' ')"
fi
# The shared-host tests run Jupyter servers as other Unix users, who must be able to run the venv's
# Python: a pyenv Python under /root (0700) is out of their reach, Debian's /usr/bin/python3 is not.
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix.startswith("/root"))'; then
  rm -rf .venv  # made from a Python other users cannot run
fi
if [ ! -x .venv/bin/python ]; then "$python" -m venv .venv; fi
# shellcheck disable=SC1091
. .venv/bin/activate
# (this machine's pip config names a local index folder that may be missing: filter that one warning, keep
# pip's exit status)
pip_quiet() { python -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }
pip_quiet install -q --upgrade pip
pip_quiet install -q -e ".[test]"
command -v configurable-http-proxy >/dev/null || npm install -g --silent configurable-http-proxy
bash tests/images/build-kernel-image.sh

# lint, format and types, both halves: ruff and mypy for Python (pyproject's [tool.mypy]), eslint + prettier for
# the panel
ruff check .
ruff format --check .
python -m mypy
(cd labextension && jlpm lint:check && jlpm test)

python -m pytest "$@"
