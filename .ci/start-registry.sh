#!/usr/bin/env bash
# Starts Debian's docker-registry (the reference registry) on 127.0.0.1 for tests/pulls/test_pulls.py, unless it
# answers already. Loopback only, never another address; no TLS (the engine treats 127.0.0.0/8 registries as
# insecure by default) and no authentication. Configuration and storage live in a root-owned folder, the
# registry itself runs as Debian's unprivileged docker-registry user. The tests push deterministic layers,
# so the stored data stays the same size from run to run.
set -euo pipefail

ADDR=${GPUENV_TEST_REGISTRY:-127.0.0.1:5055}
DIR=/var/lib/gpuenv-ci-registry
LOG=/var/log/gpuenv-ci-registry.log
log() { echo "start-registry: $*"; }

[[ $ADDR =~ ^127\.0\.0\.1:[0-9]+$ ]] || { log "GPUENV_TEST_REGISTRY=$ADDR is not 127.0.0.1:PORT" >&2; exit 1; }
answers() { curl -fsS -m 2 -o /dev/null -D - "http://$ADDR/v2/" 2>/dev/null | grep -qi '^docker-distribution-api-version'; }
if answers; then
  log "registry already running on $ADDR"
  exit 0
fi
command -v docker-registry >/dev/null || { log "docker-registry missing; run .ci/install-system.sh" >&2; exit 1; }

install -d -m 0755 -o root -g root "$DIR"
install -d -m 0750 -o docker-registry -g docker-registry "$DIR/storage"
cat >"$DIR/config.yml.tmp" <<EOF
# written by .ci/start-registry.sh
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: $ADDR
EOF
chmod 0644 "$DIR/config.yml.tmp"
mv "$DIR/config.yml.tmp" "$DIR/config.yml"

log "starting docker-registry on $ADDR (log: $LOG)"
# setsid + nohup + no stdin: own session, so the registry survives the shell (and CI step) that started it.
setsid nohup setpriv --reuid=docker-registry --regid=docker-registry --init-groups \
  docker-registry serve "$DIR/config.yml" </dev/null >>"$LOG" 2>&1 &

for _ in $(seq 30); do
  if answers; then
    log "registry up on $ADDR"
    exit 0
  fi
  sleep 0.5
done
log "registry did not answer within 15 s; log tail:" >&2
tail -n 20 "$LOG" >&2
exit 1
