#!/usr/bin/env bash
# A local metrokv cluster. Layouts: 2+1 (default: n1, n2 in zone dc-a, n3 in dc-b) and 2+2+1
# (n1, n2 in dc-a, n3, n4 in dc-b, n5 in dc-c; --witness makes n5 a witness).
#
#   scripts/cluster.sh up [--layout 2+1|2+2+1] [--witness] [--tls] | down | wipe | status
#   scripts/cluster.sh add N --zone Z [--learner] | remove N
#   scripts/cluster.sh kill N | stop N | restart N | pause N | resume N | logs N [-f]
#
# up       install build dependencies if missing, build (release), start the nodes that are not
#          running, wait until the cluster is ready, print the endpoints. Running it twice is
#          harmless; the layout is chosen when the cluster is first made (wipe to change it).
#          --tls (when the cluster is made): a throwaway CA and node certificates under
#          $DIR/certs (metrokv-node certs), HTTPS on the client ports and mutual TLS between
#          members; curl and metrokv then need --cacert $DIR/certs/ca.pem.
# down     stop every node (SIGTERM, then SIGKILL after 10 s), keeping the data.
# wipe     down, then delete the data directory.
# add N    start node N with new storage in zone Z, add it as a learner, wait until it has
#          caught up and promote it (--learner: it stays a learner for good, a remote copy).
# remove N remove node N from the cluster (the leader hands over first if it is N), stop it.
# kill N   SIGKILL node N.        stop N      SIGTERM node N (SIGKILL after 10 s).
# restart N  stop node N if running, start it again on its data.
# pause N  SIGSTOP node N.        resume N    SIGCONT node N.
# logs N   the last lines of node N's log (-f to follow).
#
# Ports: node N listens for clients on 127.0.0.1:7000+N and for peers on 127.0.0.1:7100+N; set
# METROKV_CLIENT_PORT_BASE / METROKV_PEER_PORT_BASE (default 7000 / 7100) to move them. Data and
# logs live under METROKV_CLUSTER_DIR (default .metrokv/cluster in the checkout), the node list
# in its `nodes` file. Processes are tracked by pid files there and signalled by pid, never by
# name.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENT_BASE=${METROKV_CLIENT_PORT_BASE:-7000}
PEER_BASE=${METROKV_PEER_PORT_BASE:-7100}
DIR=${METROKV_CLUSTER_DIR:-$METROKV_ROOT/.metrokv/cluster}
NODES_FILE=$DIR/nodes
client_addr() { echo "127.0.0.1:$((CLIENT_BASE + $1))"; }
peer_addr() { echo "127.0.0.1:$((PEER_BASE + $1))"; }
node_dir() { echo "$DIR/n$1"; }
pid_file() { echo "$(node_dir "$1")/pid"; }
CERTS=$DIR/certs
tls_on() { [ -f "$DIR/tls" ]; }
url_of() { if tls_on; then echo "https://$(client_addr "$1")"; else echo "http://$(client_addr "$1")"; fi; }
ccurl() { if tls_on; then curl --cacert "$CERTS/ca.pem" "$@"; else curl "$@"; fi; }

# The node list: one line per node, "N ZONE FLAGS" (FLAGS: "-" or a comma list of witness,
# learner, join). Written by `up` (from the layout) and `add`, read by every other command.
write_layout() {
  local layout=$1 witness=$2
  mkdir -p "$DIR"
  case "$layout" in
    2+1) printf '1 dc-a -\n2 dc-a -\n3 dc-b -\n' >"$NODES_FILE" ;;
    2+2+1)
      printf '1 dc-a -\n2 dc-a -\n3 dc-b -\n4 dc-b -\n' >"$NODES_FILE"
      if [ "$witness" = 1 ]; then echo "5 dc-c witness" >>"$NODES_FILE"; else echo "5 dc-c -" >>"$NODES_FILE"; fi
      ;;
    *) say "unknown layout $layout (2+1 or 2+2+1)"; exit 2 ;;
  esac
}
load_nodes() {
  NODES=()
  [ -f "$NODES_FILE" ] || return 0
  local n rest
  while read -r n rest; do [ -n "$n" ] && NODES+=("$n"); done <"$NODES_FILE"
}
node_field() { [ -f "$NODES_FILE" ] && awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$NODES_FILE"; }
zone_of() { node_field "$1" 2; }
has_flag() { case ",$(node_field "$1" 3)," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
# The layout the node list holds, e.g. 2+1: nodes per zone, in zone order.
layout_of() {
  awk '{ z[$2]++ } END { for (k in z) print k, z[k] }' "$NODES_FILE" | sort | awk '{ printf "%s%d", sep, $2; sep = "+" }'
}
load_nodes

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
  local extra=()
  has_flag "$n" witness && extra+=(--witness)
  has_flag "$n" learner && extra+=(--learner)
  has_flag "$n" join && extra+=(--join)
  if tls_on; then
    extra+=(--tls-cert "$CERTS/node-$n.pem" --tls-key "$CERTS/node-$n.key"
            --peer-tls-cert "$CERTS/node-$n.pem" --peer-tls-key "$CERTS/node-$n.key" --peer-ca "$CERTS/ca.pem")
  fi
  # shellcheck disable=SC2046
  nohup "$METROKV_BIN/metrokv-node" --id "$n" --zone "$(zone_of "$n")" \
    --client-addr "$(client_addr "$n")" --peer-addr "$(peer_addr "$n")" \
    --data-dir "$(node_dir "$n")/data" --cluster-id metrokv-local $(members) "${extra[@]}" \
    >>"$(node_dir "$n")/node.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$n")"
  say "started n$n (pid $!, zone $(zone_of "$n"), $(url_of "$n"))"
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
      ccurl -fsS -m 1 "$(url_of "$n")/ready" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    if ((ok == ${#NODES[@]})); then return 0; fi
    sleep 0.2
  done
  say "the cluster did not become ready within 90 s; see: scripts/cluster.sh logs N"
  return 1
}

check_node_arg() {
  local n
  for n in "${NODES[@]}"; do [ "$n" = "${1:-}" ] && return 0; done
  say "expected a node number, one of: ${NODES[*]:-none (run up first)}"
  exit 2
}

# The client endpoints (witnesses serve no client requests).
endpoints() {
  local out=() n
  for n in "${NODES[@]}"; do has_flag "$n" witness || out+=("$(url_of "$n")"); done
  (IFS=,; echo "${out[*]}")
}
cli() {
  if tls_on; then "$METROKV_BIN/metrokv" --endpoints "$(endpoints)" --cacert "$CERTS/ca.pem" "$@"
  else "$METROKV_BIN/metrokv" --endpoints "$(endpoints)" "$@"; fi
}

cmd=${1:-}
case "$cmd" in
  up)
    shift
    layout="" witness=0 tls=0
    while (($#)); do
      case "$1" in
        --layout) layout=${2:-}; shift 2 ;;
        --witness) witness=1; shift ;;
        --tls) tls=1; shift ;;
        *) say "unknown option $1"; exit 2 ;;
      esac
    done
    if [ ! -f "$NODES_FILE" ]; then
      write_layout "${layout:-2+1}" "$witness"
      [ "$tls" = 1 ] && touch "$DIR/tls"
    elif [ "$tls" = 1 ] && ! tls_on; then
      say "the cluster in $DIR was made without TLS; run wipe first to make a TLS cluster"
      exit 2
    elif [ -n "$layout" ] && [ "$(layout_of)" != "$layout" ]; then
      say "the cluster in $DIR has layout $(layout_of); run wipe first to make a $layout cluster"
      exit 2
    fi
    load_nodes
    ensure_build_deps
    build_release
    if tls_on && [ ! -f "$CERTS/ca.pem" ]; then
      "$METROKV_BIN/metrokv-node" certs --dir "$CERTS" --nodes 9 >/dev/null
    fi
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_ready
    echo
    echo "metrokv is up: ${#NODES[@]} nodes, layout $(layout_of). Data and logs: $DIR"
    for n in "${NODES[@]}"; do
      role=""
      has_flag "$n" witness && role=", witness"
      has_flag "$n" learner && role=", learner"
      printf '  n%s  %s  (%s%s)\n' "$n" "$(url_of "$n")" "$(zone_of "$n")" "$role"
    done
    echo
    echo "Try:"
    ca=""; tls_on && ca=" --cacert $CERTS/ca.pem"
    echo "  curl$ca -X PUT --data-binary 'hello' $(url_of 1)/v1/kv/greeting"
    echo "  curl$ca $(url_of 3)/v1/kv/greeting"
    echo "  $METROKV_BIN/metrokv --endpoints $(endpoints)$ca cluster status"
    ;;
  add)
    n=${2:-}
    shift 2 || { say "usage: cluster.sh add N --zone Z [--learner]"; exit 2; }
    zone="" learner=0
    while (($#)); do
      case "$1" in
        --zone) zone=${2:-}; shift 2 ;;
        --learner) learner=1; shift ;;
        *) say "unknown option $1"; exit 2 ;;
      esac
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || { say "usage: cluster.sh add N --zone Z [--learner]"; exit 2; }
    [ -n "$zone" ] || { say "add needs --zone Z"; exit 2; }
    [ -f "$NODES_FILE" ] || { say "no cluster in $DIR: run up first"; exit 2; }
    [ -z "$(zone_of "$n")" ] || { say "n$n is already in the node list ($NODES_FILE)"; exit 2; }
    [ -x "$METROKV_BIN/metrokv-node" ] || { ensure_build_deps; build_release; }
    flags=join
    [ "$learner" = 1 ] && flags=join,learner
    echo "$n $zone $flags" >>"$NODES_FILE"
    load_nodes
    start_node "$n"
    cli cluster add "$n" --zone "$zone" --client-addr "$(client_addr "$n")" --peer-addr "$(peer_addr "$n")"
    if [ "$learner" = 1 ]; then
      say "n$n stays a learner: it copies the cluster's data and serves stale reads"
    else
      # The leader refuses to promote a learner that has not caught up: ask until it accepts.
      deadline=$((SECONDS + 120))
      until out=$(cli cluster promote "$n" 2>&1); do
        if ((SECONDS >= deadline)); then say "n$n did not catch up within 120 s: $out"; exit 1; fi
        sleep 0.5
      done
      echo "$out"
    fi
    ;;
  remove)
    check_node_arg "${2:-}"
    cli cluster remove "$2"
    stop_node "$2"
    awk -v n="$2" '$1 != n' "$NODES_FILE" >"$NODES_FILE.new" && mv "$NODES_FILE.new" "$NODES_FILE"
    say "removed n$2; its data stays in $(node_dir "$2") (delete it; a node comes back under a new id)"
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
      printf 'n%s  %-8s pid %-8s %s  zone %s\n' "$n" "$state" "${pid:--}" "$(url_of "$n")" "$(zone_of "$n")"
    done
    for n in "${NODES[@]}"; do
      if body=$(ccurl -fsS -m 2 "$(url_of "$n")/v1/cluster" 2>/dev/null); then
        echo "cluster view from n$n:"
        if command -v jq >/dev/null 2>&1; then echo "$body" | jq .; else echo "$body"; fi
        break
      fi
    done
    ;;
  kill) check_node_arg "${2:-}"; signal_node KILL "$2"; rm -f "$(pid_file "$2")"; say "killed n$2 (SIGKILL)" ;;
  stop) check_node_arg "${2:-}"; stop_node "$2" ;;
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
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
