#!/usr/bin/env bash
# Benchmark for issue 4: the same load, in one run, through four paths to Debian's memcached:
#   direct            memcached itself (the floor)
#   nutcracker        twemproxy 0.5, one pool with that memcached (ketama, fnv1a_64)
#   keepcached-proxy  keepcached proxy -s MAIN                (one pool)
#   keepcached-repl   keepcached proxy -s MAIN -b BACKUP      (every write to both servers)
#
#   scripts/bench-proxy.sh                       # builds ours with cargo build --release -p keepcached
#   KEEPCACHED_BIN=path/to/keepcached scripts/bench-proxy.sh
#   KEEPCACHED_BEFORE_BIN=path/to/older/keepcached scripts/bench-proxy.sh   # before/after, see below
#
# A report, not a test: throughput, latency, ratios against nutcracker, and PASS/FAIL against
# issue 4's targets (keepcached proxy >= 1.5x nutcracker's throughput; replicating >= 1.0x
# nutcracker's; added p50 (p50 - direct p50) no worse than nutcracker's). When `keepcached proxy`
# does not start, its rows are skipped with the reason. Exits 0 unless something broke.
# About 6 minutes with the defaults.
#
# Points (SET_RATIO sets, the rest gets: 90% get / 10% set by default; VALUE_SIZE-byte values,
# CONNS client connections, DURATION s):
#   memaslap, memaslap-mgetN (memcaslap --division=N), pipelineN (scripts/bench/mcbench.py,
#   exact per-batch latency), and memtier / memtier-pipeN if memtier_benchmark is installed.
# The column "other CPU%" is what processes outside the benchmark used meanwhile; "path us/op" is
# the CPU the path's own process (the proxy, or memcached on the direct path) spent per operation,
# "machine us/op" all the CPU the machine spent per operation, and "idle%" the CPU left unused.
#
# Environment (defaults): DURATION=6 (seconds per run) ROUNDS=3 (the order of the paths rotates
#   from point to point and reverses from round to round; figures are means) CONNS=50
#   VALUE_SIZE=100 MULTIGET=10 PIPE_DEPTH=16 BACKEND_THREADS=2 MEMORY_MB=1024 NUT_SERVER_CONNECTIONS=1 MEMASLAP_THREADS=2 PIPE_PROCS=2
#   PIPE_KEYS=100000 KC_PROXY_FLAGS="-D -u root -l 127.0.0.1" KEEP_WORK= KEEPCACHED_BIN=
#   SET_RATIO=0.1 (share of sets: 0 gets only, 1 sets only) REPL=1 (0: no replicating paths)
#   REFS=1 (0: memcached directly and nutcracker are not measured, only keepcached's paths)
#   KEEPCACHED_BEFORE_BIN= (another build, e.g. of an older commit: adds the paths before-proxy
#   and before-repl, run interleaved with ours in the same rounds, so that a change's cost is
#   measured under the same load of the machine; a run per build would compare different loads)
set -uo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench/lib.sh"

DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
VALUE_SIZE=${VALUE_SIZE:-100}
MULTIGET=${MULTIGET:-10}
PIPE_DEPTH=${PIPE_DEPTH:-16}
PIPE_PROCS=${PIPE_PROCS:-2}
PIPE_KEYS=${PIPE_KEYS:-100000}
ROUNDS=${ROUNDS:-3}
BACKEND_THREADS=${BACKEND_THREADS:-2}
MEMORY_MB=${MEMORY_MB:-1024}
NUT_SERVER_CONNECTIONS=${NUT_SERVER_CONNECTIONS:-1}
MEMASLAP_THREADS=${MEMASLAP_THREADS:-2}
# -D: stay in the foreground (magent daemonizes without it), so that we keep its pid.
KC_PROXY_FLAGS=${KC_PROXY_FLAGS:--D -u root -l 127.0.0.1}
SET_RATIO=${SET_RATIO:-0.1}
REPL=${REPL:-1}
REFS=${REFS:-1}
GET_RATIO=$(python3 -c "print(round(1 - $SET_RATIO, 6))")
LOAD="$(python3 -c "print(f'{100 * $GET_RATIO:g}% get / {100 * $SET_RATIO:g}% set')")"
RESULTS=$WORK/throughput.jsonl
: >"$RESULTS"

ensure_tools memcached:memcached memcaslap:libmemcached-tools nutcracker:nutcracker python3:python3
find_memaslap
HAVE_MEMTIER=$(command -v memtier_benchmark || true)
keepcached_bin
warn_if_busy

read -r P_MAIN P_BACKUP P_NUT P_NUTSTATS P_KC P_KCREPL P_BEFORE P_BEFOREREPL <<<"$(free_ports 8)"

# --- backends
# shellcheck disable=SC2046
spawn memcached-main memcached $(backend_flags "$P_MAIN")
MAIN_PID=$LAST_PID
# shellcheck disable=SC2046
spawn memcached-backup memcached $(backend_flags "$P_BACKUP")
BACKUP_PID=$LAST_PID
wait_up memcached-main "$MAIN_PID" "127.0.0.1:$P_MAIN" || die "memcached (main) did not start"
wait_up memcached-backup "$BACKUP_PID" "127.0.0.1:$P_BACKUP" || die "memcached (backup) did not start"

# --- nutcracker: one pool, the main server
cat >"$WORK/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$P_NUT
  hash: fnv1a_64
  distribution: ketama
  timeout: 1000
  backlog: 1024
  preconnect: true
  auto_eject_hosts: false
  server_connections: $NUT_SERVER_CONNECTIONS
  servers:
   - 127.0.0.1:$P_MAIN:1
EOF
nutcracker -t -c "$WORK/nutcracker.yml" >"$WORK/nutcracker-test.log" 2>&1 ||
  { cat "$WORK/nutcracker-test.log" >&2; die "nutcracker rejects its config"; }
spawn nutcracker nutcracker -c "$WORK/nutcracker.yml" -p "$WORK/nutcracker.pid" -o "$WORK/nutcracker.out" \
  -s "$P_NUTSTATS" -a 127.0.0.1
NUT_PID=$LAST_PID
wait_up nutcracker "$NUT_PID" "127.0.0.1:$P_NUT" || { cat "$WORK/nutcracker.out" >&2; die "nutcracker did not start"; }

# --- keepcached proxy: one pool, and main + backup (replicating)
SIDES=()
[ "$REFS" = 0 ] || SIDES=(direct nutcracker)
declare -A ADDR=([direct]=127.0.0.1:$P_MAIN [nutcracker]=127.0.0.1:$P_NUT)
declare -A PID_OF=([direct]=$MAIN_PID [nutcracker]=$NUT_PID)
SKIPPED=()
start_kc() { # SIDE BINARY PORT proxy-args...
  local side=$1 bin=$2 port=$3
  shift 3
  # shellcheck disable=SC2086
  spawn "$side" "$bin" proxy $KC_PROXY_FLAGS -p "$port" "$@"
  local pid=$LAST_PID
  if wait_up "$side" "$pid" "127.0.0.1:$port" 2>/dev/null; then
    SIDES+=("$side")
    ADDR[$side]=127.0.0.1:$port
    PID_OF[$side]=$pid
  else
    SKIPPED+=("$side: \`$bin proxy $KC_PROXY_FLAGS -p $port $*\` did not start: $(grep -v '^[[:space:]]*$' "$WORK/$side.log" | head -2 | tr '\n' ' ')")
    log "SKIP $side: keepcached proxy did not start (rows skipped); its output:"
    sed 's/^/    /' "$WORK/$side.log" | tail -5 >&2
    forget_pid "$pid"
  fi
}
start_kc keepcached-proxy "$OURS" "$P_KC" -s "127.0.0.1:$P_MAIN"
[ "$REPL" = 0 ] || start_kc keepcached-repl "$OURS" "$P_KCREPL" -s "127.0.0.1:$P_MAIN" -b "127.0.0.1:$P_BACKUP"
if [ -n "${KEEPCACHED_BEFORE_BIN:-}" ]; then
  [ -x "$KEEPCACHED_BEFORE_BIN" ] || die "KEEPCACHED_BEFORE_BIN=$KEEPCACHED_BEFORE_BIN is not executable"
  start_kc before-proxy "$KEEPCACHED_BEFORE_BIN" "$P_BEFORE" -s "127.0.0.1:$P_MAIN"
  [ "$REPL" = 0 ] ||
    start_kc before-repl "$KEEPCACHED_BEFORE_BIN" "$P_BEFOREREPL" -s "127.0.0.1:$P_MAIN" -b "127.0.0.1:$P_BACKUP"
fi

log "keepcached: $OURS${KEEPCACHED_BEFORE_BIN:+ (before-*: $KEEPCACHED_BEFORE_BIN)}; nutcracker: $(nutcracker -V 2>&1 | head -1); backends: memcached $(backend_flags PORT)"
log "load:       $MEMASLAP${HAVE_MEMTIER:+, $HAVE_MEMTIER}; $(nproc) CPUs shared by client, proxy and backends"

# The pipelined client and memtier read a preloaded key space: load both backends directly.
preload "127.0.0.1:$P_MAIN" main || die "preload of the main memcached failed"
preload "127.0.0.1:$P_BACKUP" backup || die "preload of the backup memcached failed"

write_memaslap_cfg
points=(memaslap "memaslap-mget$MULTIGET" "pipeline$PIPE_DEPTH")
[ -n "$HAVE_MEMTIER" ] && points+=(memtier "memtier-pipe$PIPE_DEPTH")

# cpu_sample PID — the process's CPU ticks (user + system), then the machine's /proc/stat line.
cpu_sample() { echo "$(awk '{print $14 + $15}' "/proc/$1/stat") $(head -1 /proc/stat)"; }

# note_cpu BEFORE AFTER SECS — adds to the last row of $RESULTS what the run cost in CPU per operation
# over a window of SECS seconds inside it (clear of the load generator's start and end):
# the path's own process (the proxy; memcached itself on the direct path) and the whole machine
# (load generator, backends, interrupts), and the share of the CPUs left idle. With little idle,
# the throughput is what the machine's CPUs allow the whole chain, not the proxy alone.
note_cpu() {
  python3 - "$RESULTS" "$1" "$2" "$(getconf CLK_TCK)" "$3" <<'PY'
import json, sys
path, before, after, hz, secs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), float(sys.argv[5])
proc = int(after[0]) - int(before[0])
d = [int(y) - int(x) for x, y in zip(before[2:], after[2:])]
idle = d[3] + d[4]
with open(path) as f:
    lines = f.read().splitlines()
row = json.loads(lines[-1])
ops = (row.get("ops_per_sec") or 0) * secs
if ops and sum(d):
    row["path_cpu_us"] = round(proc * 1e6 / hz / ops, 2)
    row["machine_cpu_us"] = round((sum(d) - idle) * 1e6 / hz / ops, 2)
    row["idle_pct"] = round(100.0 * idle / sum(d), 1)
lines[-1] = json.dumps(row)
with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
PY
}

run_point() { # POINT SIDE
  local point=$1 side=$2 addr=${ADDR[$2]} pid=${PID_OF[$2]} window sampler
  # CPU is sampled while the load runs at full speed: memcaslap takes about a second to start.
  window=$((DURATION > 3 ? DURATION - 2 : 1))
  (sleep 1.5 && cpu_sample "$pid" >"$WORK/cpu-before" && sleep "$window" && cpu_sample "$pid" >"$WORK/cpu-after") &
  sampler=$!
  case $point in
    memaslap) run_memaslap "$point" "$side" "$addr" ;;
    memaslap-mget*) run_memaslap "$point" "$side" "$addr" --division="$MULTIGET" ;;
    pipeline*) run_pipe "$point" "$side" "$addr" ;;
    memtier) run_memtier "$point" "$side" 127.0.0.1 "${addr##*:}" 1 ;;
    memtier-pipe*) run_memtier "$point" "$side" 127.0.0.1 "${addr##*:}" "$PIPE_DEPTH" ;;
  esac
  if wait "$sampler"; then
    note_cpu "$(cat "$WORK/cpu-before")" "$(cat "$WORK/cpu-after")" "$window"
  fi
  for p in "$MAIN_PID" "$BACKUP_PID" "$pid"; do
    kill -0 "$p" 2>/dev/null && continue
    BROKE=1
    log "a process died during $point through $side (pid $p)"
    return 1
  done
  sleep 0.5
}

log "throughput: ${#points[@]} points x ${#SIDES[@]} paths x $ROUNDS round(s) x ${DURATION}s"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  for i in "${!points[@]}"; do
    n=${#SIDES[@]}
    for ((j = 0; j < n; j++)); do # rotated from point to point, reversed from round to round
      k=$(((i + j) % n))
      ((ROUND % 2)) || k=$(((i + n - 1 - j) % n))
      run_point "${points[$i]}" "${SIDES[$k]}" || break 3
    done
  done
done

echo
echo "Proxies in front of memcached $(memcached -V | awk '{print $2}') ($(backend_flags PORT));" \
  "nutcracker: one pool, server_connections $NUT_SERVER_CONNECTIONS"
echo "Machine: $(nproc) CPUs, ${BUSY_BEFORE}% busy before the start, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
for s in "${SKIPPED[@]}"; do echo "SKIPPED $s"; done
[ ${#SKIPPED[@]} -eq 0 ] || echo
"${MCBENCH[@]}" report-proxy "$RESULTS" \
  --load "$LOAD, $VALUE_SIZE-byte values, $CONNS client connections, ${DURATION}s per run"
if [ "$BROKE" != 0 ]; then
  echo
  echo "Something broke during the run (see the errors above); exit 1."
  KEEP_WORK=${KEEP_WORK:-1}
  exit 1
fi
exit 0
