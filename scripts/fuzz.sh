#!/usr/bin/env bash
# Fuzz metrokv-node's input parsers and state machine (node/src/fuzzing/), each target for
# SECONDS_PER_TARGET. Not part of scripts/test.sh: CI does not fuzz, it replays fuzz/corpus and
# fuzz/regressions through node/tests/fuzz_corpus.rs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#
# Engine: cargo-fuzz (libFuzzer, coverage-guided, AddressSanitizer) when a nightly toolchain and
# cargo-fuzz are installed, else the stable seeded mutation fuzzer `metrokv-fuzz`. Force one with
# METROKV_FUZZ_ENGINE=cargo-fuzz|stable. METROKV_FUZZ_SEED fixes the stable fuzzer's seed (it is
# printed either way). METROKV_FUZZ_SANITIZER=none builds the cargo-fuzz targets without
# AddressSanitizer (the default is address): several times faster, and the code under test is
# safe Rust. New crashes are saved to fuzz/regressions/TARGET/; each one is a bug to
# fix, and stays there as a regression case. New corpus entries libFuzzer finds go to a scratch
# directory (reported, then dropped) so the kept corpus stays small; METROKV_FUZZ_MERGE=1 adds
# the fewest of them that cover new edges to fuzz/corpus/TARGET/ (a set-cover merge on edge
# coverage; hit counts are ignored, which keeps the corpus to a few hundred KB).
#
# The cargo-fuzz build has its own target directory (fuzz/target) and compiles RocksDB again
# unless a RocksDB of the same version was already built by the workspace build in
# $CARGO_TARGET_DIR, which is then linked instead (RocksDB's C++ is not instrumented either way).
#
# Prints one line per target: runs, new corpus entries, crashes. Exits non-zero if any target
# crashed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  say "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]"
  exit 2
fi
shift || true
all_targets=(peer_frame hello txn_body transfer_body account_body snapshot_file state_machine)
targets=("$@")
if ((${#targets[@]} == 0)); then targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
  [ -f "$METROKV_ROOT/fuzz/fuzz_targets/$t.rs" ] || { say "no fuzz target $t (have: ${all_targets[*]})"; exit 2; }
done

ensure_build_deps
cd "$METROKV_ROOT"

engine=${METROKV_FUZZ_ENGINE:-}
if [ -z "$engine" ]; then
  if cargo +nightly --version >/dev/null 2>&1 && cargo +nightly fuzz --version >/dev/null 2>&1; then
    engine=cargo-fuzz
  else
    engine=stable
    say "nightly Rust or cargo-fuzz missing (rustup toolchain install nightly; cargo install cargo-fuzz --locked): using the stable fuzzer"
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crashed=0

# The librocksdb.a the workspace build made, if it is of the version fuzz/Cargo.lock uses.
prebuilt_rocksdb() {
  local want out dir
  want=$(awk '/^name = "librocksdb-sys"/ { getline; gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print; exit }' fuzz/Cargo.lock)
  for out in "$CARGO_TARGET_DIR"/release/build/librocksdb-sys-*/output; do
    [ -f "$out" ] || continue
    dir=$(dirname "$out")/out
    # (A basic regex: the "+" in the version is literal.)
    if grep -q "^cargo:cargo_manifest_dir=.*/librocksdb-sys-$want\$" "$out" && [ -f "$dir/librocksdb.a" ]; then
      echo "$dir"
      return
    fi
  done
}

# Save what libFuzzer left in ARTIFACTS (crash-*, oom-*, timeout-*, leak-*) as regressions.
save_artifacts() {
  local target=$1 artifacts=$2 n=0 f
  mkdir -p "fuzz/regressions/$target"
  for f in "$artifacts"/*; do
    [ -f "$f" ] || continue
    cp "$f" "fuzz/regressions/$target/"
    say "saved fuzz/regressions/$target/$(basename "$f")"
    n=$((n + 1))
  done
  rmdir "fuzz/regressions/$target" 2>/dev/null || true
  echo "$n"
}

run_cargo_fuzz() {
  local lib sanitizer=(--sanitizer "${METROKV_FUZZ_SANITIZER:-address}")
  if [ -z "${ROCKSDB_LIB_DIR:-}" ] && lib=$(prebuilt_rocksdb) && [ -n "$lib" ]; then
    say "linking the RocksDB already built in $lib"
    export ROCKSDB_LIB_DIR=$lib ROCKSDB_STATIC=1
  fi
  say "building the fuzz targets (cargo +nightly fuzz build; its own target directory, fuzz/target)"
  # The workspace's CARGO_TARGET_DIR must not receive the instrumented build.
  env -u CARGO_TARGET_DIR cargo +nightly fuzz build "${sanitizer[@]}" >/dev/null 2>"$work/build.log" \
    || { cat "$work/build.log" >&2; exit 1; }
  for t in "${targets[@]}"; do
    mkdir -p "$work/new/$t" "$work/artifacts/$t"
    local dirs=("$work/new/$t" "fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    set +e
    env -u CARGO_TARGET_DIR cargo +nightly fuzz run "${sanitizer[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1
    local status=$?
    set -e
    local runs new crashes
    runs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$work/$t.log" | tail -1)
    new=$(find "$work/new/$t" -type f | wc -l)
    crashes=$(save_artifacts "$t" "$work/artifacts/$t")
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
      say "cargo fuzz run $t failed without a saved input:"; tail -30 "$work/$t.log" >&2
      crashes=1
    elif [ "$crashes" -gt 0 ]; then
      grep -m1 -A20 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$work/$t.log" >&2 || true
    fi
    if [ "${METROKV_FUZZ_MERGE:-0}" = 1 ] && [ "$new" -gt 0 ]; then
      env -u CARGO_TARGET_DIR cargo +nightly fuzz run "${sanitizer[@]}" "$t" "fuzz/corpus/$t" "$work/new/$t" -- \
        -set_cover_merge=1 -use_counters=0 >/dev/null 2>&1
    fi
    if [ "$crashes" -gt 0 ]; then crashed=1; fi
    printf '%-14s engine=cargo-fuzz seconds=%s runs=%s new_corpus=%s crashes=%s\n' "$t" "$seconds" "${runs:-?}" "$new" "$crashes"
  done
}

run_stable() {
  say "building metrokv-fuzz (release) into $CARGO_TARGET_DIR"
  cargo build --release --locked -p metrokv-node --bin metrokv-fuzz
  local seed_args=()
  if [ -n "${METROKV_FUZZ_SEED:-}" ]; then seed_args=(--seed "$METROKV_FUZZ_SEED"); fi
  for t in "${targets[@]}"; do
    set +e
    "$METROKV_BIN/metrokv-fuzz" run "$t" --seconds "$seconds" --dir fuzz "${seed_args[@]}" >"$work/$t.log" 2>&1
    local status=$?
    set -e
    local seed runs crashes
    seed=$(awk '/^seed:/ { print $2; exit }' "$work/$t.log")
    runs=$(grep -o 'runs=[0-9]*' "$work/$t.log" | tail -1 | cut -d= -f2)
    crashes=0
    if [ "$status" -ne 0 ]; then
      crashes=1
      crashed=1
      cat "$work/$t.log" >&2
    fi
    printf '%-14s engine=stable seed=%s seconds=%s runs=%s new_corpus=0 crashes=%s\n' "$t" "$seed" "$seconds" "${runs:-?}" "$crashes"
  done
}

case $engine in
  cargo-fuzz) run_cargo_fuzz ;;
  stable) run_stable ;;
  *) say "METROKV_FUZZ_ENGINE must be cargo-fuzz or stable, not $engine"; exit 2 ;;
esac
exit "$crashed"
