# Shared by scripts/cluster.sh and scripts/test.sh: install what the build needs on a fresh
# Debian machine, and build in release mode into one cached target directory.
# shellcheck shell=bash

METROKV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One target directory, outside the checkout, shared by the cluster and the tests: RocksDB alone
# takes many minutes to compile, so it is built once per machine.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/metrokv/target}
METROKV_BIN=$CARGO_TARGET_DIR/release

say() { printf '%s\n' "$*" >&2; }

# Install clang/libclang (RocksDB's bindings need them), protoc (the etcd client's protobuf code)
# and the tools the scripts use, if missing.
ensure_build_deps() {
  local missing=()
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    missing+=(libclang-dev)
  fi
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  # The etcd adapter of `metrokv bench` compiles etcd's protobuf definitions.
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  if ((${#missing[@]})); then
    say "installing build dependencies: ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      say "cargo is not installed; install Rust from https://rustup.rs and run this again"
      exit 1
    fi
  fi
}

# The partition harness's netns mode (root only) needs nft and ip, and the bench's etcd adapter
# test needs etcd; without them those tests say SKIPPED and pass without running, so install
# them when we can.
ensure_test_deps() {
  [ "$(id -u)" -eq 0 ] || return 0
  local missing=()
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  # The etcd adapter of `metrokv bench` is tested against a real etcd.
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  if ((${#missing[@]})); then
    say "installing test dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Build every binary of the workspace in release mode (the profile the tests use too).
build_release() {
  say "building metrokv (release; the first build compiles RocksDB and takes a while) into $CARGO_TARGET_DIR"
  (cd "$METROKV_ROOT" && cargo build --release --locked --workspace --bins)
}
