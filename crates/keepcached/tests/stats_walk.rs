//! `stats items`, `stats slabs`, `stats sizes`, `stats cachedump` and `lru_crawler metadump`
//! walk every item (keepcached has no slab classes to count from), about 0.1 s per million
//! items. The walk is made in steps, so the other clients of the same worker thread are served
//! meanwhile instead of waiting for it: what a monitoring tool polling a big cache must not
//! cost everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keepcached_testkit::keepcached_server;

/// Reads from `stream` until the bytes end with `end`.
fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1 << 16];
    while !got.ends_with(end) {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn a_client_asking_stats_items_does_not_hold_up_the_others() {
    // One worker thread: every connection shares it.
    let server = keepcached_server(
        std::path::Path::new(env!("CARGO_BIN_EXE_keepcached")),
        &["-t", "1", "-m", "256", "-o", "track_sizes"],
    )
    .expect("server");
    let mut load = Vec::new();
    for i in 0..300_000 {
        load.extend_from_slice(
            format!("set item:{i:07} 0 0 10 noreply\r\n0123456789\r\n").as_bytes(),
        );
    }
    load.extend_from_slice(b"version\r\n");
    let mut loader = TcpStream::connect(server.addr()).expect("connect");
    loader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    loader.write_all(&load).expect("load");
    read_until(&mut loader, b"\r\n");

    let mut monitor = TcpStream::connect(server.addr()).expect("connect");
    let mut client = TcpStream::connect(server.addr()).expect("connect");
    for stream in [&monitor, &client] {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
    }
    // Every request that walks the store; class 63 holds none of these items, so the dumps
    // write nothing until their end.
    for request in [
        "stats items",
        "stats slabs",
        "stats sizes",
        "stats cachedump 63 0",
        "lru_crawler metadump 63",
    ] {
        monitor
            .write_all(format!("{request}\r\n").as_bytes())
            .expect("send");
        client.write_all(b"version\r\n").expect("version");
        // The client's reply comes while the walk is under way: before the monitor's.
        read_until(&mut client, b"\r\n");
        monitor.set_nonblocking(true).unwrap();
        let mut early = [0u8; 1];
        let before = monitor.read(&mut early);
        monitor.set_nonblocking(false).unwrap();
        assert!(
            matches!(before, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{request} was answered before a version asked after it: the walk held the worker \
             ({before:?})"
        );
        let reply = String::from_utf8(read_until(&mut monitor, b"END\r\n")).unwrap();
        let counted: u64 = reply
            .lines()
            .filter(|line| line.contains(":number ") || line.contains(":used_chunks "))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        match request {
            "stats items" | "stats slabs" => assert_eq!(counted, 300_000, "{request}:\n{reply}"),
            _ => assert!(reply.lines().count() < 10, "{request}:\n{reply}"),
        }
    }
}
