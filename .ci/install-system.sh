#!/usr/bin/env bash
# Installs the Debian packages that the system-level tests need (Docker engine, debootstrap for the
# test kernel image, Chromium for browser tests, Prometheus for the metrics test). Idempotent: on a warm
# machine it only runs dpkg-query.
set -euo pipefail

PACKAGES=(
  docker.io            # dockerd + containerd + runc (Debian's; no registry needed)
  debootstrap          # tests/images/build-kernel-image.sh
  ca-certificates
  chromium             # headless browser tests (Playwright drives the system build)
  fonts-dejavu-core    # readable text in screenshots (chromium alone pulls no fonts with --no-install-recommends)
  fonts-liberation     # metric-compatible Arial/Times/Courier for web pages
  prometheus           # tests/usage/test_metrics.py starts its own on a free loopback port; Debian's service unit is unused
  docker-registry      # the reference registry: .ci/start-registry.sh serves it on 127.0.0.1 for tests/pulls/test_pulls.py
  python3-venv         # the venv is made from Debian's Python, which the tests' other Unix users can run
  iproute2 procps psmisc curl xz-utils
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi
echo "install-system: installing ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive
# Refresh the lists only when they are absent, older than a day, or lack a candidate for a missing
# package: a fresh image may ship none, and a stale list gives 404s on download.
need_update=0
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)" ]; then
  need_update=1
else
  for p in "${missing[@]}"; do
    apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]' || { need_update=1; break; }
  done
fi
if [ "$need_update" = 1 ]; then
  echo "install-system: apt-get update"
  apt-get update -qq
fi
# Installing a service package starts it where an init system runs (docker-registry on :5000, every
# interface; prometheus on :9090): forbid service starts during the install, as Debian's container images do.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/install-system.log 2>&1 \
  || { tail -n 40 /tmp/install-system.log; exit 1; }
echo "install-system: done"
