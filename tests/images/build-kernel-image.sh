#!/usr/bin/env bash
# Builds a small local kernel image without any registry: debootstrap a minimal Debian bookworm with
# python3, add ipykernel from PyPI, `docker import` it.  Usage: build-kernel-image.sh [TAG]
# Caches: the image itself (labelled with a key of this script's content), and the rootfs tarball in
# /var/cache/jupyter_gpuenv/, so an engine that lost its images re-imports in seconds.
set -euo pipefail

TAG=${1:-gpuenv-test-kernel:latest}
IPYKERNEL_SPEC=${IPYKERNEL_SPEC:-ipykernel==7.4.0}
CACHE=/var/cache/jupyter_gpuenv
KEY=$( { cat "$0"; echo "$IPYKERNEL_SPEC"; } | sha256sum | cut -c1-16)
TARBALL=$CACHE/kernel-rootfs-$KEY.tar
log() { echo "build-kernel-image: $*"; }

docker info >/dev/null 2>&1 || { log "no Docker engine answers; run .ci/start-dockerd.sh" >&2; exit 1; }
have=$(docker image inspect -f '{{index .Config.Labels "gpuenv.build-key"}}' "$TAG" 2>/dev/null || true)
if [ "$have" = "$KEY" ]; then
  log "$TAG is up to date"
  exit 0
fi
mkdir -p "$CACHE"

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap missing; run .ci/install-system.sh" >&2; exit 1; }
  # The machine's own bookworm mirror (a proxy or snapshot may stand in for deb.debian.org), read from
  # one-line .list or deb822 .sources files (a blank line after each file ends its last stanza).
  MIRROR=$(for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && { cat "$f"; printf "\n\n"; }; done | awk '
    /^deb / { sub(/\[[^]]*\]/, ""); if ($3 == "bookworm") { print $2; exit } }
    /^URIs:/ { uris = $2 } /^Suites:/ { suites = $0 " " }
    /^[[:space:]]*$/ { if (uris != "" && suites ~ / bookworm /) { print uris; exit } uris = ""; suites = "" }' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  log "debootstrap bookworm from $MIRROR"

  WORK=$(mktemp -d /var/tmp/gpuenv-kernel-image.XXXXXX)
  # --one-file-system: never descend into a /proc or /sys that a killed debootstrap left mounted.
  trap 'rm -rf --one-file-system "$WORK"' EXIT
  ROOT=$WORK/rootfs
  mkdir -p "$CACHE/debs"
  debootstrap --variant=minbase --include=python3 --cache-dir="$CACHE/debs" \
    bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" "$ROOT/debootstrap/debootstrap.log" 2>/dev/null; exit 1; }

  # The host's pip installs the wheels straight into Debian's site dir for /usr/local: the host runs
  # bookworm's glibc and CPython 3.11 too, so the wheels it picks fit; --only-binary keeps host
  # compilers out of it.  No pip in the image keeps it smaller.
  SITE=$ROOT/usr/local/lib/python3.11/dist-packages
  # --no-warn-conflicts: pip would compare against the host's own packages, which are irrelevant here.
  python3 -m pip install --disable-pip-version-check --root-user-action=ignore --no-warn-conflicts \
    --no-compile --only-binary=:all: --python-version 3.11 --target "$SITE" "$IPYKERNEL_SPEC" \
    >"$WORK/pip.log" 2>&1 || { tail -n 30 "$WORK/pip.log"; exit 1; }
  rm -rf "$SITE/bin"   # console scripts whose shebang names the host's python
  # Byte-compile with the image's own python: the kernel runs as a non-root user who cannot write
  # __pycache__ there, so without .pyc files every kernel start would recompile IPython & co.
  chroot "$ROOT" python3 -m compileall -q /usr/local/lib/python3.11/dist-packages >/dev/null

  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* \
    "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/debootstrap
  tar -C "$ROOT" --exclude='./dev/*' --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  find "$CACHE" -maxdepth 1 -name 'kernel-rootfs-*.tar' ! -name "${TARBALL##*/}" -delete
fi

log "importing $TARBALL as $TAG"
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL gpuenv.build-key=$KEY" \
  "$TARBALL" "$TAG" >/dev/null
# The outdated image, now untagged, would otherwise linger (190 MB each time this script changes).
[ -z "$old_id" ] || docker rmi "$old_id" >/dev/null 2>&1 || true

log "ipykernel $(docker run --rm --network none "$TAG" python3 -c 'import ipykernel, zmq; print(ipykernel.__version__)') in $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
