#!/usr/bin/env bash
# Install what building bridge/ needs, idempotently and non-interactively. Called by .ci/run.
#
# The workspace needs only crates.io: the `zmq` crate's zmq-sys builds libzmq from its vendored
# source (zeromq-src) with the `cc` crate, so no system libzmq is needed, only a C/C++ toolchain.
# bridge/reth-exex also builds Reth v2.5.1 (RocksDB in C++, MDBX bindings through bindgen: libclang).
# Rust itself (cargo, rustc >= 1.80) must already be on the machine.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
# Reth (bridge/reth-exex) generates its MDBX bindings with bindgen, which needs libclang itself (libclang.so or
# libclang-<version>.so): libclang-cpp, which other LLVM packages bring, is a different library and does not do.
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null \
  || need+=(libclang-dev clang)
if [ ${#need[@]} -gt 0 ]; then
  echo "bridge/ci-install.sh: installing ${need[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bridge/ci-install.sh: cargo not found; install Rust >= 1.80 (the bridge cannot be built without it)" >&2
  exit 1
fi
echo "bridge/ci-install.sh: $(cargo --version), $(c++ --version | head -1)"
