#!/usr/bin/env bash
# Benchmark: `keepcached server` against Debian's memcached 1.6, same flags, same load, same run.
#
#   scripts/bench-server.sh                      # builds ours with cargo build --release -p keepcached
#   KEEPCACHED_BIN=path/to/keepcached scripts/bench-server.sh
#
# A report, not a test: it prints the figures and PASS/FAIL against issue 2's targets
# (throughput >= 0.8x memcached at every point, RSS <= 1.2x memcached's with 1,000,000 items),
# and exits 0 unless something broke (a server that does not start, a wrong reply, a load
# that is not fully stored). About 3 minutes with the defaults (plus the build).
#
# Points, each run against both servers one after the other (the order alternates):
#   memaslap        memcaslap, one request at a time per connection (get or set)
#   memaslap-mgetN  memcaslap --division=N: the gets go as multi-gets of N keys
#   pipelineN       scripts/bench/mcbench.py: N requests written at once per connection,
#                   every reply checked byte for byte, exact per-batch latency
#   memaslap-bin-mgetN  with BINARY=1: memcaslap --binary --division=N, the binary protocol,
#                   where memcaslap writes the N gets at once (true pipelining)
#   memtier, memtier-pipeN   memtier_benchmark, only if it is installed
# All: 90% get / 10% set, VALUE_SIZE-byte values, CONNS connections, DURATION seconds a run.
# The column "other CPU%" is what processes outside the benchmark used meanwhile (on a shared
# machine: other people's builds); figures taken under such load are flagged.
#
# Environment (defaults): DURATION=10 (seconds per run) ROUNDS=2 (every point runs ROUNDS times
#   per server, in the order A B B A ..., figures are means) CONNS=50 VALUE_SIZE=100 MULTIGET=10
#   PIPE_DEPTH=16 THREADS=2 MEMORY_MB=1024 ITEMS=1000000
#   MEMASLAP_THREADS=2 PIPE_PROCS=2 PIPE_KEYS=100000 BINARY= SKIP_THROUGHPUT= SKIP_MEMORY= KEEP_WORK=
#   MEMCACHED_BIN=memcached KEEPCACHED_BIN=
set -uo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench/lib.sh"

DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
VALUE_SIZE=${VALUE_SIZE:-100}
MULTIGET=${MULTIGET:-10}
PIPE_DEPTH=${PIPE_DEPTH:-16}
PIPE_PROCS=${PIPE_PROCS:-2}
PIPE_KEYS=${PIPE_KEYS:-100000}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
MEMORY_MB=${MEMORY_MB:-1024}
ITEMS=${ITEMS:-1000000}
MEMASLAP_THREADS=${MEMASLAP_THREADS:-2}
SET_RATIO=0.1
GET_RATIO=0.9
RESULTS=$WORK/throughput.jsonl
MEMRESULTS=$WORK/memory.jsonl
: >"$RESULTS"
: >"$MEMRESULTS"

ensure_tools memcached:memcached memcaslap:libmemcached-tools python3:python3
find_memaslap
MEMCACHED=${MEMCACHED_BIN:-$(command -v memcached)}
HAVE_MEMTIER=$(command -v memtier_benchmark || true)
keepcached_bin
warn_if_busy

server_flags() { echo "-u root -l 127.0.0.1 -p $1 -U 0 -t $THREADS -m $MEMORY_MB"; }

# start_pair — fresh keepcached and memcached on free ports: sets OURS_PID/REF_PID, OURS_ADDR/REF_ADDR.
start_pair() {
  local p1 p2
  read -r p1 p2 <<<"$(free_ports 2)"
  # shellcheck disable=SC2046
  spawn keepcached "$OURS" server $(server_flags "$p1")
  OURS_PID=$LAST_PID OURS_ADDR=127.0.0.1:$p1
  # shellcheck disable=SC2046
  spawn memcached "$MEMCACHED" $(server_flags "$p2")
  REF_PID=$LAST_PID REF_ADDR=127.0.0.1:$p2
  wait_up keepcached "$OURS_PID" "$OURS_ADDR" || die "keepcached server did not start: $OURS server $(server_flags "$p1")"
  wait_up memcached "$REF_PID" "$REF_ADDR" || die "memcached did not start"
}

stop_pair() {
  forget_pid "$OURS_PID"
  forget_pid "$REF_PID"
}

log "keepcached: $OURS ($("$OURS" server -V 2>/dev/null | head -1 || true))"
log "memcached:  $MEMCACHED ($("$MEMCACHED" -V 2>/dev/null | head -1))"
log "load:       $MEMASLAP${HAVE_MEMTIER:+, $HAVE_MEMTIER}; flags: $(server_flags PORT)"
log "machine:    $(nproc) CPUs, ${BUSY_BEFORE}% busy before start; the load generator shares them with the server"

# ------------------------------------------------------------------ throughput
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  write_memaslap_cfg
  start_pair
  preload "$OURS_ADDR" keepcached || { BROKE=1; log "keepcached did not store the pipelined key space"; }
  preload "$REF_ADDR" memcached || die "memcached did not store the pipelined key space"

  points=(memaslap "memaslap-mget$MULTIGET" "pipeline$PIPE_DEPTH")
  [ -n "${BINARY:-}" ] && points+=("memaslap-bin-mget$MULTIGET")
  [ -n "$HAVE_MEMTIER" ] && points+=(memtier "memtier-pipe$PIPE_DEPTH")

  run_point() { # POINT SIDE ADDR
    local point=$1 side=$2 addr=$3
    case $point in
      memaslap) run_memaslap "$point" "$side" "$addr" ;;
      memaslap-mget*) run_memaslap "$point" "$side" "$addr" --division="$MULTIGET" ;;
      memaslap-bin-mget*) run_memaslap "$point" "$side" "$addr" --binary --division="$MULTIGET" ;;
      pipeline*) run_pipe "$point" "$side" "$addr" ;;
      memtier) run_memtier "$point" "$side" 127.0.0.1 "${addr##*:}" 1 ;;
      memtier-pipe*) run_memtier "$point" "$side" 127.0.0.1 "${addr##*:}" "$PIPE_DEPTH" ;;
    esac
    kill -0 "$REF_PID" 2>/dev/null || die "memcached died during $point"
    if ! kill -0 "$OURS_PID" 2>/dev/null; then
      BROKE=1
      log "keepcached server died during $point; its log:"
      tail -15 "$WORK/keepcached.log" | sed 's/^/    /' >&2
      return 1
    fi
    sleep 0.5
  }

  log "throughput: ${#points[@]} points x 2 servers x ${ROUNDS} round(s) x ${DURATION}s"
  for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for i in "${!points[@]}"; do
      if (((i + ROUND) % 2)); then
        run_point "${points[$i]}" keepcached "$OURS_ADDR" && run_point "${points[$i]}" memcached "$REF_ADDR"
      else
        run_point "${points[$i]}" memcached "$REF_ADDR" && run_point "${points[$i]}" keepcached "$OURS_ADDR"
      fi || break 2
    done
  done
  stop_pair
fi

# ------------------------------------------------------------------ memory
if [ -z "${SKIP_MEMORY:-}" ]; then
  log "memory: $ITEMS items of $VALUE_SIZE bytes into fresh servers"
  start_pair
  for side in keepcached memcached; do
    if [ $side = keepcached ]; then addr=$OURS_ADDR pid=$OURS_PID; else addr=$REF_ADDR pid=$REF_PID; fi
    run_fg "${MCBENCH[@]}" load "$addr" --side "$side" --pid "$pid" --prefix "key:" --count "$ITEMS" \
      --value-size "$VALUE_SIZE" >>"$MEMRESULTS" 2>"$WORK/load-$side.err" ||
      { BROKE=1; log "loading $side failed or did not store every item: $(tail -1 "$MEMRESULTS") $(tail -2 "$WORK/load-$side.err")"; }
  done
  stop_pair
fi

# ------------------------------------------------------------------ report
echo
echo "keepcached server vs memcached $("$MEMCACHED" -V | awk '{print $2}'), both: $(server_flags PORT)"
echo "Machine: $(nproc) CPUs, ${BUSY_BEFORE}% busy before the start, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"${MCBENCH[@]}" report-server "$RESULTS" "$MEMRESULTS" \
  --load "90% get / 10% set, $VALUE_SIZE-byte values, $CONNS connections, ${DURATION}s per run"
if [ "$BROKE" != 0 ]; then
  echo
  echo "Something broke during the run (see the errors above); exit 1."
  KEEP_WORK=${KEEP_WORK:-1}
  exit 1
fi
exit 0
