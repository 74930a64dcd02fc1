#!/usr/bin/env bash
# Failover benchmark: keepcached's VRRP daemon and Debian's keepalived, each
# as a MASTER(100)/BACKUP(99) pair in network namespaces, same keepalived.conf.
# Measures, from a client namespace probing VIP:12000 every 5 ms, the time
# from the event (SIGTERM, SIGKILL or link cut of the master) to the first
# answer from the new master. Needs root, iproute2, python3, keepalived.
#
#   scripts/bench-vrrp.sh [runs-per-cell]     (default 3)
set -euo pipefail
RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --quiet --release -p keepcached
KEEPCACHED=$TARGET/release/keepcached
P=kcvb$$
DIR=$(mktemp -d)
VIP=198.18.0.100

cleanup() {
    for f in "$DIR"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
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
        ip netns exec "$P-$2" "$KEEPCACHED" vrrp --keepalived-conf "$DIR/$2.conf" >/dev/null 2>"$DIR/$2.log" &
        echo $! > "$DIR/$2.pid"
    else
        ip netns exec "$P-$2" /usr/sbin/keepalived --dont-fork --vrrp -f "$DIR/$2.conf" \
            -p "$DIR/$2-ka.pidfile" -r "$DIR/$2-vrrp.pidfile" >"$DIR/$2.log" 2>&1 &
        echo $! > "$DIR/$2.pid"
    fi
}

holds() { ip -n "$P-$1" -4 addr show dev eth0 | grep -q "$VIP/32"; }

one_run() { # impl event version interval
    cleanup
    topology
    for h in h1 h2; do
        ip netns exec "$P-$h" python3 -c "$RESPONDER" "$h" >/dev/null 2>&1 & echo $! > "$DIR/$h-resp.pid"
    done
    start "$1" h1 100 "$3" "$4"
    start "$1" h2 99 "$3" "$4"
    for _ in $(seq 200); do holds h1 && ! holds h2 && break; sleep 0.05; done
    sleep 1
    local pid event
    pid=$(cat "$DIR/h1.pid")
    case "$2" in
        SIGTERM) event=(kill -TERM "$pid") ;;
        SIGKILL)
            if [ "$1" = keepalived ]; then
                # keepalived's VRRP work is done by its child process.
                event=(sh -c "pkill -9 -P $pid; kill -9 $pid")
            else
                event=(kill -9 "$pid")
            fi ;;
        cut) event=(ip -n "$P-br" link set h1 down) ;;
    esac
    ip netns exec "$P-cl" python3 -c "$PROBER" "${event[@]}"
}

printf '| implementation | adverts | event | failover (s), %s runs | median |\n|---|---|---|---|---|\n' "$RUNS"
for setting in "2 1" "3 0.1"; do
    set -- $setting
    version=$1 interval=$2
    for impl in keepcached keepalived; do
        for event in SIGTERM SIGKILL cut; do
            results=()
            for _ in $(seq "$RUNS"); do results+=("$(one_run "$impl" "$event" "$version" "$interval")"); done
            median=$(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
            printf '| %s | v%s %ss | %s | %s | %s |\n' "$impl" "$version" "$interval" "$event" "${results[*]}" "$median"
        done
    done
done
