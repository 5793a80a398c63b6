#!/usr/bin/env bash
# A local three-node metrokv cluster: n1 and n2 in zone dc-a, n3 in zone dc-b.
#
#   scripts/cluster.sh up | down | wipe | status | kill N | restart N | pause N | resume N | logs N [-f]
#
# up       install build dependencies if missing, build (release), start the nodes that are not
#          running, wait until the cluster is ready, print the endpoints. Running it twice is harmless.
# down     stop every node (SIGTERM, then SIGKILL after 10 s), keeping the data.
# wipe     down, then delete the data directory.
# kill N   SIGKILL node N.        restart N   stop node N if running, start it again on its data.
# pause N  SIGSTOP node N.        resume N    SIGCONT node N.
# logs N   the last lines of node N's log (-f to follow).
#
# Ports: clients 127.0.0.1:7001..7003, peers 127.0.0.1:7101..7103; set METROKV_CLIENT_PORT_BASE /
# METROKV_PEER_PORT_BASE (default 7000 / 7100) to move them. Data and logs live under
# METROKV_CLUSTER_DIR (default .metrokv/cluster in the checkout). Processes are tracked by pid
# files there and signalled by pid, never by name.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENT_BASE=${METROKV_CLIENT_PORT_BASE:-7000}
PEER_BASE=${METROKV_PEER_PORT_BASE:-7100}
DIR=${METROKV_CLUSTER_DIR:-$METROKV_ROOT/.metrokv/cluster}
NODES=(1 2 3)
zone_of() { if [ "$1" -le 2 ]; then echo dc-a; else echo dc-b; fi; }
client_addr() { echo "127.0.0.1:$((CLIENT_BASE + $1))"; }
peer_addr() { echo "127.0.0.1:$((PEER_BASE + $1))"; }
node_dir() { echo "$DIR/n$1"; }
pid_file() { echo "$(node_dir "$1")/pid"; }

# The pid of node N if it is running (and is really our metrokv-node), else nothing.
running_pid() {
  local f; f=$(pid_file "$1")
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "metrokv-node"; then
    echo "$pid"
  fi
}

members() {
  local out=() n
  for n in "${NODES[@]}"; do out+=(--member "$n=$(zone_of "$n")/$(client_addr "$n")/$(peer_addr "$n")"); done
  echo "${out[@]}"
}

start_node() {
  local n=$1
  if [ -n "$(running_pid "$n")" ]; then
    say "n$n is already running (pid $(running_pid "$n"))"
    return
  fi
  mkdir -p "$(node_dir "$n")"
  # shellcheck disable=SC2046
  nohup "$METROKV_BIN/metrokv-node" --id "$n" --zone "$(zone_of "$n")" \
    --client-addr "$(client_addr "$n")" --peer-addr "$(peer_addr "$n")" \
    --data-dir "$(node_dir "$n")/data" --cluster-id metrokv-local $(members) \
    >>"$(node_dir "$n")/node.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$n")"
  say "started n$n (pid $!, zone $(zone_of "$n"), http://$(client_addr "$n"))"
}

signal_node() {
  local sig=$1 n=$2 pid
  pid=$(running_pid "$n")
  if [ -z "$pid" ]; then say "n$n is not running"; return 1; fi
  kill "-$sig" "$pid"
}

stop_node() {
  local n=$1 pid i
  pid=$(running_pid "$n")
  [ -n "$pid" ] || { rm -f "$(pid_file "$n")"; return 0; }
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$(pid_file "$n")"
  say "stopped n$n"
}

wait_ready() {
  local deadline=$((SECONDS + 90)) n ok
  while ((SECONDS < deadline)); do
    ok=0
    for n in "${NODES[@]}"; do
      curl -fsS -m 1 "http://$(client_addr "$n")/ready" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    if ((ok == ${#NODES[@]})); then return 0; fi
    sleep 0.2
  done
  say "the cluster did not become ready within 90 s; see: scripts/cluster.sh logs N"
  return 1
}

check_node_arg() {
  case "${1:-}" in 1 | 2 | 3) ;; *) say "expected a node number 1, 2 or 3"; exit 2 ;; esac
}

cmd=${1:-}
case "$cmd" in
  up)
    ensure_build_deps
    build_release
    mkdir -p "$DIR"
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_ready
    cat <<EOF

metrokv is up: 3 nodes, zones dc-a (n1, n2) and dc-b (n3). Data and logs: $DIR
  n1  http://$(client_addr 1)  (dc-a)
  n2  http://$(client_addr 2)  (dc-a)
  n3  http://$(client_addr 3)  (dc-b)

Try:
  curl -X PUT --data-binary 'hello' http://$(client_addr 1)/v1/kv/greeting
  curl http://$(client_addr 3)/v1/kv/greeting
  $METROKV_BIN/metrokv --endpoints http://$(client_addr 1),http://$(client_addr 2),http://$(client_addr 3) cluster status
EOF
    ;;
  down)
    for n in "${NODES[@]}"; do stop_node "$n"; done
    ;;
  wipe)
    for n in "${NODES[@]}"; do stop_node "$n"; done
    rm -rf "$DIR"
    say "removed $DIR"
    ;;
  status)
    for n in "${NODES[@]}"; do
      pid=$(running_pid "$n")
      state=$( [ -n "$pid" ] && (grep -q '^State:.*T' "/proc/$pid/status" 2>/dev/null && echo paused || echo running) || echo stopped)
      printf 'n%s  %-8s pid %-8s http://%s  zone %s\n' "$n" "$state" "${pid:--}" "$(client_addr "$n")" "$(zone_of "$n")"
    done
    for n in "${NODES[@]}"; do
      if body=$(curl -fsS -m 2 "http://$(client_addr "$n")/v1/cluster" 2>/dev/null); then
        echo "cluster view from n$n:"
        if command -v jq >/dev/null 2>&1; then echo "$body" | jq .; else echo "$body"; fi
        break
      fi
    done
    ;;
  kill) check_node_arg "${2:-}"; signal_node KILL "$2"; rm -f "$(pid_file "$2")"; say "killed n$2 (SIGKILL)" ;;
  pause) check_node_arg "${2:-}"; signal_node STOP "$2"; say "paused n$2 (SIGSTOP)" ;;
  resume) check_node_arg "${2:-}"; signal_node CONT "$2"; say "resumed n$2" ;;
  restart)
    check_node_arg "${2:-}"
    [ -x "$METROKV_BIN/metrokv-node" ] || { ensure_build_deps; build_release; }
    stop_node "$2"; start_node "$2"
    ;;
  logs)
    check_node_arg "${2:-}"
    if [ "${3:-}" = "-f" ]; then tail -n 50 -f "$(node_dir "$2")/node.log"; else tail -n 100 "$(node_dir "$2")/node.log"; fi
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
