//! Abuse of the binary protocol and of UDP (`-U`), against keepcached and Debian's memcached run
//! the same way:
//! - a binary header declaring a 4 GiB body, for every opcode: answered as memcached answers it,
//!   without a buffer of that size (before: 4 GiB reserved per packet, before authentication);
//! - binary packets whose body is longer than the command reads: answered as memcached does;
//! - UDP amplification: what one 253-byte `get` datagram naming a 1 MB value 60 times makes each
//!   server send (memcached: x238,000);
//! - a 64 KB datagram naming that value 16,000 times: the server's memory must not follow.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::fuzz::{binary_packet, render_binary};
use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::process::proc_status_kib;
use keepcached_testkit::{env, keepcached_server, memcached, Client, End, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
/// A value memcached's default item limit (1 MiB with its item header) takes.
const MB_VALUE: usize = 1_000_000;
const KEPT: &str = "kept";

fn start_pair(flags: &[&str]) -> (ServerProcess, ServerProcess) {
    let ours = keepcached_server(BIN.as_ref(), flags).expect("keepcached");
    let theirs = memcached(flags).expect("memcached");
    (ours, theirs)
}

fn kib(server: &ServerProcess, field: &str) -> u64 {
    proc_status_kib(server.pid(), field).expect("/proc status")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

/// Stores the key every scenario reads back at its end.
fn keep(server: &ServerProcess) {
    let mut c = server.connect().expect("connect");
    let reply = c
        .call(&format!("set {KEPT} 0 0 5\r\nsaved\r\n"))
        .expect("set");
    assert_eq!(reply, "STORED\r\n", "{}", server.label());
}

/// The process is alive, answers `version`, and still has the stored key.
fn assert_healthy(server: &mut ServerProcess) {
    assert!(
        server.is_running(),
        "{} died: {}",
        server.label(),
        server.log_text()
    );
    let mut c = server.connect().expect("connect after the scenario");
    let version = c.call("version\r\n").expect("version");
    assert!(version.starts_with("VERSION "), "{version}");
    let value = c.call(&format!("get {KEPT}\r\n")).expect("get");
    assert_eq!(value, format!("VALUE {KEPT} 0 5\r\nsaved\r\nEND\r\n"));
}

fn version_packet() -> Vec<u8> {
    binary_packet(0x0b, &[], &[], &[], None, 0x7e57, 0)
}

/// A binary exchange: `bytes` then a VERSION packet, read until the VERSION reply, a close, or
/// a quiet second; each response packet rendered.
fn binary_exchange(server: &ServerProcess, bytes: &[u8]) -> String {
    let mut c = server.connect().expect("connect");
    c.set_timeout(Duration::from_secs(1));
    let mut request = bytes.to_vec();
    request.extend(version_packet());
    let version_reply_end = b"1.6.18".to_vec();
    let reply = c
        .exchange(&request, &End::Suffix(version_reply_end))
        .expect("exchange");
    let mut shown = render_binary(&reply.bytes);
    if reply.closed {
        shown.push_str("<closed>");
    } else if reply.timed_out {
        shown.push_str("<waiting>");
    }
    shown
}

/// Extras and key that make each opcode get past its shape checks, so the body length is what
/// is judged.
fn shaped(op: u8) -> (Vec<u8>, Vec<u8>) {
    let extras = match op {
        0x01..=0x03 | 0x11..=0x13 => vec![0; 8],
        0x05 | 0x06 | 0x15 | 0x16 => vec![0; 20],
        0x1c..=0x1e | 0x23 | 0x24 => vec![0; 4],
        _ => Vec::new(),
    };
    let key = match op {
        0x07 | 0x08 | 0x0a | 0x0b | 0x17 | 0x18 | 0x20 => Vec::new(),
        0x21 | 0x22 => b"PLAIN".to_vec(),
        _ => b"k".to_vec(),
    };
    (extras, key)
}

#[test]
fn binary_4gib_body_length_per_opcode() {
    if !env::require("binary_4gib_body_length_per_opcode", false, &["memcached"]) {
        return;
    }
    let (mut ours, mut theirs) = start_pair(&[]);
    keep(&ours);
    keep(&theirs);
    let before = [&ours, &theirs].map(|s| (kib(s, "VmHWM:"), kib(s, "VmPeak:")));
    let mut differences = Vec::new();
    let opcodes: Vec<u8> = (0x00..=0x24).chain([0x40, 0xff]).collect();
    for &op in &opcodes {
        let (extras, key) = shaped(op);
        let packet = binary_packet(op, &extras, &key, &[], Some(0xFFFF_FFF0), 7, 0);
        let (a, b) = (
            binary_exchange(&ours, &packet),
            binary_exchange(&theirs, &packet),
        );
        if a != b {
            differences.push(format!(
                "opcode {op:#04x}\n  memcached:  {b}\n  keepcached: {a}\n"
            ));
        }
    }
    let after = [&ours, &theirs].map(|s| (kib(s, "VmHWM:"), kib(s, "VmPeak:")));
    let growth = |i: usize| (after[i].0 - before[i].0, after[i].1 - before[i].1);
    let ((ours_rss, ours_virtual), (theirs_rss, _)) = (growth(0), growth(1));
    println!(
        "ABUSE | binary body length 0xFFFFFFF0, {} opcodes | {} (virtual {}) | {} | {} answers \
         differ from memcached",
        opcodes.len(),
        mib(ours_rss),
        mib(ours_virtual),
        mib(theirs_rss),
        differences.len()
    );
    assert!(differences.is_empty(), "{}", differences.concat());
    // Before: each packet reserved 4 GiB of address space.
    assert!(
        ours_virtual < 256 * 1024,
        "virtual memory grew by {}",
        mib(ours_virtual)
    );
    assert!(
        ours_rss < 16 * 1024,
        "resident memory grew by {}",
        mib(ours_rss)
    );
    assert_healthy(&mut ours);
    assert_healthy(&mut theirs);
}

#[test]
fn binary_packets_with_a_surplus_body() {
    if !env::require("binary_packets_with_a_surplus_body", false, &["memcached"]) {
        return;
    }
    let (mut ours, mut theirs) = start_pair(&[]);
    keep(&ours);
    keep(&theirs);
    let before = [&ours, &theirs].map(|s| kib(s, "VmHWM:"));
    let stored = binary_packet(0x01, &[0; 8], b"hit", b"value", None, 1, 0);
    let surpluses: Vec<Vec<u8>> = vec![
        binary_packet(0x0a, &[], &[], &[], None, 2, 0),
        b"garbage that is not a packet header".to_vec(),
        vec![0x80, 0x0a],
    ];
    let mut cases = 0;
    let mut differences = Vec::new();
    for (op, extras, key) in [
        (0x1c, &[0u8, 0, 0, 0][..], &b"k"[..]),
        (0x1c, &[0, 0, 0, 0], b"hit"),
        (0x1d, &[0, 0, 0, 0], b"hit"),
        (0x1e, &[0, 0, 0, 0], b"k"),
        (0x23, &[0, 0, 0, 0], b"k"),
        (0x24, &[0, 0, 0, 0], b"hit"),
        (0x10, &[], b""),
        (0x10, &[], b"bogus"),
        (0x01, &[0; 8], b"k"),
        (0x00, &[], b"hit"),
    ] {
        for surplus in &surpluses {
            let declared = (extras.len() + key.len() + surplus.len()) as u32;
            let mut bytes = stored.clone();
            bytes.extend(binary_packet(op, extras, key, &[], Some(declared), 3, 0));
            bytes.extend_from_slice(surplus);
            let (a, b) = (
                binary_exchange(&ours, &bytes),
                binary_exchange(&theirs, &bytes),
            );
            cases += 1;
            if a != b {
                differences.push(format!(
                    "opcode {op:#04x} key {key:?} surplus {surplus:?}\n  memcached:  {b}\n  \
                     keepcached: {a}\n"
                ));
            }
        }
    }
    let growth = [&ours, &theirs].map(|s| kib(s, "VmHWM:"));
    println!(
        "ABUSE | binary packets with a surplus body, {cases} cases | {} | {} | {} answers \
         differ from memcached",
        mib(growth[0] - before[0]),
        mib(growth[1] - before[1]),
        differences.len()
    );
    assert!(differences.is_empty(), "{}", differences.concat());
    assert!(growth[0] - before[0] < 16 * 1024);
    assert_healthy(&mut ours);
    assert_healthy(&mut theirs);
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket.local_addr().expect("addr").port()
}

/// A server with UDP on, the 1 MB value `amp` and the kept key stored over TCP.
fn start_udp(ours: bool) -> (ServerProcess, u16) {
    let port = free_udp_port();
    let port_arg = port.to_string();
    let flags = ["-U", port_arg.as_str(), "-m", "64"];
    let server = if ours {
        keepcached_server(BIN.as_ref(), &flags).expect("keepcached -U")
    } else {
        memcached(&flags).expect("memcached -U")
    };
    keep(&server);
    let mut c = server.connect().expect("connect");
    let value = "a".repeat(MB_VALUE);
    let reply = c
        .call(&format!("set amp 0 0 {MB_VALUE}\r\n{value}\r\n"))
        .expect("set amp");
    assert_eq!(reply, "STORED\r\n");
    (server, port)
}

/// The server's `bytes_written`, less what the `stats` replies themselves added since `from`.
struct Written {
    client: Client,
    stats_replies: u64,
}

impl Written {
    fn new(server: &ServerProcess) -> Written {
        Written {
            client: server.connect().expect("connect"),
            stats_replies: 0,
        }
    }

    fn sample(&mut self) -> u64 {
        self.try_sample().expect("stats")
    }

    /// `None` when the server does not answer `stats` in time (memcached busy sending what a
    /// datagram asked for).
    fn try_sample(&mut self) -> Option<u64> {
        let reply = self.client.call("stats\r\n").ok()?;
        let written = stat_u64(&reply, "bytes_written").expect("bytes_written");
        // This reply is counted in the next sample (a server counts bytes once sent).
        let before = written - self.stats_replies;
        self.stats_replies += reply.len() as u64 + b"VERSION 1.6.18\r\n".len() as u64;
        Some(before)
    }

    /// Samples until the figure stops moving (the server has sent the whole reply).
    fn settled(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.sample();
        let mut stable = 0;
        while stable < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(150));
            let now = self.sample();
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
        }
        last
    }
}

fn send_datagram(port: u16, payload: &[u8]) -> usize {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut datagram = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0];
    datagram.extend_from_slice(payload);
    socket
        .send_to(&datagram, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .expect("send");
    datagram.len()
}

fn get_naming_amp(times: usize) -> Vec<u8> {
    let mut payload = b"get".to_vec();
    for _ in 0..times {
        payload.extend_from_slice(b" amp");
    }
    payload.extend_from_slice(b"\r\n");
    payload
}

#[test]
fn udp_get_amplification() {
    if !env::require("udp_get_amplification", false, &["memcached"]) {
        return;
    }
    let mut factors = Vec::new();
    let mut growths = Vec::new();
    for ours in [true, false] {
        let (mut server, port) = start_udp(ours);
        let mut written = Written::new(&server);
        let before = written.settled();
        let hwm = kib(&server, "VmHWM:");
        let sent = send_datagram(port, &get_naming_amp(60));
        assert_eq!(sent, 253);
        let after = written.settled();
        let amplification = (after - before) as f64 / sent as f64;
        factors.push(amplification);
        growths.push(kib(&server, "VmHWM:") - hwm);
        assert_healthy(&mut server);
        if ours {
            // Ten times the datagram, plus the frame header of each reply datagram.
            assert!(
                after - before <= 10 * 253 + 8,
                "sent {} bytes",
                after - before
            );
        }
    }
    println!(
        "ABUSE | UDP 253-byte get naming a 1 MB value 60 times | {} (x{:.1} amplification) | \
         {} (x{:.1} amplification) | ours refused with SERVER_ERROR",
        mib(growths[0]),
        factors[0],
        mib(growths[1]),
        factors[1]
    );
    assert!(factors[0] <= 11.0);
}

#[test]
fn udp_64k_datagram_memory() {
    if !env::require("udp_64k_datagram_memory", false, &["memcached"]) {
        return;
    }
    // The largest UDP payload over IPv4 is 65,507 bytes: a get naming `amp` 16,373 times.
    let payload = get_naming_amp((65_507 - 8 - 5) / 4);
    let mut growths = Vec::new();
    for ours in [true, false] {
        let (mut server, port) = start_udp(ours);
        let hwm = kib(&server, "VmHWM:");
        let mut written = Written::new(&server);
        let before = written.sample();
        send_datagram(port, &payload);
        if ours {
            written.settled();
            let growth = kib(&server, "VmHWM:") - hwm;
            growths.push((growth, Some(written.sample() - before)));
            assert_healthy(&mut server);
        } else {
            // memcached goes on sending 16 GB for minutes: its growth after 3 s is shown, and
            // what it sent by then if it still answers `stats`.
            thread::sleep(Duration::from_secs(3));
            let growth = kib(&server, "VmHWM:") - hwm;
            growths.push((growth, written.try_sample().map(|w| w - before)));
        }
    }
    let sent =
        |s: Option<u64>| s.map_or("unknown (stats unanswered)".to_string(), |b| b.to_string());
    println!(
        "ABUSE | UDP 64 KB datagram naming a 1 MB value 16,373 times | {} ({} bytes sent) | {} \
         after 3 s ({} bytes sent by then) | ours refused with SERVER_ERROR",
        mib(growths[0].0),
        sent(growths[0].1),
        mib(growths[1].0),
        sent(growths[1].1)
    );
    // The datagram buffer, the refusal and one item's worth of slack.
    assert!(growths[0].0 < 8 * 1024, "grew by {}", mib(growths[0].0));
    assert!(growths[0].1.is_some_and(|b| b < 10 * 65_507 + 1024));
}

/// With SASL on (`-S`), before any authentication: SASL data that cannot fit an item is refused
/// at once ("Out of memory", as memcached's `item_alloc` failure) and a mechanism name over 32
/// bytes with "Invalid arguments"; neither is buffered. memcached is not run: Debian's cannot
/// start with `-S` without a SASL configuration.
#[test]
fn binary_sasl_data_over_the_item_limit() {
    let dir = std::env::temp_dir().join(format!("keepcached-abuse-sasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pwdb = dir.join("pwdb");
    std::fs::write(&pwdb, "alice:wonderland\n").expect("pwdb");
    std::env::set_var("MEMCACHED_SASL_PWDB", &pwdb);
    let mut ours = keepcached_server(BIN.as_ref(), &["-S"]).expect("keepcached -S");
    let before = (kib(&ours, "VmHWM:"), kib(&ours, "VmPeak:"));
    let huge = binary_packet(0x21, &[], b"PLAIN", &[], Some(0xFFFF_FFF0), 1, 0);
    assert_eq!(
        binary_exchange(&ours, &huge),
        "[0x8100 op=21 st=130 opaque=1 e= k= v=Out of memory cas=0]\
         [0x8100 op=0b st=0 opaque=7e57 e= k= v=1.6.18 cas=0]"
    );
    let long_mechanism = binary_packet(0x21, &[], &[b'M'; 33], b"x", None, 2, 0);
    assert_eq!(
        binary_exchange(&ours, &long_mechanism),
        "[0x8100 op=21 st=4 opaque=2 e= k= v=Invalid arguments cas=0]\
         [0x8100 op=0b st=0 opaque=7e57 e= k= v=1.6.18 cas=0]"
    );
    let (rss, virt) = (
        kib(&ours, "VmHWM:") - before.0,
        kib(&ours, "VmPeak:") - before.1,
    );
    println!(
        "ABUSE | binary SASL_AUTH with 0xFFFFFFF0 body under -S, before authentication | {} \
         (virtual {}) | not run (needs a SASL setup) | refused at once",
        mib(rss),
        mib(virt)
    );
    assert!(rss < 16 * 1024 && virt < 256 * 1024);
    assert!(ours.is_running());
    let _ = std::fs::remove_dir_all(&dir);
}
