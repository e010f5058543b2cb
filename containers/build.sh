#!/usr/bin/env bash
# Build the CPU image that `hydra-rlhf run --runner docker` and the compiled components name.
#
#   containers/build.sh [--base IMAGE | --debootstrap] [--wheelhouse] [--tag TAG] [--torch-index URL]
#
#   --base IMAGE       the base image (default: python:3.11.7-slim-bookworm, from a registry)
#   --debootstrap      make the base from Debian's packages (bookworm's Python 3.11) with debootstrap, as
#                      hydra-rlhf-base:bookworm, and build on it: for hosts that reach no container registry
#   --wheelhouse       build the wheels on this host first (containers/wheelhouse/) and install only those
#                      in the image: no network in the build (air-gapped clusters build this way too)
#   --tag TAG          the image's name (default: the components' CPU image, components/image.py)
#   --torch-index URL  where pip finds PyTorch's CPU build (default: PyTorch's CPU index)
#
# Environment: PYTHON (the host's Python 3.11 for the wheelhouse; default .venv/bin/python, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=python:3.11.7-slim-bookworm
DEBIAN_BASE=hydra-rlhf-base:bookworm
TAG=
WHEELHOUSE=no
DEBOOTSTRAP=no
TORCH_INDEX=https://download.pytorch.org/whl/cpu

fail() { echo "containers/build.sh: $*" >&2; exit 1; }
step() { echo "==> $(date +%T) $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || fail "--base needs an image"; BASE=$2; shift 2 ;;
    --debootstrap) DEBOOTSTRAP=yes; BASE=$DEBIAN_BASE; shift ;;
    --wheelhouse) WHEELHOUSE=yes; shift ;;
    --no-wheelhouse) WHEELHOUSE=no; shift ;;
    --tag) [ $# -ge 2 ] || fail "--tag needs a name"; TAG=$2; shift 2 ;;
    --torch-index) [ $# -ge 2 ] || fail "--torch-index needs a URL"; TORCH_INDEX=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option $1 (see --help)" ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "$TAG" ]; then
  # the name the components carry, so kfp's DockerRunner finds the image here instead of pulling it
  TAG=$(cd "$ROOT" && "$PYTHON" -c 'from components.image import IMAGE; print(IMAGE)' 2>/dev/null) \
    || TAG=ghcr.io/hydra-rlhf/hydra-rlhf:0.1.0-cpu
fi

command -v docker > /dev/null || fail "docker is not installed: install Docker (Debian: apt-get install docker.io)"
docker info > /dev/null 2>&1 || fail "no Docker daemon answers (docker info failed): start dockerd, or check DOCKER_HOST"

started=$(date +%s)

if [ "$DEBOOTSTRAP" = yes ]; then
  if docker image inspect "$DEBIAN_BASE" > /dev/null 2>&1; then
    step "base image $DEBIAN_BASE is here already (docker rmi it to make it afresh)"
  else
    command -v debootstrap > /dev/null || fail "--debootstrap needs debootstrap (Debian: apt-get install debootstrap)"
    [ "$(id -u)" -eq 0 ] || fail "--debootstrap needs root (debootstrap makes device files and chroots)"
    rootfs=$(mktemp -d /tmp/hydra-rlhf-rootfs.XXXXXX)
    step "debootstrap: Debian bookworm with python3 and python3-venv into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" > "$rootfs.log" 2>&1 \
      || fail "debootstrap failed: see $rootfs.log"
    # apt's lists and caches are build leftovers, not part of the image
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    step "importing it as $DEBIAN_BASE"
    tar -C "$rootfs" -c . | docker import - "$DEBIAN_BASE" > /dev/null
    rm -rf "$rootfs" "$rootfs.log"
  fi
fi

# Docker's legacy builder (no buildx) reads no Dockerfile.dockerignore and would send the whole checkout,
# virtual environment included; a folder with just what that file lets in suits both builders.
context=$(mktemp -d /tmp/hydra-rlhf-context.XXXXXX)
trap 'rm -rf "$context"' EXIT
includes=$(sed -n 's|^!\(.*[^/]\)/\{0,1\}$|\1|p' "$ROOT/containers/Dockerfile.dockerignore" | grep -v '^containers/wheelhouse$')
excludes=$(grep -v '^[!#]' "$ROOT/containers/Dockerfile.dockerignore" | sed -n 's|^\*\*/||p')
# shellcheck disable=SC2086  # the lists are one path or pattern a line, none with spaces
tar -C "$ROOT" $(printf -- '--exclude=%s ' $excludes) -cf - $includes | tar -C "$context" -xf -
cp "$ROOT/containers/Dockerfile" "$context/Dockerfile"

if [ "$WHEELHOUSE" = yes ]; then
  wheelhouse=$ROOT/containers/wheelhouse
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || fail "the wheelhouse needs the image's Python (3.11) on this host: set PYTHON"
  step "wheelhouse: wheels of containers/requirements.lock into $wheelhouse (pip's own settings apply)"
  mkdir -p "$wheelhouse"
  torch_pin=$(grep '^torch==' "$ROOT/containers/requirements.lock")
  # PyTorch alone from its CPU index (pip tries every index for every package, and an unreachable one
  # retries for each), then the rest, with the wheelhouse's CPU build of torch ranking above PyPI's CUDA
  # one (a local version label, 2.13.0+cpu, sorts above 2.13.0)
  "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" --extra-index-url "$TORCH_INDEX" "$torch_pin" \
    || fail "pip wheel failed for $torch_pin"
  # the CPU image must not carry PyTorch's multi-GB CUDA build from PyPI
  ls "$wheelhouse"/torch-"${torch_pin#torch==}"+cpu-*.whl > /dev/null 2>&1 \
    || fail "no CPU build of $torch_pin in $wheelhouse: pass --torch-index, or put its wheel in pip's find-links"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$wheelhouse" --find-links "$wheelhouse" \
    -r "$ROOT/containers/requirements.lock" || fail "pip wheel failed for containers/requirements.lock"
  ls "$wheelhouse"/nvidia_*.whl > /dev/null 2>&1 && fail "CUDA libraries got into $wheelhouse: rm -r it and retry"
  cp -r "$wheelhouse" "$context/containers/wheelhouse"
fi

commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain -- hydra_core components pipelines pyproject.toml containers/requirements.lock 2>/dev/null)" ]; then
  commit=$commit-dirty  # the code in the image differs from the commit
fi

step "building $TAG on $BASE (wheelhouse: $WHEELHOUSE, commit $commit)"
docker build --file "$context/Dockerfile" --tag "$TAG" \
  --build-arg BASE_IMAGE="$BASE" --build-arg FLAVOUR=cpu --build-arg TORCH_INDEX="$TORCH_INDEX" \
  --build-arg WHEELHOUSE="$WHEELHOUSE" --build-arg GIT_COMMIT="$commit" --build-arg BUILT_IMAGE="$TAG" \
  "$context" || fail "docker build failed (its output is above)"

size=$(docker image inspect --format '{{.Size}}' "$TAG")
step "built $TAG in $(( $(date +%s) - started )) s, $(( size / 1000000 )) MB"
step "check it: docker run --rm $TAG hydra-rlhf --help"
