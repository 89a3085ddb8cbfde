#!/usr/bin/env bash
# Build the goggles images, tagged as goggles/kubeflow/components/image.py names them:
#   <repository>:<goggles.__version__>      target cpu
#   <repository>:<goggles.__version__>-gpu  target gpu
#
# usage: docker/build.sh [--target cpu|gpu|all] [--local-base] [--base IMAGE] [--push]
#                        [--ca-bundle FILE] [--print-tags]
#                        [--backbone NAME --weights PATH-OR-URI [--weights-sha256 HEX]]
#                        [--save-context DIR]
#
#   --target      which image(s) to build (default all; gpu shares every layer of cpu but one)
#   --local-base  where no container registry can be reached: build Debian bookworm with
#                 debootstrap (from Debian's mirror) into $GOGGLES_ROOTFS_DIR, `docker import`
#                 it as goggles-base:bookworm (once; delete that image to rebuild it) and build
#                 FROM it. Needs root and debootstrap (apt-get install debootstrap).
#                 Also set by GOGGLES_LOCAL_BASE=1.
#   --base IMAGE  build FROM another base (default: the Dockerfile's pinned debian digest)
#   --push        push the tags afterwards (to the registry in the repository name)
#   --print-tags  print the tags of --target, one a line, and build nothing
#   --ca-bundle FILE  CA certificates pip trusts while building (default $GOGGLES_BUILD_CA_BUNDLE,
#                 else $PIP_CERT): for networks whose TLS proxy re-signs PyPI's certificates.
#                 Used only in the build stages; the images keep Debian's own CA list.
#   --backbone NAME --weights PATH-OR-URI  also bake this backbone's weights into the images
#                 (any backbone: vgg16, torchvision:resnet50, timm:vit_small_patch14_dinov2...;
#                 a path, or a gs://, s3:// URI read with this checkout's goggles), as
#                 /opt/goggles/weights/<name with : and / as -->.safetensors, which pods find
#                 offline before any library cache (goggles.features.backbones). The build
#                 checks the pin, and that the runtime resolves the file to the same outputs.
#                 A family's library must be in the image: timm, open_clip and hf need their
#                 extra added to docker/requirements.in (then docker/lock.py). Also set by
#                 make images BACKBONE=... WEIGHTS=... WEIGHTS_SHA256=...
#   --weights-sha256 HEX  the weights' pinned SHA-256, checked here and in the build
#   --save-context DIR  write the build context (context.tar) and the build arguments
#                 (build-args, one a line) into DIR and build nothing (needs no Docker engine)
#
# Environment: GOGGLES_IMAGE_REPOSITORY overrides the repository (then set the same in the
# components, goggles/kubeflow/components/image.py); DOCKER names the docker client (default docker).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
LOCAL_BASE_IMAGE="goggles-base:bookworm"
ROOTFS_DIR="${GOGGLES_ROOTFS_DIR:-/var/tmp/goggles-rootfs-bookworm}"
DEBIAN_MIRROR="${GOGGLES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

target=all
local_base="${GOGGLES_LOCAL_BASE:-0}"
base=""
push=0
print_tags=0
ca_bundle="${GOGGLES_BUILD_CA_BUNDLE:-${PIP_CERT:-}}"
bake_backbone=""
bake_weights=""
bake_sha256=""
save_context=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    --base) base="$2"; shift 2 ;;
    --push) push=1; shift ;;
    --print-tags) print_tags=1; shift ;;
    --ca-bundle) ca_bundle="$2"; shift 2 ;;
    --backbone) bake_backbone="$2"; shift 2 ;;
    --weights) bake_weights="$2"; shift 2 ;;
    --weights-sha256) bake_sha256="$2"; shift 2 ;;
    --save-context) save_context="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$target" in cpu|gpu|all) ;; *) echo "build.sh: --target must be cpu, gpu or all" >&2; exit 2 ;; esac
if [[ -n "$bake_backbone" && -z "$bake_weights" ]] || [[ -z "$bake_backbone" && -n "$bake_weights" ]]; then
  echo "build.sh: --backbone and --weights go together (make images BACKBONE=NAME WEIGHTS=FILE)" >&2; exit 2
fi
if [[ -n "$bake_sha256" && ! "$bake_sha256" =~ ^[0-9a-f]{64}$ ]]; then
  echo "build.sh: --weights-sha256 must be 64 lowercase hex digits" >&2; exit 2
fi

# the tag follows goggles.__version__; the repository is the one goggles/kubeflow/components/image.py names
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/goggles/__init__.py")"
repository="${GOGGLES_IMAGE_REPOSITORY:-$(sed -n 's/^IMAGE_REPOSITORY = "\(.*\)"$/\1/p' "$ROOT/goggles/kubeflow/components/image.py")}"
if [[ -z "$version" || -z "$repository" ]]; then
  echo "build.sh: cannot read __version__ from goggles/__init__.py or IMAGE_REPOSITORY from goggles/kubeflow/components/image.py" >&2
  exit 1
fi

if [[ "$print_tags" == 1 ]]; then
  [[ "$target" == gpu ]] || echo "$repository:$version"
  [[ "$target" == cpu ]] || echo "$repository:$version-gpu"
  exit 0
fi

# a family's library must be in the image's lock, else its weights cannot be loaded there
if [[ -n "$bake_backbone" && "$bake_backbone" == *:* ]]; then
  case "${bake_backbone%%:*}" in
    torchvision) library=torchvision ;; timm) library=timm ;; open_clip) library=open-clip-torch ;;
    hf) library=transformers ;;
    *) echo "build.sh: --backbone $bake_backbone: unknown family ${bake_backbone%%:*} (torchvision, timm, open_clip, hf)" >&2; exit 2 ;;
  esac
  if ! grep -qi "^$library==" "$ROOT/docker/requirements.lock"; then
    echo "build.sh: --backbone $bake_backbone needs $library in the image; add its goggles extra's requirement to docker/requirements.in and run docker/lock.py" >&2
    exit 2
  fi
fi

if [[ -z "$save_context" ]] && ! "$DOCKER" info >/dev/null 2>&1; then
  echo "build.sh: no Docker engine answers ('$DOCKER info' failed); start one (e.g. dockerd &)" >&2
  exit 1
fi

if [[ "$local_base" == 1 && -z "$base" && -z "$save_context" ]]; then
  if ! "$DOCKER" image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
      echo "build.sh: --local-base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    [[ "$(id -u)" == 0 ]] || { echo "build.sh: --local-base needs root (debootstrap)" >&2; exit 1; }
    if [[ ! -x "$ROOTFS_DIR/usr/bin/apt-get" ]]; then
      echo "build.sh: debootstrap bookworm into $ROOTFS_DIR"
      rm -rf "$ROOTFS_DIR"
      debootstrap --variant=minbase --include=ca-certificates bookworm "$ROOTFS_DIR" "$DEBIAN_MIRROR"
    fi
    # the same sources an official bookworm image has: main, updates, security
    cat > "$ROOTFS_DIR/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "$ROOTFS_DIR"/var/cache/apt/archives/*.deb "$ROOTFS_DIR"/var/lib/apt/lists/*
    tar -C "$ROOTFS_DIR" -c . | "$DOCKER" import - "$LOCAL_BASE_IMAGE"
  fi
  base="$LOCAL_BASE_IMAGE"
fi

build_args=(--build-arg "GOGGLES_VERSION=$version")
[[ -n "$base" ]] && build_args+=(--build-arg "BASE_IMAGE=$base")

# The context is only what the Dockerfile copies (no .venv, caches or data), sent as a tar,
# plus build-ca.pem: the --ca-bundle, or an empty file.
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
if [[ -n "$ca_bundle" ]]; then
  [[ -r "$ca_bundle" ]] || { echo "build.sh: cannot read CA bundle $ca_bundle" >&2; exit 1; }
  echo "build.sh: pip trusts $ca_bundle while building"
  cp "$ca_bundle" "$staging/build-ca.pem"
else
  : > "$staging/build-ca.pem"
fi
# baked/: the chosen backbone's weights file (its suffix kept: it says .safetensors or not), or
# nothing
mkdir "$staging/baked"
if [[ -n "$bake_weights" ]]; then
  suffix=".pth"
  [[ "$bake_weights" == *.safetensors ]] && suffix=".safetensors"
  staged="$staging/baked/weights$suffix"
  if [[ "$bake_weights" == *://* && "$bake_weights" != file://* ]]; then
    python="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$python" ]] || python=python3
    "$python" -c 'import sys; from goggles.io import storage; open(sys.argv[2], "wb").write(storage.read_bytes(sys.argv[1]))' \
      "$bake_weights" "$staged"
  else
    cp "${bake_weights#file://}" "$staged"
  fi
  if [[ -n "$bake_sha256" ]] && ! echo "$bake_sha256  $staged" | sha256sum --check --status; then
    echo "build.sh: $bake_weights has SHA-256 $(sha256sum "$staged" | cut -d' ' -f1), not the pinned $bake_sha256" >&2
    exit 1
  fi
  echo "build.sh: baking $bake_backbone from $bake_weights ($(du -h "$staged" | cut -f1))"
  build_args+=(--build-arg "BAKE_BACKBONE=$bake_backbone"
               --build-arg "BAKE_WEIGHTS_FILE=/tmp/baked/weights$suffix"
               --build-arg "BAKE_WEIGHTS_SHA256=$bake_sha256")
fi
context() {
  tar -c --exclude=__pycache__ --exclude='*.pyc' \
    -C "$ROOT" pyproject.toml README.md goggles docker/Dockerfile docker/requirements.lock \
    docker/weights.lock docker/bake_weights.py -C "$staging" build-ca.pem baked
}

if [[ -n "$save_context" ]]; then
  mkdir -p "$save_context"
  context > "$save_context/context.tar"
  printf '%s\n' "${build_args[@]}" | grep -v '^--build-arg$' > "$save_context/build-args"
  echo "build.sh: context and build arguments in $save_context; nothing built"
  exit 0
fi

build() {  # build <target> <tag>
  local started=$SECONDS
  echo "build.sh: building target $1 as $2${base:+ from $base}"
  context | "$DOCKER" build --file docker/Dockerfile --target "$1" --tag "$2" "${build_args[@]}" -
  echo "build.sh: $2 built in $((SECONDS - started)) s; $("$DOCKER" image inspect --format '{{.Size}}' "$2" | awk '{printf "%.2f GB", $1 / 1e9}')"
}

tags=()
if [[ "$target" == cpu || "$target" == all ]]; then build cpu "$repository:$version"; tags+=("$repository:$version"); fi
if [[ "$target" == gpu || "$target" == all ]]; then build gpu "$repository:$version-gpu"; tags+=("$repository:$version-gpu"); fi

if [[ "$push" == 1 ]]; then
  for tag in "${tags[@]}"; do "$DOCKER" push "$tag"; done
fi
