#!/usr/bin/env bash
# Starts a Docker engine for the tests unless one already answers. No bridge, no iptables: containers
# use network_mode host or none, so the engine needs no netfilter (not available everywhere) and makes no
# network changes on the machine.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  echo "start-dockerd: engine already running"
  exit 0
fi
command -v dockerd >/dev/null || { echo "start-dockerd: dockerd missing; run .ci/install-system.sh" >&2; exit 1; }

# A socket or pid file left by an engine that died (e.g. a killed CI run) makes dockerd refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid /var/run/docker.sock
fi

echo "start-dockerd: starting dockerd (log: /tmp/dockerd.log)"
# setsid + nohup + no stdin: own session, so the engine survives the shell (and CI step) that started it.
setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
  </dev/null >>/tmp/dockerd.log 2>&1 &

for _ in $(seq 60); do
  if [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then
    echo "start-dockerd: engine up ($(docker version -f '{{.Server.Version}}'), storage $(docker info -f '{{.Driver}}'))"
    exit 0
  fi
  sleep 0.5
done
echo "start-dockerd: engine did not answer within 30 s; log tail:" >&2
tail -n 40 /tmp/dockerd.log >&2
exit 1
