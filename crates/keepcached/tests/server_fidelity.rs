//! memcached 1.6 behaviours beyond the request/reply tables, each run against Debian's
//! memcached 1.6.18 and `keepcached server` with the same flags and held to the same outcome:
//! idle connections kicked (`-o idle_timeout`), read buffer limits (`-o read_buf_mem_limit`),
//! ephemeral ports reported through `MEMCACHED_PORT_FILENAME`, the LRU crawler's commands,
//! `watch` and the slab-class stats.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, ServerProcess};

fn targets() -> [Target; 2] {
    [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ]
}

/// What a connection shows within `wait`: the bytes it received and whether it was closed.
fn observe(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("read: {e}"),
        }
    }
    (got, false)
}

fn stats(server: &ServerProcess, group: &str) -> String {
    let mut client = server.connect().expect("connect");
    let request = if group.is_empty() {
        "stats\r\n".to_string()
    } else {
        format!("stats {group}\r\n")
    };
    client.call(&request).expect("stats")
}

/// `-o idle_timeout=1`: a connection waiting for a request, or in the middle of a request line,
/// is closed without a word once idle that long, and counted in `idle_kicks`; one waiting for
/// a value's data is left open.
#[test]
fn idle_timeout_kicks_idle_connections() {
    if !env::require("idle_timeout_kicks_idle_connections", false, &["memcached"]) {
        return;
    }
    for target in targets() {
        let server = target.start(&["-o", "idle_timeout=1"]).expect("server");
        let open = || TcpStream::connect(server.addr()).expect("connect");
        let mut idle = open();
        let mut partial_line = open();
        partial_line.write_all(b"get k").expect("write");
        let mut value_arriving = open();
        value_arriving
            .write_all(b"set k 0 0 10\r\nabc")
            .expect("write");
        // memcached checks idleness about once a second: allow it several rounds.
        for (name, conn) in [("idle", &mut idle), ("partial line", &mut partial_line)] {
            let (got, closed) = observe(conn, Duration::from_secs(15));
            assert!(
                closed && got.is_empty(),
                "{}: the {name} connection should be closed silently, got {got:?} closed={closed}",
                target.label
            );
        }
        let (got, closed) = observe(&mut value_arriving, Duration::from_millis(1500));
        assert!(
            !closed && got.is_empty(),
            "{}: a connection receiving a value is not idle",
            target.label
        );
        assert_eq!(
            stat_u64(&stats(&server, ""), "idle_kicks"),
            Some(2),
            "{}",
            target.label
        );
        value_arriving.write_all(b"defghij\r\n").expect("write");
        let (got, _) = observe(&mut value_arriving, Duration::from_secs(2));
        assert_eq!(got, b"STORED\r\n", "{}", target.label);
    }
}

/// `-o read_buf_mem_limit=1`: a multi-get too large for the limit is answered `SERVER_ERROR out
/// of memory writing get response`, counted in `response_obj_oom`, and the connection goes on
/// with the next request. (memcached runs out of reply objects, keepcached of read buffer for
/// the line: the line here is long enough for both.)
#[test]
fn multiget_beyond_read_buf_mem_limit() {
    if !env::require("multiget_beyond_read_buf_mem_limit", false, &["memcached"]) {
        return;
    }
    let mut request = b"get".to_vec();
    for i in 0..300_000 {
        request.extend_from_slice(format!(" k{i:06}").as_bytes());
    }
    request.extend_from_slice(b"\r\nversion\r\n");
    for target in targets() {
        let server = target
            .start(&["-o", "read_buf_mem_limit=1"])
            .expect("server");
        let mut conn = TcpStream::connect(server.addr()).expect("connect");
        conn.write_all(&request).expect("write");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while !got.ends_with(b"VERSION 1.6.18\r\n") && Instant::now() < deadline {
            let (more, closed) = observe(&mut conn, Duration::from_millis(500));
            got.extend_from_slice(&more);
            assert!(!closed, "{}: closed after {got:?}", target.label);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "SERVER_ERROR out of memory writing get response\r\nVERSION 1.6.18\r\n",
            "{}",
            target.label
        );
        let stats = stats(&server, "");
        assert_eq!(
            stat_u64(&stats, "response_obj_oom"),
            Some(1),
            "{}",
            target.label
        );
        for name in [
            "read_buf_count",
            "read_buf_bytes",
            "read_buf_bytes_free",
            "read_buf_oom",
        ] {
            assert!(
                stat_u64(&stats, name).is_some(),
                "{}: stats lacks {name}",
                target.label
            );
        }
        if target.label == "keepcached" {
            // The refused line held the budget only until it was refused.
            assert_eq!(stat_u64(&stats, "read_buf_oom"), Some(1));
            assert_eq!(stat_u64(&stats, "read_buf_bytes"), Some(0));
            // A value still arriving holds its buffer beyond the first read chunk.
            let mut arriving = TcpStream::connect(server.addr()).expect("connect");
            arriving
                .write_all(&[&b"set big 0 0 500000\r\n"[..], &[b'v'; 100_000]].concat())
                .expect("write");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let stats = self::stats(&server, "");
                if stat_u64(&stats, "read_buf_count") == Some(1) {
                    let bytes = stat_u64(&stats, "read_buf_bytes").expect("read_buf_bytes");
                    let free = stat_u64(&stats, "read_buf_bytes_free").expect("free");
                    assert!(bytes > 0 && bytes + free == 1024 * 1024, "{stats}");
                    break;
                }
                assert!(Instant::now() < deadline, "{stats}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A `get` line of `len` bytes naming 200-byte keys that no test stores, without its newline.
fn multiget_line(len: usize) -> Vec<u8> {
    let mut line = b"get".to_vec();
    let mut i = 0u32;
    while line.len() < len {
        let key = format!(" {i:0>200}");
        line.extend_from_slice(&key.as_bytes()[..key.len().min(len - line.len())]);
        i += 1;
    }
    line
}

/// docs/limits.md: a multi-get line may run to 4 MiB; one that reaches past that without a newline
/// closes the connection, where memcached holds it however long it grows.
#[test]
fn a_multiget_line_past_4_mib_closes_the_connection() {
    if !env::require(
        "a_multiget_line_past_4_mib_closes_the_connection",
        false,
        &["memcached"],
    ) {
        return;
    }
    const MIB: usize = 1024 * 1024;
    let beyond = multiget_line(4 * MIB + 1024);
    for target in targets() {
        let server = target.start(&[]).expect("server");
        // A line of exactly 4 MiB, its "\r\n" included, is answered.
        let mut at_bound = TcpStream::connect(server.addr()).expect("connect");
        let mut line = multiget_line(4 * MIB - 2);
        line.extend_from_slice(b"\r\n");
        at_bound.write_all(&line).expect("write");
        assert_eq!(until_end(&mut at_bound), b"END\r\n", "{}", target.label);

        let mut conn = TcpStream::connect(server.addr()).expect("connect");
        // keepcached may close before it has read everything: the write then fails.
        let _ = conn.write_all(&beyond);
        if target.label == "keepcached" {
            let (got, closed) = observe(&mut conn, Duration::from_secs(30));
            assert!(
                closed && got.is_empty(),
                "keepcached: the connection should be closed silently, got {got:?} closed={closed}"
            );
        } else {
            // Once memcached has read the whole line, the connection is still open and the
            // newline gets the line answered.
            // bytes_read counts the polls too: each sends "stats\r\n" and the client's
            // "version\r\n".
            let mut poller = server.connect().expect("connect");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut polled = 0;
            loop {
                let read = poller.stat("bytes_read").expect("stats");
                polled += 16;
                if read >= (line.len() + beyond.len() + polled) as u64 {
                    break;
                }
                assert!(Instant::now() < deadline, "memcached did not read the line");
                std::thread::sleep(Duration::from_millis(20));
            }
            let (got, closed) = observe(&mut conn, Duration::from_millis(100));
            assert!(
                !closed && got.is_empty(),
                "memcached: {got:?} closed={closed}"
            );
            conn.write_all(b"\r\n").expect("write");
            assert_eq!(until_end(&mut conn), b"END\r\n", "memcached");
        }
    }
}

/// docs/limits.md: `-o read_buf_mem_limit=0` means the default, a budget as large as `-m`, which
/// `stats settings` shows in bytes and values being received draw from; another figure is
/// taken as MiB.
#[test]
fn read_buf_mem_limit_zero_is_as_much_as_dash_m() {
    let keepcached = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"));
    for (flags, budget) in [
        (&["-m", "32"][..], 32 << 20),
        (&["-m", "32", "-o", "read_buf_mem_limit=0"], 32 << 20),
        (&["-m", "32", "-o", "read_buf_mem_limit=5"], 5 << 20),
    ] {
        let server = keepcached.start(flags).expect("keepcached");
        assert_eq!(
            stat_u64(&stats(&server, "settings"), "read_buf_mem_limit"),
            Some(budget),
            "{flags:?}"
        );
        // A value still arriving holds its buffer beyond the first read chunk, from the budget.
        let mut arriving = TcpStream::connect(server.addr()).expect("connect");
        arriving
            .write_all(&[&b"set big 0 0 900000\r\n"[..], &[b'v'; 100_000]].concat())
            .expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = stats(&server, "");
            if stat_u64(&stats, "read_buf_count") == Some(1) {
                let bytes = stat_u64(&stats, "read_buf_bytes").expect("read_buf_bytes");
                let free = stat_u64(&stats, "read_buf_bytes_free").expect("free");
                assert!(bytes > 0 && bytes + free == budget, "{flags:?}: {stats}");
                break;
            }
            assert!(Instant::now() < deadline, "{flags:?}: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
        arriving.write_all(&[b'v'; 800_000]).expect("write");
        arriving.write_all(b"\r\n").expect("write");
        let (got, _) = observe(&mut arriving, Duration::from_secs(5));
        assert_eq!(got, b"STORED\r\n", "{flags:?}");
    }
}

/// A process started by a test, killed by pid when dropped (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `-p -1 -U -1` with `MEMCACHED_PORT_FILENAME`: every socket gets a port of the kernel's
/// choosing and the file lists them in memcached's format; the ports work and `stats settings`
/// shows -1.
#[test]
fn ephemeral_ports_written_to_port_file() {
    if !env::require(
        "ephemeral_ports_written_to_port_file",
        false,
        &["memcached"],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keepcached-portfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keepcached = env!("CARGO_BIN_EXE_keepcached");
    let programs: [(&str, &[&str]); 2] = [("memcached", &[]), (keepcached, &["server"])];
    let mut files = Vec::new();
    for (i, (program, sub)) in programs.into_iter().enumerate() {
        let file = dir.join(format!("ports{i}"));
        let _ = std::fs::remove_file(&file);
        let mut command = std::process::Command::new(program);
        command
            .args(sub)
            .args(["-u", "root", "-l", "127.0.0.1,::1", "-p", "-1", "-U", "-1"])
            .env("MEMCACHED_PORT_FILENAME", &file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _child = Child(command.spawn().expect("spawn"));
        let deadline = Instant::now() + Duration::from_secs(15);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                break text;
            }
            assert!(Instant::now() < deadline, "{program}: no port file");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut masked = String::new();
        let mut ports = Vec::new();
        for line in text.lines() {
            let (what, port) = line.rsplit_once(' ').expect("a port per line");
            let port: u16 = port.parse().expect("a port number");
            assert_ne!(port, 0, "{program}: {line}");
            ports.push(port);
            masked.push_str(&format!("{what} <port>\n"));
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4, "{program}: one port per socket: {text}");
        let tcp: u16 = text
            .lines()
            .next()
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, p)| p.parse().ok())
            .expect("first line");
        let mut client =
            keepcached_testkit::Client::connect((std::net::Ipv4Addr::LOCALHOST, tcp).into())
                .expect("connect to the written port");
        let settings = client.call("stats settings\r\n").expect("stats settings");
        assert!(
            settings.contains("STAT tcpport -1\r\n") && settings.contains("STAT udpport -1\r\n"),
            "{program}: {settings}"
        );
        files.push(masked);
    }
    assert_eq!(
        files[0],
        "TCP INET: <port>\nTCP INET6: <port>\nUDP INET: <port>\nUDP INET6: <port>\n"
    );
    assert_eq!(files[1], files[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `MEMCACHED_PORT_FILENAME` beyond ephemeral ports, in both servers: a fixed port is written
/// too and the file stays after a SIGTERM; with `-s` (a unix socket) no file is written. A file
/// that cannot be written stops keepcached's start with a non-zero status and a message
/// (memcached says so and serves on, leaving whoever waits for the file waiting).
#[test]
fn the_port_file_with_fixed_ports_unix_sockets_and_bad_paths() {
    if !env::require(
        "the_port_file_with_fixed_ports_unix_sockets_and_bad_paths",
        false,
        &["memcached"],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keepcached-portfile2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keepcached = env!("CARGO_BIN_EXE_keepcached");
    let programs: [(&str, &[&str]); 2] = [("memcached", &[]), (keepcached, &["server"])];
    for (i, (program, sub)) in programs.into_iter().enumerate() {
        let start = |file: &std::path::Path, args: &[&str]| {
            let _ = std::fs::remove_file(file);
            let mut command = std::process::Command::new(program);
            command
                .args(sub)
                .args(["-u", "root"])
                .args(args)
                .env("MEMCACHED_PORT_FILENAME", file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            command.spawn().expect("spawn")
        };
        let wait_for = |what: &str, done: &mut dyn FnMut() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !done() {
                assert!(Instant::now() < deadline, "{program}: {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        let port = keepcached_testkit::free_port().expect("free port");
        let file = dir.join(format!("fixed{i}"));
        let mut server = Child(start(
            &file,
            &["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"],
        ));
        wait_for("no port file for a fixed port", &mut || file.exists());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("TCP INET: {port}\n"),
            "{program}"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        wait_for("still running after SIGTERM", &mut || {
            server.0.try_wait().expect("wait").is_some()
        });
        assert!(file.exists(), "{program}: the port file is gone at exit");

        let socket = dir.join(format!("socket{i}"));
        let file = dir.join(format!("unix{i}"));
        let _server = Child(start(&file, &["-s", socket.to_str().unwrap()]));
        wait_for("no unix socket", &mut || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(!file.exists(), "{program}: a port file for a unix socket");

        if program == "memcached" {
            // memcached prints that it failed to open the file and serves on.
            continue;
        }
        let file = dir.join("no-such-dir").join("ports");
        let mut failed = start(&file, &["-l", "127.0.0.1", "-p", "-1", "-U", "0"]);
        wait_for("still running with an unwritable port file", &mut || {
            failed.try_wait().expect("wait").is_some()
        });
        let out = failed.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program}: {}", out.status);
        assert!(stderr.contains("port file"), "{program}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same few hundred items, of sizes that fall in several of memcached's slab classes.
fn load_items(server: &ServerProcess) {
    let mut request = Vec::new();
    let mut state: u64 = 0x5eed;
    for i in 0..300 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = [1, 10, 100, 1000, 5000, 20_000][(state >> 33) as usize % 6];
        request.extend_from_slice(format!("set key{i} {i} 0 {len}\r\n").as_bytes());
        request.resize(request.len() + len, b'v');
        request.extend_from_slice(b"\r\n");
    }
    let mut client = server.connect().expect("connect");
    client.send(&request).expect("load");
    client.call("version\r\n").expect("loaded");
}

/// Replaces the access times of metadump lines (each server's clock second).
fn mask_access_times(dump: &[u8]) -> String {
    String::from_utf8_lossy(dump)
        .split_inclusive('\n')
        .map(|line| match line.find(" la=") {
            Some(at) => {
                let end = line[at + 4..].find(' ').map_or(line.len(), |e| at + 4 + e);
                format!("{} la=<t>{}", &line[..at], &line[end..])
            }
            None => line.to_string(),
        })
        .collect()
}

/// Reads a reply up to its `END\r\n`.
fn until_end(stream: &mut TcpStream) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !got.ends_with(b"END\r\n") && Instant::now() < deadline {
        let (more, closed) = observe(stream, Duration::from_millis(200));
        got.extend_from_slice(&more);
        assert!(!closed, "closed after {}", String::from_utf8_lossy(&got));
    }
    got
}

/// `lru_crawler`: metadump by class and in hash order, the crawl commands, and requests
/// pipelined behind a metadump, which wait until the client sends more.
#[test]
fn lru_crawler_matches_memcached() {
    if !env::require("lru_crawler_matches_memcached", false, &["memcached"]) {
        return;
    }
    let mut seen = Vec::new();
    for target in targets() {
        let server = target.start(&[]).expect("server");
        load_items(&server);
        let mut conn = TcpStream::connect(server.addr()).expect("connect");
        let mut replies = Vec::new();
        // memcached's hash order is deterministic: compared line for line.
        conn.write_all(b"lru_crawler metadump hash\r\n")
            .expect("write");
        replies.push(mask_access_times(&until_end(&mut conn)));
        // A class walk follows memcached's LRUs: compared as a set of lines.
        conn.write_all(b"lru_crawler metadump 12,1\r\n")
            .expect("write");
        let mut lines: Vec<String> = mask_access_times(&until_end(&mut conn))
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        replies.push(lines.join("\n"));
        conn.write_all(b"lru_crawler metadump 2\r\nversion\r\nget nope\r\n")
            .expect("write");
        let (dump, _) = observe(&mut conn, Duration::from_millis(1500));
        replies.push(String::from_utf8_lossy(&dump).into_owned());
        conn.write_all(b"version\r\n").expect("write");
        let (after, _) = observe(&mut conn, Duration::from_millis(1500));
        replies.push(String::from_utf8_lossy(&after).into_owned());
        for request in [
            "lru_crawler crawl all\r\n",
            "lru_crawler crawl 1,2\r\n",
            "lru_crawler crawl hash\r\n",
            "lru_crawler crawl 64\r\n",
            "lru_crawler mgdump all\r\n",
            "lru_crawler metadump ,\r\n",
        ] {
            let mut client = server.connect().expect("connect");
            // memcached crawls in the background: a crawl asked while the last one runs is
            // answered BUSY for a while that depends on the machine, so each is asked until
            // the crawler is free (ours never answers BUSY).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut reply = client.call(request).expect(request);
            while reply.starts_with("BUSY") && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                reply = client.call(request).expect(request);
            }
            replies.push(reply);
        }
        seen.push((target.label.clone(), replies));
    }
    let (reference, subject) = (&seen[0].1, &seen[1].1);
    assert!(reference[0].lines().count() > 300, "{}", reference[0]);
    assert_eq!(reference[2], "END\r\n", "class 2 holds none of these items");
    assert_eq!(reference[3], "VERSION 1.6.18\r\nEND\r\nVERSION 1.6.18\r\n");
    for (i, (want, got)) in reference.iter().zip(subject).enumerate() {
        assert_eq!(
            want, got,
            "reply {i} differs ({} vs {})",
            seen[0].0, seen[1].0
        );
    }
}

/// docs/meta.md: after one client's `lru_crawler metadump ,` (an empty class list), keepcached
/// goes on dumping for every client; memcached 1.6.18 answers every later dump `ERROR an
/// unknown error happened`.
#[test]
fn dumps_go_on_after_an_empty_class_list() {
    if !env::require(
        "dumps_go_on_after_an_empty_class_list",
        false,
        &["memcached"],
    ) {
        return;
    }
    for target in targets() {
        let server = target.start(&[]).expect("server");
        let mut typo = server.connect().expect("connect");
        assert_eq!(
            typo.call("set a 0 0 1\r\n1\r\n").expect("set"),
            "STORED\r\n"
        );
        assert_eq!(
            typo.call("lru_crawler metadump ,\r\n").expect("metadump ,"),
            "NOTSTARTED no items to crawl\r\n",
            "{}",
            target.label
        );
        for classes in ["all", "1", "hash"] {
            let mut other = TcpStream::connect(server.addr()).expect("connect");
            other
                .write_all(format!("lru_crawler metadump {classes}\r\n").as_bytes())
                .expect("write");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n") && Instant::now() < deadline {
                let (more, closed) = observe(&mut other, Duration::from_millis(200));
                got.extend_from_slice(&more);
                assert!(!closed, "{}: closed", target.label);
            }
            let got = String::from_utf8_lossy(&got);
            if target.label == "memcached" {
                assert_eq!(got, "ERROR an unknown error happened\r\n", "{classes}");
            } else {
                assert!(
                    got.starts_with("key=a exp=-1 ") && got.ends_with(" size=61\nEND\r\n"),
                    "metadump {classes}: {got}"
                );
            }
        }
    }
}

/// The sorted `ITEM` lines of `stats cachedump <class> 0` for each class `stats items` names,
/// once they list as many items as `stats items` counts (memcached lists a class's cold LRU,
/// which new items reach within about a second), or after 10 s.
fn cachedumps(server: &ServerProcess) -> Vec<(u32, Vec<String>)> {
    let items = stats(server, "items");
    let classes: Vec<(u32, usize)> = items
        .lines()
        .filter_map(|line| {
            let name = line.split(' ').nth(1)?;
            let class = name.strip_prefix("items:")?.strip_suffix(":number")?;
            Some((class.parse().ok()?, line.split(' ').nth(2)?.parse().ok()?))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dumps: Vec<(u32, Vec<String>)> = classes
            .iter()
            .map(|(class, _)| {
                let reply = stats(server, &format!("cachedump {class} 0"));
                assert!(reply.ends_with("END\r\n"), "{reply}");
                let mut lines: Vec<String> = reply
                    .lines()
                    .filter(|line| line.starts_with("ITEM "))
                    .map(String::from)
                    .collect();
                lines.sort();
                (*class, lines)
            })
            .collect();
        let complete = dumps
            .iter()
            .zip(&classes)
            .all(|((_, lines), (_, number))| lines.len() == *number);
        if complete || Instant::now() > deadline {
            return dumps;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `stats cachedump`: each class lists the same items, with their sizes and expiry times, as
/// memcached does; a limit cuts the list short; `-X` refuses it and metadump as memcached does.
#[test]
fn cachedump_matches_memcached() {
    if !env::require("cachedump_matches_memcached", false, &["memcached"]) {
        return;
    }
    let mut seen = Vec::new();
    for target in targets() {
        let server = target.start(&[]).expect("server");
        load_items(&server);
        let listings = cachedumps(&server);
        let mut client = server.connect().expect("connect");
        let limited = client.call("stats cachedump 1 2\r\n").expect("limited");
        let mut refused = Vec::new();
        let strict = target.start(&["-X"]).expect("server with -X");
        let mut strict_client = strict.connect().expect("connect");
        for request in [
            "stats cachedump 1 0\r\n",
            "lru_crawler metadump all\r\n",
            "lru_crawler metadump hash\r\n",
        ] {
            refused.push(strict_client.call(request).expect(request));
        }
        let settings = stats(&strict, "settings");
        refused.extend(
            settings
                .lines()
                .filter(|line| line.starts_with("STAT dump_enabled"))
                .map(String::from),
        );
        seen.push((
            target.label.clone(),
            listings,
            limited.matches("ITEM ").count(),
            refused,
        ));
    }
    let (reference, subject) = (&seen[0], &seen[1]);
    assert!(reference.1.len() >= 5, "{reference:?}");
    assert!(reference.1.iter().all(|(_, lines)| !lines.is_empty()));
    assert_eq!(
        reference.1, subject.1,
        "listings ({} vs {})",
        reference.0, subject.0
    );
    assert_eq!((reference.2, subject.2), (2, 2), "a limit of 2");
    assert_eq!(reference.3, subject.3, "with -X");
    assert_eq!(
        subject.3.last().map(String::as_str),
        Some("STAT dump_enabled no")
    );

    // memcached prints an expiry as an absolute time.
    let server = targets()[1].start(&[]).expect("server");
    let mut client = server.connect().expect("connect");
    assert_eq!(
        client.call("set soon 0 1000 1\r\nx\r\n").unwrap(),
        "STORED\r\n"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dump = client.call("stats cachedump 1 0\r\n").unwrap();
    let expiry: u64 = dump
        .strip_prefix("ITEM soon [1 b; ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{dump:?}"));
    assert!(
        (now + 998..=now + 1002).contains(&expiry),
        "{expiry} for now {now}"
    );
}

/// `metadump hash` holds its sorted lines while it is written, so only one is made at a time:
/// another asked meanwhile is answered BUSY, as memcached answers a second crawl, and one
/// asked after the first client has gone is made. (Ours only: memcached answers BUSY to any
/// dump asked during another.)
#[test]
fn one_hash_metadump_at_a_time() {
    let server = targets()[1].start(&[]).expect("server");
    // 90,000 items with 200-byte keys: a 27 MB dump, more than the sockets' buffers hold.
    let mut load = Vec::new();
    for i in 0..90_000 {
        load.extend_from_slice(format!("set {i:0>200} 0 0 1 noreply\r\nv\r\n").as_bytes());
    }
    let mut client = server.connect().expect("connect");
    client.send(&load).expect("load");
    assert!(client.call("version\r\n").unwrap().starts_with("VERSION"));
    let mut first = TcpStream::connect(server.addr()).expect("connect");
    first.write_all(b"lru_crawler metadump hash\r\n").unwrap();
    // One small read: the rest of the dump stays unread, so it stays under way.
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut started = [0u8; 4];
    first
        .read_exact(&mut started)
        .expect("the first dump starts");
    assert_eq!(&started, b"key=");
    assert_eq!(
        client.call("lru_crawler metadump hash\r\n").unwrap(),
        "BUSY currently processing crawler request\r\n"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut second = TcpStream::connect(server.addr()).expect("connect");
    loop {
        second.write_all(b"lru_crawler metadump hash\r\n").unwrap();
        let mut dump = Vec::new();
        let busy = |dump: &[u8]| dump.starts_with(b"BUSY") && dump.ends_with(b"\n");
        while !dump.ends_with(b"END\r\n") && !busy(&dump) {
            let (more, closed) = observe(&mut second, Duration::from_millis(100));
            dump.extend_from_slice(&more);
            assert!(
                !closed && Instant::now() < deadline,
                "{} bytes of the second dump",
                dump.len()
            );
        }
        if !dump.starts_with(b"BUSY") {
            let listed = dump
                .split(|b| *b == b'\n')
                .filter(|l| l.starts_with(b"key="))
                .count();
            assert_eq!(listed, 90_000);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still BUSY after the first client left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the server will not start with exits 64 before binding, saying why: TLS (`-Z`), which
/// it does not speak (README), and SASL with the ASCII protocol only (`-S -B ascii`), which
/// memcached refuses too (docs/meta.md).
#[test]
fn unsupported_options_are_usage_errors() {
    for (args, says) in [
        (&["-Z"][..], "TLS (-Z) is not supported"),
        (
            &["-S", "-B", "ascii"],
            "You cannot allow the ASCII protocol while using SASL.",
        ),
    ] {
        let out = keepcached_testkit::run_with_timeout(
            std::process::Command::new(env!("CARGO_BIN_EXE_keepcached"))
                .args(["server", "-u", "root", "-l", "127.0.0.1", "-p", "0"])
                .args(args),
            Duration::from_secs(30),
        )
        .expect("run");
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(64),
            "{args:?}: {out:?}"
        );
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
    }
}

/// `lru_crawler disable` stops the crawler: `stats settings` says so and crawls and dumps are
/// refused until `lru_crawler enable`; enabling a running crawler fails. `slabs automove`
/// changes the `slab_automove` that `stats settings` shows. As memcached does.
#[test]
fn crawler_and_automove_switches_match_memcached() {
    if !env::require(
        "crawler_and_automove_switches_match_memcached",
        false,
        &["memcached"],
    ) {
        return;
    }
    let setting = |client: &mut keepcached_testkit::Client, name: &str| {
        let settings = client.call("stats settings\r\n").expect("stats settings");
        settings
            .lines()
            .find_map(|line| line.strip_prefix(&format!("STAT {name} ")))
            .map(String::from)
    };
    let mut seen = Vec::new();
    for target in targets() {
        let server = target.start(&[]).expect("server");
        let mut client = server.connect().expect("connect");
        let mut replies = vec![setting(&mut client, "lru_crawler").unwrap_or_default()];
        for request in ["lru_crawler enable\r\n", "lru_crawler disable\r\n"] {
            replies.push(client.call(request).expect(request));
        }
        // memcached's crawler thread stops a moment after it is told to.
        let deadline = Instant::now() + Duration::from_secs(5);
        while setting(&mut client, "lru_crawler").as_deref() != Some("no") {
            assert!(Instant::now() < deadline, "{}: still on", target.label);
            std::thread::sleep(Duration::from_millis(50));
        }
        for request in [
            "lru_crawler crawl all\r\n",
            "lru_crawler metadump all\r\n",
            "lru_crawler disable\r\n",
            "lru_crawler enable\r\n",
            "slabs automove 2\r\n",
        ] {
            replies.push(client.call(request).expect(request));
        }
        replies.push(setting(&mut client, "lru_crawler").unwrap_or_default());
        replies.push(setting(&mut client, "slab_automove").unwrap_or_default());
        seen.push((target.label.clone(), replies));
    }
    assert_eq!(seen[0].1, seen[1].1, "{} vs {}", seen[0].0, seen[1].0);
    assert_eq!(seen[1].1.last().map(String::as_str), Some("2"));
}

/// `stats items` counts evictions per class as memcached does (memcached-tool's `Evicted` and
/// `Evict_Time` columns): in both servers the classes' `evicted` add up to `stats`'s
/// `evictions`, items never read are `evicted_unfetched`, none had an expiry time, and the
/// fields keepcached prints come in memcached's order.
#[test]
fn stats_items_counts_evictions_per_class() {
    if !env::require(
        "stats_items_counts_evictions_per_class",
        false,
        &["memcached"],
    ) {
        return;
    }
    let mut names = Vec::new();
    for target in targets() {
        let server = target.start(&["-m", "3"]).expect("server");
        let mut client = server.connect().expect("connect");
        let value = "v".repeat(66_560);
        for i in 0..80 {
            let set = format!("set key{i:02} 0 0 66560\r\n{value}\r\n");
            assert_eq!(client.call(&set).unwrap(), "STORED\r\n", "{}", target.label);
        }
        let items = stats(&server, "items");
        let sum = |field: &str| -> u64 {
            items
                .lines()
                .filter(|line| {
                    line.split(' ')
                        .nth(1)
                        .is_some_and(|n| n.ends_with(&format!(":{field}")))
                })
                .filter_map(|line| line.split(' ').nth(2)?.parse::<u64>().ok())
                .sum()
        };
        let evictions = stat_u64(&stats(&server, ""), "evictions").unwrap();
        let l = &target.label;
        assert!(evictions > 0, "{l}: nothing evicted");
        assert_eq!(sum("evicted"), evictions, "{l}:\n{items}");
        assert_eq!(sum("evicted_unfetched"), evictions, "{l}:\n{items}");
        assert_eq!(sum("evicted_nonzero"), 0, "{l}:\n{items}");
        assert!(items.contains(":evicted_time "), "{l}:\n{items}");
        let class_fields: Vec<String> = items
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter_map(|name| name.splitn(3, ':').nth(2))
            .map(String::from)
            .collect();
        names.push(class_fields);
    }
    let (theirs, ours) = (&names[0], &names[1]);
    let mut rest = theirs.iter();
    for field in ours {
        assert!(
            rest.any(|f| f == field),
            "{field} is not in memcached's order: {theirs:?}"
        );
    }
}

/// `stats items` counts reclaims per class too: ten items that expire unread are reclaimed by
/// the crawler, and their class (kept in the listing by one item that does not expire) shows
/// them as `crawler_reclaimed` and `expired_unfetched`, as `stats` does for the whole store.
/// (memcached's LRU maintainer reclaims such items as `reclaimed`: compared with `stats` here,
/// not with memcached.)
#[test]
fn stats_items_counts_reclaims_per_class() {
    let server = targets()[1].start(&[]).expect("server");
    let mut client = server.connect().expect("connect");
    for i in 0..10 {
        let set = format!("set short{i} 0 1 5\r\nvalue\r\n");
        assert_eq!(client.call(&set).unwrap(), "STORED\r\n");
    }
    assert_eq!(
        client.call("set stays 0 0 5\r\nvalue\r\n").unwrap(),
        "STORED\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_u64(&stats(&server, ""), "curr_items") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the expired items were not reclaimed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let totals = stats(&server, "");
    let items = stats(&server, "items");
    let field = |name: &str| -> Vec<u64> {
        items
            .lines()
            .filter(|line| {
                line.split(' ')
                    .nth(1)
                    .is_some_and(|n| n.ends_with(&format!(":{name}")))
            })
            .filter_map(|line| line.split(' ').nth(2)?.parse().ok())
            .collect()
    };
    assert_eq!(field("number"), [1], "{items}");
    assert_eq!(field("crawler_reclaimed"), [10], "{items}");
    assert_eq!(field("expired_unfetched"), [10], "{items}");
    assert_eq!(field("reclaimed"), [0], "{items}");
    assert_eq!(stat_u64(&totals, "crawler_reclaimed"), Some(10), "{totals}");
    assert_eq!(stat_u64(&totals, "expired_unfetched"), Some(10), "{totals}");
}

/// The named stats of every class in a `stats items` or `stats slabs` reply.
fn class_stats(reply: &str, names: &[&str]) -> Vec<String> {
    reply
        .lines()
        .filter(|line| {
            let name = line.split(' ').nth(1).unwrap_or("");
            names
                .iter()
                .any(|n| name.ends_with(&format!(":{n}")) || name == *n)
        })
        .map(String::from)
        .collect()
}

/// `stats items`, `stats slabs` and `stats sizes` (with `-o track_sizes`) place the items in
/// memcached's slab classes and size buckets with memcached's counts.
#[test]
fn slab_stats_match_memcached() {
    if !env::require("slab_stats_match_memcached", false, &["memcached"]) {
        return;
    }
    let mut seen = Vec::new();
    for flags in [&[][..], &["-f", "2", "-n", "100", "-o", "track_sizes"]] {
        for target in targets() {
            let server = target.start(flags).expect("server");
            load_items(&server);
            let items = stats(&server, "items");
            let slabs = stats(&server, "slabs");
            seen.push((
                format!("{} {flags:?}", target.label),
                class_stats(&items, &["number", "mem_requested"]),
                class_stats(
                    &slabs,
                    &[
                        "chunk_size",
                        "chunks_per_page",
                        "total_pages",
                        "total_chunks",
                        "used_chunks",
                        "free_chunks",
                        "active_slabs",
                    ],
                ),
                stats(&server, "sizes"),
            ));
        }
    }
    for pair in seen.chunks(2) {
        let (reference, subject) = (&pair[0], &pair[1]);
        assert!(reference.1.len() >= 8, "{reference:?}");
        assert_eq!(
            reference.1, subject.1,
            "stats items: {} vs {}",
            reference.0, subject.0
        );
        assert_eq!(
            reference.2, subject.2,
            "stats slabs: {} vs {}",
            reference.0, subject.0
        );
        assert_eq!(
            reference.3, subject.3,
            "stats sizes: {} vs {}",
            reference.0, subject.0
        );
    }
    assert_eq!(seen[0].3, "STAT sizes_status disabled\r\nEND\r\n");
}

/// Log lines with what differs between two runs masked: the time, the line id (checked to
/// increase), the connection number and the client's port.
fn mask_log(text: &str) -> Vec<String> {
    let mut last_gid = 0u64;
    text.lines()
        .map(|line| {
            line.split(' ')
                .map(|field| match field.split_once('=') {
                    Some(("gid", gid)) => {
                        let gid: u64 = gid.parse().expect("a numeric gid");
                        assert!(gid > last_gid, "gids increase: {text}");
                        last_gid = gid;
                        "gid=<n>".to_string()
                    }
                    Some(("ts", ts)) => {
                        let (secs, micros) = ts.split_once('.').expect("ts=SECS.MICROS");
                        assert!(secs.parse::<u64>().is_ok() && micros.parse::<u32>().is_ok());
                        "ts=<t>".to_string()
                    }
                    Some((name @ ("cfd" | "rport"), _)) => format!("{name}=<n>"),
                    _ => field.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// `watch fetchers mutations connevents`: the log lines of a client's session, line for line
/// as memcached prints them; `watch` refusals; `log_watchers` in `stats`.
#[test]
fn watch_matches_memcached() {
    if !env::require("watch_matches_memcached", false, &["memcached"]) {
        return;
    }
    let session = "get wa\r\nset wa 5 0 2\r\nhi\r\nget wa\r\ngets wa nope\r\nadd wa 0 0 1\r\nx\r\n\
        append wa 0 0 1\r\ny\r\nmg wa v\r\nmg nope\r\ndelete wa\r\nset n 0 0 1\r\n5\r\n\
        incr n 2\r\ntouch n 10\r\nmd n\r\nma n\r\nms wb 2 T100\r\nhi\r\ncas wb 0 0 1 1\r\nz\r\n\
        flush_all\r\nget wb\r\nquit\r\n";
    let mut seen = Vec::new();
    for target in targets() {
        let server = target.start(&[]).expect("server");
        let mut watcher = TcpStream::connect(server.addr()).expect("connect");
        watcher
            .write_all(b"watch fetchers mutations connevents\r\n")
            .expect("write");
        let (ok, _) = observe(&mut watcher, Duration::from_secs(2));
        assert_eq!(ok, b"OK\r\n", "{}", target.label);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = TcpStream::connect(server.addr()).expect("connect");
        client.write_all(session.as_bytes()).expect("write");
        let mut log = Vec::new();
        while !String::from_utf8_lossy(&log).contains("type=conn_close") {
            let (more, _) = observe(&mut watcher, Duration::from_millis(200));
            log.extend_from_slice(&more);
            assert!(
                Instant::now() < deadline,
                "{}: log so far {log:?}",
                target.label
            );
        }
        seen.push(mask_log(&String::from_utf8_lossy(&log)));
        // memcached's logger thread updates the count on its next round.
        while stat_u64(&stats(&server, ""), "log_watchers") != Some(1) {
            assert!(Instant::now() < deadline, "{}: log_watchers", target.label);
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut refused = Vec::new();
        for request in ["watch bogus\r\n", "watch deletions\r\n"] {
            let mut client = server.connect().expect("connect");
            refused.push(client.call(request).expect(request));
        }
        assert_eq!(refused, ["ERROR\r\n", "ERROR\r\n"], "{}", target.label);
        let disabled = target.start(&["-W"]).expect("server");
        let mut client = disabled.connect().expect("connect");
        assert_eq!(
            client.call("watch\r\n").expect("watch"),
            "CLIENT_ERROR watch commands not allowed\r\n",
            "{}",
            target.label
        );
    }
    assert!(seen[0].len() > 20, "{:#?}", seen[0]);
    assert_eq!(seen[0], seen[1], "memcached's log, then keepcached's");
}

/// At most 20 clients watch at once, as in memcached: the 21st is refused with
/// `WATCHER_TOO_MANY`, and once one of the 20 leaves another may watch.
#[test]
fn the_twenty_first_watcher_is_refused() {
    if !env::require("the_twenty_first_watcher_is_refused", false, &["memcached"]) {
        return;
    }
    for target in targets() {
        let server = target.start(&[]).expect("server");
        let watch = |stream: &mut TcpStream| {
            stream.write_all(b"watch\r\n").expect("write");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut reply = Vec::new();
            while !reply.ends_with(b"\r\n") {
                let (more, _) = observe(stream, Duration::from_millis(100));
                reply.extend_from_slice(&more);
                assert!(Instant::now() < deadline, "{}: no reply", target.label);
            }
            String::from_utf8_lossy(&reply).into_owned()
        };
        let mut watchers: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(server.addr()).expect("connect"))
            .collect();
        for watcher in &mut watchers {
            assert_eq!(watch(watcher), "OK\r\n", "{}", target.label);
        }
        let mut extra = TcpStream::connect(server.addr()).expect("connect");
        assert_eq!(
            watch(&mut extra),
            "WATCHER_TOO_MANY log watcher limit reached\r\n",
            "{}",
            target.label
        );
        drop(watchers.pop());
        // memcached's logger thread notices a gone watcher on its next round.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = TcpStream::connect(server.addr()).expect("connect");
            if watch(&mut again) == "OK\r\n" {
                break;
            }
            assert!(Instant::now() < deadline, "{}: still full", target.label);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `watch evictions`: a store that evicts logs the evicted item as memcached does (which item
/// goes differs: memcached evicts by LRU, keepcached by S3-FIFO; the line describes it alike).
#[test]
fn watch_evictions_matches_memcached() {
    if !env::require("watch_evictions_matches_memcached", false, &["memcached"]) {
        return;
    }
    let value = "v".repeat(1000);
    let mut seen = Vec::new();
    for target in targets() {
        let server = target.start(&["-m", "2"]).expect("server");
        let mut watcher = TcpStream::connect(server.addr()).expect("connect");
        watcher.write_all(b"watch evictions\r\n").expect("write");
        let (ok, _) = observe(&mut watcher, Duration::from_secs(2));
        assert_eq!(ok, b"OK\r\n", "{}", target.label);
        let mut client = server.connect().expect("connect");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut log = Vec::new();
        let mut stored = 0;
        while !String::from_utf8_lossy(&log).contains('\n') {
            assert!(
                Instant::now() < deadline,
                "{}: no eviction logged",
                target.label
            );
            let sets: String = (stored..stored + 500)
                .map(|i| format!("set evk{i} 7 1000 1000 noreply\r\n{value}\r\n"))
                .collect();
            client.send(sets.as_bytes()).expect("sets");
            client.call("version\r\n").expect("served");
            stored += 500;
            let (more, _) = observe(&mut watcher, Duration::from_millis(100));
            log.extend_from_slice(&more);
        }
        assert!(stat_u64(&stats(&server, ""), "evictions").unwrap_or(0) > 0);
        let text = String::from_utf8_lossy(&log).to_string();
        let first = mask_log(text.lines().next().expect("a line")).remove(0);
        // The key is one of ours; its time left is at most the 1000 s it was given, and it was
        // accessed at most a few seconds ago.
        let masked: Vec<String> = first
            .split(' ')
            .map(|field| match field.split_once('=') {
                Some(("key", key)) => {
                    assert!(key.starts_with("evk"), "{first}");
                    "key=<k>".to_string()
                }
                Some(("ttl", ttl)) => {
                    let ttl: i64 = ttl.parse().expect("numeric ttl");
                    assert!((990..=1000).contains(&ttl), "{first}");
                    "ttl=<t>".to_string()
                }
                Some(("la", la)) => {
                    let la: u32 = la.parse().expect("numeric la");
                    assert!(la <= 10, "{first}");
                    "la=<t>".to_string()
                }
                _ => field.to_string(),
            })
            .collect();
        seen.push(masked.join(" "));
    }
    assert_eq!(
        seen[0], "ts=<t> gid=<n> type=eviction key=<k> fetch=no ttl=<t> la=<t> clsid=12 size=1000",
        "memcached's line"
    );
    assert_eq!(seen[0], seen[1], "memcached's line, then keepcached's");
}

/// A watcher that does not read loses lines rather than slowing the server, and the next line
/// it gets says how many: `skipped=N` (keepcached only: memcached's own test of this calls
/// itself flaky, since when it skips depends on its logger thread's timing).
#[test]
fn a_slow_watcher_skips_lines_and_says_so() {
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-o", "watcher_logbuf_size=8"])
        .expect("server");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&server.addr().into()).expect("connect");
    let mut watcher: TcpStream = socket.into();
    watcher.write_all(b"watch\r\n").expect("write");
    let (ok, _) = observe(&mut watcher, Duration::from_secs(2));
    assert_eq!(ok, b"OK\r\n");
    let mut client = server.connect().expect("connect");
    let spacer = "X".repeat(180);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while stat_u64(&stats(&server, ""), "log_watcher_skipped").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no line was ever skipped");
        let gets: String = (0..2000)
            .map(|i| format!("get foo{round}_{i}{spacer}\r\n"))
            .collect();
        client.send(gets.as_bytes()).expect("gets");
        client
            .call("version\r\n")
            .expect("served while the watcher stalls");
        round += 1;
    }
    // Once the watcher reads again, the next line after the gap carries the note.
    let mut log = Vec::new();
    while !String::from_utf8_lossy(&log).contains("skipped=") {
        assert!(Instant::now() < deadline, "no skipped= line");
        client.call("get after_the_gap\r\n").expect("get");
        let (more, _) = observe(&mut watcher, Duration::from_millis(100));
        log.extend_from_slice(&more);
    }
    let text = String::from_utf8_lossy(&log);
    let note = text
        .lines()
        .find(|l| l.starts_with("skipped="))
        .expect("note");
    let skipped: u64 = note["skipped=".len()..].parse().expect("a count");
    assert!(skipped > 0, "{note}");
}

/// Gets pipelined in one write, each answered in a batch of its own (`-R 1`): the replies
/// arrive while later gets of the same read still wait to run. After every read of replies,
/// `counted` (another connection's or a scraper's view of `(cmd_get, get_hits)`) must count
/// every get answered so far, at once: memcached counts a request before it replies.
fn gets_counted_before_their_replies(server: &ServerProcess, counted: impl Fn() -> (u64, u64)) {
    const GETS: usize = 3000;
    const REPLY: &[u8] = b"VALUE k 0 1\r\nv\r\nEND\r\n";
    let mut setter = server.connect().expect("connect");
    assert_eq!(
        setter.call("set k 0 0 1\r\nv\r\n").expect("set"),
        "STORED\r\n"
    );
    for round in 0..3 {
        let (gets0, hits0) = counted();
        let mut client = TcpStream::connect(server.addr()).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        client
            .write_all("get k\r\n".repeat(GETS).as_bytes())
            .expect("write");
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut checks = 0;
        while received.len() < GETS * REPLY.len() {
            let n = client.read(&mut buf).expect("read the replies");
            assert!(n > 0, "closed after {} bytes", received.len());
            received.extend_from_slice(&buf[..n]);
            let answered = (received.len() / REPLY.len()) as u64;
            let (gets, hits) = counted();
            checks += 1;
            assert!(
                gets - gets0 >= answered && hits - hits0 >= answered,
                "{}: round {round}, check {checks}: {answered} gets answered, but cmd_get \
                 counts {} and get_hits {}",
                server.label(),
                gets - gets0,
                hits - hits0
            );
        }
        assert_eq!(received, REPLY.repeat(GETS), "{}", server.label());
        assert_eq!(counted(), (gets0 + GETS as u64, hits0 + GETS as u64));
    }
}

#[test]
fn stats_count_a_get_before_its_reply_is_sent() {
    if !env::require(
        "stats_count_a_get_before_its_reply_is_sent",
        false,
        &["memcached"],
    ) {
        return;
    }
    for target in targets() {
        let server = target.start(&["-R", "1", "-t", "4"]).expect("server");
        gets_counted_before_their_replies(&server, || {
            let reply = stats(&server, "");
            let stat = |name| stat_u64(&reply, name).expect(name);
            (stat("cmd_get"), stat("get_hits"))
        });
    }
}

/// The same for the metrics endpoint, which reads the same totals.
#[test]
fn metrics_count_a_get_before_its_reply_is_sent() {
    let metrics = std::net::SocketAddr::from((
        std::net::Ipv4Addr::LOCALHOST,
        keepcached_testkit::free_port().expect("free port"),
    ));
    let flag = format!("--metrics={metrics}");
    let server = keepcached_testkit::keepcached_server(
        std::path::Path::new(env!("CARGO_BIN_EXE_keepcached")),
        &["-R", "1", "-t", "4", &flag],
    )
    .expect("server");
    gets_counted_before_their_replies(&server, || {
        let mut http = TcpStream::connect(metrics).expect("connect to the metrics endpoint");
        http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("scrape");
        let mut text = String::new();
        http.read_to_string(&mut text).expect("read the metrics");
        let series = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} in {text}")) as u64
        };
        (
            series(r#"keepcached_server_commands_total{command="get"}"#),
            series(r#"keepcached_server_hits_total{command="get"}"#),
        )
    });
}
