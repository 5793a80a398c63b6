#!/usr/bin/env bash
# metrokv and etcd side by side, on this machine, with the same load generator (`metrokv bench`).
#
#   scripts/bench.sh [--duration S] [--warmup S] [--trials N] [--clients "1 8 64 256"]
#                    [--scale-keys N]
#
# Installs etcd from Debian's packages when missing and builds metrokv (release). Then, for each
# system in turn (never both at once), starts a fresh 3-node cluster on 127.0.0.1 (metrokv:
# scripts/cluster.sh; etcd: fsync on, default settings), runs the matrix and stops it:
#   - put, get (linearizable), get-stale (etcd: serializable) and transfer at each client count,
#     16-byte keys, 100-byte values, 1,000 accounts;
#   - put at 64 clients with 4 KiB and 64 KiB values;
#   - leader failover: SIGKILL the leader during a put load (8 clients), the longest time without
#     an acknowledged put, N trials; the killed member is restarted between trials.
# Then metrokv alone (`metrokv-bench scale`, its own cluster): a cluster filled with N keys
# (default 1,000,000; 0 skips it): resident memory, backup and restore, a killed node's restart,
# a new member's catch-up by snapshot, puts under each zone-safety mode, 1,024 clients.
# Every row is `metrokv bench --json` with the servers' pids, so it also has their CPU per op.
# Writes bench-results/<date>/results.jsonl, and from it report.md (the side-by-side table with
# the ratio in every row), chart.svg and results.json.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=8 WARMUP=2 TRIALS=5 CLIENTS="1 8 64 256" SCALE_KEYS=1000000
while (($#)); do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --trials) TRIALS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --scale-keys) SCALE_KEYS=$2; shift 2 ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

ensure_build_deps
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  say "installing etcd (Debian's etcd-server and etcd-client)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
build_release

OUT=$METROKV_ROOT/bench-results/$(date -u +%F)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
rm -f "$OUT/scale.json"
WORK=$(mktemp -d)
BENCH="$METROKV_BIN/metrokv"

# ---- metrokv: the local cluster script, on ports of its own ----
export METROKV_CLUSTER_DIR=$WORK/metrokv METROKV_CLIENT_PORT_BASE=27000 METROKV_PEER_PORT_BASE=27100
MK_ENDPOINTS=http://127.0.0.1:27001,http://127.0.0.1:27002,http://127.0.0.1:27003
mk_pids() { local n; for n in 1 2 3; do cat "$METROKV_CLUSTER_DIR/n$n/pid"; done; }
# The leader as any live node names it (a node restarted a moment ago may not answer yet).
mk_leader() {
  local deadline=$((SECONDS + 30)) n l
  while ((SECONDS < deadline)); do
    for n in 1 2 3; do
      l=$(curl -fsS -m 2 "http://127.0.0.1:2700$n/v1/cluster" 2>/dev/null | sed -n 's/.*"leader":\([0-9]*\).*/\1/p' || true)
      [ -n "$l" ] && { echo "$l"; return; }
    done
    sleep 0.2
  done
}
# The default zone safety (adaptive), with the leader kept in dc-a: losing dc-b's only node is a
# zone loss, which `metrokv-bench zone-loss` measures; here a failover is a leader's crash.
mk_up() {
  "$METROKV_ROOT/scripts/cluster.sh" up >/dev/null
  "$BENCH" --endpoints "$MK_ENDPOINTS" cluster settings --preferred-leader-zone dc-a >/dev/null
}
mk_down() { "$METROKV_ROOT/scripts/cluster.sh" wipe >/dev/null 2>&1 || true; }
mk_kill() { "$METROKV_ROOT/scripts/cluster.sh" kill "$1" >/dev/null; }
mk_restart() {
  "$METROKV_ROOT/scripts/cluster.sh" restart "$1" >/dev/null
  local deadline=$((SECONDS + 60))
  until curl -fsS -m 1 "http://127.0.0.1:2700$1/ready" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { say "n$1 did not become ready after its restart"; exit 1; }
    sleep 0.2
  done
}

# ---- etcd: three members, fsync on, default timeouts ----
ETCD_DIR=$WORK/etcd
ETCD_CLIENT=(2379 22379 32379) ETCD_PEER=(2380 22380 32380)
ETCD_CLUSTER="m1=http://127.0.0.1:2380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380"
ETCD_ENDPOINTS=http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379
etcd_start_member() { # N new|existing
  local i=$1 state=$2 c=${ETCD_CLIENT[$(($1 - 1))]} p=${ETCD_PEER[$(($1 - 1))]}
  mkdir -p "$ETCD_DIR"
  nohup etcd --name "m$i" --data-dir "$ETCD_DIR/m$i.data" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state "$state" \
    --initial-cluster-token metrokv-bench >>"$ETCD_DIR/m$i.log" 2>&1 </dev/null &
  echo $! >"$ETCD_DIR/m$i.pid"
}
etcd_wait() {
  local deadline=$((SECONDS + 60))
  until ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { say "etcd did not become healthy; logs in $ETCD_DIR"; exit 1; }
    sleep 0.2
  done
}
etcd_up() { local i; for i in 1 2 3; do etcd_start_member "$i" new; done; etcd_wait; }
etcd_pids() { local i; for i in 1 2 3; do cat "$ETCD_DIR/m$i.pid"; done; }
etcd_leader() { # the member number whose status says it leads
  local i=0 line
  while read -r line; do
    i=$((i + 1))
    [ "$(echo "$line" | cut -d, -f5 | tr -d ' ')" = true ] && { echo "$i"; return; }
  done < <(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" -w simple endpoint status 2>/dev/null)
}
etcd_kill() { kill -KILL "$(cat "$ETCD_DIR/m$1.pid")" 2>/dev/null || true; }
etcd_restart() { etcd_start_member "$1" existing; etcd_wait; }
etcd_down() {
  local i pid
  for i in 1 2 3; do
    [ -f "$ETCD_DIR/m$i.pid" ] || continue
    pid=$(cat "$ETCD_DIR/m$i.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$ETCD_DIR"
}

cleanup() { mk_down; etcd_down; rm -rf "$WORK"; }
trap cleanup EXIT

# One bench run, appended to results.jsonl as {"scenario": ..., "report": ...}.
row() { # SCENARIO SYSTEM ENDPOINTS PIDS... -- BENCH-ARGS...
  local scenario=$1 system=$2 endpoints=$3; shift 3
  local pids=()
  while [ "$1" != -- ]; do pids+=(--server-pid "$1"); shift; done
  shift
  local json
  json=$("$BENCH" --endpoints "$endpoints" --json bench --system "$system" "${pids[@]}" "$@" 2>/dev/null)
  printf '{"scenario":"%s","report":%s}\n' "$scenario" "$json" >>"$RESULTS"
  say "  $system $scenario $*: $(echo "$json" | sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' | cut -d. -f1) ops/s"
}

run_system() { # SYSTEM ENDPOINTS up pids leader kill restart down
  local system=$1 endpoints=$2 up=$3 pids=$4 leader=$5 killf=$6 restart=$7 down=$8
  say "== $system"
  $up
  local p; mapfile -t p < <($pids)
  local w c
  for w in put get get-stale transfer; do
    for c in $CLIENTS; do
      row matrix "$system" "$endpoints" "${p[@]}" -- --workload "$w" --clients "$c" \
        --duration "$DURATION" --warmup "$WARMUP" --accounts 1000
    done
  done
  for size in 4096 65536; do
    row value-size "$system" "$endpoints" "${p[@]}" -- --workload put --clients 64 \
      --value-size "$size" --duration "$DURATION" --warmup "$WARMUP"
  done
  local t l
  for t in $(seq 1 "$TRIALS"); do
    l=$($leader)
    [ -n "$l" ] || { say "no $system leader"; exit 1; }
    # The kill lands 3 s into an 8-second measured run.
    ( sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 3 }')"; $killf "$l" ) &
    local killer=$!
    row failover "$system" "$endpoints" -- --workload put --clients 8 --duration 8 \
      --warmup "$WARMUP" --keys 1000
    # Only the killer: the etcd members are children of this shell too.
    wait "$killer"
    $restart "$l"
  done
  $down
}

run_system metrokv "$MK_ENDPOINTS" mk_up mk_pids mk_leader mk_kill mk_restart mk_down
if [ "$SCALE_KEYS" -gt 0 ]; then
  say "== metrokv alone, $SCALE_KEYS keys"
  "$METROKV_BIN/metrokv-bench" scale --keys "$SCALE_KEYS" --json "$OUT/scale.json"
fi
run_system etcd "$ETCD_ENDPOINTS" etcd_up etcd_pids etcd_leader etcd_kill etcd_restart etcd_down
"$METROKV_BIN/metrokv-bench" report "$OUT"
