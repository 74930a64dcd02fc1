//! A cache server out of file descriptors: as memcached, it stops accepting rather than spin,
//! counts it (`listen_disabled_num`, `time_in_listen_disabled_us`, `accepting_conns 0`), and
//! accepts the waiting client once connections close. Unlike memcached at its default
//! verbosity, it says so in its log, both when it stops and when it accepts again.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::{env, free_port, Client};

const WAIT: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends `version` and waits up to `wait` for the reply: whether the server answered.
fn answers(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    if stream.write_all(b"version\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"VERSION "))
}

#[test]
fn a_server_out_of_descriptors_stops_accepting_says_so_and_recovers() {
    if !env::require(
        "a_server_out_of_descriptors_stops_accepting_says_so_and_recovers",
        false,
        &["prlimit"],
    ) {
        return;
    }
    let port = free_port().unwrap();
    let log =
        std::env::temp_dir().join(format!("keepcached-descriptors-{}.log", std::process::id()));
    let child = Command::new("prlimit")
        .args([
            "--nofile=40:40",
            "--",
            env!("CARGO_BIN_EXE_keepcached"),
            "server",
        ])
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, log };
    server.wait_log("cache server serving");

    // Connections until one is not answered: the server has run out of descriptors and left
    // it in the kernel's queue.
    let mut open = Vec::new();
    let mut waiting = loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if !answers(&mut stream, Duration::from_secs(2)) {
            break stream;
        }
        open.push(stream);
        assert!(
            open.len() < 40,
            "40 connections served under a limit of 40 descriptors"
        );
    };
    server.wait_log("not accepting connections");

    // Closing some lets the server accept the waiting client, which is then served.
    open.truncate(open.len() - 5);
    assert!(
        answers(&mut waiting, WAIT),
        "the waiting client was never served"
    );
    server.wait_log("accepting connections again after");
    drop(waiting);
    let stats = Client::connect(([127, 0, 0, 1], port).into())
        .and_then(|mut client| client.call("stats\r\n"))
        .expect("stats");
    assert!(
        stat_u64(&stats, "listen_disabled_num").is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(
        stat_u64(&stats, "time_in_listen_disabled_us").is_some_and(|us| us > 0),
        "{stats}"
    );
    assert_eq!(stat_u64(&stats, "accepting_conns"), Some(1), "{stats}");
}
