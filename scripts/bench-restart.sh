#!/usr/bin/env bash
# Benchmark: how long the restartable cache (`keepcached server -e FILE`) takes to save and load
# a cache of about 1 GB.
#
#   scripts/bench-restart.sh                      # builds ours with cargo build --release -p keepcached
#   KEEPCACHED_BIN=path/to/keepcached scripts/bench-restart.sh
#
# Steps: start a server with -e FILE (FILE does not exist yet); store ITEMS items of VALUE_SIZE
# bytes, pipelined (scripts/bench/mcbench.py load); then
#   save:  SIGTERM -> the process has exited (the whole file written, synced and renamed);
#   load:  start the server again with the same FILE -> the first `get` of a known key returns
#          its value and `stats curr_items` equals what the first server held;
#   save again on the second server's SIGTERM (a cache that was loaded, not written by clients).
# The servers' own log lines (items, bytes, milliseconds) are printed beside the wall-clock
# figures. A report, not a test: it exits 0 unless something broke.
#
# Environment (defaults): ITEMS=1000000 VALUE_SIZE=1000 MEMORY_MB=1200 THREADS=2 KEEP_WORK=
#   KEEPCACHED_BIN=
set -uo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench/lib.sh"

ITEMS=${ITEMS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-1000}
MEMORY_MB=${MEMORY_MB:-1200}
THREADS=${THREADS:-2}
FILE=$WORK/cache.kc

ensure_tools python3:python3
keepcached_bin
warn_if_busy

read -r PORT <<<"$(free_ports 1)"
ADDR=127.0.0.1:$PORT
FLAGS=(-u root -l 127.0.0.1 -p "$PORT" -U 0 -t "$THREADS" -m "$MEMORY_MB" -e "$FILE")

secs() { python3 -c "print('%.2f' % ($2 - $1))"; }

# stop_and_time PID — SIGTERM, wait for the exit (in this shell: the server is its child); sets
# STOP_SECS to the seconds it took. Fails on a non-zero exit status.
stop_and_time() {
  local pid=$1 t0 rc=0
  t0=$(now)
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  STOP_SECS=$(secs "$t0" "$(now)")
  return "$rc"
}

log "binary: $OURS; flags: ${FLAGS[*]}"
spawn first "$OURS" server "${FLAGS[@]}"
FIRST=$LAST_PID
wait_up first "$FIRST" "$ADDR" || die "the first server did not start"

log "storing $ITEMS items of $VALUE_SIZE bytes"
"${MCBENCH[@]}" load "$ADDR" --count "$ITEMS" --value-size "$VALUE_SIZE" --prefix "key:" \
  --pid "$FIRST" >"$WORK/load.json" 2>"$WORK/load.err" ||
  die "loading failed or did not store every item: $(cat "$WORK/load.json") $(tail -2 "$WORK/load.err")"
HELD=$(python3 -c "import json; print(json.load(open('$WORK/load.json'))['curr_items'])")
RSS_MB=$(python3 -c "import json; print(json.load(open('$WORK/load.json'))['rss_kb'] // 1024)")
log "stored: curr_items $HELD, server RSS ${RSS_MB} MB"

log "save: SIGTERM to the first server"
stop_and_time "$FIRST" || die "the first server exited with an error; log: $(tail -3 "$WORK/first.log")"
SAVE=$STOP_SECS
forget_pid "$FIRST"
FILE_MB=$(( $(stat -c %s "$FILE") / 1024 / 1024 ))

log "load: starting the second server with the same file"
T0=$(now)
spawn second "$OURS" server "${FLAGS[@]}"
SECOND=$LAST_PID
python3 - "$PORT" "$HELD" <<'PY' || die "the second server did not serve the loaded cache; log: $(tail -3 "$WORK/second.log")"
import socket, sys, time
port, held = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 300
def ask(s, req, end):
    s.sendall(req)
    data = b""
    while not data.endswith(end):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError
        data += chunk
    return data
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
            reply = ask(s, b"get key:0000000000\r\n", b"END\r\n")
            if not reply.startswith(b"VALUE key:0000000000 "):
                sys.exit("the known key is missing: %r" % reply[:100])
            stats = ask(s, b"stats\r\n", b"END\r\n")
            items = int(stats.split(b"STAT curr_items ")[1].split(b"\r\n")[0])
            if items != held:
                sys.exit("curr_items %d after the load, %d before the restart" % (items, held))
            sys.exit(0)
    except (ConnectionError, OSError):
        time.sleep(0.01)
sys.exit("no answer")
PY
LOAD=$(secs "$T0" "$(now)")

log "save again: SIGTERM to the second server"
stop_and_time "$SECOND" || die "the second server exited with an error"
SAVE2=$STOP_SECS
forget_pid "$SECOND"

echo
echo "Restartable cache, $ITEMS items of $VALUE_SIZE bytes (file ${FILE_MB} MB, server RSS ${RSS_MB} MB), -m $MEMORY_MB, -t $THREADS"
echo "Machine: $(nproc) CPUs, ${BUSY_BEFORE}% busy before the start"
printf '  %-44s %8s s\n' "save (SIGTERM -> exit)" "$SAVE"
printf '  %-44s %8s s\n' "load (start -> get hits, curr_items equal)" "$LOAD"
printf '  %-44s %8s s\n' "save of the loaded cache (SIGTERM -> exit)" "$SAVE2"
echo "The servers' own lines:"
grep -h -E "saved|loaded" "$WORK/first.log" "$WORK/second.log" | sed 's/^/  /'
exit "$BROKE"
