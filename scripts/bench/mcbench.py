#!/usr/bin/env python3
"""Small memcached load helper for scripts/bench-*.sh (Python 3 standard library only).

Subcommands (HOST:PORT is a memcached text-protocol endpoint):
  ports N                 print N free TCP ports on 127.0.0.1
  wait HOST:PORT [SECS]   wait until `get` answers (exit 1 on timeout)
  stats HOST:PORT         print `stats` as NAME VALUE lines
  load HOST:PORT ...      store COUNT items with pipelined `noreply` sets, then check them;
                          prints one JSON line {"items", "curr_items", "load_secs", and with
                          --pid the server's VmRSS before and after: "rss_start_kb", "rss_kb"}
  pipe HOST:PORT ...      closed-loop pipelined load: CONNS connections, each sending DEPTH
                          requests per batch (get/set mix) and waiting for the whole batch;
                          every response is checked byte for byte; prints one JSON line
                          with ops, ops/s and exact per-batch latency percentiles.
  replay HOST:PORT ...    the seeded Zipf replay of the hit-ratio benchmark: a get of each key of the
                          sequence, and a set of every key that missed (a cache-aside client);
                          prints one JSON line with the hit ratio after the warm-up part
  fixed HOST:PORT ...     a fixed, seeded sequence of pipelined requests (the same for every run
                          with the same arguments), for instruction counts under callgrind
  parse-memaslap FILE     memcaslap's final report (run with -S) -> one JSON row: ops/s, avg,
                          p50/p99 estimated from its log2 latency histogram, get_misses
  parse-memtier FILE      memtier_benchmark --json-out-file -> one JSON row
  annotate FILE KEY VAL   the JSON row in FILE with KEY set
  report-server ROWS MEM  the tables and PASS/FAIL lines of scripts/bench-server.sh
  report-proxy ROWS       the same for scripts/bench-proxy.sh

Values are VALUE_SIZE bytes of a fixed pattern, so every response is known in advance:
a get must answer `VALUE key 0 N` + value + `END` (a miss is an error here: `pipe`
expects the keys to be loaded first, with `load` and the same --prefix/--keys).

scripts/bench-warmup.sh's helper imports the functions above the subcommands (connect,
key_of, value_of, recv_until, stats, split_threads, random_request).
"""

import argparse
import bisect
import heapq
import itertools
import json
import multiprocessing
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return (host or "127.0.0.1", int(port))


KEY_FORMAT = "%010d"  # --no-pad switches to "%d" (memtier_benchmark's key format)


def key_of(prefix, i):
    return prefix.encode() + (KEY_FORMAT % i).encode()


def tags(args):
    out = {k: v for k, v in (("point", getattr(args, "point", None)), ("side", getattr(args, "side", None)))
           if v is not None}
    other = getattr(args, "other_cpu", None)
    if other not in (None, "", "null"):
        out["other_cpu_pct"] = float(other)
    return out


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def value_of(size):
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return (pattern * (size // len(pattern) + 1))[:size]


def recv_until(sock, terminator, limit=1 << 20):
    data = bytearray()
    while not data.endswith(terminator):
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("connection closed; got %r" % bytes(data[-200:]))
        data += chunk
        if len(data) > limit:
            raise ValueError("reply too long")
    return bytes(data)


def connect(addr, timeout):
    """A TCP connection with Nagle's algorithm off: each request leaves at once."""
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def stats(addr, sub=b""):
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"stats" + ((b" " + sub) if sub else b"") + b"\r\n")
        data = recv_until(s, b"END\r\n")
    out = {}
    for line in data.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == b"STAT":
            out[parts[1].decode()] = parts[2].decode()
    return out


def split_threads(count, conns, worker):
    """Runs worker(lo, hi) on `conns` threads, which share range(count) in equal slices; returns
    when all are done."""
    step = (count + conns - 1) // conns
    threads = [threading.Thread(target=worker, args=(i * step, min(count, (i + 1) * step)))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def random_request(rng, prefix, keys, set_ratio, value):
    """A set (with probability set_ratio) or a get of a random one of `keys` keys, whose values
    are all `value`: (request, is_get, the reply expected, a hit for a get)."""
    k = key_of(prefix, rng.randrange(keys))
    if rng.random() < set_ratio:
        return b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value), False, b"STORED\r\n"
    return b"get %s\r\n" % k, True, b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(value), value)


# ---------------------------------------------------------------- ports / wait / stats

def cmd_ports(args):
    socks = []
    for _ in range(args.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_wait(args):
    addr = parse_addr(args.addr)
    deadline = time.time() + args.secs
    while time.time() < deadline:
        try:
            # `get` rather than `version`: nutcracker answers only keyed commands
            with socket.create_connection(addr, timeout=1) as s:
                s.sendall(b"get bench:probe\r\n")
                if recv_until(s, b"END\r\n"):
                    return 0
        except (OSError, ValueError, ConnectionError):
            pass
        time.sleep(0.1)
    print("no answer to `get` on %s:%d within %.0fs" % (addr + (args.secs,)), file=sys.stderr)
    return 1


def cmd_stats(args):
    for k, v in stats(parse_addr(args.addr)).items():
        print(k, v)


# ---------------------------------------------------------------- load

def cmd_load(args):
    addr = parse_addr(args.addr)
    value = value_of(args.value_size)
    chunk = 2000
    rss_start = rss_kb(args.pid) if args.pid else None
    t0 = time.time()
    errors = []

    def worker(lo, hi):
        s = connect(addr, 60)
        got = bytearray()

        # A reader thread drains whatever the server says (nothing, with noreply, unless
        # something is wrong) so that an error stream can never deadlock the writer.
        def reader():
            while True:
                try:
                    d = s.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                got.extend(d)
                if b"VERSION" in got:
                    return

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        head = b" 0 0 %d noreply\r\n" % len(value)
        tail = b"\r\n"
        for start in range(lo, hi, chunk):
            end = min(hi, start + chunk)
            s.sendall(b"".join(b"set " + key_of(args.prefix, i) + head + value + tail
                               for i in range(start, end)))
        s.sendall(b"version\r\n")  # processed in order: its answer means all sets were
        rt.join(120)
        s.close()
        extra = bytes(got).split(b"VERSION")[0]
        if extra or b"VERSION" not in got:
            errors.append(bytes(got[:300]))

    split_threads(args.count, args.conns, worker)
    secs = time.time() - t0

    # Check: curr_items, and a sample of gets (first, last and random keys) with exact bytes.
    st = stats(addr)
    bad = 0
    rng = random.Random(1)
    sample = [0, args.count - 1] + [rng.randrange(args.count) for _ in range(998)]
    with socket.create_connection(addr, timeout=30) as s:
        for i in range(0, len(sample), 100):
            keys = [key_of(args.prefix, k) for k in sample[i:i + 100]]
            s.sendall(b"get " + b" ".join(keys) + b"\r\n")
            data = recv_until(s, b"END\r\n")
            want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value) for k in keys)
            if data != want + b"END\r\n":
                bad += 1
    if args.pid:
        time.sleep(1.0)  # let the server settle before reading its RSS
    out = dict(tags(args))
    out.update({
        "items": args.count,
        "key_len": len(key_of(args.prefix, args.count - 1)),
        "value_size": args.value_size,
        "curr_items": int(st.get("curr_items", -1)),
        "evictions": int(st.get("evictions", -1)),
        "load_secs": round(secs, 2),
        "sample_get_batches_bad": bad,
        "errors": [e.decode("latin-1") for e in errors],
    })
    if args.pid:
        out["rss_start_kb"], out["rss_kb"] = rss_start, rss_kb(args.pid)
    print(json.dumps(out))
    ok = not errors and (args.no_exact or (bad == 0 and out["curr_items"] == args.count))
    return 0 if ok else 1


# ---------------------------------------------------------------- pipe

def build_batches(args, seed):
    rng = random.Random(seed)
    value = value_of(args.value_size)
    batches = []
    for _ in range(args.batches):
        reqs = [random_request(rng, args.prefix, args.keys, args.set_ratio, value) for _ in range(args.depth)]
        batches.append((b"".join(r[0] for r in reqs), b"".join(r[2] for r in reqs)))
    return batches


def first_difference(got, want):
    j = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
    return "unexpected reply at byte %d: got %r, want %r" % (j, got[max(0, j - 40):j + 60],
                                                             want[max(0, j - 40):j + 60])


class Conn:
    __slots__ = ("sock", "out", "want", "buf", "mv", "got", "t0", "bi", "dead")


def pipe_worker(args, addr, nconns, seed, start_at, result_q):
    try:
        pipe_run(args, addr, nconns, seed, start_at, result_q)
    except Exception as e:  # report, so that the parent does not wait for nothing
        result_q.put({"ops": 0, "elapsed": 0, "lat": [], "errors": ["client: %r" % e]})


def pipe_run(args, addr, nconns, seed, start_at, result_q):
    batches = build_batches(args, seed)
    maxlen = max(len(r) for _, r in batches)
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(nconns):
        s = connect(addr, 10)
        s.setblocking(False)
        c = Conn()
        c.sock, c.buf = s, bytearray(maxlen)
        c.mv = memoryview(c.buf)
        c.bi, c.dead, c.out = (i * 7919) % len(batches), False, b""
        conns.append(c)
    lat = []  # per-batch latency, ns
    ops = 0
    errors = []
    now = time.time()
    if start_at > now:
        time.sleep(start_at - now)
    t_start = time.perf_counter_ns()
    t_end = t_start + int(args.secs * 1e9)
    depth = args.depth

    def send_next(c):
        req, want = batches[c.bi]
        c.bi = (c.bi + 1) % len(batches)
        c.want, c.got = want, 0
        c.t0 = time.perf_counter_ns()
        try:
            n = c.sock.send(req)
        except BlockingIOError:
            n = 0
        c.out = req[n:]
        sel.register(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0), c)

    for c in conns:
        send_next(c)
    active = len(conns)
    hard_end = t_end + int(5e9)  # grace for batches in flight when time is up
    while active:
        now = time.perf_counter_ns()
        if now > hard_end:
            errors.append("%d batches unanswered 5s after the end" % active)
            stuck = next((c for c in conns if sel.get_map() and c.sock in sel.get_map() and c.got), None)
            if stuck is not None:
                errors.append(first_difference(bytes(stuck.buf[:stuck.got]), stuck.want))
            break
        for key, ev in sel.select(timeout=0.5):
            c = key.data
            if ev & selectors.EVENT_WRITE and c.out:
                try:
                    n = c.sock.send(c.out)
                except BlockingIOError:
                    n = 0
                c.out = c.out[n:]
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if ev & selectors.EVENT_READ:
                need = len(c.want) - c.got
                try:
                    n = c.sock.recv_into(c.mv[c.got:c.got + need], need)
                except BlockingIOError:
                    continue
                except OSError as e:
                    n = 0
                    errors.append("read: %s" % e)
                if n == 0:
                    errors.append("connection closed by server")
                    sel.unregister(c.sock)
                    active -= 1
                    continue
                c.got += n
                if c.got < len(c.want):
                    continue
                t1 = time.perf_counter_ns()
                sel.unregister(c.sock)
                if c.buf[:c.got] != c.want:
                    errors.append(first_difference(bytes(c.buf[:c.got]), c.want))
                    active -= 1
                    continue
                if t1 <= t_end:
                    ops += depth
                    lat.append(t1 - c.t0)
                    send_next(c)
                else:
                    active -= 1
    elapsed = (min(time.perf_counter_ns(), t_end) - t_start) / 1e9
    for c in conns:
        c.sock.close()
    result_q.put({"ops": ops, "elapsed": elapsed, "lat": lat, "errors": errors[:5]})


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals))) - 1))
    return sorted_vals[i]


def cmd_pipe(args):
    addr = parse_addr(args.addr)
    procs = max(1, min(args.procs, args.conns))
    q = multiprocessing.Queue()
    start_at = time.time() + 0.5 + 0.005 * args.conns
    workers = []
    per = [args.conns // procs + (1 if i < args.conns % procs else 0) for i in range(procs)]

    def stop(signum, _frame):
        for w in workers:
            w.terminate()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(procs):
        p = multiprocessing.Process(target=pipe_worker, args=(args, addr, per[i], 1000 + i, start_at, q))
        p.start()
        workers.append(p)
    results = [q.get(timeout=args.secs + 60) for _ in workers]
    for p in workers:
        p.join(10)
    lat = sorted(x for r in results for x in r["lat"])
    ops = sum(r["ops"] for r in results)
    elapsed = max(r["elapsed"] for r in results) or 1.0
    us = lambda ns: None if ns is None else round(ns / 1000.0, 1)
    out = dict(tags(args))
    out.update({
        "ops": ops,
        "ops_per_sec": round(ops / elapsed),
        "secs": round(elapsed, 2),
        "conns": args.conns,
        "depth": args.depth,
        "batches": len(lat),
        # latency of a whole pipelined batch (send of DEPTH requests -> last reply byte)
        "p50_us": us(percentile(lat, 50)),
        "p99_us": us(percentile(lat, 99)),
        "avg_us": us(sum(lat) / len(lat)) if lat else None,
        "errors": [e for r in results for e in r["errors"]],
    })
    print(json.dumps(out))
    return 1 if out["errors"] else 0



# ---------------------------------------------------------------- replay (hit ratio)

def zipf_sequence(keys, alpha, requests, scan, seed):
    """`requests` key numbers drawn from Zipf(alpha) over `keys` keys (rank r has weight
    1/r^alpha; ranks are mapped to key numbers by a seeded shuffle), with a share `scan` of the
    requests replaced by keys never requested before or after (numbers from `keys` up)."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (r ** alpha) for r in range(1, keys + 1)))
    rank_to_key = list(range(keys))
    rng.shuffle(rank_to_key)
    total = cum[-1]
    seq = []
    fresh = keys
    for _ in range(requests):
        if scan and rng.random() < scan:
            seq.append(fresh)
            fresh += 1
        else:
            seq.append(rank_to_key[bisect.bisect_left(cum, rng.random() * total)])
    return seq


def perfect_lfu(seq, capacity, warm):
    """The hit ratio, after `warm` requests, of a cache of `capacity` keys that knows how often
    every key was requested so far (evicted or never held ones too) and holds the most requested
    ones: a new key comes in when it was requested at least as often as the least requested key
    held, which leaves (the older request first on a tie). When requests are independent draws,
    as in this replay, the best a policy can do is keep the most probable keys, and past counts
    are all it can know of them: this says what a better policy could still gain at that many
    items."""
    count, last, heap = {}, {}, []
    hits = 0
    for t, k in enumerate(seq):
        c = count.get(k, 0) + 1
        count[k] = c
        hit = k in last
        if hit or len(last) < capacity:
            last[k] = t
            heapq.heappush(heap, (c, t, k))
        else:
            # Entries go stale when their key is requested again or leaves; drop those first.
            while last.get(heap[0][2]) != heap[0][1]:
                heapq.heappop(heap)
            if c >= heap[0][0]:
                del last[heapq.heappop(heap)[2]]
                last[k] = t
                heapq.heappush(heap, (c, t, k))
        if len(heap) > 4 * capacity + 1024:
            heap = [(count[k], t, k) for k, t in last.items()]
            heapq.heapify(heap)
        if t >= warm:
            hits += hit
    return hits / float(max(1, len(seq) - warm))


def parse_get_replies(data, n):
    """`n` replies to single-key gets -> list of hit flags, or None while incomplete."""
    hits = []
    pos = 0
    for _ in range(n):
        if data.startswith(b"END\r\n", pos):
            hits.append(False)
            pos += 5
            continue
        if not data.startswith(b"VALUE ", pos):
            if len(data) - pos < 6:
                return None
            raise ValueError("unexpected reply %r" % bytes(data[pos:pos + 80]))
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        length = int(data[pos:eol].split()[3])
        pos = eol + 2 + length + 2 + 5
        if pos > len(data):
            return None
        hits.append(True)
    return hits


def cmd_replay(args):
    addr = parse_addr(args.addr)
    seq = zipf_sequence(args.keys, args.alpha, args.requests, args.scan, args.seed)
    value = value_of(args.value_size)
    set_tail = b" 0 0 %d noreply\r\n" % len(value) + value + b"\r\n"
    key = lambda k: b"%s%012d" % (b"zipfkey:" if k < args.keys else b"scankey:", k)
    warm = int(len(seq) * args.warmup)
    # The hit ratio of an unbounded cache: a measured get can only hit if its key came before.
    # No policy and no memory size does better, so it says how much room a replay leaves.
    seen = set(seq[:warm])
    ceiling = 0
    for k in seq[warm:]:
        ceiling += k in seen
        seen.add(k)
    del seen
    hits = gets = 0
    t0 = time.time()
    with connect(addr, 60) as s:
        for start in range(0, len(seq), args.batch):
            batch = [key(k) for k in seq[start:start + args.batch]]
            s.sendall(b"".join(b"get " + k + b"\r\n" for k in batch))
            data = bytearray()
            flags = None
            while flags is None:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                data += chunk
                if data.endswith(b"END\r\n"):
                    flags = parse_get_replies(data, len(batch))
            missed = [k for k, hit in zip(batch, flags) if not hit]
            if missed:
                s.sendall(b"".join(b"set " + k + set_tail for k in missed))
            for i, hit in enumerate(flags):
                if start + i >= warm:
                    gets += 1
                    hits += hit
        s.sendall(b"version\r\n")
        recv_until(s, b"\r\n")
    st = stats(addr)
    out = dict(tags(args))
    out.update({
        "scenario": args.scenario or "alpha %g%s" % (args.alpha, " + %d%% scan" % round(100 * args.scan)
                                                     if args.scan else ""),
        "alpha": args.alpha, "scan": args.scan, "keys": args.keys, "requests": args.requests,
        "seed": args.seed, "warmup": args.warmup, "measured_gets": gets, "hits": hits,
        "hit_ratio": hits / float(max(1, gets)),
        "ceiling": ceiling / float(max(1, len(seq) - warm)),
        "perfect_lfu": (perfect_lfu(seq, int(st["curr_items"]), warm)
                        if args.perfect_lfu and int(st.get("curr_items", 0)) > 0 else None),
        "curr_items": int(st.get("curr_items", -1)), "evictions": int(st.get("evictions", -1)),
        "secs": round(time.time() - t0, 1),
    })
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- fixed (instruction counts)

def cmd_fixed(args):
    """Sends `batches` batches of `depth` requests (a seeded get/set mix over `keys` loaded keys,
    gets as multi-gets of `multiget` keys when > 1), waiting for each batch's replies and
    checking them byte for byte."""
    addr = parse_addr(args.addr)
    rng = random.Random(args.seed)
    value = value_of(args.value_size)
    ops = 0
    with connect(addr, 120) as s:
        for _ in range(args.batches):
            reqs, want = [], []
            for _ in range(args.depth):
                if rng.random() < args.set_ratio:
                    k = key_of(args.prefix, rng.randrange(args.keys))
                    reqs.append(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value))
                    want.append(b"STORED\r\n")
                    ops += 1
                else:
                    ks = [key_of(args.prefix, rng.randrange(args.keys)) for _ in range(args.multiget)]
                    reqs.append(b"get " + b" ".join(ks) + b"\r\n")
                    want.append(b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value) for k in ks)
                                + b"END\r\n")
                    ops += len(ks)
            want = b"".join(want)
            s.sendall(b"".join(reqs))
            got = bytearray()
            while len(got) < len(want):
                chunk = s.recv(len(want) - len(got))
                if not chunk:
                    raise ConnectionError("server closed the connection")
                got += chunk
            if got != want:
                print(first_difference(bytes(got), want), file=sys.stderr)
                return 1
    print(json.dumps({"ops": ops, "batches": args.batches}))
    return 0


# ---------------------------------------------------------------- memaslap / memtier output

def log2_percentile(dist, p):
    """memaslap's "Log2 Dist" bucket i counts latencies in (2^(i-1), 2^i] us (bucket 0: <= 1 us).
    Returns (estimate, bucket upper bound): linear interpolation inside the bucket."""
    total = sum(dist.values())
    if not total:
        return None, None
    target = p / 100.0 * total
    cum = 0
    for i in sorted(dist):
        n = dist[i]
        if n and cum + n >= target:
            hi = 1 << i
            lo = 0 if i == 0 else hi >> 1
            return round(lo + (hi - lo) * (target - cum) / n), hi
        cum += n
    i = max(dist)
    return 1 << i, 1 << i


def parse_memaslap_text(text):
    """Final report of `memcaslap ... -S SECS`: the 'Total Statistics (N events)' block
    (Min/Max/Avg/Log2 Dist), get_misses, and the last line 'Run time: ..s Ops: N TPS: N'."""
    out = {}
    lines = text.splitlines()
    for line in lines:
        if line.startswith("Run time:"):
            f = line.split()
            out["secs"] = float(f[2].rstrip("s"))
            out["ops"] = int(f[4])
            out["ops_per_sec"] = int(f[6])
        elif line.startswith("get_misses:"):
            out["get_misses"] = int(line.split()[1])
        elif line.startswith("cmd_get:"):
            out["cmd_get"] = int(line.split()[1])
        elif line.startswith("cmd_set:"):
            out["cmd_set"] = int(line.split()[1])
    # the final (not periodic) "Total Statistics (N events)" block
    start = None
    for i, line in enumerate(lines):
        if line.startswith("Total Statistics ("):
            start = i
    if start is not None:
        dist = {}
        in_dist = False
        for line in lines[start + 1:]:
            t = line.strip()
            if not t:
                if in_dist:
                    break
                continue
            if t.startswith("Log2 Dist:"):
                in_dist = True
                continue
            if in_dist:
                head, _, rest = t.partition(":")
                base = int(head)
                for j, n in enumerate(rest.split()):
                    dist[base + j] = int(n)
            else:
                k, _, v = t.partition(":")
                if k in ("Min", "Max", "Avg"):
                    out[k.lower() + "_us"] = float(v)
        out["events"] = sum(dist.values())
        for p in (50, 99):
            est, bound = log2_percentile(dist, p)
            out["p%d_us" % p] = est
            out["p%d_bound_us" % p] = bound
    return out


def tail_of(path, n=5):
    try:
        return " | ".join(open(path, errors="replace").read().strip().splitlines()[-n:])
    except OSError:
        return "(no output)"


def cmd_parse_memaslap(args):
    out = dict(tags(args))
    out.update(parse_memaslap_text(open(args.file, errors="replace").read()))
    out["misses"] = out.get("get_misses", 0)
    out["errors"] = []
    if args.rc or "ops_per_sec" not in out:
        out["errors"].append("memcaslap exit %d: %s" % (args.rc, tail_of(args.file)))
        out.setdefault("ops_per_sec", None)
    print(json.dumps(out))
    return 0


def cmd_parse_memtier(args):
    """memtier_benchmark --json-out-file: 'ALL STATS' -> 'Totals'. Latencies are in ms there."""
    out = dict(tags(args))
    out["errors"] = []
    try:
        doc = json.load(open(args.file))
    except (OSError, ValueError) as e:
        doc = {}
        out["errors"].append("memtier_benchmark exit %d: %s (%s)" % (args.rc, e, tail_of(args.log or args.file)))
    tot = doc.get("ALL STATS", {}).get("Totals", {})
    out["ops_per_sec"] = round(float(tot.get("Ops/sec", 0))) or None
    out["misses"] = None  # memtier reports misses per second only
    avg = tot.get("Average Latency", tot.get("Latency"))
    if avg is not None:
        out["avg_us"] = round(float(avg) * 1000, 1)
    pct = tot.get("Percentile Latencies", {})
    for p, names in ((50, ("p50.00", "p50")), (99, ("p99.00", "p99"))):
        for n in names:
            if n in pct:
                out["p%d_us" % p] = round(float(pct[n]) * 1000, 1)
                break
    if args.rc and not out["errors"]:
        out["errors"].append("memtier_benchmark exit %d: %s" % (args.rc, tail_of(args.log or args.file)))
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- reports

def cmd_annotate(args):
    with open(args.file) as f:
        text = f.read().strip()
    row = json.loads(text) if text else {"ops_per_sec": None, "errors": ["no output from the client"]}
    try:
        row[args.key] = float(args.value)
    except ValueError:
        pass
    print(json.dumps(row))


def read_rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fmt_num(x, nd=0):
    if x is None:
        return "-"
    return ("{:,.%df}" % nd).format(x)


def fmt_pct(share):
    return "-" if share is None else "%.0f%%" % (100 * share)


def fmt_lat(row, p):
    v = row.get("p%d_us" % p)
    if v is None:
        return "-"
    b = row.get("p%d_bound_us" % p)
    return ("~%s (<=%s)" % (fmt_num(v), fmt_num(b))) if b else fmt_num(v, 1)


def aggregate(rows):
    """rows of one (point, side) over rounds -> one row (means)."""
    out = dict(rows[0])
    for k in ("ops_per_sec", "avg_us", "p50_us", "p99_us", "other_cpu_pct", "path_cpu_us", "machine_cpu_us",
              "idle_pct"):
        out[k] = mean([r.get(k) for r in rows])
    for k in ("p50_bound_us", "p99_bound_us"):
        vals = [r.get(k) for r in rows if r.get(k)]
        out[k] = max(vals) if vals else None
    out["misses"] = sum(r.get("misses") or 0 for r in rows)
    out["errors"] = [e for r in rows for e in (r.get("errors") or [])]
    out["rounds"] = len(rows)
    return out


def busy_note(agg):
    worst = max((r.get("other_cpu_pct") or 0) for r in agg.values())
    if worst > 10:
        print("  WARNING: processes that are not part of the benchmark used up to %.0f%% of the CPUs during"
              " a run (column other CPU%%): those figures are disturbed; rerun on a quiet machine or with"
              " ROUNDS=2+" % worst)


def table(headers, body):
    w = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i])
                                   for i, c in enumerate(cells))
    print(line(headers))
    print("  ".join("-" * x for x in w))
    for b in body:
        print(line(b))


def grouped(rows):
    points, sides, by = [], [], {}
    for r in rows:
        if r["point"] not in points:
            points.append(r["point"])
        if r["side"] not in sides:
            sides.append(r["side"])
        by.setdefault((r["point"], r["side"]), []).append(r)
    return points, sides, {k: aggregate(v) for k, v in by.items()}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def verdict_line(ok, text):
    print("  %-4s %s" % ("PASS" if ok else "FAIL", text))


def cmd_report_server(args):
    """Issue 14's targets: throughput >= 1.2x memcached with p99 no worse (server CPU per op
    beside it), RSS <= 0.8x, items held >= 1.25x, hit ratio >= 1.05x (1.10x with scans)."""
    rows = read_rows(args.throughput) if os.path.exists(args.throughput) else []
    mem = read_rows(args.memory) if args.memory and os.path.exists(args.memory) else []
    held = read_rows(args.held) if args.held and os.path.exists(args.held) else []
    hits = read_rows(args.hits) if args.hits and os.path.exists(args.hits) else []
    cg = read_rows(args.callgrind) if args.callgrind and os.path.exists(args.callgrind) else []
    verdicts = []
    if rows:
        for r in rows:
            cpu, ops = r.get("server_cpu_pct"), r.get("ops_per_sec")
            r["cpu_us_per_op"] = cpu * 1e4 / ops if cpu is not None and ops else None
            sys_pct = r.get("server_sys_pct")
            r["kernel_share"] = sys_pct / cpu if sys_pct is not None and cpu else None
        points, by = [], {}
        for r in rows:
            if r["point"] not in points:
                points.append(r["point"])
            by.setdefault((r["point"], r["side"]), []).append(r)
        agg = {}
        for k, rs in by.items():
            a = {key: median([r.get(key) for r in rs]) for key in
                 ("ops_per_sec", "p99_us", "cpu_us_per_op", "kernel_share", "other_cpu_pct")}
            a["p99_bound_us"] = max([r.get("p99_bound_us") or 0 for r in rs]) or None
            a["errors"] = [e for r in rs for e in (r.get("errors") or [])]
            a["misses"] = sum(r.get("misses") or 0 for r in rs)
            a["rounds"] = len(rs)
            agg[k] = a
        body = []
        for pt in points:
            o, m = agg.get((pt, "keepcached")), agg.get((pt, "memcached"))
            if not o or not m:
                verdicts.append((False, "throughput %s: no figure for both sides" % pt))
                continue
            tput = o["ops_per_sec"] / m["ops_per_sec"] if o["ops_per_sec"] and m["ops_per_sec"] else None
            cpu = (m["cpu_us_per_op"] / o["cpu_us_per_op"]
                   if o["cpu_us_per_op"] and m["cpu_us_per_op"] else None)
            p99_ok = o["p99_us"] is not None and m["p99_us"] is not None and o["p99_us"] <= m["p99_us"]
            body.append([pt, fmt_num(o["ops_per_sec"]), fmt_num(m["ops_per_sec"]),
                         "-" if tput is None else "%.2f" % tput, fmt_lat(o, 99), fmt_lat(m, 99),
                         fmt_num(o["cpu_us_per_op"], 2), fmt_num(m["cpu_us_per_op"], 2),
                         "-" if cpu is None else "%.2f" % cpu,
                         "%s/%s" % (fmt_pct(o["kernel_share"]), fmt_pct(m["kernel_share"])),
                         len(o["errors"]),
                         "%s/%s" % (fmt_num(o["other_cpu_pct"]), fmt_num(m["other_cpu_pct"]))])
            verdicts.append((tput is not None and tput >= 1.2 and p99_ok and not o["errors"],
                             "throughput %s: %sx >= 1.20x, p99 %s <= %s us%s" % (
                                 pt, "-" if tput is None else "%.2f" % tput, fmt_num(o["p99_us"]),
                                 fmt_num(m["p99_us"]), "" if not o["errors"] else ", and no errors")))
            verdicts.append((cpu is not None and cpu >= 1.2,
                             "server CPU/op %s: memcached/ours %s >= 1.20" % (
                                 pt, "-" if cpu is None else "%.2f" % cpu)))
        print("Throughput (%s; medians of %d rounds)" % (args.load, max(a["rounds"] for a in agg.values())))
        table(["point", "ours ops/s", "memcached", "ratio", "ours p99 us", "memcached p99",
               "ours CPU us/op", "memcached", "CPU ratio", "kernel share", "errors", "other CPU%"], body)
        worst = max((a.get("other_cpu_pct") or 0) for a in agg.values())
        if worst > 10:
            print("  WARNING: processes outside the benchmark used up to %.0f%% of the CPUs during a run: the"
                  " ops/s and p99 figures are disturbed; CPU us/op (server process CPU per operation) holds up"
                  " better" % worst)
        for (pt, side), a in agg.items():
            for e in a["errors"][:3]:
                print("  error %s/%s: %s" % (pt, side, e))
        print("  (p99 ~X (<=B): estimated from memcaslap's log2 latency histogram, whose bucket ends at B;"
              " pipeN: latency of a whole batch; CPU ratio = memcached's CPU per op / ours;"
              " kernel share: the part of each server's CPU spent in the kernel (its stime), ours/memcached;"
              " a server cuts it only by making fewer system calls)")
        print()
    if mem:
        by = {m["side"]: m for m in mem}
        body = []
        for side in ("keepcached", "memcached"):
            m = by.get(side)
            if m:
                per = (m["rss_kb"] - m["rss_start_kb"]) * 1024.0 / max(1, m["curr_items"])
                body.append([side, fmt_num(m["curr_items"]), fmt_num(m["rss_start_kb"] / 1024.0, 1),
                             fmt_num(m["rss_kb"] / 1024.0, 1), fmt_num(per, 1), "%.1f" % m["load_secs"]])
        print("Resident memory after loading %s items (keys %s bytes, %d-byte values)"
              % (fmt_num(mem[0]["items"]), mem[0]["key_len"], mem[0]["value_size"]))
        table(["server", "curr_items", "RSS start MiB", "RSS loaded MiB", "bytes/item", "load s"], body)
        o, r = by.get("keepcached"), by.get("memcached")
        if o and r:
            ratio = o["rss_kb"] / float(r["rss_kb"])
            print("  ratio ours/memcached: %.2f" % ratio)
            verdicts.append((ratio <= 0.8 and o["curr_items"] == o["items"], "RSS: %.2fx <= 0.80x" % ratio))
        print()
    if held:
        by = {m["side"]: m for m in held}
        o, r = by.get("keepcached"), by.get("memcached")
        print("Items held at -m %d after storing %s items (keys %s bytes, %d-byte values)"
              % (args.held_mb, fmt_num(held[0]["items"]), held[0]["key_len"], held[0]["value_size"]))
        table(["server", "curr_items", "evictions", "RSS MiB"],
              [[m["side"], fmt_num(m["curr_items"]), fmt_num(m["evictions"]), fmt_num(m["rss_kb"] / 1024.0, 1)]
               for m in (o, r) if m])
        if o and r:
            ratio = o["curr_items"] / float(max(1, r["curr_items"]))
            print("  ratio ours/memcached: %.2f" % ratio)
            verdicts.append((ratio >= 1.25, "items held at -m %d: %.2fx >= 1.25x" % (args.held_mb, ratio)))
        print()
    if hits:
        scenarios = []
        by = {}
        for h in hits:
            if h["scenario"] not in scenarios:
                scenarios.append(h["scenario"])
            by[(h["scenario"], h["side"])] = h
        body = []
        for sc in scenarios:
            o, r = by.get((sc, "keepcached")), by.get((sc, "memcached"))
            if not o or not r:
                verdicts.append((False, "hit ratio %s: no figure for both sides" % sc))
                continue
            ratio = o["hit_ratio"] / max(1e-9, r["hit_ratio"])
            need = 1.10 if o["scan"] else 1.05
            best = o["ceiling"] / max(1e-9, r["hit_ratio"])
            lfu = o.get("perfect_lfu")
            lfu_ratio = lfu / max(1e-9, r["hit_ratio"]) if lfu is not None else None
            body.append([sc, "%.4f" % o["hit_ratio"], "%.4f" % r["hit_ratio"], "%.3f" % ratio,
                         "%.4f" % o["ceiling"], "%.3f" % best,
                         "%.4f" % lfu if lfu is not None else "-",
                         "%.3f" % lfu_ratio if lfu_ratio is not None else "-",
                         fmt_num(o["curr_items"]), fmt_num(r["curr_items"])])
            if best < need:
                why = " (unreachable on this replay: ceiling/memcached %.3fx)" % best
            elif lfu_ratio is not None and lfu_ratio < need:
                why = (" (not expected of any eviction policy at our item count: a perfect LFU gets"
                       " %.3fx; more items per MB would raise it)" % lfu_ratio)
            else:
                why = ""
            verdicts.append((ratio >= need, "hit ratio %s: %.3fx >= %.2fx%s" % (sc, ratio, need, why)))
        h0 = hits[0]
        print("Hit ratio at -m %d: seeded Zipf replay, %s requests over %s keys (seed %d), get then set on a miss,"
              " measured after the first %d%%" % (args.held_mb, fmt_num(h0["requests"]), fmt_num(h0["keys"]),
                                                  h0["seed"], round(100 * h0.get("warmup", 0.25))))
        table(["scenario", "ours", "memcached", "ratio", "ceiling", "ceiling/memcached",
               "perfect LFU", "LFU/memcached", "ours items", "memcached items"], body)
        print("  (ceiling: the hit ratio of an unbounded cache, whose only misses are keys requested"
              " for the first time; no policy does better)")
        print("  (perfect LFU: a cache of as many items as ours holds that knows every past request"
              " count and keeps the keys requested most so far; with independent requests, as here,"
              " keeping the most probable keys is the best a policy can do, and past counts are all"
              " it can know of them)")
        print()
    if cg:
        body = []
        by = {(c["point"], c["side"]): c for c in cg}
        for pt in dict.fromkeys(c["point"] for c in cg):
            per = {}
            for side in ("keepcached", "memcached"):
                c = by.get((pt, side))
                if c and c["ir_base"] is not None and c["ir_full"] is not None and c["ops"]:
                    per[side] = (c["ir_full"] - c["ir_base"]) / float(c["ops"])
            if len(per) == 2:
                body.append([pt, fmt_num(per["keepcached"]), fmt_num(per["memcached"]),
                             "%.2f" % (per["memcached"] / per["keepcached"])])
        print("Instructions per operation (callgrind, fixed sequence; the whole server process)")
        table(["point", "ours Ir/op", "memcached Ir/op", "memcached/ours"], body)
        print()
    if verdicts:
        print("Targets (issue 14)")
        for ok, text in verdicts:
            verdict_line(ok, text)
    return 0


def cmd_report_proxy(args):
    rows = read_rows(args.throughput) if os.path.exists(args.throughput) else []
    if not rows:
        print("no results")
        return 0
    points, sides, agg = grouped(rows)
    verdicts = []
    body = []
    for pt in points:
        nut = agg.get((pt, "nutcracker"))
        direct = agg.get((pt, "direct"))
        first = True
        for side in sides:
            r = agg.get((pt, side))
            if r is None:
                continue
            ratio = ""
            if nut and nut["ops_per_sec"] and r["ops_per_sec"] is not None:
                ratio = "%.2f" % (r["ops_per_sec"] / nut["ops_per_sec"])
            added = "-"
            if direct and r.get("p50_us") is not None and direct.get("p50_us") is not None and side != "direct":
                added = fmt_num(r["p50_us"] - direct["p50_us"], 1)
            body.append(["", side, fmt_num(r["ops_per_sec"]), fmt_num(r.get("avg_us"), 1), fmt_lat(r, 50),
                         fmt_lat(r, 99), added, ratio, fmt_num(r.get("path_cpu_us"), 2),
                         fmt_num(r.get("machine_cpu_us"), 2), fmt_num(r.get("idle_pct"), 1), len(r["errors"]),
                         fmt_num(r.get("other_cpu_pct"))])
            if first:
                body[-1][0], first = pt, False
        if not nut or not nut["ops_per_sec"]:
            continue
        nut_added = (nut["p50_us"] - direct["p50_us"]) if direct and nut.get("p50_us") is not None \
            and direct.get("p50_us") is not None else None
        for side, need in (("keepcached-proxy", 1.5), ("keepcached-repl", 1.0)):
            r = agg.get((pt, side))
            if r is None:
                if (side + ": not run", None) not in verdicts:
                    verdicts.append((side + ": not run", None))
                continue
            ratio = r["ops_per_sec"] / nut["ops_per_sec"]
            verdicts.append(("%s %s: throughput %.2fx nutcracker >= %.1fx" % (side, pt, ratio, need),
                             ratio >= need and not r["errors"]))
            if side == "keepcached-proxy" and nut_added is not None and r.get("p50_us") is not None:
                added = r["p50_us"] - direct["p50_us"]
                verdicts.append(("%s %s: added p50 %s us <= nutcracker's %s us" % (
                    side, pt, fmt_num(added, 1), fmt_num(nut_added, 1)), added <= nut_added))
    print("Proxy throughput (%s; mean of %d round(s))" % (args.load, max(r["rounds"] for r in agg.values())))
    table(["point", "path", "ops/s", "avg us", "p50 us", "p99 us", "added p50", "x nutcracker", "path us/op",
           "machine us/op", "idle%", "errors", "other CPU%"], body)
    busy_note(agg)
    for (pt, side), r in agg.items():
        for e in r["errors"][:3]:
            print("  error %s/%s: %s" % (pt, side, e))
    print("  (~X (<=B): estimated from memcaslap's log2 latency histogram, whose bucket ends at B;"
          " pipelined: latency of a whole batch; added p50 = p50 - direct p50;\n"
          "   path us/op: CPU of the path's own process per operation; machine us/op: CPU of the whole machine"
          " per operation (load generator and backends included); idle%: CPU left unused — near 0, the"
          " throughput is what the machine allows the whole chain)")
    print()
    print("Targets (issue 4)")
    for text, ok in verdicts:
        print("  %-4s %s" % ("SKIP" if ok is None else "PASS" if ok else "FAIL", text))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports")
    p.add_argument("n", type=int)
    p.set_defaults(fn=cmd_ports)
    p = sub.add_parser("wait")
    p.add_argument("addr")
    p.add_argument("secs", type=float, nargs="?", default=10)
    p.set_defaults(fn=cmd_wait)
    p = sub.add_parser("stats")
    p.add_argument("addr")
    p.set_defaults(fn=cmd_stats)
    for name, fn in (("load", cmd_load), ("pipe", cmd_pipe)):
        p = sub.add_parser(name)
        p.add_argument("addr")
        p.add_argument("--prefix", default="key:", help="keys are PREFIX + 10 digits")
        p.add_argument("--value-size", type=int, default=100)
        p.set_defaults(fn=fn)
        p.add_argument("--no-pad", action="store_true", help="keys PREFIX + N (memtier's format)")
        p.add_argument("--point", help="tag the JSON line")
        p.add_argument("--side", help="tag the JSON line")
        if name == "load":
            p.add_argument("--pid", type=int, help="report this process's VmRSS before and after")
            p.add_argument("--count", type=int, default=1000000)
            p.add_argument("--conns", type=int, default=2)
            p.add_argument("--no-exact", action="store_true",
                           help="do not require curr_items == count (server not empty)")
        else:
            p.add_argument("--keys", type=int, default=100000, help="key space (loaded before)")
            p.add_argument("--conns", type=int, default=50)
            p.add_argument("--depth", type=int, default=16, help="requests per pipelined batch")
            p.add_argument("--secs", type=float, default=20)
            p.add_argument("--procs", type=int, default=2, help="client processes")
            p.add_argument("--set-ratio", type=float, default=0.1)
            p.add_argument("--batches", type=int, default=2000, help="distinct batches per process")
    p = sub.add_parser("replay")
    p.add_argument("addr")
    p.add_argument("--keys", type=int, default=1000000, help="Zipf key space")
    p.add_argument("--alpha", type=float, default=0.99)
    p.add_argument("--requests", type=int, default=4000000)
    p.add_argument("--scan", type=float, default=0.0, help="share of one-time keys")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--batch", type=int, default=200, help="gets sent at once")
    p.add_argument("--warmup", type=float, default=0.5, help="share of the sequence not measured")
    p.add_argument("--scenario", help="name of the row")
    p.add_argument("--side", help="tag the JSON line")
    p.add_argument("--perfect-lfu", action="store_true",
                   help="also compute a perfect LFU's hit ratio at the server's item count (~15 s)")
    p.set_defaults(fn=cmd_replay)
    p = sub.add_parser("fixed")
    p.add_argument("addr")
    p.add_argument("--prefix", default="pipe:")
    p.add_argument("--keys", type=int, default=10000, help="key space (loaded before)")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--multiget", type=int, default=1)
    p.add_argument("--set-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=14)
    p.set_defaults(fn=cmd_fixed)
    for name, fn in (("parse-memaslap", cmd_parse_memaslap), ("parse-memtier", cmd_parse_memtier)):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.add_argument("--point")
        p.add_argument("--side")
        p.add_argument("--rc", type=int, default=0, help="the tool's exit status")
        p.add_argument("--log", help="the tool's console output (for error messages)")
        p.add_argument("--other-cpu", help="CPU %% used meanwhile by processes not ours")
        p.set_defaults(fn=fn)
    p = sub.add_parser("annotate", help="print the JSON line of FILE with KEY set to VALUE (a number)")
    p.add_argument("file")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(fn=cmd_annotate)
    p = sub.add_parser("report-server")
    p.add_argument("throughput", help="JSON lines: point, side, ops_per_sec, ...")
    p.add_argument("memory", nargs="?", help="JSON lines: side, rss_kb, ...")
    p.add_argument("--held", help="JSON lines of the fill at --held-mb: side, curr_items, ...")
    p.add_argument("--held-mb", type=int, default=64)
    p.add_argument("--hits", help="JSON lines of mcbench.py replay")
    p.add_argument("--callgrind", help="JSON lines: side, point, ops, ir_base, ir_full")
    p.add_argument("--load", default="90% get / 10% set, 100-byte values, 50 connections")
    p.set_defaults(fn=cmd_report_server)
    p = sub.add_parser("report-proxy")
    p.add_argument("throughput")
    p.add_argument("--load", default="90% get / 10% set, 100-byte values, 50 client connections")
    p.set_defaults(fn=cmd_report_proxy)
    args = ap.parse_args()
    global KEY_FORMAT
    if getattr(args, "no_pad", False):
        KEY_FORMAT = "%d"
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
