//! The proxy under hostile clients and misbehaving backends.
//!
//! The proxy runs as `keepcached proxy` from this build (`KEEPCACHED_ABUSE_BIN` names another
//! binary, to measure an older build the same way) in front of Debian's memcached, or in front
//! of a relay to memcached that misbehaves on command ([`Relay`]). Growth is the proxy's peak
//! resident memory (VmHWM) after the scenario minus before it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::{memcached, Client, ServerProcess};

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

/// `keepcached proxy` on a free loopback port, killed by pid on drop (testkit's process).
struct Proxy(ServerProcess);

impl Proxy {
    /// `proxy -D -l 127.0.0.1 -p PORT ARGS...`.
    fn start(args: &[&str]) -> Proxy {
        Proxy(keepcached_testkit::keepcached_proxy(&bin(), args).expect("start keepcached proxy"))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    fn connect(&self) -> Client {
        let mut client = Client::connect(self.addr()).expect("connect to the proxy");
        client.set_timeout(WAIT);
        client
    }

    fn peak_kib(&self) -> u64 {
        self.0.peak_rss_kib().expect("proxy VmHWM")
    }

    fn log_text(&self) -> String {
        self.0.log_text()
    }

    /// The proxy is running and answers `version` on a new connection.
    fn assert_alive(&mut self) {
        assert!(self.0.is_running(), "the proxy died: {}", self.log_text());
        let version = self.connect().call("version\r\n").expect("version");
        assert!(version.starts_with("VERSION "), "{version:?}");
    }

    /// A counter of the proxy's `stats`.
    fn stat(&self, name: &str) -> u64 {
        let stats = self.connect().call("stats\r\n").expect("stats");
        stat_u64(&stats, name).unwrap_or_else(|| panic!("no {name} in {stats}"))
    }

    /// A counter of the proxy's `stats`, or `None` while the proxy refuses the connection that
    /// asks (it is still at its connection limit).
    fn stat_when_admitted(&self, name: &str) -> Option<u64> {
        let stats = self.connect().call("stats\r\n").ok()?;
        Some(stat_u64(&stats, name).unwrap_or_else(|| panic!("no {name} in {stats}")))
    }

    /// Waits until `stats` counter `name` stops moving (or reaches `target`): the proxy has done
    /// what a stalled client let it do.
    fn settle(&self, name: &str, target: u64) -> u64 {
        settle(|| self.stat(name), target)
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

/// Reads `len` bytes, or what came until the connection closed or nothing came for [`WAIT`]
/// (gigabytes through a debug build on a loaded machine take longer than any fixed deadline;
/// a stall does not).
fn read_up_to(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut deadline = Instant::now() + WAIT;
    let mut buf = Vec::with_capacity(len);
    let mut chunk = vec![0; 1 << 20];
    while buf.len() < len && Instant::now() < deadline {
        stream
            .set_read_timeout(Some(deadline - Instant::now()))
            .expect("timeout");
        match stream.read(&mut chunk[..(len - buf.len()).min(1 << 20)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                deadline = Instant::now() + WAIT;
            }
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

/// What the relay does to the server's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Misbehaviour {
    Honest = 0,
    /// Before some replies, one nobody asked for: another key's `VALUE`, a `VA`, an `HD`.
    Unsolicited = 1,
    /// Before some replies, a line of junk.
    Garbage = 2,
    /// Half a reply, then nothing more on that connection.
    HalfThenStall = 3,
    /// Every reply later than the proxy's request timeout.
    Slow = 4,
    /// Half a reply, then the connection closed.
    CloseMidReply = 5,
}

impl Misbehaviour {
    fn from_u8(n: u8) -> Misbehaviour {
        [
            Misbehaviour::Honest,
            Misbehaviour::Unsolicited,
            Misbehaviour::Garbage,
            Misbehaviour::HalfThenStall,
            Misbehaviour::Slow,
            Misbehaviour::CloseMidReply,
        ][usize::from(n)]
    }
}

/// A fake backend: a relay to memcached (so the proxy's health checks, ledger and warm-up see a
/// real server) that misbehaves on command in the server-to-proxy direction.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("relay listener");
        let port = listener.local_addr().expect("relay port").port();
        let mode = Arc::new(AtomicU8::new(Misbehaviour::Honest as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (mode2, stop2) = (mode.clone(), stop.clone());
        thread::spawn(move || {
            for proxy_side in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(proxy_side) = proxy_side else { continue };
                let Ok(server_side) = TcpStream::connect(server) else {
                    continue;
                };
                let (up_from, up_to) = (
                    proxy_side.try_clone().expect("clone"),
                    server_side.try_clone().expect("clone"),
                );
                thread::spawn(move || copy_up(up_from, up_to));
                let (mode, stop) = (mode2.clone(), stop2.clone());
                thread::spawn(move || copy_down(server_side, proxy_side, &mode, &stop));
            }
        });
        Relay { port, mode, stop }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set(&self, mode: Misbehaviour) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Proxy to server, as is.
fn copy_up(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Server to proxy, misbehaving as `mode` says.
fn copy_down(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU8, stop: &AtomicBool) {
    let mut buf = vec![0; 64 * 1024];
    let (mut chunks, mut at_boundary, mut stalled) = (0u64, true, false);
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stalled
                    && Misbehaviour::from_u8(mode.load(Ordering::Relaxed)) == Misbehaviour::Honest
                {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        if stalled {
            continue;
        }
        let chunk = &buf[..n];
        chunks += 1;
        let written = match Misbehaviour::from_u8(mode.load(Ordering::Relaxed)) {
            Misbehaviour::Honest => to.write_all(chunk),
            Misbehaviour::Unsolicited => {
                if at_boundary && chunks % 25 == 0 {
                    let key = format!("k{}", chunks % KEYS);
                    let value = value_of(&key);
                    let stray = match chunks % 75 {
                        0 => format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len()),
                        25 => format!("VA {}\r\n{value}\r\n", value.len()),
                        _ => "HD\r\n".to_string(),
                    };
                    let _ = to.write_all(stray.as_bytes());
                }
                to.write_all(chunk)
            }
            Misbehaviour::Garbage => {
                if chunks % 3 == 0 {
                    let _ = to.write_all(b"\x00\xffgarbage here \x7f\r\n");
                }
                to.write_all(chunk)
            }
            Misbehaviour::HalfThenStall => {
                stalled = true;
                to.write_all(&chunk[..n / 2])
            }
            Misbehaviour::Slow => {
                thread::sleep(Duration::from_millis(700));
                to.write_all(chunk)
            }
            Misbehaviour::CloseMidReply => {
                let _ = to.write_all(&chunk[..n / 2]);
                break;
            }
        };
        if written.is_err() {
            break;
        }
        at_boundary = chunk.ends_with(b"\r\n");
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Keys the fake-backend scenario reads; each key's value names the key.
const KEYS: u64 = 40;

fn value_of(key: &str) -> String {
    format!("value-of-{key}-{}", "x".repeat(40))
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    correct: u64,
    misses: u64,
    errors: u64,
    wrong: Vec<String>,
}

/// One client connection reading lines with a deadline.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn connect(addr: SocketAddr) -> Reader {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            let mut chunk = [0; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn data(&mut self, len: usize) -> Option<String> {
        while self.buf.len() < len + 2 {
            let mut chunk = [0; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let data = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len + 2);
        Some(data)
    }
}

/// One round of requests of every kind on `keys`; every value is checked against its key.
fn round(reader: &mut Reader, n: u64, seen: &mut Seen) -> Option<()> {
    let a = format!("k{}", n % KEYS);
    let b = format!("k{}", (n * 7 + 3) % KEYS);
    let requests = format!(
        "get {a}\r\nget {a} {b}\r\nmg {a} v\r\nmg {b} v k Oq{n}\r\nmg {a} v q\r\nmn\r\nset {b} 0 0 {}\r\n{}\r\n",
        value_of(&b).len(),
        value_of(&b)
    );
    reader.stream.write_all(requests.as_bytes()).ok()?;
    // get a; get a b
    for asked in [vec![a.clone()], vec![a.clone(), b.clone()]] {
        let mut hits = 0;
        loop {
            let line = reader.line()?;
            if line == "END" {
                seen.misses += (asked.len() - hits) as u64;
                break;
            }
            if line.starts_with("SERVER_ERROR") {
                seen.errors += 1;
                break;
            }
            let words: Vec<&str> = line.split(' ').collect();
            if words.len() < 4 || words[0] != "VALUE" {
                seen.wrong.push(format!("get {asked:?}: {line:?}"));
                return None;
            }
            let data = reader.data(words[3].parse().ok()?)?;
            if !asked.iter().any(|k| k == words[1]) || data != value_of(words[1]) {
                seen.wrong.push(format!("get {asked:?}: {line} {data}"));
            } else {
                hits += 1;
                seen.correct += 1;
            }
        }
    }
    // mg a v; mg b v k O; mg a v q + mn
    for (key, token) in [
        (&a, None),
        (&b, Some(format!("q{n}"))),
        (&a, Some(String::new())),
    ] {
        let quiet = token.as_deref() == Some("");
        let line = reader.line()?;
        if line.starts_with("VA ") {
            let len = line.split(' ').nth(1)?.parse().ok()?;
            let data = reader.data(len)?;
            let token_ok = match token.as_deref() {
                Some(t) if !t.is_empty() => {
                    line.contains(&format!(" O{t}")) && line.contains(&format!(" k{key}"))
                }
                _ => !line.contains(" O"),
            };
            if data == value_of(key) && token_ok {
                seen.correct += 1;
            } else {
                seen.wrong.push(format!("mg {key}: {line} {data}"));
            }
        } else if line.starts_with("EN") {
            seen.misses += 1;
        } else if line.starts_with("SERVER_ERROR") {
            seen.errors += 1;
        } else if quiet && line == "MN" {
            seen.misses += 1;
            continue;
        } else {
            seen.wrong.push(format!("mg {key}: {line:?}"));
            return None;
        }
        if quiet && reader.line()? != "MN" {
            seen.wrong.push("mn: no MN".into());
            return None;
        }
    }
    let stored = reader.line()?;
    if stored != "STORED" && !stored.starts_with("SERVER_ERROR") {
        seen.wrong.push(format!("set: {stored:?}"));
    }
    Some(())
}

/// A fake backend that sends unsolicited replies, garbage, half a reply then stalls, answers
/// very slowly, closes mid-reply: clients get errors or correct data, never another key's
/// value, and the proxy serves again once the backend behaves.
#[test]
fn misbehaving_backend_never_hands_a_client_another_keys_value() {
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let relay = Relay::start(backend.addr());
    let mut proxy = Proxy::start(&["-s", &relay.addr()]);
    let mut client = proxy.connect();
    for i in 0..KEYS {
        let key = format!("k{i}");
        let value = value_of(&key);
        let stored = client
            .call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
            .expect("set");
        assert_eq!(stored, "STORED\r\n");
    }
    let before = proxy.peak_kib();
    let (mut outcomes, mut wrong) = (Vec::new(), Vec::new());
    for mode in [
        Misbehaviour::Unsolicited,
        Misbehaviour::Garbage,
        Misbehaviour::HalfThenStall,
        Misbehaviour::Slow,
        Misbehaviour::CloseMidReply,
    ] {
        relay.set(mode);
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let addr = proxy.addr();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut reader = Reader::connect(addr);
                    for n in 0..150 {
                        if round(&mut reader, w * 1000 + n, &mut seen).is_none() {
                            // The proxy closed the connection or a reply was cut: a new one.
                            reader = Reader::connect(addr);
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut seen = Seen::default();
        for worker in workers {
            let one = worker.join().expect("client thread");
            seen.correct += one.correct;
            seen.misses += one.misses;
            seen.errors += one.errors;
            seen.wrong.extend(one.wrong);
        }
        relay.set(Misbehaviour::Honest);
        // Recovery: a fresh value is stored and read back through the proxy.
        let deadline = Instant::now() + WAIT;
        let mut n = 0;
        loop {
            n += 1;
            let mut reader = Reader::connect(proxy.addr());
            let mut check = Seen::default();
            if round(&mut reader, n, &mut check).is_some()
                && check.errors == 0
                && check.misses == 0
                && check.wrong.is_empty()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: the proxy never served again: {check:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        outcomes.push(format!(
            "{mode:?}: {} correct, {} errors, {} misses, {} wrong",
            seen.correct,
            seen.errors,
            seen.misses,
            seen.wrong.len()
        ));
        wrong.extend(seen.wrong.into_iter().map(|w| format!("{mode:?}: {w}")));
    }
    let backends = proxy
        .connect()
        .call("stats backends\r\n")
        .expect("stats backends");
    let growth = proxy.peak_kib().saturating_sub(before);
    proxy.assert_alive();
    println!(
        "ABUSE | proxy: fake backend (unsolicited, garbage, half then stall, slow, close mid-reply) | {} | - | alive, recovered after each; {}",
        mib(growth),
        outcomes.join("; ")
    );
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(5)]);
    assert!(
        backends.contains("bad_replies=") && !backends.contains("bad_replies=0 "),
        "the bad replies are counted: {backends}"
    );
    assert!(
        growth < 32 * 1024,
        "the proxy grew by {} (bound 32 MB)",
        mib(growth)
    );
}

/// SIGHUP (`systemctl reload`) reads `--config` again: timeouts change while running, each
/// change is logged, what needs a restart (another server) is said and not applied, a broken
/// file keeps the running configuration, and a burst of hangups does no harm.
#[test]
fn sighup_reloads_the_configuration_and_never_kills_the_proxy() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let other = memcached(&["-m", "64"]).expect("memcached");
    let file = std::env::temp_dir().join(format!(
        "keepcached-abuse-proxy-{}.toml",
        std::process::id()
    ));
    let write = |timeout: u64, servers: &[String]| {
        let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        std::fs::write(
            &file,
            format!(
                "[[pools]]\nname = \"main\"\nservers = [{}]\n[backend]\nrequest_timeout_ms = {timeout}\n",
                servers.join(", ")
            ),
        )
        .expect("write the configuration");
    };
    let one = [backend.addr().to_string()];
    write(500, &one);
    let mut proxy = Proxy::start(&["--config", file.to_str().expect("path")]);
    let pid = Pid::from_raw(i32::try_from(proxy.0.pid()).expect("pid"));
    let setting = |proxy: &Proxy, name: &str| {
        let settings = proxy
            .connect()
            .call("stats settings\r\n")
            .expect("stats settings");
        stat_u64(&settings, name).unwrap_or_else(|| panic!("no {name} in {settings}"))
    };
    let logged = |proxy: &Proxy, text: &str, times: usize| {
        let deadline = Instant::now() + WAIT;
        while proxy.log_text().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log: {}",
                proxy.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };

    // The port accepts before SIGHUP is handled (until then it is ignored, not fatal): the
    // first signal waits for the proxy to say it serves.
    logged(&proxy, "proxy serving", 1);
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    logged(&proxy, "configuration reloaded: nothing changed", 1);
    proxy.assert_alive();

    write(900, &[one[0].clone(), other.addr().to_string()]);
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    logged(&proxy, "configuration change applied", 1);
    logged(&proxy, "configuration change needs a restart", 1);
    assert_eq!(setting(&proxy, "request_timeout_ms"), 900);
    let log = proxy.log_text();
    assert!(log.contains("backend.request_timeout_ms"), "{log}");
    assert!(log.contains("key=pools"), "{log}");
    proxy.assert_alive();

    std::fs::write(&file, "[[pools]\nthis is not toml").expect("write");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    logged(&proxy, "configuration not reloaded", 1);
    assert_eq!(setting(&proxy, "request_timeout_ms"), 900);
    proxy.assert_alive();

    write(700, &one);
    for _ in 0..20 {
        kill(pid, Signal::SIGHUP).expect("SIGHUP");
    }
    logged(&proxy, "to=700", 1);
    assert_eq!(setting(&proxy, "request_timeout_ms"), 700);
    let mut client = proxy.connect();
    assert_eq!(
        client.call("set k 0 0 1\r\nv\r\n").expect("set"),
        "STORED\r\n"
    );
    assert_eq!(
        client.call("get k\r\n").expect("get"),
        "VALUE k 0 1\r\nv\r\nEND\r\n"
    );
    proxy.assert_alive();
    println!(
        "ABUSE | proxy: SIGHUP (unchanged, timeout and server changed, broken file, 20 in a burst) | - | - | alive, timeout applied, server change logged as needing a restart, broken file kept the running configuration"
    );
    let _ = std::fs::remove_file(&file);
}

/// 300 connections against `-n 100`: the ones over the limit get memcached's error and are
/// closed, the others are served, and once they close a new client is served.
#[test]
fn connection_flood_above_the_limit() {
    keepcached_testkit::raise_open_file_limit(4096).expect("open-file limit");
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let mut proxy = Proxy::start(&["-n", "100", "-s", &backend.addr().to_string()]);
    let before = proxy.peak_kib();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0; 64];
        match stream.read(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"ERROR Too many open connections") => refused += 1,
            _ => held.push(stream),
        }
    }
    // Those still open are served.
    let mut served = 0;
    for stream in held.iter_mut().take(10) {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.write_all(b"version\r\n").expect("version");
        let mut buf = [0; 64];
        let n = stream.read(&mut buf).expect("reply");
        assert!(buf[..n].starts_with(b"VERSION "), "{:?}", &buf[..n]);
        served += 1;
    }
    let open = held.len();
    drop(held);
    let deadline = Instant::now() + WAIT;
    // `curr_connections` counts client connections: only the one asking is left. Until the
    // proxy has seen the held ones close, it may still refuse the one asking.
    while proxy
        .stat_when_admitted("curr_connections")
        .is_none_or(|open| open > 1)
    {
        assert!(Instant::now() < deadline, "connections never closed");
        thread::sleep(Duration::from_millis(20));
    }
    proxy.assert_alive();
    let growth = proxy.peak_kib().saturating_sub(before);
    println!(
        "ABUSE | proxy: 300 connections against -n 100 | {} | - | alive, {refused} refused with memcached's error, {open} open and served",
        mib(growth)
    );
    assert_eq!(refused + open, 300);
    assert!(
        refused >= 195 && open <= 105 && served == 10,
        "{refused} refused, {open} open"
    );
    assert!(
        growth < 32 * 1024,
        "the proxy grew by {} (bound 32 MB)",
        mib(growth)
    );
}

/// 1,000 connections each sending part of a request and nothing more (a line without its end,
/// a set without all its data): another client is served meanwhile, and the proxy stays small.
#[test]
fn slowloris_does_not_stop_other_clients() {
    keepcached_testkit::raise_open_file_limit(4096).expect("open-file limit");
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let mut proxy = Proxy::start(&["-s", &backend.addr().to_string()]);
    let before = proxy.peak_kib();
    let dribblers: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
            let partial: &[u8] = match i % 3 {
                0 => b"get slow",
                1 => b"set slow 0 0 100000\r\nabc",
                _ => b"mg slow v",
            };
            stream.write_all(partial).expect("partial request");
            stream
        })
        .collect();
    let mut client = proxy.connect();
    assert_eq!(
        client.call("set k 0 0 1\r\nv\r\n").expect("set"),
        "STORED\r\n"
    );
    assert_eq!(
        client.call("get k\r\n").expect("get"),
        "VALUE k 0 1\r\nv\r\nEND\r\n"
    );
    let open = proxy.stat("curr_connections");
    proxy.assert_alive();
    let growth = proxy.peak_kib().saturating_sub(before);
    drop(dribblers);
    println!(
        "ABUSE | proxy: 1,000 connections dribbling partial requests | {} | - | alive, another client served, {open} connections open",
        mib(growth)
    );
    assert!(open > 1000, "the dribbling connections are open: {open}");
    assert!(
        growth < 64 * 1024,
        "the proxy grew by {} (bound 64 MB)",
        mib(growth)
    );
}

/// 10,000 seeded random and mutated requests, replies read as they come: the proxy answers
/// on, stays small, and what it acknowledged is still there.
#[test]
fn seeded_random_requests() {
    let backend = memcached(&["-m", "64"]).expect("memcached");
    let mut proxy = Proxy::start(&["-s", &backend.addr().to_string()]);
    let mut client = proxy.connect();
    assert_eq!(
        client.call("set keep 0 0 4\r\nsafe\r\n").expect("set"),
        "STORED\r\n"
    );
    let before = proxy.peak_kib();
    let mut generator = keepcached_testkit::parser_invariants::Generator::new(7);
    let mut sent = 0;
    let mut connections = 1;
    let mut stream = TcpStream::connect(proxy.addr()).expect("connect");
    let drain = |stream: &TcpStream| {
        let mut reader = stream.try_clone().expect("clone");
        thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        })
    };
    let mut drainer = drain(&stream);
    while sent < 10_000 {
        let input = generator.input();
        // Requests that would change what is checked afterwards, or stop the proxy's clients.
        if input.windows(4).any(|w| w == b"keep") || input.windows(9).any(|w| w == b"flush_all") {
            continue;
        }
        sent += 1;
        if stream.write_all(&input).is_err() {
            // The proxy closed the connection (quit, a line too long): go on with a new one.
            let _ = drainer.join();
            stream = TcpStream::connect(proxy.addr()).expect("connect");
            drainer = drain(&stream);
            connections += 1;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = drainer.join();
    proxy.assert_alive();
    let growth = proxy.peak_kib().saturating_sub(before);
    assert_eq!(
        client.call("get keep\r\n").expect("get"),
        "VALUE keep 0 4\r\nsafe\r\nEND\r\n"
    );
    println!(
        "ABUSE | proxy: 10,000 seeded random and mutated requests | {} | - | alive, acknowledged write intact, {connections} connections used",
        mib(growth)
    );
    assert!(
        growth < 32 * 1024,
        "the proxy grew by {} (bound 32 MB)",
        mib(growth)
    );
}
