//! The binary protocol: libmemcached's `memccapable -b` must pass against keepcached as it does
//! against memcached; a table of raw packets gets the same answers from both (CAS values
//! masked); and SASL PLAIN (`-S` with `MEMCACHED_SASL_PWDB`) lets in only the right password.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, run_with_timeout, ServerProcess};

/// A request packet: header, extras, key, value.
fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let mut p = vec![0x80, opcode];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    p.extend_from_slice(&cas.to_be_bytes());
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
    let mut e = flags.to_be_bytes().to_vec();
    e.extend_from_slice(&exptime.to_be_bytes());
    e
}

fn arith_extras(delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    let mut e = delta.to_be_bytes().to_vec();
    e.extend_from_slice(&initial.to_be_bytes());
    e.extend_from_slice(&exptime.to_be_bytes());
    e
}

/// Sends `bytes`, reads until the server is quiet for a moment or closes, and renders each
/// response packet as `opcode status key=... value=...`, CAS shown only as zero or not.
///
/// A case may rightly get no answer (a quiet command, a body still awaited), so silence ends
/// the read; the first answer may come late on a loaded machine, so the silence that ends a
/// read before anything came is longer than the one between packets.
fn exchange(server: &ServerProcess, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut closed = false;
    loop {
        let quiet = if got.is_empty() { 1_000 } else { 300 };
        stream
            .set_read_timeout(Some(Duration::from_millis(quiet)))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let mut out = String::new();
    let mut rest = got.as_slice();
    while rest.len() >= 24 {
        let keylen = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let extlen = usize::from(rest[4]);
        let status = u16::from_be_bytes([rest[6], rest[7]]);
        let body = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        let cas = u64::from_be_bytes(rest[16..24].try_into().expect("8 bytes"));
        let end = (24 + body).min(rest.len());
        let payload = &rest[24..end];
        let (extras, tail) = payload.split_at(extlen.min(payload.len()));
        let (key, value) = tail.split_at(keylen.min(tail.len()));
        out.push_str(&format!(
            "[op={:02x} status={status} extras={extras:02x?} key={} value={} cas={}]",
            rest[1],
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value),
            if cas == 0 { "0" } else { "set" }
        ));
        rest = &rest[end..];
    }
    if closed {
        out.push_str("<closed>");
    }
    out
}

fn table() -> Vec<(&'static str, Vec<u8>)> {
    let set = |k: &[u8], v: &[u8]| packet(0x01, &set_extras(5, 0), k, v, 0);
    vec![
        ("noop", packet(0x0a, &[], &[], &[], 0)),
        ("version", packet(0x0b, &[], &[], &[], 0)),
        (
            "set get getk",
            [
                set(b"k", b"v"),
                packet(0x00, &[], b"k", &[], 0),
                packet(0x0c, &[], b"k", &[], 0),
            ]
            .concat(),
        ),
        (
            "quiet get hit and miss",
            [
                set(b"k", b"v"),
                packet(0x09, &[], b"k", &[], 0),
                packet(0x0d, &[], b"nope", &[], 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        (
            "get and getk miss",
            [
                packet(0x00, &[], b"nope", &[], 0),
                packet(0x0c, &[], b"nope", &[], 0),
            ]
            .concat(),
        ),
        (
            "setq then failed addq",
            [
                packet(0x11, &set_extras(0, 0), b"k", b"v", 0),
                packet(0x12, &set_extras(0, 0), b"k", b"v", 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        (
            "replace missing",
            packet(0x03, &set_extras(0, 0), b"zz", b"x", 0),
        ),
        (
            "set with a stale cas",
            [
                set(b"k", b"v"),
                packet(0x01, &set_extras(0, 0), b"k", b"w", 999_999),
            ]
            .concat(),
        ),
        (
            "set with a cas on a missing key",
            packet(0x01, &set_extras(0, 0), b"zz", b"w", 999_999),
        ),
        (
            "append and prepend",
            [
                packet(0x0e, &[], b"zz", b"x", 0),
                set(b"k", b"v"),
                packet(0x0e, &[], b"k", b"x", 0),
                packet(0x0f, &[], b"k", b"y", 0),
                packet(0x00, &[], b"k", &[], 0),
            ]
            .concat(),
        ),
        (
            "delete",
            [
                set(b"k", b"v"),
                packet(0x04, &[], b"k", &[], 0),
                packet(0x04, &[], b"k", &[], 0),
            ]
            .concat(),
        ),
        (
            "delete with a stale cas",
            [set(b"k", b"v"), packet(0x04, &[], b"k", &[], 1)].concat(),
        ),
        (
            "incr creates then adds",
            [
                packet(0x05, &arith_extras(5, 10, 0), b"n", &[], 0),
                packet(0x05, &arith_extras(5, 10, 0), b"n", &[], 0),
                packet(0x06, &arith_extras(100, 0, 0), b"n", &[], 0),
            ]
            .concat(),
        ),
        (
            "incr without create",
            packet(0x05, &arith_extras(1, 0, u32::MAX), b"n", &[], 0),
        ),
        (
            "incr non-numeric",
            [
                set(b"k", b"v"),
                packet(0x05, &arith_extras(1, 0, 0), b"k", &[], 0),
            ]
            .concat(),
        ),
        (
            "touch gat gatk",
            [
                set(b"k", b"vv"),
                packet(0x1c, &100u32.to_be_bytes(), b"k", &[], 0),
                packet(0x1d, &100u32.to_be_bytes(), b"k", &[], 0),
                packet(0x23, &100u32.to_be_bytes(), b"k", &[], 0),
            ]
            .concat(),
        ),
        (
            "gatq miss is silent",
            [
                packet(0x1e, &100u32.to_be_bytes(), b"nope", &[], 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        (
            "flush with and without extras",
            [
                set(b"k", b"v"),
                packet(0x08, &0u32.to_be_bytes(), &[], &[], 0),
                packet(0x18, &[], &[], &[], 0),
                packet(0x00, &[], b"k", &[], 0),
            ]
            .concat(),
        ),
        ("quit", packet(0x07, &[], &[], &[], 0)),
        ("quitq", packet(0x17, &[], &[], &[], 0)),
        ("stat reset", packet(0x10, &[], b"reset", &[], 0)),
        ("stat unknown group", packet(0x10, &[], b"bogus", &[], 0)),
        (
            "verbosity is unknown and swallows its body",
            [
                packet(0x1b, &1u32.to_be_bytes(), &[], &[], 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        (
            "unknown opcode",
            [
                packet(0x40, &[], &[], b"xx", 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        (
            "key longer than the body",
            [
                vec![0x80, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2],
                vec![0; 12],
                b"abcde".to_vec(),
            ]
            .concat(),
        ),
        ("get with extras", packet(0x00, b"1234", b"k", &[], 0)),
        (
            "key over 250 bytes",
            packet(0x00, &[], &[b'k'; 251], &[], 0),
        ),
        (
            "set without key",
            packet(0x01, &set_extras(0, 0), &[], b"x", 0),
        ),
        (
            "too large set",
            [
                packet(0x01, &set_extras(0, 0), b"big", &vec![b'x'; 2 << 20], 0),
                packet(0x0a, &[], &[], &[], 0),
            ]
            .concat(),
        ),
        ("sasl without -S", packet(0x20, &[], &[], &[], 0)),
    ]
}

#[test]
fn binary_packets_match_memcached() {
    if !env::require("binary_packets_match_memcached", true, &["memcached"]) {
        return;
    }
    let reference = Target::memcached().start(&[]).expect("memcached");
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(&[])
        .expect("keepcached");
    let mut failures = Vec::new();
    let cases = table();
    for (name, bytes) in &cases {
        for server in [&reference, &subject] {
            exchange(server, &packet(0x08, &[], &[], &[], 0));
        }
        let want = exchange(&reference, bytes);
        let got = exchange(&subject, bytes);
        if want != got {
            failures.push(format!(
                "[{name}]\n  memcached:  {want}\n  keepcached: {got}\n"
            ));
        }
    }
    eprintln!(
        "binary protocol: {} cases, {} mismatches",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.concat());
}

/// The stat names, in order, of a `stats GROUP` asked over binary and over text.
fn stat_names(server: &ServerProcess, group: &str) -> (Vec<String>, Vec<String>) {
    let binary = exchange(server, &packet(0x10, &[], group.as_bytes(), &[], 0));
    let binary = binary
        .split("key=")
        .skip(1)
        .map(|packet| packet.split(" value=").next().unwrap_or("").to_string())
        .filter(|name| !name.is_empty())
        .collect();
    let mut client = server.connect().expect("connect");
    let text = client.call(&format!("stats {group}\r\n")).expect("stats");
    let text = text
        .lines()
        .filter_map(|line| line.split(' ').nth(1).map(String::from))
        .collect();
    (binary, text)
}

/// docs/meta.md: `stats items` and `stats slabs` over binary report keepcached's own fields, the
/// ones its text `stats items` and `stats slabs` report, as memcached's binary ones report its
/// own.
#[test]
fn stats_items_and_slabs_over_binary_are_the_text_ones() {
    if !env::require(
        "stats_items_and_slabs_over_binary_are_the_text_ones",
        false,
        &["memcached"],
    ) {
        return;
    }
    let mut seen = Vec::new();
    for target in [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ] {
        let server = target.start(&[]).expect("server");
        let mut client = server.connect().expect("connect");
        assert_eq!(
            client.call("set a 0 0 1\r\n1\r\n").expect("set"),
            "STORED\r\n"
        );
        for group in ["items", "slabs"] {
            let (binary, text) = stat_names(&server, group);
            assert!(text.contains(&"active_slabs".to_string()) || group == "items");
            assert!(text.contains(&"items:1:number".to_string()) || group == "slabs");
            assert_eq!(binary, text, "{}: stats {group}", target.label);
            seen.push(binary);
        }
    }
    assert_ne!(seen[0], seen[2], "keepcached's stats items are its own");
    assert_ne!(seen[1], seen[3], "keepcached's stats slabs are its own");
}

#[test]
fn memccapable_binary_checks_all_pass() {
    if !env::require("memccapable_binary_checks_all_pass", true, &["memccapable"]) {
        return;
    }
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&[])
        .expect("keepcached");
    let port = server.port().to_string();
    let out = run_with_timeout(
        Command::new("memccapable").args(["-b", "-t", "5", "-h", "127.0.0.1", "-p", &port]),
        Duration::from_secs(180),
    )
    .expect("memccapable runs");
    eprintln!("{}{}", out.stdout, out.stderr);
    let checks: Vec<&str> = out.stdout.lines().filter(|l| l.contains('[')).collect();
    assert!(checks.len() >= 25, "too few checks ran: {checks:?}");
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.contains("[pass]")).collect();
    assert!(failed.is_empty(), "memccapable -b failures: {failed:?}");
}

#[test]
fn sasl_plain_lets_in_only_the_right_password() {
    let dir = std::env::temp_dir().join(format!("keepcached-sasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pwdb = dir.join("pwdb");
    std::fs::write(&pwdb, "alice:wonderland\n").expect("pwdb");
    std::env::set_var("MEMCACHED_SASL_PWDB", &pwdb);
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-S"])
        .expect("keepcached -S");
    let get = packet(0x00, &[], b"k", &[], 0);
    assert_eq!(
        exchange(&server, &get),
        "[op=00 status=32 extras=[] key= value=Auth failure. cas=0]<closed>"
    );
    assert_eq!(
        exchange(&server, &packet(0x20, &[], &[], &[], 0)),
        "[op=20 status=0 extras=[] key= value=PLAIN cas=0]"
    );
    let wrong = packet(0x21, &[], b"PLAIN", b"\0alice\0rabbit", 0);
    assert_eq!(
        exchange(&server, &[wrong, get.clone()].concat()),
        "[op=21 status=32 extras=[] key= value=Auth failure. cas=0][op=00 status=32 extras=[] key= value=Auth failure. cas=0]<closed>"
    );
    let right = packet(0x21, &[], b"PLAIN", b"\0alice\0wonderland", 0);
    assert_eq!(
        exchange(&server, &[right, get].concat()),
        "[op=21 status=0 extras=[] key= value=Authenticated cas=0][op=00 status=1 extras=[] key= value=Not found cas=0]"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
