# shellcheck shell=bash disable=SC2034
# (SC2034: variables set here are read by the scripts that source this file)
# Shared by the scripts/bench-*.sh that source it: tools, processes, load runs.
# Everything listens on 127.0.0.1 only; only the processes started here are ever killed.

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_LIB_DIR/../.." && pwd)
MCBENCH=(python3 "$BENCH_LIB_DIR/mcbench.py")
WORK=$(mktemp -d /tmp/keepcached-bench.XXXXXX)
PIDS=()       # every process this script started
LAST_PID=
CHILD=        # the load generator running now (see run_fg)
BROKE=0       # set when something failed (not a missed target): the script exits 1 at the end

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
# memcached's flags for a backend on port $1 (BACKEND_THREADS and MEMORY_MB: the sourcing script's).
backend_flags() { echo "-u root -l 127.0.0.1 -p $1 -U 0 -t $BACKEND_THREADS -m $MEMORY_MB"; }

stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  [ -z "$CHILD" ] || stop_pid "$CHILD"
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "${KEEP_WORK:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_fg CMD... — run a command as if in the foreground, but so that a signal to this script is handled
# at once (bash runs traps only between foreground commands) and the command is stopped with it.
run_fg() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}

# ensure_tools CMD:PACKAGE ... — apt-get install the packages whose command is missing.
ensure_tools() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run as root or install them"
  log "installing ${missing[*]} (apt-get)"
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
    { tail -5 "$WORK/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

find_memaslap() {
  # Debian's libmemcached-tools (1.1) calls it memcaslap; older builds memaslap.
  MEMASLAP=$(command -v memcaslap || command -v memaslap || true)
  [ -n "$MEMASLAP" ] || die "memcaslap not found (apt-get install libmemcached-tools)"
}

# keepcached_bin: $KEEPCACHED_BIN, or `cargo build --release -p keepcached` (honours CARGO_TARGET_DIR).
keepcached_bin() {
  if [ -n "${KEEPCACHED_BIN:-}" ]; then
    [ -x "$KEEPCACHED_BIN" ] || die "KEEPCACHED_BIN=$KEEPCACHED_BIN is not executable"
    OURS=$KEEPCACHED_BIN
    return
  fi
  command -v cargo >/dev/null || die "cargo not found (or set KEEPCACHED_BIN)"
  log "building keepcached (cargo build --release -p keepcached)"
  (cd "$REPO_ROOT" && cargo build --release -p keepcached) >"$WORK/build.log" 2>&1 ||
    { tail -20 "$WORK/build.log" >&2; die "cargo build failed"; }
  local target
  target=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  OURS=$target/release/keepcached
  [ -x "$OURS" ] || die "no binary at $OURS"
}

free_ports() { "${MCBENCH[@]}" ports "$1"; }

# cpu_busy_pct SECS — share of all CPUs busy over SECS (before our servers run: other people's load).
cpu_busy_pct() {
  local a b
  a=$(head -1 /proc/stat)
  sleep "$1"
  b=$(head -1 /proc/stat)
  python3 - "$a" "$b" <<'PY'
import sys
a, b = ([int(x) for x in s.split()[1:]] for s in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
idle = d[3] + (d[4] if len(d) > 4 else 0)
print(round(100.0 * (sum(d) - idle) / max(1, sum(d))))
PY
}

# cpu_mark / cpu_other_pct — CPU used during a run by processes that are not ours (other people's
# builds and tests on a shared machine), as a share of all CPUs. Ours: the processes in PIDS
# (servers, proxies) and this shell's finished children (the load generators, via cutime/cstime).
# Interrupt and softirq time is left out of the busy total: the kernel charges the loopback
# traffic of the benchmark itself there, not to our processes.
cpu_snapshot() {
  local pid ours=0 t
  for pid in "${PIDS[@]}"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || t=0
    ours=$((ours + ${t:-0}))
  done
  t=$(awk '{print $16 + $17}' "/proc/$$/stat")
  echo "$(head -1 /proc/stat | awk '{t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6 - $7 - $8}') $((ours + t))"
}
cpu_mark() {
  CPU_MARK=$(cpu_snapshot)
  CPU_MARK_PIDS="${PIDS[*]}"
  CPU_MARK_T=$(date +%s.%N)
}
cpu_other_pct() {
  local now busy0 ours0 busy1 ours1
  now=$(cpu_snapshot)
  read -r busy0 ours0 <<<"$CPU_MARK"
  read -r busy1 ours1 <<<"$now"
  [ "$CPU_MARK_PIDS" = "${PIDS[*]}" ] || { echo null; return; }
  python3 -c "import os,time; w = (time.time() - $CPU_MARK_T) * os.sysconf('SC_CLK_TCK') * os.cpu_count();
print(max(0, round(100.0 * (($busy1 - $busy0) - ($ours1 - $ours0)) / w)))"
}

# warn_if_busy — the figures mean little when something else is using the CPUs.
warn_if_busy() {
  local busy
  busy=$(cpu_busy_pct 2)
  if [ "$busy" -gt 10 ]; then
    log "WARNING: the machine is ${busy}% busy before the benchmark starts (load average" \
      "$(cut -d' ' -f1-3 /proc/loadavg)): absolute figures will be low and noisy; the interleaved" \
      "ratios hold up better, ROUNDS=2 or more helps"
  fi
  BUSY_BEFORE=$busy
}

# spawn NAME CMD... — start a process in the background, log to $WORK/NAME.log; sets LAST_PID.
spawn() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_up NAME PID ADDR — until ADDR answers a `get`; returns 1 (with the log) if not.
wait_up() {
  local name=$1 pid=$2 addr=$3 i
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    if "${MCBENCH[@]}" wait "$addr" 0.25 2>/dev/null; then
      kill -0 "$pid" 2>/dev/null && return 0
      break
    fi
  done
  log "$name did not come up on $addr; its log:"
  sed 's/^/    /' "$WORK/$name.log" | tail -15 >&2
  return 1
}

forget_pid() {
  local pid=$1 keep=() p
  stop_pid "$pid"
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

write_memaslap_cfg() {
  # memcaslap's -F file: key length range, value length range, command mix (0 = set, 1 = get).
  cat >"$WORK/memaslap.cfg" <<EOF
key
16 16 1
value
$VALUE_SIZE $VALUE_SIZE 1
cmd
0 $SET_RATIO
1 $GET_RATIO
EOF
}

# server_cpu_mark PID / server_cpu_pct / server_sys_pct — the CPU the server process PID used
# since the mark (utime + stime of /proc/PID/stat; stime alone: the kernel's part), as a
# percentage of one CPU over the wall time: with ops/s it gives the server's CPU per operation,
# which transfers to bigger machines where the load generator does not share the cores, and
# how much of it the kernel spends (cut only by fewer system calls). Empty PID (the proxy
# benchmark): null.
server_cpu_mark() {
  SERVER_CPU_PID=${1:-}
  SERVER_CPU_MARK=$(awk '{print $14 + $15}' "/proc/$SERVER_CPU_PID/stat" 2>/dev/null || echo 0)
  SERVER_SYS_MARK=$(awk '{print $15}' "/proc/$SERVER_CPU_PID/stat" 2>/dev/null || echo 0)
  SERVER_CPU_T=$(date +%s.%N)
}
server_cpu_pct() { server_ticks_pct '$14 + $15' "$SERVER_CPU_MARK"; }
server_sys_pct() { server_ticks_pct '$15' "$SERVER_SYS_MARK"; }
# server_ticks_pct AWK_FIELDS MARK — the ticks AWK_FIELDS of /proc/PID/stat add up to now,
# less MARK, as a percentage of one CPU since the mark.
server_ticks_pct() {
  local fields=$1 mark=$2 t
  [ -n "${SERVER_CPU_PID:-}" ] || { echo null; return; }
  t=$(awk "{print $fields}" "/proc/$SERVER_CPU_PID/stat" 2>/dev/null) || { echo null; return; }
  python3 -c "import os,time; print(round(100.0 * ($t - $mark) / os.sysconf('SC_CLK_TCK')
  / (time.time() - $SERVER_CPU_T), 1))"
}

# run_memaslap POINT SIDE ADDR [memcaslap args] — appends one JSON row to $RESULTS.
run_memaslap() {
  local point=$1 side=$2 addr=$3 rc=0
  shift 3
  local out="$WORK/memaslap-$ROUND-$side.out"
  log "  $point -> $side ($addr), ${DURATION}s"
  cpu_mark
  server_cpu_mark "${SERVER_PID:-}"
  run_fg timeout -k 5 $((DURATION + 60)) "$MEMASLAP" -s "$addr" -F "$WORK/memaslap.cfg" \
    -T "$MEMASLAP_THREADS" -c "$CONNS" -t "${DURATION}s" -S "${DURATION}s" "$@" >"$out" 2>&1 || rc=$?
  local cpu sys
  cpu=$(server_cpu_pct) sys=$(server_sys_pct)
  "${MCBENCH[@]}" parse-memaslap "$out" --point "$point" --side "$side" --rc "$rc" \
    --other-cpu "$(cpu_other_pct)" >"$WORK/row.json"
  "${MCBENCH[@]}" annotate "$WORK/row.json" server_cpu_pct "$cpu" >"$WORK/row2.json"
  "${MCBENCH[@]}" annotate "$WORK/row2.json" server_sys_pct "$sys" >>"$RESULTS"
  [ "$rc" = 0 ] || BROKE=1
}

# run_pipe POINT SIDE ADDR — pipelined closed loop (scripts/bench/mcbench.py pipe).
run_pipe() {
  local point=$1 side=$2 addr=$3 rc=0
  log "  $point -> $side ($addr), ${DURATION}s"
  cpu_mark
  server_cpu_mark "${SERVER_PID:-}"
  run_fg "${MCBENCH[@]}" pipe "$addr" --point "$point" --side "$side" --prefix "pipe:" --keys "$PIPE_KEYS" \
    --conns "$CONNS" --depth "$PIPE_DEPTH" --secs "$DURATION" --procs "$PIPE_PROCS" \
    --set-ratio "$SET_RATIO" --value-size "$VALUE_SIZE" >"$WORK/pipe.json" 2>"$WORK/pipe-$side.err" || rc=$?
  local cpu sys
  cpu=$(server_cpu_pct) sys=$(server_sys_pct)
  "${MCBENCH[@]}" annotate "$WORK/pipe.json" other_cpu_pct "$(cpu_other_pct)" >"$WORK/row.json"
  "${MCBENCH[@]}" annotate "$WORK/row.json" server_cpu_pct "$cpu" >"$WORK/row2.json"
  "${MCBENCH[@]}" annotate "$WORK/row2.json" server_sys_pct "$sys" >>"$RESULTS"
  if [ "$rc" != 0 ]; then
    BROKE=1
    tail -3 "$WORK/pipe-$side.err" >&2
  fi
}

# run_memtier POINT SIDE HOST PORT PIPELINE — only when memtier_benchmark is installed.
run_memtier() {
  local point=$1 side=$2 host=$3 port=$4 pipeline=$5 rc=0
  local json="$WORK/memtier-$point-$side-$ROUND.json" logf="$WORK/memtier-$point-$side-$ROUND.log"
  local threads=$MEMASLAP_THREADS
  log "  $point -> $side ($host:$port), ${DURATION}s"
  rm -f "$json"
  cpu_mark
  run_fg timeout -k 5 $((DURATION + 60)) memtier_benchmark -s "$host" -p "$port" -P memcache_text \
    -t "$threads" -c $((CONNS / threads)) --ratio="1:$(python3 -c "print(round($GET_RATIO/$SET_RATIO))")" \
    -d "$VALUE_SIZE" --key-prefix=mt: --key-minimum=0 --key-maximum=$((PIPE_KEYS - 1)) --key-pattern=R:R \
    --pipeline="$pipeline" --test-time="$DURATION" --hide-histogram --json-out-file="$json" >"$logf" 2>&1 || rc=$?
  "${MCBENCH[@]}" parse-memtier "$json" --log "$logf" --point "$point" --side "$side" --rc "$rc" \
    --other-cpu "$(cpu_other_pct)" >>"$RESULTS"
  [ "$rc" = 0 ] || BROKE=1
}

# preload ADDR SIDE — the key spaces the pipelined client and memtier read.
preload() {
  local addr=$1 side=$2
  "${MCBENCH[@]}" load "$addr" --prefix "pipe:" --count "$PIPE_KEYS" --value-size "$VALUE_SIZE" --no-exact \
    >"$WORK/preload-$side.json" || { log "preload of $side failed: $(cat "$WORK/preload-$side.json")"; return 1; }
  if [ -n "${HAVE_MEMTIER:-}" ]; then
    "${MCBENCH[@]}" load "$addr" --prefix "mt:" --no-pad --count "$PIPE_KEYS" --value-size "$VALUE_SIZE" \
      --no-exact >/dev/null || return 1
  fi
}
