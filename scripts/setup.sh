#!/usr/bin/env bash
# Installs what dwcp needs on a Debian 12 machine with Node and npm, then builds the C shim.
# Idempotent: each step checks first and does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DENO_VERSION=2.9.6
ORT_VERSION=1.30.0
DEBIAN_PACKAGES=(gcc make pkg-config libzstd-dev liblz4-dev libsnappy-dev libxxhash-dev libibverbs-dev
  zstd lz4 iperf3 iputils-ping qemu-system-x86 qemu-utils cpio)
TOOLS=.tools

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Deno, pinned and project-local (npm package `deno`, which ships the linux-x64 binary).
mkdir -p "$TOOLS"
if [[ "$("$TOOLS/node_modules/.bin/deno" --version 2>/dev/null | head -1)" != "deno $DENO_VERSION"* ]]; then
  log "installing deno $DENO_VERSION into $TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --no-save "deno@$DENO_VERSION" >/dev/null
fi

# ONNX Runtime shared library from the onnxruntime-node tarball (its postinstall downloads extras and
# fails offline, so the tarball is unpacked by hand rather than installed).
ORT_DIR="$TOOLS/onnxruntime"
if [[ ! -f "$ORT_DIR/lib/libonnxruntime.so.1" || "$(cat "$ORT_DIR/VERSION" 2>/dev/null)" != "$ORT_VERSION" ]]; then
  log "fetching ONNX Runtime $ORT_VERSION"
  rm -rf "$ORT_DIR" && mkdir -p "$ORT_DIR/lib" "$ORT_DIR/pack"
  (cd "$ORT_DIR/pack" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
  tar -xzf "$ORT_DIR"/pack/onnxruntime-node-*.tgz -C "$ORT_DIR/pack" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  mv "$ORT_DIR/pack/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ORT_DIR/lib/"
  rm -rf "$ORT_DIR/pack"
  echo "$ORT_VERSION" >"$ORT_DIR/VERSION"
fi

# The ONNX Runtime C header comes from Debian 13's libonnxruntime-dev; only the header is used
# (its runtime needs a newer glibc than Debian 12 has).
if [[ ! -f "$ORT_DIR/include/onnxruntime_c_api.h" ]]; then
  log "fetching onnxruntime_c_api.h from Debian trixie"
  apt_dir="$(mktemp -d)"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$ORT_DIR/include"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download libonnxruntime-dev >/dev/null 2>&1)
  dpkg -x "$apt_dir"/libonnxruntime-dev_*.deb "$apt_dir/x"
  cp "$(find "$apt_dir/x" -name onnxruntime_c_api.h | head -1)" "$ORT_DIR/include/"
  rm -rf "$apt_dir"
fi

log "building c-shim"
make -s -C c-shim ORT_INCLUDE="$PWD/$ORT_DIR/include"

# Fetch npm dependencies into node_modules/ so later runs need no network.
"$TOOLS/node_modules/.bin/deno" install --quiet
log "ready: deno $DENO_VERSION, ONNX Runtime $ORT_VERSION, c-shim/libdwcp.so"
