//! The proxy under hostile clients and misbehaving backends.
//!
//! The proxy runs as `keepcached proxy` from this build (`KEEPCACHED_ABUSE_BIN` names another
//! binary, to measure an older build the same way) in front of Debian's memcached, or in front
//! of a relay to memcached that misbehaves on command ([`Relay`]). Growth is the proxy's peak
//! resident memory (VmHWM) after the scenario minus before it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::process::proc_status_kib;
use keepcached_testkit::{free_port, memcached, Client};

/// How long the proxy may take to listen, and any wait in these scenarios.
const WAIT: Duration = Duration::from_secs(20);
/// The amplified item: close to memcached's default 1 MB item size.
const BIG: usize = 1_000_000;

fn bin() -> PathBuf {
    std::env::var_os("KEEPCACHED_ABUSE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_keepcached")),
        PathBuf::from,
    )
}

/// `keepcached proxy` on a free loopback port, killed by pid on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    /// `proxy -D -l 127.0.0.1 -p PORT ARGS...`.
    fn start(args: &[&str]) -> Proxy {
        let mut last = String::new();
        for attempt in 0..8 {
            let port = free_port().expect("free port");
            let log = std::env::temp_dir().join(format!(
                "keepcached-abuse-proxy-{}-{port}-{attempt}.log",
                std::process::id()
            ));
            let out = std::fs::File::create(&log).expect("proxy log");
            let child = Command::new(bin())
                .args(["proxy", "-D", "-l", "127.0.0.1", "-p", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("proxy log"))
                .stderr(out)
                .spawn()
                .expect("start keepcached proxy");
            let mut proxy = Proxy { child, port, log };
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(status)) = proxy.child.try_wait() {
                    last = format!("exited with {status}: {}", proxy.log_text());
                    break;
                }
                if TcpStream::connect(proxy.addr()).is_ok() {
                    return proxy;
                }
                assert!(Instant::now() < deadline, "proxy never listened");
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("keepcached proxy never listened: {last}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn connect(&self) -> Client {
        let mut client = Client::connect(self.addr()).expect("connect to the proxy");
        client.set_timeout(WAIT);
        client
    }

    fn peak_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:").expect("proxy VmHWM")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The proxy is running and answers `version` on a new connection.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("proxy status").is_none(),
            "the proxy died: {}",
            self.log_text()
        );
        let version = self.connect().call("version\r\n").expect("version");
        assert!(version.starts_with("VERSION "), "{version:?}");
    }

    /// A counter of the proxy's `stats`.
    fn stat(&self, name: &str) -> u64 {
        let stats = self.connect().call("stats\r\n").expect("stats");
        stat_u64(&stats, name).unwrap_or_else(|| panic!("no {name} in {stats}"))
    }

    /// Waits until `stats` counter `name` stops moving (or reaches `target`): the proxy has done
    /// what a stalled client let it do.
    fn settle(&self, name: &str, target: u64) -> u64 {
        settle(|| self.stat(name), target)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `measure` until it reaches `target` or has not moved for a second, within [`WAIT`].
fn settle(mut measure: impl FnMut() -> u64, target: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut since) = (measure(), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = measure();
        if now >= target {
            return now;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
        assert!(Instant::now() < deadline, "never settled");
    }
}

fn mib(kib: u64) -> String {
    format!("+{:.1} MB", kib as f64 / 1024.0)
}

/// The big item, stored through the proxy.
fn store_big(proxy: &Proxy) -> Vec<u8> {
    let value: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
    let mut request = format!("set amp 0 0 {BIG}\r\n").into_bytes();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n");
    let mut client = proxy.connect();
    client.send(&request).expect("send the set");
    let stored = client
        .read_reply(&keepcached_testkit::End::Suffix(b"\r\n".to_vec()), 1)
        .expect("set reply");
    assert_eq!(stored.bytes, b"STORED\r\n");
    value
}

/// Reads `len` bytes, or what came until the connection closed or [`WAIT`] passed.
fn read_up_to(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::with_capacity(len);
    let mut chunk = vec![0; 1 << 20];
    while buf.len() < len && Instant::now() < deadline {
        stream
            .set_read_timeout(Some(deadline - Instant::now()))
            .expect("timeout");
        match stream.read(&mut chunk[..(len - buf.len()).min(1 << 20)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// A client that sends `request` and does not read: the proxy's growth meanwhile, its count
/// of `counter` once it settled (`target`: all done), then everything the client asked for
/// must arrive, byte for byte (`expected`).
fn stalled_client(scenario: &str, request: &[u8], counter: &str, target: u64, expected: &[u8]) {
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let mut proxy = Proxy::start(&["-s", &backend.addr().to_string()]);
    let value = store_big(&proxy);
    assert!(expected.starts_with(b"V") && expected.len() > value.len());
    let before = proxy.peak_kib();
    let base = proxy.stat(counter);
    let mut stalled = TcpStream::connect(proxy.addr()).expect("connect");
    stalled.write_all(request).expect("send the requests");
    let done = proxy.settle(counter, base + target) - base;
    let growth = proxy.peak_kib().saturating_sub(before);
    // Other clients are served meanwhile.
    proxy.assert_alive();
    let reply = read_up_to(&mut stalled, expected.len());
    let correct = reply == expected;
    println!(
        "ABUSE | proxy: {scenario} | {} | - | alive, {done} of {target} run while stalled, {}",
        mib(growth),
        if correct {
            "all replies correct once read".to_string()
        } else {
            format!(
                "WRONG replies once read ({} of {} bytes, starting {:?})",
                reply.len(),
                expected.len(),
                String::from_utf8_lossy(&reply[..reply.len().min(80)])
            )
        }
    );
    assert!(
        correct,
        "{scenario}: the replies differ from what was asked"
    );
    proxy.assert_alive();
    assert!(
        growth < 64 * 1024,
        "{scenario}: the proxy grew by {} (bound 64 MB)",
        mib(growth)
    );
    drop(backend);
}

fn big_value(value_line: &str) -> Vec<u8> {
    let mut out = value_line.as_bytes().to_vec();
    out.extend((0..BIG).map(|i| b'a' + (i % 26) as u8));
    out.extend_from_slice(b"\r\n");
    out
}

/// 2,000 pipelined `mg amp v` (a 1 MB item) from a client that does not read.
#[test]
fn mg_amplification_to_a_client_that_does_not_read() {
    let request = b"mg amp v\r\n".repeat(2000);
    let expected = big_value(&format!("VA {BIG}\r\n")).repeat(2000);
    stalled_client(
        "2,000 pipelined mg amp v, client not reading",
        &request,
        "cmd_get",
        2000,
        &expected,
    );
}

/// `get amp amp ...` (2,000 times one 1 MB item, 8 KB of request) from a client that does not
/// read.
#[test]
fn get_amplification_to_a_client_that_does_not_read() {
    let mut request = b"get".to_vec();
    for _ in 0..2000 {
        request.extend_from_slice(b" amp");
    }
    request.extend_from_slice(b"\r\n");
    let mut expected = big_value(&format!("VALUE amp 0 {BIG}\r\n")).repeat(2000);
    expected.extend_from_slice(b"END\r\n");
    stalled_client(
        "get amp x2,000 in one line, client not reading",
        &request,
        "cmd_get",
        2000,
        &expected,
    );
}

/// 5,000 seeded garbage requests (off-by-one commands, bad numbers, over-long lines, random
/// bytes) from a client that does not read.
#[test]
fn garbage_from_a_client_that_does_not_read() {
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let mut proxy = Proxy::start(&["-s", &backend.addr().to_string()]);
    let mut generator = keepcached_testkit::parser_invariants::Generator::new(12);
    let mut request = Vec::new();
    let mut sent = 0;
    while sent < 5000 {
        let one = generator.request();
        // A request that ends the connection would end the scenario early.
        if one.starts_with(b"quit") || one.starts_with(b"shutdown") {
            continue;
        }
        request.extend(one);
        sent += 1;
    }
    let before = proxy.peak_kib();
    let mut stalled = TcpStream::connect(proxy.addr()).expect("connect");
    stalled
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The proxy may stop reading (its replies wait for us) or close on a line too long: both
    // end the writing.
    let written = stalled.write_all(&request).is_ok();
    settle(|| proxy.peak_kib(), u64::MAX);
    let growth = proxy.peak_kib().saturating_sub(before);
    proxy.assert_alive();
    let _ = stalled.shutdown(Shutdown::Both);
    println!(
        "ABUSE | proxy: 5,000 garbage requests, client not reading | {} | - | alive{}",
        mib(growth),
        if written {
            ", all sent"
        } else {
            ", proxy stopped reading"
        }
    );
    assert!(
        growth < 32 * 1024,
        "the proxy grew by {} (bound 32 MB)",
        mib(growth)
    );
    drop(backend);
}
