//! `resync.hold_returning`: a server marked down by its failures is held out of reads when it
//! returns, until the operator says `backend up`; a restart the checks see, and a server that
//! was not there yet when the proxy started, are not held (docs/resync.md, Operator control).

use std::time::{Duration, Instant};

use keepcached_proxy::ProxyConfig;

use crate::common::{config, free_port, memcached, memcached_on, Client, ProxyHandle, WAIT};

/// [`config`] over `main` and `backup` (in that pool order: reads go to `main` first while it
/// is up) with `hold_returning` on and a short health interval, so that a test sees several
/// checks while it waits.
fn holding(main: String, backup: String) -> ProxyConfig {
    let mut config = config(&[]);
    config.pools = [("main", main), ("backup", backup)]
        .into_iter()
        .map(|(name, server)| keepcached_proxy::PoolConfig {
            name: name.into(),
            servers: vec![server],
        })
        .collect();
    config.backend.health_interval_ms = 100;
    config.resync.hold_returning = true;
    config
}

/// The `stats backends` line of `main/<addr>`.
async fn line_of(client: &mut Client, addr: &str) -> String {
    let backends = client.call("stats backends\r\n").await;
    backends
        .lines()
        .find(|l| l.starts_with(&format!("STAT main/{addr} ")))
        .unwrap_or_else(|| panic!("no line for {addr}: {backends}"))
        .to_string()
}

/// Polls until `main/<addr>`'s line contains every one of `wanted`; returns it.
async fn await_line(client: &mut Client, addr: &str, wanted: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let line = line_of(client, addr).await;
        if wanted.iter().all(|w| line.contains(w)) {
            return line;
        }
        assert!(Instant::now() < deadline, "never {wanted:?}: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_marked_down_is_held_when_it_returns_until_the_operator_says_up() {
    let main = memcached();
    let backup = memcached();
    let proxy = ProxyHandle::start(holding(main.addr(), backup.addr())).await;
    proxy.await_all_up().await;
    let mut client = proxy.client().await;
    let line = line_of(&mut client, &main.addr()).await;
    assert!(line.contains(" held=0 "), "held at the start: {line}");

    // Stopped, it times out until its failures mark it down.
    main.signal("STOP");
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    let line = loop {
        assert_eq!(
            client.set(&format!("while-down:{i}"), "x").await,
            "STORED\r\n"
        );
        i += 1;
        let line = line_of(&mut client, &main.addr()).await;
        if line.contains(" state=down ") {
            break line;
        }
        assert!(Instant::now() < deadline, "never down: {line}");
    };
    assert!(
        line.contains(" downs=1 ") && line.contains(" held=1 "),
        "{line}"
    );

    // Back (the same process): it answers, and stays out of reads.
    main.signal("CONT");
    await_line(&mut client, &main.addr(), &[" state=suspect ", " held=1 "]).await;
    // A key the proxy never wrote, different on the two servers: which one a read reaches.
    let mut direct_main = Client::connect(&main.addr()).await;
    let mut direct_backup = Client::connect(&backup.addr()).await;
    assert_eq!(direct_main.set("which", "main").await, "STORED\r\n");
    assert_eq!(direct_backup.set("which", "backup").await, "STORED\r\n");
    // Ten health intervals and more: its checks pass and do not release it.
    let until = Instant::now() + Duration::from_millis(1_000);
    let mut reads = 0;
    while Instant::now() < until {
        assert_eq!(client.get("which").await.as_deref(), Some("backup"));
        let line = line_of(&mut client, &main.addr()).await;
        assert!(
            line.contains(" state=suspect ") && line.contains(" held=1 "),
            "released without an order: {line}"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads >= 10, "{reads} reads");

    let up = format!("backend up {}\r\n", main.addr());
    assert_eq!(client.call(&up).await, "OK\r\n");
    await_line(&mut client, &main.addr(), &[" state=up ", " held=0 "]).await;
    assert_eq!(client.get("which").await.as_deref(), Some("main"));
    // What it missed while down was repaired before it was read.
    assert_eq!(direct_main.get("while-down:0").await.as_deref(), Some("x"));
    proxy.stop().await;
}

/// Killed and started again on its port: the checks see another process (its pid changed),
/// which is flushed and warmed as always, but not held. The failure limit is out of reach so
/// that the restart is never marked down, however long the new process takes to listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_seen_between_checks_is_not_held() {
    let mut main = memcached();
    let backup = memcached();
    let port = main.port;
    let mut config = holding(main.addr(), backup.addr());
    config.backend.failure_limit = 1_000;
    let proxy = ProxyHandle::start(config).await;
    proxy.await_all_up().await;
    let mut client = proxy.client().await;
    assert_eq!(client.set("kept", "v").await, "STORED\r\n");
    main.kill();
    let _restarted = memcached_on(port);
    let line = await_line(
        &mut client,
        &format!("127.0.0.1:{port}"),
        &[" state=up ", " restarts=1 "],
    )
    .await;
    assert!(
        line.contains(" held=0 ") && line.contains(" downs=0 "),
        "{line}"
    );
    let mut direct = Client::connect(&format!("127.0.0.1:{port}")).await;
    assert_eq!(direct.get("kept").await.as_deref(), Some("v"), "warmed");
    proxy.stop().await;
}

/// A server that does not answer when the proxy starts is marked down by its failures, yet it
/// never was in service: when it comes it is served without an order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_missing_at_the_start_is_not_held_when_it_comes() {
    let backup = memcached();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let proxy = ProxyHandle::start(holding(addr.clone(), backup.addr())).await;
    let mut client = proxy.client().await;
    let line = await_line(&mut client, &addr, &[" state=down "]).await;
    assert!(line.contains(" held=0 "), "{line}");
    let _late = memcached_on(port);
    let line = await_line(&mut client, &addr, &[" state=up "]).await;
    assert!(line.contains(" held=0 "), "{line}");
    proxy.stop().await;
}
