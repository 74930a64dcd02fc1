//! Failures: a killed server, a stopped (black-hole) server, every replica down, a server that
//! comes back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepcached_proxy::PoolConfig;

use crate::common::{
    config, free_port, memcached, memcached_on, memcached_with, Client, OwnServer, ProxyHandle,
    Relay,
};

/// The configured request timeout of [`config`], and the most one request may take when a
/// server black-holes it: one timeout, then the replica's answer.
const TIMEOUT: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_millis(300 * 2 + 200);

/// kill -9 of the main server under a load of sets and gets: no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_main_server_under_load_costs_no_client_errors() {
    let mut main = memcached();
    let backup = memcached();
    let proxy = ProxyHandle::start(config(&[&[&main], &[&backup]])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let mut client = proxy.client().await;
        let (stop, ops) = (stop.clone(), ops.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load:{w}:{}", i % 50);
                let value = format!("v{i}");
                let set = client.set(&key, &value).await;
                if set != "STORED\r\n" {
                    errors.push(format!("set {key}: {set:?}"));
                }
                let got = client.get(&key).await;
                if got.as_deref() != Some(value.as_str()) {
                    errors.push(format!("get {key}: {got:?}, wanted {value}"));
                }
                i += 1;
                ops.fetch_add(2, Ordering::Relaxed);
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = ops.load(Ordering::Relaxed);
    main.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for worker in workers {
        errors.extend(worker.await.expect("worker"));
    }
    let after = ops.load(Ordering::Relaxed);
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    assert!(
        before > 100 && after > before + 100,
        "load ran: {before} then {after} ops"
    );
    // Marked down once; not necessarily down still: another test of this binary may start a
    // memcached on the freed port, which the proxy then meets as the server restarted.
    let mut client = proxy.client().await;
    let backends = client.call("stats backends\r\n").await;
    let line = backends
        .lines()
        .find(|l| l.starts_with(&format!("STAT pool0/{} ", main.addr())))
        .unwrap_or("");
    assert!(line.contains(" downs=1 "), "{backends}");
    proxy.stop().await;
}

/// SIGSTOP of the main server (it accepts connections and answers nothing): every request still
/// completes within the timeout through the backup, and once the server is marked down the
/// requests no longer wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_a_black_hole_that_costs_one_timeout() {
    let main = memcached();
    let backup = memcached();
    let proxy = ProxyHandle::start(config(&[&[&main], &[&backup]])).await;
    let mut client = proxy.client().await;
    for i in 0..10 {
        assert_eq!(client.set(&format!("bh:{i}"), "x").await, "STORED\r\n");
    }
    main.signal("STOP");
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let start = Instant::now();
        assert_eq!(client.get(&format!("bh:{i}")).await.as_deref(), Some("x"));
        assert_eq!(client.set(&format!("bh:{i}"), "y").await, "STORED\r\n");
        assert_eq!(
            client.call(&format!("incr n{i} 1\r\n")).await,
            "NOT_FOUND\r\n"
        );
        let took = start.elapsed();
        assert!(took < BOUND * 3, "request {i} took {took:?}");
        if i >= 3 {
            // Marked down by now: skipped without waiting.
            assert!(took < TIMEOUT, "request {i} still waited: {took:?}");
        }
        slowest = slowest.max(took);
    }
    let backends = client.call("stats backends\r\n").await;
    assert!(
        !backends.contains(&format!("pool0/{} state=up", main.addr())),
        "{backends}"
    );
    assert!(backends.contains("missed_keys="), "{backends}");
    main.signal("CONT");
    proxy.stop().await;
}

/// The only readable replica stalls past the request timeout, so its connection is closed and
/// it is not read until its supervisor has seen it is the same process: a read that has no
/// other replica waits for that (within one request timeout) and is served, instead of
/// answering `SERVER_ERROR` for a server that is back a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_its_only_replica_to_be_verified() {
    let only = memcached();
    let mut settings = config(&[&[&only]]);
    // Long enough for the test to see the stall and end it inside the read's wait; failures
    // never mark the server down here.
    settings.backend.request_timeout_ms = 2_000;
    settings.backend.failure_limit = 100;
    let proxy = ProxyHandle::start(settings).await;
    let mut client = proxy.client().await;
    assert_eq!(client.set("verified", "v").await, "STORED\r\n");
    only.signal("STOP");
    let reader = {
        let mut reader = proxy.client().await;
        tokio::spawn(async move { reader.call("get verified\r\n").await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .call("stats backends\r\n")
        .await
        .contains(" timeouts=0 ")
    {
        assert!(Instant::now() < deadline, "the read never timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    only.signal("CONT");
    assert_eq!(
        reader.await.unwrap(),
        "VALUE verified 0 1\r\nv\r\nEND\r\n",
        "the read failed while its only replica was being verified"
    );
    proxy.stop().await;
}

/// With every replica down the client gets a clear SERVER_ERROR within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_down_is_a_server_error_within_the_timeout() {
    let a = memcached();
    let mut b = memcached();
    let proxy = ProxyHandle::start(config(&[&[&a], &[&b]])).await;
    let mut client = proxy.client().await;
    assert_eq!(client.set("k", "v").await, "STORED\r\n");
    a.signal("STOP");
    b.kill();
    for request in [
        "get k\r\n",
        "set k 0 0 1\r\nx\r\n",
        "incr k 1\r\n",
        "delete k\r\n",
        "get k\r\n",
    ] {
        let start = Instant::now();
        let reply = client.call(request).await;
        let took = start.elapsed();
        assert!(
            reply.starts_with("SERVER_ERROR keepcached-proxy: no replica answered ("),
            "{request:?}: {reply:?}"
        );
        assert!(took < BOUND, "{request:?} took {took:?}");
    }
    a.signal("CONT");
    proxy.stop().await;
}

/// A server that was down is probed and used again once it answers; the keys written while it
/// was down are remembered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_server_is_probed_back_up() {
    let mut main = memcached();
    let backup = memcached();
    let port = main.port;
    let proxy = ProxyHandle::start(config(&[&[&main], &[&backup]])).await;
    let mut client = proxy.client().await;
    main.kill();
    for i in 0..5 {
        assert_eq!(
            client.set(&format!("while-down:{i}"), "x").await,
            "STORED\r\n"
        );
    }
    let backends = client.call("stats backends\r\n").await;
    assert!(backends.contains("missed_keys=5 "), "{backends}");
    let _restarted = memcached_on(port);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let backends = client.call("stats backends\r\n").await;
        if backends.contains(&format!("pool0/127.0.0.1:{port} state=up")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never probed back up: {backends}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.set("after", "y").await, "STORED\r\n");
    let mut direct = Client::connect(&format!("127.0.0.1:{port}")).await;
    assert_eq!(direct.get("after").await.as_deref(), Some("y"));
    proxy.stop().await;
}

/// When a probe finds a down server up again, the connections that failed with it open again
/// together, before any request needs them (as at startup, so that memcached spreads them over
/// its threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_server_gets_its_connections_back_together() {
    let mut main = memcached();
    let backup = memcached();
    let port = main.port;
    let before = Client::connect(&main.addr())
        .await
        .stat("curr_connections")
        .await;
    let mut config = config(&[&[&main], &[&backup]]);
    config.backend.connections = 4;
    let proxy = ProxyHandle::start(config).await;
    let mut client = proxy.client().await;
    main.kill();
    // Writes fail on the main server until it is marked down.
    for i in 0..5 {
        assert_eq!(client.set(&format!("down:{i}"), "x").await, "STORED\r\n");
    }
    let _restarted = memcached_on(port);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !client
        .call("stats backends\r\n")
        .await
        .contains(&format!("pool0/127.0.0.1:{port} state=up"))
    {
        assert!(Instant::now() < deadline, "never probed back up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No request has gone to the restarted server: only the reconnects (and the supervisor's
    // own connection) can raise the count.
    let mut direct = Client::connect(&format!("127.0.0.1:{port}")).await;
    // Four pipelined connections, with or without the supervisor's own: it comes and goes with
    // its checks (one that times out on a loaded machine is opened again at the next), so it
    // may be missing at the moment counted.
    let count = direct.await_connections(before + 4).await;
    assert!(
        (before + 4..=before + 5).contains(&count),
        "connections open again without a request: {count}, {before} before"
    );
    proxy.stop().await;
}

/// Pipelined gets are read as one batch, yet each keeps its own answer: with one server of a
/// sharded pool dead, a get of its keys only is a SERVER_ERROR, a get that also names keys of
/// the live server gets those, and the gets around them are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_gets_fail_one_by_one() {
    let a = memcached();
    let mut b = memcached();
    let proxy = ProxyHandle::start(config(&[&[&a, &b]])).await;
    let mut client = proxy.client().await;
    let mut direct_a = Client::connect(&a.addr()).await;
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let key = format!("batch:{i}");
        assert_eq!(client.set(&key, &format!("v{i}")).await, "STORED\r\n");
        match direct_a.get(&key).await {
            Some(_) => on_a.push((key, format!("v{i}"))),
            None => on_b.push(key),
        }
    }
    assert!(on_a.len() >= 2 && on_b.len() >= 2, "{on_a:?} {on_b:?}");
    b.kill();
    let value =
        |(key, value): &(String, String)| format!("VALUE {key} 0 {}\r\n{value}\r\n", value.len());
    let script = format!(
        "get {a0}\r\nget {b0}\r\nget {b0} {a1} {b1}\r\ngets {b1}\r\nget {a0} {a1}\r\nmn\r\n",
        a0 = on_a[0].0,
        a1 = on_a[1].0,
        b0 = on_b[0],
        b1 = on_b[1],
    );
    client.send(script.as_bytes()).await;
    let mut got = String::new();
    while !got.ends_with("MN\r\n") {
        got.push_str(&client.read_reply(true).await);
    }
    let lines: Vec<&str> = got.split_inclusive("\r\n").collect();
    let error = "SERVER_ERROR keepcached-proxy: no replica answered (";
    let expected_before = format!("{}END\r\n", value(&on_a[0]));
    assert!(got.starts_with(&expected_before), "{got:?}");
    assert!(lines[3].starts_with(error), "{got:?}");
    let rest: String = lines[4..].concat();
    let expected_rest = format!("{}END\r\n{error}", value(&on_a[1]),);
    assert!(rest.starts_with(&expected_rest), "{got:?}");
    let tail = format!("{}{}END\r\nMN\r\n", value(&on_a[0]), value(&on_a[1]));
    assert!(got.ends_with(&tail), "{got:?}");
    assert_eq!(got.matches(error).count(), 2, "{got:?}");
    proxy.stop().await;
}

/// A server that never accepted a connection (refused, or a name that does not resolve) is
/// never shown `up`: it ends `down`, and writes and reads go on through the replica that
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answered_is_not_up() {
    let backup = memcached();
    let refused = format!("127.0.0.1:{}", free_port());
    let mut config = config(&[&[&backup]]);
    config.pools[0].servers = vec![refused.clone()];
    config.pools.push(keepcached_proxy::PoolConfig {
        name: "backup".into(),
        servers: vec![backup.addr()],
    });
    config.pools.push(keepcached_proxy::PoolConfig {
        name: "nowhere".into(),
        servers: vec!["host.invalid:11211".into()],
    });
    let proxy = ProxyHandle::start(config).await;
    let mut client = proxy.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backends = client.call("stats backends\r\n").await;
        assert!(
            !backends.contains(&format!("/{refused} state=up"))
                && !backends.contains("/host.invalid:11211 state=up"),
            "{backends}"
        );
        if backends.contains(&format!("/{refused} state=down"))
            && backends.contains("/host.invalid:11211 state=down")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never down: {backends}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.set("k", "v").await, "STORED\r\n");
    assert_eq!(client.get("k").await.as_deref(), Some("v"));
    proxy.stop().await;
}

/// Polls `stats backends` through `client` until the server on `port`, restarted once, is up
/// again (flushed, warmed and repaired as its standing needed).
async fn await_restarted_up(client: &mut Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backends = client.call("stats backends\r\n").await;
        let line = backends
            .lines()
            .find(|l| l.contains(&format!("/127.0.0.1:{port} ")))
            .unwrap_or("");
        if line.contains("state=up ") && line.contains("restarts=1 ") {
            return;
        }
        assert!(Instant::now() < deadline, "never back up: {backends}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A returning server is warmed from a replica that cannot list its items (memcached with its
/// crawler turned off answers `CLIENT_ERROR lru crawler disabled`): the warm-up leaves that
/// source out and the server comes back, cold but never stale, instead of staying out forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_list_its_items_does_not_hold_a_server_out() {
    let main = memcached_with(&["-o", "no_lru_crawler"]);
    let mut backup = memcached();
    let port = backup.port;
    let mut config = config(&[&[&main], &[&backup]]);
    config.backend.health_interval_ms = 100;
    let proxy = ProxyHandle::start(config).await;
    let mut client = proxy.client().await;
    for i in 0..50 {
        assert_eq!(client.set(&format!("k{i}"), "v").await, "STORED\r\n");
    }
    backup.kill();
    let _restarted = memcached_on(port);
    await_restarted_up(&mut client, port).await;
    for i in 0..50 {
        assert_eq!(client.get(&format!("k{i}")).await.as_deref(), Some("v"));
    }
    proxy.stop().await;
}

/// Relays a free loopback port to `upstream`; in the first `lru_crawler metadump` reply, the
/// line of key `skipped` is replaced by a second copy of the line before it, as memcached's
/// crawler lists an item twice when it is relinked ahead of the crawler and skips one it finds
/// locked: the listing's count still matches the items held. Returns the relay's address.
async fn relay_skipping_once(upstream: String) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let skipped_once = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let skipped_once = skipped_once.clone();
            tokio::spawn(async move {
                let (mut client_rd, mut client_wr) = client.into_split();
                let (server_rd, mut server_wr) = server.into_split();
                let mut first = vec![0; 64 * 1024];
                let Ok(n @ 1..) = client_rd.read(&mut first).await else {
                    return;
                };
                let dump = first.starts_with(b"lru_crawler metadump")
                    && !skipped_once.swap(true, Ordering::SeqCst);
                if server_wr.write_all(&first[..n]).await.is_err() {
                    return;
                }
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
                });
                let mut server_rd = BufReader::new(server_rd);
                if dump {
                    let (mut line, mut previous) = (Vec::new(), Vec::new());
                    loop {
                        line.clear();
                        match server_rd.read_until(b'\n', &mut line).await {
                            Ok(1..) => {}
                            _ => return,
                        }
                        let out = if line.starts_with(b"key=skipped ") {
                            &previous
                        } else {
                            &line
                        };
                        if client_wr.write_all(out).await.is_err() {
                            return;
                        }
                        if line == b"END\r\n" {
                            break;
                        }
                        previous.clone_from(&line);
                    }
                }
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            });
        }
    });
    addr
}

/// The crawler skipped a key in the first listing while another was listed twice, so the count
/// matched what the source holds: the warm-up's second listing still copies the skipped key,
/// and the restarted server is never read for it as a miss. (Stopping after a listing whose
/// count matched lost that key, one run in about 30 of the reload test under write load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_first_listing_skipped_while_the_count_matched_is_still_warmed() {
    let mut main = memcached();
    let backup = memcached();
    let port = main.port;
    let mut config = config(&[&[&main], &[&backup]]);
    config.pools[1].servers = vec![relay_skipping_once(backup.addr()).await];
    config.backend.health_interval_ms = 100;
    let proxy = ProxyHandle::start(config).await;
    proxy.await_all_up().await;
    let mut client = proxy.client().await;
    assert_eq!(client.set("skipped", "v").await, "STORED\r\n");
    for i in 0..20 {
        assert_eq!(client.set(&format!("k{i}"), "v").await, "STORED\r\n");
    }
    main.kill();
    let _restarted = memcached_on(port);
    await_restarted_up(&mut client, port).await;
    let mut direct = Client::connect(&format!("127.0.0.1:{port}")).await;
    assert_eq!(direct.get("skipped").await.as_deref(), Some("v"));
    assert_eq!(client.get("skipped").await.as_deref(), Some("v"));
    for i in 0..20 {
        assert_eq!(direct.get(&format!("k{i}")).await.as_deref(), Some("v"));
    }
    proxy.stop().await;
}

/// A write a server answers with `SERVER_ERROR` (here a value over its `-I`, which the other
/// replica takes) is a write it missed: the client gets the other replica's `STORED`, the key
/// is repaired on the refusing server, and its old value is never read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_with_server_error_is_missed_and_repaired() {
    let main = memcached_with(&["-I", "512k"]);
    let backup = memcached();
    let proxy = ProxyHandle::start(config(&[&[&main], &[&backup]])).await;
    let mut client = proxy.client().await;
    assert_eq!(client.set("big", "old").await, "STORED\r\n");
    let value = "x".repeat(700 * 1024);
    assert_eq!(client.set("big", &value).await, "STORED\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missed = client.stat("replica_write_failures").await;
        let repaired = client.stat("repaired_keys").await;
        if missed >= 1 && repaired >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never missed and repaired: replica_write_failures {missed}, repaired_keys {repaired}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(client.get("big").await.as_deref(), Some("old"));
    assert_eq!(
        Client::connect(&main.addr()).await.get("big").await,
        None,
        "the refusing server keeps no old value"
    );
    proxy.stop().await;
}

/// A write that timed out can still be applied by the server after a later write of the same
/// key on another connection (TCP orders bytes within a connection only): that later write
/// must not make the proxy believe the server holds the key's latest value. A relay in front of
/// the backup holds back the connection that carries the first writes (W1), as a stopped or
/// CPU-starved server leaves them in its socket; they time out, the same keys are written
/// again (W2, acknowledged), and only then is W1 delivered, so the real memcached behind the
/// relay applies it after W2. Without the fence, W2 cleared the misses and the backup served
/// W1's values as current; with it, the keys stay missed until the server closed W1's
/// connection, and are then repaired: no stale value on the backup, and none read through the
/// proxy from the backup alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_applied_after_a_later_one_is_not_read_stale() {
    let backup = memcached();
    timed_out_write_applied_late(backup.addr()).await;
}

/// The same with keepcached's own server as the backup: it too handles everything sent on a
/// connection before it closes it, which is what the fence waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_applied_late_on_a_keepcached_server_is_not_read_stale() {
    let backup = OwnServer::start().await;
    timed_out_write_applied_late(backup.addr()).await;
}

async fn timed_out_write_applied_late(backup: String) {
    const KEYS: usize = 8;
    let main = memcached();
    let relay = Relay::start(backup.clone()).await;
    let mut settings = config(&[&[&main]]);
    settings.pools.push(PoolConfig {
        name: "pool1".into(),
        servers: vec![relay.addr()],
    });
    // One stall must not take the backup out: its writes are what this test is about.
    settings.backend.failure_limit = 100;
    let proxy = ProxyHandle::start(settings).await;
    proxy.await_all_up().await;
    let mut client = proxy.client().await;

    relay.arm(b"fence-");
    let mut w1 = String::new();
    for i in 0..KEYS {
        w1.push_str(&format!("set fence-{i} 0 0 2\r\nw1\r\n"));
    }
    client.send(w1.as_bytes()).await;
    for i in 0..KEYS {
        // The main server's STORED: the backup's copy timed out, held by the relay.
        assert_eq!(
            client.read_reply(false).await,
            "STORED\r\n",
            "W1 of fence-{i}"
        );
    }
    let held = relay.held();
    let held_writes = held.windows(6).filter(|w| w == b"fence-").count();
    assert!(held_writes >= 1, "the relay held no write: {held:?}");

    for i in 0..KEYS {
        assert_eq!(client.set(&format!("fence-{i}"), "w2").await, "STORED\r\n");
    }
    // W1 reaches memcached now, after W2; it closes the connection after it.
    relay.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.finished() {
        assert!(Instant::now() < deadline, "the held connection never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backup_line = |backends: &str| {
        backends
            .lines()
            .find(|l| l.contains(&relay.addr()))
            .unwrap_or_default()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = backup_line(&client.call("stats backends\r\n").await);
        if line.contains(" state=up ") && line.contains(" missed_keys=0 ") {
            assert!(line.contains(" draining=0"), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never came up: {line}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut direct = Client::connect(&backup).await;
    let mut stale = Vec::new();
    for i in 0..KEYS {
        let value = direct.get(&format!("fence-{i}")).await;
        assert_ne!(value, None, "fence-{i} lost on the backup");
        if value.as_deref() != Some("w2") {
            stale.push(format!("fence-{i}={value:?}"));
        }
    }
    assert_eq!(
        stale.len(),
        0,
        "stale on the backup, which the proxy counts as up ({held_writes} writes held): {stale:?}"
    );
    // Through the proxy with the backup as the only readable replica.
    assert_eq!(
        client
            .call(&format!("backend drain {}\r\n", main.addr()))
            .await,
        "OK\r\n"
    );
    let mut stale_through_proxy = 0;
    for i in 0..KEYS {
        let value = client.get(&format!("fence-{i}")).await;
        if value.as_deref() != Some("w2") {
            stale_through_proxy += 1;
        }
    }
    assert_eq!(
        stale_through_proxy, 0,
        "stale or missing reads through the proxy"
    );
    proxy.stop().await;
}

/// The same hole through a repair: the supervisor's copy of a missed key times out (the relay
/// holds it), a client then writes the key (acknowledged), and only then does the copy reach
/// the server. The copy's failure misses the key again, fenced by the copy's connection, so the
/// client's write does not make the proxy count the old copy as current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_copy_applied_after_a_later_write_is_not_read_stale() {
    let main = memcached();
    let backup = memcached();
    let relay = Relay::start(backup.addr()).await;
    let mut settings = config(&[&[&main]]);
    settings.pools.push(PoolConfig {
        name: "pool1".into(),
        servers: vec![relay.addr()],
    });
    settings.backend.failure_limit = 100;
    let proxy = ProxyHandle::start(settings).await;
    proxy.await_all_up().await;
    let mut client = proxy.client().await;
    let drain = format!("backend drain {}\r\n", relay.addr());
    assert_eq!(client.call(&drain).await, "OK\r\n");
    // Missed by the drained backup, to be repaired from the main server.
    assert_eq!(client.set("repaired-0", "copy").await, "STORED\r\n");
    relay.arm(b"repaired-");
    let up = format!("backend up {}\r\n", relay.addr());
    assert_eq!(client.call(&up).await, "OK\r\n");
    let backup_line = |backends: &str| {
        backends
            .lines()
            .find(|l| l.contains(&relay.addr()))
            .unwrap_or_default()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = backup_line(&client.call("stats backends\r\n").await);
        if !relay.held().is_empty() && !line.contains(" timeouts=0 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the repair's copy was never held and timed out: {line}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.set("repaired-0", "client").await, "STORED\r\n");
    relay.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.finished() {
        assert!(Instant::now() < deadline, "the held connection never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = backup_line(&client.call("stats backends\r\n").await);
        if line.contains(" state=up ") && line.contains(" missed_keys=0 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never came up: {line}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        Client::connect(&backup.addr())
            .await
            .get("repaired-0")
            .await
            .as_deref(),
        Some("client"),
        "the backup, which the proxy counts as up, holds the repair's late copy"
    );
    proxy.stop().await;
}
