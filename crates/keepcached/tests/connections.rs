//! Connection handling: the -c limit (memcached's error line, then close), thousands of idle
//! connections at a small memory cost, and `shutdown` with -A. Each check runs on memcached
//! too, so the assertions are known to describe memcached's behaviour.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keepcached_testkit::env;
use keepcached_testkit::raise_open_file_limit;
use keepcached_testkit::wire::Target;
use keepcached_testkit::{Client, End};

fn targets() -> [Target; 2] {
    [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ]
}

/// What a server sends unprompted on a new connection within `wait`: a rejected connection
/// gets an error line and EOF, an accepted one stays silent.
fn unprompted(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn connection_limit_rejects_with_an_error_line() {
    if !env::require(
        "connection_limit_rejects_with_an_error_line",
        true,
        &["memcached"],
    ) {
        return;
    }
    const LIMIT: usize = 32;
    for target in targets() {
        let server = target
            .start(&["-c", &LIMIT.to_string()])
            .unwrap_or_else(|e| panic!("{}: {e}", target.label));
        let mut accepted = Vec::new();
        let mut rejection = None;
        for _ in 0..LIMIT + 16 {
            let mut stream = TcpStream::connect(server.addr()).expect("connect");
            let (bytes, closed) = unprompted(&mut stream, Duration::from_millis(300));
            if bytes.is_empty() && !closed {
                accepted.push(stream);
            } else {
                rejection = Some((bytes, closed));
                break;
            }
        }
        let (bytes, closed) = rejection.unwrap_or_else(|| {
            panic!(
                "{}: {} connections accepted under -c {LIMIT}",
                target.label,
                accepted.len()
            )
        });
        eprintln!(
            "{}: {} connections accepted under -c {LIMIT}",
            target.label,
            accepted.len()
        );
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "ERROR Too many open connections\r\n",
            "{}",
            target.label
        );
        assert!(
            closed,
            "{}: the rejected connection was left open",
            target.label
        );
        // memcached counts its own descriptors against -c (7 clients fit under -c 32); at most
        // -c clients is the contract.
        assert!(
            !accepted.is_empty() && accepted.len() <= LIMIT,
            "{}",
            target.label
        );
        for stream in &accepted {
            let mut client = Client::from_stream(stream.try_clone().unwrap()).unwrap();
            assert!(client.call("version\r\n").unwrap().starts_with("VERSION "));
        }
        drop(accepted);
        // Closed connections free their slots (the server notices the close asynchronously).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = TcpStream::connect(server.addr()).expect("connect");
            let (bytes, closed) = unprompted(&mut stream, Duration::from_millis(200));
            if bytes.is_empty() && !closed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: slots never freed",
                target.label
            );
        }
    }
}

#[test]
fn thousands_of_idle_connections() {
    if !env::require("thousands_of_idle_connections", true, &["memcached"]) {
        return;
    }
    const CONNECTIONS: usize = 5000;
    let limit = raise_open_file_limit(CONNECTIONS as u64 + 1000).expect("raise the fd limit");
    assert!(
        limit > CONNECTIONS as u64,
        "open-file hard limit {limit} is too low"
    );
    let mut growth = Vec::new();
    for target in targets() {
        let server = target
            .start(&["-c", "10000", "-t", "2"])
            .unwrap_or_else(|e| panic!("{}: {e}", target.label));
        let mut first = server.connect().unwrap();
        assert_eq!(first.call("set k 0 0 1\r\nv\r\n").unwrap(), "STORED\r\n");
        let before = server.rss_kib().unwrap();
        let mut clients: Vec<Client> = (0..CONNECTIONS)
            .map(|i| {
                server
                    .connect()
                    .unwrap_or_else(|e| panic!("{}: connection {i}: {e}", target.label))
            })
            .collect();
        // Every connection is served: send on all, then read all.
        for c in clients.iter_mut() {
            c.send(b"get k\r\n").unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let reply = c.read_reply(&End::Suffix(b"END\r\n".to_vec()), 0).unwrap();
            assert_eq!(
                reply.bytes, b"VALUE k 0 1\r\nv\r\nEND\r\n",
                "{}: connection {i}",
                target.label
            );
        }
        let after = server.rss_kib().unwrap();
        let per_connection = (after.saturating_sub(before) * 1024) / CONNECTIONS as u64;
        eprintln!(
            "{}: RSS {before} KiB -> {after} KiB with {CONNECTIONS} connections ({per_connection} bytes each)",
            target.label
        );
        let stats = first.call("stats\r\n").unwrap();
        assert!(
            stats.contains(&format!("STAT curr_connections {}\r\n", CONNECTIONS + 1)),
            "{}: curr_connections is not {}",
            target.label,
            CONNECTIONS + 1
        );
        growth.push((target.label.clone(), per_connection));
    }
    // "Costs little": memcached spends about 600 bytes per idle connection; allow a small
    // buffer's worth, not a full read buffer per connection.
    for (label, bytes) in &growth {
        assert!(
            *bytes <= 8 * 1024,
            "{label}: {bytes} bytes per idle connection (memcached: {} bytes)",
            growth[0].1
        );
    }
}

#[test]
fn shutdown_with_dash_a_stops_the_server() {
    if !env::require(
        "shutdown_with_dash_a_stops_the_server",
        true,
        &["memcached"],
    ) {
        return;
    }
    for target in targets() {
        let mut server = target
            .start(&["-A"])
            .unwrap_or_else(|e| panic!("{}: {e}", target.label));
        let mut client = server.connect().unwrap();
        let reply = client.exchange(b"shutdown\r\n", &End::Closed).unwrap();
        assert!(
            reply.closed,
            "{}: connection still open after shutdown",
            target.label
        );
        let status = server.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(
            status.is_some(),
            "{}: still running 10 s after shutdown",
            target.label
        );
    }
}
