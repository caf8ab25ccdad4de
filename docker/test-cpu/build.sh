#!/usr/bin/env bash
# Build the offline, CPU-only llem test image without any container registry.
#
#   docker/test-cpu/build.sh [--engine podman|docker] [--tag TAG] [--rebuild] [--prune]
#
#  1. Base image localhost/llem-base:bookworm, unless the engine already has it: a Debian bookworm
#     minbase rootfs made with debootstrap (python3, python3-venv, ca-certificates; cached in
#     $LLEM_ROOTFS_DIR and reused), imported with `<engine> import`. Needs root and a Debian mirror
#     (installs debootstrap with apt-get when missing).
#  2. localhost/llem-test-cpu:TAG from docker/test-cpu/Containerfile, built with --network host:
#     a dependency layer (torch + llem's dependencies, into /opt/llem-venv), then llem's sources,
#     last, so a code change rebuilds only that layer. pip inside the build gets the host's CA bundle
#     and local wheel folder (what the host's pip uses: its `cert` and `find-links`), bind-mounted.
#
# TAG defaults to a short hash of llem's sources (pyproject.toml, README.md, llem/, hydra_plugins/,
# conf/) and of the Containerfile, so a changed checkout gets a new tag; an image that already has
# that tag is reused without building (--rebuild builds anyway). Progress goes to stderr; stdout's
# last line is the image reference, e.g.  IMAGE="$(docker/test-cpu/build.sh | tail -n1)".
# --prune removes the other tags of localhost/llem-test-cpu afterwards (older checkouts' images;
# their dependency layer is shared, so each costs only its last layer, about 1 MB).
#
# Environment:
#   LLEM_CONTAINER_ENGINE  default engine (else podman when installed, else docker)
#   LLEM_ROOTFS_DIR        debootstrap cache (default ${XDG_CACHE_HOME:-~/.cache}/llem/rootfs-bookworm)
#   DEBIAN_MIRROR          debootstrap mirror (default http://deb.debian.org/debian)
#   LLEM_BUILD_CA          CA bundle for pip (default: the host pip's `cert`, $PIP_CERT, or none)
#   LLEM_BUILD_WHEELS      local wheel folder(s), space-separated (default: the host pip's `find-links`)
#   TORCH_SPEC             torch requirement (default torch==2.13.0, the CPU wheel in the local folder)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/docker/test-cpu"
BASE_IMAGE="localhost/llem-base:bookworm"
IMAGE_NAME="localhost/llem-test-cpu"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
ENGINE="${LLEM_CONTAINER_ENGINE:-}"
TAG=""
REBUILD=0
PRUNE=0

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
        --engine=*) ENGINE="${1#*=}"; shift ;;
        --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) TAG="${1#*=}"; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --prune) PRUNE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
case "$ENGINE" in podman|docker) ;; *) die "--engine must be podman or docker, not '$ENGINE'" ;; esac
command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE is not installed (see scripts/deps/podman.sh)"
"$ENGINE" info >/dev/null 2>&1 || die "'$ENGINE info' fails: the engine is not usable here"

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
finish() {  # print the image reference (stdout's last line), after an optional --prune
    if [ "$PRUNE" = 1 ]; then
        "$ENGINE" images --format '{{.Repository}}:{{.Tag}}' \
            | { grep -E "^$IMAGE_NAME:" || true; } | { grep -vxF "$IMAGE" || true; } \
            | while read -r old; do
                log "removing $old"
                "$ENGINE" rmi "$old" >/dev/null 2>&1 || log "could not remove $old (in use?)"
            done
    fi
    echo "$IMAGE"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/llem-test-cpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- llem's sources: one deterministic tar, hashed for the tag and unpacked into the context ------
SRC_ITEMS=(pyproject.toml README.md llem hydra_plugins conf)
for item in "${SRC_ITEMS[@]}"; do
    [ -e "$REPO/$item" ] || die "missing $REPO/$item"
done
tar -C "$REPO" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
    -cf "$WORK/src.tar" "${SRC_ITEMS[@]}"
if [ -z "$TAG" ]; then
    AUTO_TAG=1
    TAG="$( { sha256sum <"$WORK/src.tar"; sha256sum <"$HERE/Containerfile"; echo "$TORCH_SPEC"; } \
        | sha256sum | cut -c1-12)"
else
    AUTO_TAG=0
fi
IMAGE="$IMAGE_NAME:$TAG"

if [ "$AUTO_TAG" = 1 ] && [ "$REBUILD" = 0 ] && image_exists "$IMAGE"; then
    log "$IMAGE already exists (same sources); reusing it"
    finish
    exit 0
fi

# --- 1. base image ---------------------------------------------------------------------------------
if image_exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE already exists"
else
    CACHE="${LLEM_ROOTFS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llem/rootfs-bookworm}"
    ROOTFS="$CACHE/rootfs"
    if [ -f "$CACHE/complete" ] && [ -x "$ROOTFS/usr/bin/python3" ]; then
        log "reusing the rootfs in $ROOTFS"
    else
        [ "$(id -u)" -eq 0 ] || die "building the base rootfs with debootstrap needs root"
        if ! command -v debootstrap >/dev/null 2>&1; then
            log "installing debootstrap"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y debootstrap >&2 || { apt-get update >&2 && apt-get install -y debootstrap >&2; }
        fi
        rm -rf "$CACHE/rootfs" "$CACHE/complete"
        mkdir -p "$CACHE"
        log "debootstrap bookworm -> $ROOTFS"
        t0="$(now)"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
        # No package caches or lists in the image (derived images run `apt-get update` first).
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
            "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
        touch "$CACHE/complete"
        log "debootstrap took $(since "$t0") s ($(du -sh "$ROOTFS" | cut -f1))"
    fi
    t0="$(now)"
    tar -C "$ROOTFS" --numeric-owner -c . | "$ENGINE" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >&2
    log "imported $BASE_IMAGE in $(since "$t0") s"
fi

# --- 2. build context ------------------------------------------------------------------------------
CTX="$WORK/context"
mkdir -p "$CTX/src" "$CTX/pip/wheels"
tar -C "$CTX/src" -xf "$WORK/src.tar"
cp "$HERE/Containerfile" "$CTX/Containerfile"

read_toml='import sys, tomllib
p = tomllib.load(sys.stdin.buffer)["project"]
print("\n".join(p.get("dependencies", []) + p.get("optional-dependencies", {}).get("pytorch", [])))'
if ! python3 -c "$read_toml" <"$REPO/pyproject.toml" >"$CTX/requirements.txt" 2>/dev/null; then
    # No tomllib on the host (Python < 3.11): the base image has Python 3.11.
    "$ENGINE" run --rm -i --network none "$BASE_IMAGE" python3 -c "$read_toml" \
        <"$REPO/pyproject.toml" >"$CTX/requirements.txt"
fi

host_pip_config() {  # the host pip's setting $1 (e.g. global.cert), or nothing
    local pip
    for pip in "python3 -m pip" pip3 pip; do
        if $pip --version >/dev/null 2>&1; then
            $pip config get "$1" 2>/dev/null || true
            return
        fi
    done
}
CA="${LLEM_BUILD_CA-${PIP_CERT:-$(host_pip_config global.cert)}}"
if [ -n "$CA" ] && [ -f "$CA" ]; then
    cp "$CA" "$CTX/pip/ca.crt"
    log "pip CA bundle: $CA"
fi
WHEELS="${LLEM_BUILD_WHEELS-${PIP_FIND_LINKS:-$(host_pip_config global.find-links)}}"
n_wheels=0
for dir in $WHEELS; do
    dir="${dir#file://}"
    [ -d "$dir" ] || continue
    for whl in "$dir"/*.whl; do
        [ -f "$whl" ] || continue
        # Hard links cost nothing; fall back to a copy across file systems.
        ln "$whl" "$CTX/pip/wheels/" 2>/dev/null || cp "$whl" "$CTX/pip/wheels/"
        n_wheels=$((n_wheels + 1))
    done
    log "local wheels: $dir"
done
EXTRA_INDEX=""
if ! compgen -G "$CTX/pip/wheels/torch-*.whl" >/dev/null; then
    # No local torch wheel: take the CPU build from PyTorch's index rather than the CUDA one.
    EXTRA_INDEX="https://download.pytorch.org/whl/cpu"
    log "no local torch wheel; using $EXTRA_INDEX"
fi

# --- 3. the test image -----------------------------------------------------------------------------
log "building $IMAGE with $ENGINE"
t0="$(now)"
build_args=(build --network host -f "$CTX/Containerfile" -t "$IMAGE"
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_SPEC=$TORCH_SPEC"
    --build-arg "PIP_EXTRA_INDEX_URL=$EXTRA_INDEX")
if [ "$ENGINE" = docker ]; then
    export DOCKER_BUILDKIT=1   # RUN --mount
else
    build_args+=(--layers)
fi
"$ENGINE" "${build_args[@]}" "$CTX" >&2
log "built $IMAGE in $(since "$t0") s ($("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
finish
