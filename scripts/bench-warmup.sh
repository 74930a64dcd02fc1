#!/usr/bin/env bash
# Benchmark: keepcached proxy's warm-up of a returning server (crates/proxy/src/warmup.rs, resync.rs).
#
#   scripts/bench-warmup.sh                      # builds ours with cargo build --release -p keepcached
#   KEEPCACHED_BIN=path/to/keepcached scripts/bench-warmup.sh
#   ITEMS=100000 scripts/bench-warmup.sh         # a smaller key space
#
# For each setting of [resync] (SETTINGS, in this order):
#   default    warmup_items_per_sec and warmup_bytes_per_sec left out of the file (their defaults)
#   unlimited  warmup_items_per_sec = 0, warmup_bytes_per_sec = 0
# fresh servers, in one run: two Debian memcached (main, backup; -m MEMORY_MB) on free loopback
# ports and `keepcached proxy --config` with two pools (main, backup). ITEMS items of VALUE_SIZE
# bytes are stored through the proxy (pipelined sets, every reply checked), then a steady client
# load runs through the proxy for the whole measurement: LOAD_CONNS connections, one request at a
# time each (closed loop), 90% get / 10% set on the loaded keys, every reply checked (a miss or a
# wrong value is counted). After BASELINE_SECS of it the backup memcached is killed and a fresh,
# empty one started on the same port; `stats backends` on the proxy is polled until the backup is
# `state=up` again.
#
# Printed: the warm-up's duration, items and bytes copied (the proxy's `warm-up finished` log line)
# and their rates; "held items/s": the keys the new backup holds at the end per second of warm-up
# (lower than items/s when a pass was repeated); the client load's ops/s before and during the
# warm-up and the throughput lost; the new backup's `stats curr_items` and a get of every key
# directly on it. A report, not a test: it exits 1 only when something broke (a process died, the
# warm-up did not finish within WARMUP_TIMEOUT, the new backup misses more than 0.1% of the keys,
# the clients read a miss or a wrong value). About 2-3 minutes with the defaults (plus the build).
# The load generator shares the machine's CPUs with the proxy and both servers.
#
# Environment (defaults): ITEMS=500000 VALUE_SIZE=100 LOAD_CONNS=16 LOAD_PROCS=1 BASELINE_SECS=5
#   WARMUP_TIMEOUT=150 (seconds) MEMORY_MB=1024 BACKEND_THREADS=2 SETTINGS="default unlimited"
#   KEEP_WORK= (keep the logs) KEEPCACHED_BIN=  (CARGO_TARGET_DIR is honoured by the build)
set -uo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench/lib.sh"

ITEMS=${ITEMS:-500000}
VALUE_SIZE=${VALUE_SIZE:-100}
LOAD_CONNS=${LOAD_CONNS:-16}
LOAD_PROCS=${LOAD_PROCS:-1}
BASELINE_SECS=${BASELINE_SECS:-5}
WARMUP_TIMEOUT=${WARMUP_TIMEOUT:-150}
MEMORY_MB=${MEMORY_MB:-1024}
BACKEND_THREADS=${BACKEND_THREADS:-2}
SETTINGS=${SETTINGS:-default unlimited}
PREFIX=warm:
RESULTS=$WORK/warmup.jsonl
: >"$RESULTS"
# warm.py imports scripts/bench/mcbench.py (keys, values, replies, `stats`).
WARM=(env PYTHONPATH="$BENCH_LIB_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 "$WORK/warm.py")

# The load, the poller and the report (Python 3 standard library and mcbench.py).
cat >"$WORK/warm.py" <<'PY'
"""Helper of scripts/bench-warmup.sh (Python 3 standard library and scripts/bench/mcbench.py).

  load ADDR --count N        pipelined sets (with replies) of N items; JSON: stored, secs
  steady ADDR --out PREFIX   closed-loop get/set load until SIGTERM; each process appends its
                             cumulative counters (ops, gets, misses, wrong, errors) to PREFIX.<i>
                             every 0.1 s
  rate PREFIX FROM TO        ops/s (and misses, wrong replies, errors) between two unix times
  watch ADDR NAME --json F   polls `stats backends` until server NAME left `up` and is up again
  states ADDR                every server's state in `stats backends`
  check ADDR --count N       gets every key directly on a server; JSON: found, wrong
  curr-items ADDR            `stats curr_items` of a server
  summarize ...              one JSON row per setting; report ROWS: the tables
"""

import argparse
import glob
import json
import os
import random
import re
import selectors
import signal
import socket
import sys
import threading
import time

from mcbench import connect, key_of, parse_addr, random_request, recv_until, split_threads, stats, value_of

# Replies read whole (`stats backends`, gets of a batch of keys): up to 16 MiB.
REPLY_LIMIT = 1 << 24


# ------------------------------------------------------------------ load

def cmd_load(args):
    addr = parse_addr(args.addr)
    value = value_of(args.value_size)
    head = b" 0 0 %d\r\n" % len(value)
    chunk = args.chunk
    t0 = time.time()
    results = []

    def worker(lo, hi):
        s = connect(addr, 60)
        want = hi - lo
        got = {"stored": 0, "other": b""}

        def reader():  # counts the replies while the writer keeps the pipe full
            buf = b""
            n = 0
            try:
                while n < want:
                    d = s.recv(1 << 16)
                    if not d:
                        break
                    buf += d
                    lines = buf.split(b"\r\n")
                    buf = lines.pop()
                    for line in lines:
                        n += 1
                        if line == b"STORED":
                            got["stored"] += 1
                        elif len(got["other"]) < 200:
                            got["other"] += line + b"; "
            except OSError as e:
                got["other"] += str(e).encode()

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        try:
            for start in range(lo, hi, chunk):
                end = min(hi, start + chunk)
                s.sendall(b"".join(b"set " + key_of(args.prefix, i) + head + value + b"\r\n"
                                   for i in range(start, end)))
        except OSError as e:
            got["other"] += str(e).encode()
        rt.join(120)
        s.close()
        results.append(got)

    split_threads(args.count, args.conns, worker)
    secs = time.time() - t0
    stored = sum(r["stored"] for r in results)
    other = b"".join(r["other"] for r in results)[:300]
    print(json.dumps({"items": args.count, "stored": stored, "secs": round(secs, 2),
                      "errors": other.decode("latin-1")}))
    return 0 if stored == args.count else 1


# ------------------------------------------------------------------ steady

def steady_proc(args, addr, nconns, seed, out_path, parent):
    rng = random.Random(seed)
    value = value_of(args.value_size)
    # Pre-built requests: (bytes, is_get, expected hit reply)
    reqs = [random_request(rng, args.prefix, args.keys, args.set_ratio, value) for _ in range(20000)]
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(nconns):
        s = connect(addr, 10)
        s.setblocking(False)
        conns.append({"sock": s, "i": (i * 7919) % len(reqs), "buf": b"", "pending": []})
    c_ops = c_gets = c_miss = c_bad = c_err = 0
    out = open(out_path, "a", buffering=1)

    def send_batch(c):
        batch = []
        for _ in range(args.depth):
            batch.append(reqs[c["i"]])
            c["i"] = (c["i"] + 1) % len(reqs)
        data = b"".join(r[0] for r in batch)
        c["pending"] = batch
        c["sock"].sendall(data)  # small: fits the socket buffer

    for c in conns:
        send_batch(c)
        sel.register(c["sock"], selectors.EVENT_READ, c)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    next_sample = time.time()
    while True:
        now = time.time()
        if now >= next_sample or stopping:
            out.write("%.3f %d %d %d %d %d\n" % (now, c_ops, c_gets, c_miss, c_bad, c_err))
            next_sample = now + 0.1
            if stopping or os.getppid() != parent:
                return
        for key, _ev in sel.select(timeout=0.05):
            c = key.data
            try:
                d = c["sock"].recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if not d:
                c_err += 1
                sel.unregister(c["sock"])
                out.write("%.3f %d %d %d %d %d closed\n" % (time.time(), c_ops, c_gets, c_miss, c_bad, c_err))
                continue
            buf = c["buf"] + d
            pend = c["pending"]
            while pend:
                _req, is_get, want = pend[0]
                if buf.startswith(want):
                    buf = buf[len(want):]
                elif len(buf) < len(want) and want.startswith(buf):
                    break  # incomplete
                elif is_get and buf.startswith(b"END\r\n"):
                    buf = buf[5:]
                    c_miss += 1
                else:
                    # an error line or a wrong value: skip one reply as best we can
                    if is_get and buf.startswith(b"VALUE "):
                        end = buf.find(b"END\r\n")
                        if end < 0:
                            break
                        buf = buf[end + 5:]
                        c_bad += 1
                    else:
                        end = buf.find(b"\r\n")
                        if end < 0:
                            break
                        buf = buf[end + 2:]
                        c_err += 1
                pend.pop(0)
                c_ops += 1
                if is_get:
                    c_gets += 1
            c["buf"] = buf
            if not pend:
                send_batch(c)


def cmd_steady(args):
    addr = parse_addr(args.addr)
    parent = os.getpid()
    procs = max(1, min(args.procs, args.conns))
    per = [args.conns // procs + (1 if i < args.conns % procs else 0) for i in range(procs)]
    kids = []
    for i in range(procs):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                steady_proc(args, addr, per[i], 1000 + i, "%s.%d" % (args.out, i), parent)
            except Exception as e:  # noqa: BLE001 - reported in the sample file
                with open("%s.%d" % (args.out, i), "a") as f:
                    f.write("error %r\n" % e)
                code = 1
            os._exit(code)
        kids.append(pid)

    def stop(signum, _frame):
        for k in kids:
            try:
                os.kill(k, signal.SIGTERM)
            except OSError:
                pass
        for k in kids:
            try:
                os.waitpid(k, 0)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for k in kids:
        os.waitpid(k, 0)
    return 1  # the load should never end on its own


def read_samples(prefix):
    per = []
    for path in sorted(glob.glob(prefix + ".[0-9]*")):
        if not path.rsplit(".", 1)[1].isdigit():
            continue
        rows = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[0][0].isdigit():
                    rows.append([float(parts[0])] + [int(x) for x in parts[1:6]])
        per.append(rows)
    return per


def at(rows, t, col):
    """Cumulative counter `col` at time t, interpolated between samples."""
    if not rows or t < rows[0][0] or t > rows[-1][0]:
        return None
    lo, hi = 0, len(rows) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rows[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    a, b = rows[lo], rows[hi]
    if b[0] == a[0]:
        return a[col]
    return a[col] + (b[col] - a[col]) * (t - a[0]) / (b[0] - a[0])


def cmd_rate(args):
    print(json.dumps(rate(args.prefix, args.t0, args.t1)))
    return 0


def rate(prefix, t0, t1):
    per = read_samples(prefix)
    out = {"secs": round(t1 - t0, 2)}
    names = ["ops", "gets", "misses", "wrong", "errors"]
    total = dict.fromkeys(names, 0.0)
    ok = bool(per)
    for rows in per:
        for i, name in enumerate(names, start=1):
            a, b = at(rows, t0, i), at(rows, t1, i)
            if a is None or b is None:
                ok = False
                continue
            total[name] += b - a
    if not ok or t1 <= t0:
        out["ops_per_sec"] = None
    else:
        out["ops_per_sec"] = round(total["ops"] / (t1 - t0))
    for name in names:
        out[name] = round(total[name])
    return out


# ------------------------------------------------------------------ watch

def backends(sock):
    sock.sendall(b"stats backends\r\n")
    data = recv_until(sock, b"END\r\n", REPLY_LIMIT)
    out = {}
    for line in data.decode("latin-1").split("\r\n"):
        parts = line.split(" ")
        if len(parts) >= 3 and parts[0] == "STAT":
            out[parts[1]] = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    return out


def cmd_watch(args):
    addr = parse_addr(args.addr)
    sock = socket.create_connection(addr, timeout=5)
    deadline = time.time() + args.timeout
    res = {"name": args.name, "t_left_up": None, "t_warming": None, "t_warming_end": None,
           "t_up": None, "states": [], "max_warm_copied": 0, "max_warm_bytes": 0,
           "warm_total": None, "progress": []}
    last_state = None
    last_progress = 0.0
    warming_fields = None
    while time.time() < deadline:
        now = time.time()
        try:
            b = backends(sock).get(args.name)
        except (OSError, ValueError, ConnectionError) as e:
            print("watch: %s" % e, file=sys.stderr)
            sock = socket.create_connection(addr, timeout=5)
            continue
        if b is None:
            print("watch: no backend %s in `stats backends`" % args.name, file=sys.stderr)
            return 2
        state = b.get("state")
        if state != last_state:
            res["states"].append([round(now, 3), state])
            print("%.3f %s state=%s" % (now, args.name, state), file=sys.stderr)
            if last_state == "warming":
                res["t_warming_end"] = now
            last_state = state
        if state != "up" and res["t_left_up"] is None:
            res["t_left_up"] = now
        if state == "warming":
            if res["t_warming"] is None:
                res["t_warming"] = now
            warming_fields = b
        if "warm_copied" in b:
            res["max_warm_copied"] = max(res["max_warm_copied"], int(b["warm_copied"]))
            res["max_warm_bytes"] = max(res["max_warm_bytes"], int(b["warm_bytes"]))
            res["warm_total"] = int(b["warm_total"])
            if now - last_progress >= 1.0:
                last_progress = now
                p = {k: b[k] for k in b if k.startswith("warm_")}
                res["progress"].append([round(now, 1), p])
                print("%.3f %s %s" % (now, args.name, " ".join("%s=%s" % kv for kv in p.items())),
                      file=sys.stderr)
        if state == "up" and res["t_left_up"] is not None:
            res["t_up"] = now
            break
        time.sleep(args.interval)
    res["last_warming"] = warming_fields
    with open(args.json, "w") as f:
        json.dump(res, f)
    return 0 if res["t_up"] is not None else 1


# ------------------------------------------------------------------ check

def cmd_check(args):
    addr = parse_addr(args.addr)
    value = value_of(args.value_size)
    found = wrong = 0
    batch = 100
    with socket.create_connection(addr, timeout=30) as s:
        for lo in range(0, args.count, batch):
            keys = [key_of(args.prefix, i) for i in range(lo, min(args.count, lo + batch))]
            s.sendall(b"get " + b" ".join(keys) + b"\r\n")
            data = recv_until(s, b"END\r\n", REPLY_LIMIT)
            hits = data.count(b"VALUE ")
            good = sum(1 for k in keys if (b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value)) in data)
            found += hits
            wrong += hits - good
    print(json.dumps({"keys": args.count, "found": found, "wrong": wrong}))
    return 0


def cmd_states(args):
    with socket.create_connection(parse_addr(args.addr), timeout=5) as s:
        for name, fields in backends(s).items():
            print(name, fields.get("state"))
    return 0


# ------------------------------------------------------------------ summary and report

def log_fields(line):
    """name=value pairs of a tracing log line (values may be quoted)."""
    out = {}
    for m in re.finditer(r'(\w+)=("([^"]*)"|\S+)', line):
        out[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


def cmd_summarize(args):
    with open(args.watch) as f:
        w = json.load(f)
    with open(args.check) as f:
        check = json.load(f)
    with open(args.load) as f:
        load = json.load(f)
    started = finished = None
    short = 0
    with open(args.log, errors="replace") as f:
        for line in f:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if "warm-up started" in line:
                started = log_fields(line)
            elif "warm-up finished" in line:
                finished = log_fields(line)
            elif "listing again for what is missing" in line:
                short += 1
    row = {"setting": args.setting, "limits": args.limits, "items": args.items,
           "value_size": args.value_size, "conns": args.conns, "load": load,
           "states": w.get("states"), "short_passes": short,
           "backup_curr_items": args.backup_curr, "main_curr_items": args.main_curr,
           "check": check, "warmup_finished": finished is not None}
    if w.get("t_up") is not None:
        row["kill_to_up_s"] = round(w["t_up"] - args.t_kill, 2)
        row["restart_to_up_s"] = round(w["t_up"] - args.t_restart, 2)
    if w.get("t_warming") is not None:
        row["restart_to_warming_s"] = round(w["t_warming"] - args.t_restart, 2)
    if started:
        row["source_items"] = int(started.get("items", 0))
    if finished:
        secs = float(finished.get("seconds", 0)) or None
        listed, copied, nbytes = (int(finished.get(k, 0)) for k in ("listed", "copied", "bytes"))
        row.update({"listed": listed, "copied": copied, "bytes": nbytes, "seconds": secs})
        row["passes"] = int(finished.get("passes", 1))
        if secs:
            row["copied_per_sec"] = round(copied / secs)
            row["mb_per_sec"] = round(nbytes / secs / 1e6, 2)
            # what the new server holds at the end, per second of warm-up
            row["held_per_sec"] = round(check["found"] / secs)
            row["held_mb_per_sec"] = round(check["found"] * args.value_size / secs / 1e6, 2)
    before = rate(args.samples, args.t_base0, args.t_base1)
    row["before"] = before
    if w.get("t_warming") is not None and w.get("t_warming_end") is not None:
        during = rate(args.samples, w["t_warming"], w["t_warming_end"])
        row["during"] = during
        if before["ops_per_sec"] and during["ops_per_sec"] is not None:
            row["lost_pct"] = round(100.0 * (1 - during["ops_per_sec"] / before["ops_per_sec"]), 1)
        row["outage"] = rate(args.samples, args.t_kill, w["t_warming"])
    row["whole_run"] = rate(args.samples, args.t_base0, w.get("t_up") or args.t_kill)
    print(json.dumps(row))
    return 0


def fmt(x, nd=0):
    if x is None:
        return "-"
    if nd:
        return "%.*f" % (nd, x)
    return "{:,}".format(int(round(x)))


def table(headers, body):
    widths = [max(len(str(r[i])) for r in [headers] + body) for i in range(len(headers))]
    for r in [headers] + body:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def cmd_report(args):
    rows = []
    with open(args.rows) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    if not rows:
        print("no results")
        return 1
    print("Warm-up (from the proxy's `warm-up finished` log line; MB = 10^6 bytes of values):")
    body = []
    for r in rows:
        body.append([r["setting"], r["limits"], fmt(r.get("seconds"), 2), fmt(r.get("passes")),
                     fmt(r.get("copied")), fmt(r.get("bytes", 0) / 1e6 if r.get("bytes") is not None else None, 1),
                     fmt(r.get("copied_per_sec")), fmt(r.get("mb_per_sec"), 2),
                     fmt(r.get("held_per_sec")), fmt(r.get("held_mb_per_sec"), 2),
                     fmt(r.get("restart_to_warming_s"), 2), fmt(r.get("kill_to_up_s"), 2)])
    table(["setting", "limit", "warm-up s", "passes", "copied", "MB", "items/s", "MB/s",
           "held items/s", "held MB/s", "restart->warming s", "kill->up s"], body)
    print()
    print("The new backup afterwards (`stats curr_items` on it; every key got from it directly):")
    body = []
    for r in rows:
        c = r["check"]
        body.append([r["setting"], fmt(r["items"]), fmt(r["backup_curr_items"]), fmt(r["main_curr_items"]),
                     fmt(c["found"]), fmt(c["wrong"]), fmt(100.0 * c["found"] / r["items"], 3) + "%"])
    table(["setting", "loaded", "backup curr_items", "main curr_items", "keys found", "wrong values",
           "found"], body)
    print()
    print("Client load through the proxy (closed loop, %d connections, 90%% get / 10%% set on the loaded keys):"
          % rows[0]["conns"])
    body = []
    for r in rows:
        b, d, o = r.get("before", {}), r.get("during", {}), r.get("outage", {})
        bad = "%s/%s/%s" % (fmt(d.get("misses")), fmt(d.get("wrong")), fmt(d.get("errors"))) if d else "-"
        body.append([r["setting"], fmt(r["conns"]), fmt(b.get("ops_per_sec")), fmt(d.get("ops_per_sec")),
                     fmt(r.get("lost_pct"), 1), fmt(o.get("ops_per_sec")), bad])
    table(["setting", "conns", "ops/s before", "ops/s during warm-up", "lost %", "ops/s kill->warming",
           "misses/wrong/errors during"], body)
    for r in rows:
        notes = []
        if not r.get("warmup_finished"):
            notes.append("no `warm-up finished` line in the proxy's log")
        if r.get("short_passes"):
            notes.append("%d listing(s) of `lru_crawler metadump` showed fewer items than the source held "
                         "(each is followed by another that copies only the keys the new server lacks)"
                         % r["short_passes"])
        if r["check"]["found"] < r["items"]:
            notes.append("%d keys missing on the new backup" % (r["items"] - r["check"]["found"]))
        for n in notes:
            print("note (%s): %s" % (r["setting"], n))
    return 0


def cmd_curr_items(args):
    print(stats(parse_addr(args.addr)).get("curr_items", "-1"))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("load", "steady", "check"):
        p = sub.add_parser(name)
        p.add_argument("addr")
        p.add_argument("--prefix", default="warm:")
        p.add_argument("--value-size", type=int, default=100)
        if name in ("load", "check"):
            p.add_argument("--count", type=int, required=True)
        if name == "load":
            p.add_argument("--conns", type=int, default=4)
            p.add_argument("--chunk", type=int, default=2000, help="sets per write")
        if name == "steady":
            p.add_argument("--keys", type=int, required=True)
            p.add_argument("--conns", type=int, default=16)
            p.add_argument("--depth", type=int, default=1)
            p.add_argument("--procs", type=int, default=1)
            p.add_argument("--set-ratio", type=float, default=0.1)
            p.add_argument("--out", required=True)
    p = sub.add_parser("rate")
    p.add_argument("prefix")
    p.add_argument("t0", type=float)
    p.add_argument("t1", type=float)
    p = sub.add_parser("watch")
    p.add_argument("addr")
    p.add_argument("name", help="pool/host:port as `stats backends` names it")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--json", required=True, help="where to write the result")
    p = sub.add_parser("states")
    p.add_argument("addr")
    p = sub.add_parser("summarize")
    for a in ("--setting", "--limits", "--watch", "--log", "--samples", "--check", "--load"):
        p.add_argument(a, required=True)
    for a in ("--t-base0", "--t-base1", "--t-kill", "--t-restart"):
        p.add_argument(a, type=float, required=True)
    for a in ("--items", "--value-size", "--conns", "--backup-curr", "--main-curr"):
        p.add_argument(a, type=int, required=True)
    p = sub.add_parser("report")
    p.add_argument("rows")
    p = sub.add_parser("curr-items")
    p.add_argument("addr")
    args = ap.parse_args()
    return {"load": cmd_load, "steady": cmd_steady, "rate": cmd_rate, "watch": cmd_watch,
            "check": cmd_check, "curr-items": cmd_curr_items, "states": cmd_states,
            "summarize": cmd_summarize, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
PY

ensure_tools memcached:memcached python3:python3
keepcached_bin
warn_if_busy

# fail NAME WHY — something broke in this setting: say so, show the proxy's log, go on with the next.
fail() {
  BROKE=1
  log "ERROR ($1): $2"
  [ -f "$WORK/$1-proxy.log" ] && sed 's/\x1b\[[0-9;]*m//g' "$WORK/$1-proxy.log" | tail -15 | sed 's/^/    /' >&2
  return 1
}

# all_up ADDR — until `stats backends` on the proxy shows every server up (10 s at most).
all_up() {
  local i
  for i in $(seq 1 100); do
    "${WARM[@]}" states "$1" 2>/dev/null | awk '$2 != "up" {bad = 1} END {exit bad || NR == 0}' && return 0
    sleep 0.1
  done
  return 1
}

# curr_items_is ADDR N — until the server's curr_items is at least N (5 s at most); prints it.
curr_items_is() {
  local i n=-1
  for i in $(seq 1 50); do
    n=$("${WARM[@]}" curr-items "$1" 2>/dev/null || echo -1)
    [ "$n" -ge "$2" ] && break
    sleep 0.1
  done
  echo "$n"
}

run_setting() { # SETTING
  local name=$1 p_main p_backup p_proxy toml main_pid backup_pid proxy_pid load_pid watch_pid limits
  local proxy_addr backup_addr log_mark t_base0 t_base1 t_kill t_restart n rc=0
  read -r p_main p_backup p_proxy <<<"$(free_ports 3)"
  proxy_addr=127.0.0.1:$p_proxy backup_addr=127.0.0.1:$p_backup
  log "[$name] memcached main :$p_main, backup :$p_backup; keepcached proxy :$p_proxy"
  # shellcheck disable=SC2046
  spawn "$name-main" memcached $(backend_flags "$p_main")
  main_pid=$LAST_PID
  # shellcheck disable=SC2046
  spawn "$name-backup" memcached $(backend_flags "$p_backup")
  backup_pid=$LAST_PID
  wait_up "$name-main" "$main_pid" "127.0.0.1:$p_main" || { fail "$name" "memcached (main) did not start"; return; }
  wait_up "$name-backup" "$backup_pid" "$backup_addr" || { fail "$name" "memcached (backup) did not start"; return; }

  toml=$WORK/$name.toml
  cat >"$toml" <<TOML
listen = ["$proxy_addr"]

[[pools]]
name = "main"
servers = ["127.0.0.1:$p_main"]

[[pools]]
name = "backup"
servers = ["$backup_addr"]
TOML
  case $name in
    default) ;;
    unlimited) printf '\n[resync]\nwarmup_items_per_sec = 0\nwarmup_bytes_per_sec = 0\n' >>"$toml" ;;
    *) die "unknown setting $name (default, unlimited)" ;;
  esac
  "$OURS" proxy --config "$toml" --print-config >"$WORK/$name-effective.toml" 2>&1 ||
    { cat "$WORK/$name-effective.toml" >&2; die "keepcached proxy rejects $toml"; }
  limits=$(awk -F' = ' '$1 == "warmup_items_per_sec" {i = $2} $1 == "warmup_bytes_per_sec" {b = $2}
    END {if (i == 0 && b == 0) print "unlimited"
      else printf "%s, %s\n", (i == 0 ? "any items/s" : i " items/s"),
        (b == 0 ? "any B/s" : (b % 1048576 ? b " B/s" : b / 1048576 " MiB/s"))}' "$WORK/$name-effective.toml")
  CONCURRENCY=$(awk -F' = ' '$1 == "concurrency" {print $2}' "$WORK/$name-effective.toml")
  log "[$name] effective [resync]: $(sed -n '/^\[resync\]/,/^$/p' "$WORK/$name-effective.toml" | tail -n +2 | tr '\n' ' ')"
  # -D: stay in the foreground, so that we keep its pid. NO_COLOR: a plain log to read.
  spawn "$name-proxy" env NO_COLOR=1 "$OURS" proxy --config "$toml" -D -u root
  proxy_pid=$LAST_PID
  wait_up "$name-proxy" "$proxy_pid" "$proxy_addr" || { fail "$name" "keepcached proxy did not start"; return; }
  all_up "$proxy_addr" || { fail "$name" "the proxy does not show both servers up"; return; }

  log "[$name] loading $ITEMS items of $VALUE_SIZE bytes through the proxy"
  run_fg "${WARM[@]}" load "$proxy_addr" --prefix "$PREFIX" --count "$ITEMS" --value-size "$VALUE_SIZE" \
    --conns 16 >"$WORK/$name-load.json" 2>&1 || { fail "$name" "load failed: $(cat "$WORK/$name-load.json")"; return; }
  log "[$name]   $(cat "$WORK/$name-load.json")"
  n=$(curr_items_is "127.0.0.1:$p_main" "$ITEMS")
  [ "$n" -ge "$ITEMS" ] || { fail "$name" "main holds $n items after the load, not $ITEMS"; return; }
  n=$(curr_items_is "$backup_addr" "$ITEMS")
  [ "$n" -ge "$ITEMS" ] || { fail "$name" "backup holds $n items after the load, not $ITEMS"; return; }

  log "[$name] client load: $LOAD_CONNS connections, 90% get / 10% set; ${BASELINE_SECS}s before the kill"
  spawn "$name-clients" "${WARM[@]}" steady "$proxy_addr" --prefix "$PREFIX" --keys "$ITEMS" \
    --value-size "$VALUE_SIZE" --conns "$LOAD_CONNS" --procs "$LOAD_PROCS" --out "$WORK/$name-samples"
  load_pid=$LAST_PID
  sleep 1 # connect and settle
  t_base0=$(now)
  sleep "$BASELINE_SECS"
  spawn "$name-watch" "${WARM[@]}" watch "$proxy_addr" "backup/$backup_addr" --timeout "$WARMUP_TIMEOUT" \
    --json "$WORK/$name-watch.json"
  watch_pid=$LAST_PID
  sleep 0.3
  kill -0 "$load_pid" 2>/dev/null || { fail "$name" "the client load stopped: $(tail -3 "$WORK/$name-clients.log")"; return; }
  log_mark=$(wc -l <"$WORK/$name-proxy.log")
  t_base1=$(now)
  t_kill=$t_base1
  log "[$name] killing the backup memcached (pid $backup_pid), starting an empty one on :$p_backup"
  forget_pid "$backup_pid"
  # shellcheck disable=SC2046
  spawn "$name-backup2" memcached $(backend_flags "$p_backup")
  backup_pid=$LAST_PID
  t_restart=$(now)
  wait_up "$name-backup2" "$backup_pid" "$backup_addr" || { fail "$name" "the new backup memcached did not start"; return; }
  log "[$name] waiting for the backup to be up again (at most ${WARMUP_TIMEOUT}s)"
  CHILD=$watch_pid
  wait "$watch_pid" || rc=$?
  CHILD=
  forget_pid "$watch_pid"
  sleep 1 # the load's samples must cover the end of the warm-up
  forget_pid "$load_pid"
  tail -n +"$((log_mark + 1))" "$WORK/$name-proxy.log" | sed 's/\x1b\[[0-9;]*m//g' >"$WORK/$name-after-kill.log"
  grep -E 'warm-up|listed fewer' "$WORK/$name-after-kill.log" | sed 's/^/    /' >&2
  for p in "$main_pid" "$backup_pid" "$proxy_pid"; do
    kill -0 "$p" 2>/dev/null || fail "$name" "a server or the proxy died (pid $p)"
  done
  if [ "$rc" != 0 ]; then
    fail "$name" "the backup was not up again within ${WARMUP_TIMEOUT}s (watch exit $rc): $(tail -2 "$WORK/$name-watch.log")"
    [ -f "$WORK/$name-watch.json" ] || return
  fi

  log "[$name] checking the new backup: every key, directly"
  run_fg "${WARM[@]}" check "$backup_addr" --prefix "$PREFIX" --count "$ITEMS" --value-size "$VALUE_SIZE" \
    >"$WORK/$name-check.json" || { fail "$name" "the check failed: $(cat "$WORK/$name-check.json")"; return; }
  "${WARM[@]}" summarize --setting "$name" --limits "$limits" --watch "$WORK/$name-watch.json" \
    --log "$WORK/$name-after-kill.log" --samples "$WORK/$name-samples" --check "$WORK/$name-check.json" \
    --load "$WORK/$name-load.json" --t-base0 "$t_base0" --t-base1 "$t_base1" --t-kill "$t_kill" \
    --t-restart "$t_restart" --items "$ITEMS" --value-size "$VALUE_SIZE" --conns "$LOAD_CONNS" \
    --backup-curr "$("${WARM[@]}" curr-items "$backup_addr")" \
    --main-curr "$("${WARM[@]}" curr-items "127.0.0.1:$p_main")" >>"$RESULTS" ||
    { fail "$name" "no summary"; return; }
  python3 - "$RESULTS" "$ITEMS" <<'CHECK' || BROKE=1
import json, sys
row = json.loads(open(sys.argv[1]).read().splitlines()[-1])
items, bad = int(sys.argv[2]), []
if row["check"]["found"] < items * 0.999 or row["check"]["wrong"]:
    bad.append("the new backup holds %d of %d keys (%d wrong)" % (row["check"]["found"], items, row["check"]["wrong"]))
for phase in ("before", "during", "outage"):
    r = row.get(phase) or {}
    if r.get("misses") or r.get("wrong"):
        bad.append("the clients read %s misses and %s wrong values (%s)" % (r["misses"], r["wrong"], phase))
if not row.get("warmup_finished"):
    bad.append("no `warm-up finished` in the proxy's log")
for b in bad:
    print("[bench] ERROR (%s): %s" % (row["setting"], b), file=sys.stderr)
sys.exit(1 if bad else 0)
CHECK
  for p in "$proxy_pid" "$main_pid" "$backup_pid"; do forget_pid "$p"; done
}

log "keepcached: $OURS"
log "memcached:  $(memcached -V) ($(backend_flags PORT))"
log "machine:    $(nproc) CPUs, ${BUSY_BEFORE}% busy before the start; the client load shares them"
for setting in $SETTINGS; do
  run_setting "$setting"
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done # what a failed setting left running
  PIDS=()
done

echo
echo "keepcached proxy warm-up of a returning backup: memcached $(memcached -V | awk '{print $2}')" \
  "(-m $MEMORY_MB -t $BACKEND_THREADS) x 2 (pools main, backup), $ITEMS items of $VALUE_SIZE bytes"
echo "Machine: $(nproc) CPUs, ${BUSY_BEFORE}% busy before the start, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Warm-up limits as \`keepcached proxy --print-config\` shows them ([resync] warmup_items_per_sec," \
  "warmup_bytes_per_sec); [resync] concurrency = ${CONCURRENCY:-?}"
echo "Client load: python3, $LOAD_PROCS process(es), $LOAD_CONNS connections, one request at a time each;" \
  "'before' = the ${BASELINE_SECS}s before the kill, 'during' = while \`stats backends\` showed state=warming"
echo
"${WARM[@]}" report "$RESULTS"
if [ "$BROKE" != 0 ]; then
  echo
  echo "Something broke during the run (see the errors above); exit 1."
  KEEP_WORK=${KEEP_WORK:-1}
  exit 1
fi
exit 0
