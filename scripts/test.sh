#!/usr/bin/env bash
# Run the whole test suite: formatting, clippy and rustdoc with warnings denied, unit and property
# tests, storage tests on real RocksDB, end-to-end and fault tests on real three-node clusters,
# the fuzz corpus, the client tests, and the partition harness's smoke run and negative control;
# then the cluster tests a second time with TLS on every port (METROKV_TEST_TLS=1).
# Installs what the build needs first. CI runs exactly this (.ci/run).
#
#   scripts/test.sh            everything
#   scripts/test.sh -- ARGS    extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_build_deps
ensure_test_deps
cd "$METROKV_ROOT"
cargo fmt --all -- --check || { say "code is not formatted: run cargo fmt --all"; exit 1; }
build_release
# The style is kept by tools: lints and rustdoc with warnings denied (release profile, so they
# reuse the build above instead of compiling RocksDB again).
cargo clippy --release --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --no-deps --workspace
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
# The end-to-end tests start real metrokv-node processes from $METROKV_BIN.
export METROKV_BIN
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked --workspace "${extra[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The cluster tests once more with TLS on both ports of every node (HTTPS API, mutual TLS between
# members; tests of the plaintext wire format opt out). Tests of one binary run in parallel, so
# the binaries go one after another.
if [ "$status" -eq 0 ]; then
  say "the cluster tests again, with TLS on both ports"
  METROKV_TEST_TLS=1 cargo test --release --locked --workspace \
    --test cluster --test client --test hardening --test operations --test security --test zones \
    "${extra[@]}" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
set -e
# One closing line with the totals over every test binary (cargo prints one line per binary,
# and the last ones are often doc-test binaries with nothing in them).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\nall test binaries: test result: %s. %d passed; %d failed; %d ignored\n", (f > 0 ? "FAILED" : "ok"), p, f, i }' "$log"
exit "$status"
