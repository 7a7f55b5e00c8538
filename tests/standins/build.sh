#!/usr/bin/env bash
# Build the stand-in base images used ONLY on test machines that cannot reach a
# container registry (CI here). The product defaults to the official images
# (quay.io/jupyterhub/jupyterhub, quay.io/jupyter/tensorflow-notebook) and must
# not depend on these.
#
#   gpuhub-standin/debian:bookworm   debootstrap --variant=minbase, docker import
#   gpuhub-standin/hub-base:latest   stands in for quay.io/jupyterhub/jupyterhub:<pin>
#   gpuhub-standin/lab-base:latest   stands in for quay.io/jupyter/tensorflow-notebook:cuda-*
#   gpuhub-standin/lab-base-slim:latest  the same without TensorFlow, for the Swarm tier only
#                                    (GPUHUB_SWARM_LAB_BASE_IMAGE in .ci/run)
#
# Each image is skipped if it already exists (pass --force to rebuild all).
# Needs: root, debootstrap, a running Docker daemon with BuildKit (20.10+).
# Env: DOCKER (client binary; default /usr/bin/docker if present, see below),
#      DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      EXTRA_CA_CERTS (CA bundle passed as BuildKit secret; default
#      /etc/ssl/certs/ca-certificates.crt; it never ends up in an image layer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

force=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $a" >&2; exit 2 ;;
  esac
done

# Debian's 20.10 client has BuildKit built in; a newer client without the buildx
# plugin refuses DOCKER_BUILDKIT=1 builds, so prefer Debian's client.
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA=${EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=${BUILDKIT_PROGRESS:-plain}

DEBIAN_IMAGE=gpuhub-standin/debian:bookworm
HUB_IMAGE=gpuhub-standin/hub-base:latest
LAB_IMAGE=gpuhub-standin/lab-base:latest
LAB_SLIM_IMAGE=gpuhub-standin/lab-base-slim:latest

log() { printf '[standins %s] %s\n' "$(date +%T)" "$*"; }
have() { [ "$force" = 0 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

[ -r "$CA" ] || { echo "build.sh: CA bundle $CA not readable" >&2; exit 1; }

build_debian() {
  if have "$DEBIAN_IMAGE"; then log "$DEBIAN_IMAGE exists, skipped"; return; fi
  command -v debootstrap >/dev/null || { echo "build.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  local t0=$SECONDS dir
  dir=$(mktemp -d /var/tmp/gpuhub-standin-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$dir' '$dir.log'" EXIT
  log "debootstrap --variant=minbase bookworm into $dir"
  debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 || {
    tail -30 "$dir.log" >&2; exit 1; }
  cat >"$dir/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
SRC
  # like the official debian image: no caches, no recommends, smaller apt lists
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$dir/etc/apt/apt.conf.d/90gpuhub-standin"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/tmp/* \
         "$dir"/etc/machine-id "$dir"/etc/hostname "$dir"/etc/resolv.conf
  : >"$dir/etc/machine-id"
  log "docker import -> $DEBIAN_IMAGE"
  tar --numeric-owner -C "$dir" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$dir" "$dir.log"; trap - EXIT
  log "$DEBIAN_IMAGE built in $((SECONDS - t0))s"
}

build_one() { # image dockerfile [docker build arguments]
  if have "$1"; then log "$1 exists, skipped"; return; fi
  local t0=$SECONDS
  log "building $1 from $(basename "$2")"
  "$DOCKER" build --secret "id=extra_ca_certs,src=$CA" \
    --build-arg "BASE_IMAGE=$DEBIAN_IMAGE" "${@:3}" \
    -f "$2" -t "$1" "$here"
  log "$1 built in $((SECONDS - t0))s"
}

build_debian
build_one "$HUB_IMAGE" "$here/hub-base.Dockerfile"
build_one "$LAB_IMAGE" "$here/lab-base.Dockerfile"
build_one "$LAB_SLIM_IMAGE" "$here/lab-base.Dockerfile" --build-arg TENSORFLOW=
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^gpuhub-standin/' | sed 's/^/[standins] /'
