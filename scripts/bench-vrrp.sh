#!/usr/bin/env bash
# Failover benchmark: keepcached's VRRP daemon and Debian's keepalived, each
# as a MASTER(100)/BACKUP(99) pair in network namespaces, same keepalived.conf.
# Measures, from a client namespace probing VIP:12000 every 5 ms, the time
# from the event (SIGTERM, SIGKILL or link cut of the master) to the first
# answer from the new master. Needs root, iproute2, python3, keepalived.
#
# keepcached runs the same keepalived.conf with --fast-takeover (what a TOML
# configuration does by default); keepcached-rfc runs it as read, with the
# RFC's Skew_Time after priority 0, and is measured for SIGTERM only (the
# other events do not involve priority 0).
#
#   scripts/bench-vrrp.sh [runs-per-cell [cell-regex]]
#       runs-per-cell: default 3; cell-regex: e.g. 'keepalived cut v2' runs only
#       the cells whose "IMPL EVENT vVERSION" matches.
#   KEEPCACHED=path/to/keepcached uses that binary instead of building one.
set -euo pipefail
RUNS=${1:-3}
ONLY=${2:-.}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${KEEPCACHED:-}" ]; then
    cargo build --quiet --release -p keepcached
    KEEPCACHED=$TARGET/release/keepcached
fi
P=kcvb$$
DIR=$(mktemp -d)
VIP=198.18.0.100

# Ends every process of the last run (keepalived's VRRP child by the pid it
# wrote) and waits until they are gone. Each run also names its keepalived
# pidfiles afresh, since a keepalived that finds a live pid in its pidfile
# refuses to start.
RUN=0
alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
cleanup() {
    local pids=()
    for f in "$DIR"/*.pid "$DIR"/*.pidfile; do
        [ -f "$f" ] && pids+=("$(cat "$f")")
        rm -f "$f"
    done
    if [ ${#pids[@]} -gt 0 ]; then
        kill -9 "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 100); do alive "${pids[@]}" || break; sleep 0.02; done
    fi
    for n in br h1 h2 cl; do ip netns del "$P-$n" 2>/dev/null || true; done
}
trap 'cleanup; rm -rf "$DIR"' EXIT

RESPONDER='
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 12000)); s.listen(64)
def serve(c):
    for _ in c.makefile("rb"):
        c.sendall(b"VERSION " + sys.argv[1].encode() + b"\r\n")
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
'
# Runs the event, then probes until host h2 answers; prints seconds.
PROBER='
import socket, subprocess, sys, time
def ask():
    try:
        s = socket.create_connection(("198.18.0.100", 12000), timeout=0.05)
        s.settimeout(0.05); s.sendall(b"version\r\n")
        r = s.recv(64); s.close(); return r
    except OSError:
        return b""
t0 = time.monotonic()
subprocess.run(sys.argv[1:], check=True)
while time.monotonic() - t0 < 15:
    if ask().startswith(b"VERSION h2"):
        print("%.3f" % (time.monotonic() - t0)); sys.exit(0)
    time.sleep(0.005)
print("timeout"); sys.exit(0)
'

conf() { # priority version interval
    local auth=""
    [ "$2" = 2 ] && auth="authentication {
        auth_type PASS
        auth_pass 1111
    }"
    cat <<C
global_defs {
   vrrp_version $2
   vrrp_garp_master_delay 1
}
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
    priority $1
    advert_int $3
    $auth
    virtual_ipaddress {
        $VIP/32 dev eth0 label eth0:2
    }
}
C
}

topology() {
    ip netns add "$P-br"
    ip -n "$P-br" link add br0 type bridge
    ip -n "$P-br" link set br0 up
    local i=1
    for h in h1 h2 cl; do
        ip netns add "$P-$h"
        ip -n "$P-br" link add "$h" type veth peer name eth0 netns "$P-$h"
        ip -n "$P-br" link set "$h" master br0 up
        ip -n "$P-$h" addr add "198.18.0.$i/24" dev eth0
        ip -n "$P-$h" link set eth0 up
        ip -n "$P-$h" link set lo up
        i=$((i + 1))
    done
}

start() { # impl host priority version interval
    conf "$3" "$4" "$5" > "$DIR/$2.conf"
    if [ "$1" = keepcached ]; then
        ip netns exec "$P-$2" "$KEEPCACHED" vrrp --keepalived-conf "$DIR/$2.conf" --fast-takeover \
            >/dev/null 2>"$DIR/$2.log" &
        echo $! > "$DIR/$2.pid"
    elif [ "$1" = keepcached-rfc ]; then
        ip netns exec "$P-$2" "$KEEPCACHED" vrrp --keepalived-conf "$DIR/$2.conf" >/dev/null 2>"$DIR/$2.log" &
        echo $! > "$DIR/$2.pid"
    else
        ip netns exec "$P-$2" /usr/sbin/keepalived --dont-fork --log-console --vrrp -f "$DIR/$2.conf" \
            -p "$DIR/$2-$RUN-ka.pidfile" -r "$DIR/$2-$RUN-vrrp.pidfile" >"$DIR/$2.log" 2>&1 &
        echo $! > "$DIR/$2.pid"
    fi
}

holds() { ip -n "$P-$1" -4 addr show dev eth0 | grep -q "$VIP/32"; }

one_run() { # impl event version interval
    cleanup
    RUN=$((RUN + 1))
    topology
    for h in h1 h2; do
        ip netns exec "$P-$h" python3 -c "$RESPONDER" "$h" >/dev/null 2>&1 & echo $! > "$DIR/$h-resp.pid"
    done
    start "$1" h1 100 "$3" "$4"
    start "$1" h2 99 "$3" "$4"
    for _ in $(seq 200); do holds h1 && ! holds h2 && break; sleep 0.05; done
    sleep 1
    if ! alive "$(cat "$DIR/h2.pid")"; then
        echo "== $1 $2 v$3: the backup is not running" >&2; tail -n 5 "$DIR/h2.log" >&2
        echo "no-backup"; return
    fi
    local pid event
    pid=$(cat "$DIR/h1.pid")
    case "$2" in
        SIGTERM) event=(kill -TERM "$pid") ;;
        SIGKILL)
            if [ "$1" = keepalived ]; then
                # keepalived's VRRP work is done by its child process; the parent
                # goes too, in the same breath, so that it cannot restart it.
                event=(kill -9 "$(cat "$DIR/h1-$RUN-vrrp.pidfile")" "$pid")
            else
                event=(kill -9 "$pid")
            fi ;;
        cut) event=(ip -n "$P-br" link set h1 down) ;;
    esac
    local took
    took=$(ip netns exec "$P-cl" python3 -c "$PROBER" "${event[@]}")
    if [ "$took" = timeout ]; then
        # Enough to tell why, on stderr; the table stays on stdout.
        {
            echo "== $1 $2 v$3 timed out"
            for h in h1 h2; do echo "-- $h:"; ip -n "$P-$h" -4 addr show dev eth0; done
            echo "-- client neighbours:"; ip -n "$P-cl" neigh
            for h in h1 h2; do echo "-- $h log:"; tail -n 20 "$DIR/$h.log"; done
        } >&2
    fi
    echo "$took"
}

printf 'load average before: %s\n\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| implementation | adverts | event | failover (s), %s runs | median |\n|---|---|---|---|---|\n' "$RUNS"
for setting in "2 1" "3 0.1"; do
    set -- $setting
    version=$1 interval=$2
    for impl in keepcached keepcached-rfc keepalived; do
        for event in SIGTERM SIGKILL cut; do
            [ "$impl" = keepcached-rfc ] && [ "$event" != SIGTERM ] && continue
            echo "$impl $event v$version" | grep -Eq -- "$ONLY" || continue
            results=()
            for _ in $(seq "$RUNS"); do results+=("$(one_run "$impl" "$event" "$version" "$interval")"); done
            # A failed run (timeout, no backup) counts as the slowest.
            median=$(printf '%s\n' "${results[@]}" | sed -E 's/^[a-z-]+$/inf/' | sort -g |
                sed -n "$(( (RUNS + 1) / 2 ))p" | sed 's/^inf$/failed/')
            printf '| %s | v%s %ss | %s | %s | %s |\n' "$impl" "$version" "$interval" "$event" "${results[*]}" "$median"
        done
    done
done
printf '\nload average after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
