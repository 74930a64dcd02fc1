//! `keepcached status` against a real tier on loopback: two Debian memcacheds behind a
//! `keepcached proxy`, and a third memcached on its own, all started by the test. `--json` must
//! report the figures the test produced (items after N sets, hit ratios after known gets,
//! backend states), an unreachable address as such with exit status 1, and a killed backend as
//! down; `--watch` must draw the tier in a pseudo-terminal and give the terminal back on q.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keepcached_testkit::wait::{child_exit, collect_terminal, poll_until};
use keepcached_testkit::{free_port, keepcached_proxy, memcached, Client, ServerProcess};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
/// Generous: a debug build on two busy cores.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or [`WAIT`] passes.
fn wait_for(condition: impl FnMut() -> bool) -> bool {
    poll_until(WAIT, condition)
}

/// `keepcached proxy -D -l 127.0.0.1 -p PORT -s MAIN -b BACKUP`, killed by pid on drop.
fn start_proxy(main: &ServerProcess, backup: &ServerProcess) -> ServerProcess {
    let (main, backup) = (main.addr().to_string(), backup.addr().to_string());
    keepcached_proxy(Path::new(BIN), &["-s", &main, "-b", &backup]).expect("start keepcached proxy")
}

fn call(client: &mut Client, request: &str) -> String {
    client
        .call(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

/// `keepcached status ARGS...`, run to its end.
fn status(args: &[String]) -> Output {
    Command::new(BIN)
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run keepcached status")
}

/// `status --json ADDRS...`: the report and the exit status.
fn status_json(addrs: &[String]) -> (Value, Option<i32>) {
    let mut args = vec!["--json".to_string()];
    args.extend_from_slice(addrs);
    let out = status(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code())
}

/// The entry of `list` (an array of the report) whose target is `target`.
fn entry<'a>(report: &'a Value, list: &str, target: &str) -> &'a Value {
    report[list]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["target"] == target))
        .unwrap_or_else(|| panic!("no {target} in {list}: {report:#}"))
}

fn backend<'a>(proxy: &'a Value, addr: &str) -> &'a Value {
    proxy["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["addr"] == addr))
        .unwrap_or_else(|| panic!("no backend {addr}: {proxy:#}"))
}

/// An address on which nothing listens (a port just released).
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port().expect("free port"))
}

#[test]
fn status_reports_a_tiers_figures_an_unreachable_address_and_a_killed_backend() {
    let main = memcached(&[]).expect("start memcached");
    let mut backup = memcached(&[]).expect("start memcached");
    let alone = memcached(&["-m", "16"]).expect("start memcached");
    let proxy = start_proxy(&main, &backup);
    // A second proxy over the same servers, as on the VRRP backup host: no client uses it.
    let standby = start_proxy(&main, &backup);
    let s = standby.addr().to_string();
    let out = status(std::slice::from_ref(&s));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(&format!("PROXY {s}  idle  ")), "{table}");
    let mut client = Client::connect(proxy.addr()).expect("connect to the proxy");
    const N: u64 = 20;
    for i in 0..N {
        assert_eq!(
            call(&mut client, &format!("set k{i} 0 0 1\r\nv\r\n")),
            "STORED\r\n"
        );
    }
    // 15 hits and 5 misses through the proxy.
    for i in 0..15 {
        assert!(call(&mut client, &format!("get k{i}\r\n")).starts_with("VALUE"));
    }
    for i in 0..5 {
        assert_eq!(call(&mut client, &format!("get missing{i}\r\n")), "END\r\n");
    }
    // On the server alone: 10 items, 6 hits and 2 misses.
    let mut direct = alone.connect().expect("connect");
    for i in 0..10 {
        call(&mut direct, &format!("set a{i} 0 0 3\r\nabc\r\n"));
    }
    for i in 0..6 {
        call(&mut direct, &format!("get a{i}\r\n"));
    }
    call(&mut direct, "get none1\r\n");
    call(&mut direct, "get none2\r\n");
    drop(direct);

    let [p, m, b, a] =
        [proxy.addr(), main.addr(), backup.addr(), alone.addr()].map(|a| a.to_string());
    let dead = dead_addr();
    let targets = [p.clone(), m.clone(), b.clone(), a.clone(), dead.clone()];
    let (report, code) = status_json(&targets);
    assert_eq!(
        code,
        Some(1),
        "an unreachable target makes the exit status 1"
    );

    let proxy_report = entry(&report, "proxies", &p);
    assert_eq!(proxy_report["get_hits"], 15, "{report:#}");
    assert_eq!(proxy_report["get_misses"], 5, "{report:#}");
    assert_eq!(proxy_report["hit_ratio"], 0.75, "{report:#}");
    assert_eq!(proxy_report["serving"], true, "{report:#}");
    for (addr, pool) in [(&m, "main"), (&b, "backup")] {
        let backend = backend(proxy_report, addr);
        assert_eq!(backend["pool"], pool, "{report:#}");
        assert_eq!(backend["state"], "up", "{report:#}");
        assert!(backend["requests"].as_u64().unwrap() >= N, "{report:#}");
    }
    for addr in [&m, &b] {
        // Every set landed on both servers; the proxy keeps at most its serving heartbeat
        // (one item) on them besides.
        let items = entry(&report, "servers", addr)["items"].as_u64().unwrap();
        assert!(
            (N..=N + 1).contains(&items),
            "{addr}: {items} items: {report:#}"
        );
    }
    let alone_report = entry(&report, "servers", &a);
    assert_eq!(alone_report["items"], 10, "{report:#}");
    assert_eq!(alone_report["get_hits"], 6, "{report:#}");
    assert_eq!(alone_report["get_misses"], 2, "{report:#}");
    assert_eq!(alone_report["hit_ratio"], 0.75, "{report:#}");
    assert_eq!(alone_report["limit_bytes"], 16 << 20, "{report:#}");
    assert_eq!(alone_report["evictions"], 0, "{report:#}");
    assert!(
        alone_report["connections"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(alone_report["bytes"].as_u64().unwrap() > 0, "{report:#}");
    let unreachable = entry(&report, "unreachable", &dead);
    assert!(
        unreachable["error"].as_str().unwrap().contains("refused"),
        "{report:#}"
    );
    assert_eq!(
        report["unreachable"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );

    // All reachable: exit 0, and the table says the same.
    let out = status(&[p.clone(), m.clone(), b.clone()]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(
        table.contains(&format!(
            "PROXY {p}  serving  backends up 2/2  hit ratio 75.0%"
        )),
        "{table}"
    );
    assert!(!table.contains("UNREACHABLE"), "{table}");

    // The standby proxy sees the serving one's heartbeat on the servers.
    let mut last = Value::Null;
    let standing_by = wait_for(|| {
        let (report, _) = status_json(std::slice::from_ref(&s));
        let proxy = entry(&report, "proxies", &s);
        let seen = proxy["serving"] == false && proxy["other_proxy_serving"] == true;
        last = report;
        seen
    });
    assert!(standing_by, "the unused proxy is not a standby: {last:#}");
    let table = String::from_utf8_lossy(&status(std::slice::from_ref(&s)).stdout).into_owned();
    assert!(
        table.contains(&format!("PROXY {s}  standby (another proxy serves)  ")),
        "{table}"
    );

    // The backup dies: the proxy marks it down, and it is unreachable itself.
    backup.kill();
    let mut last = Value::Null;
    let down = wait_for(|| {
        let (report, code) = status_json(&[p.clone(), b.clone()]);
        let seen = code == Some(1)
            && backend(entry(&report, "proxies", &p), &b)["state"] == "down"
            && entry(&report, "unreachable", &b)["error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"));
        last = report;
        seen
    });
    assert!(down, "the killed backend is not reported down: {last:#}");
    let out = status(&[p.clone(), b.clone()]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&format!("backup/{b}")))
        .unwrap_or_else(|| panic!("no backend row for {b}:\n{table}"));
    assert_eq!(row.split_whitespace().nth(1), Some("down"), "{table}");
    assert!(table.contains("UNREACHABLE\ntarget"), "{table}");
}

#[test]
fn a_bad_address_is_a_usage_error() {
    for bad in ["localhost", "ftp://h:1", "http://h"] {
        let out = status(&[bad.to_string()]);
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(bad), "{bad}: {said}");
    }
    let out = status(&["--interval".into(), "0".into(), "--watch".into()]);
    assert_eq!(out.status.code(), Some(64));
    // Output captured by the test, not a terminal.
    let out = status(&["--watch".into()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json"));
}

/// How `status --watch` is told to stop.
#[derive(Debug, Clone, Copy)]
enum Quit {
    Key,
    Signal(nix::sys::signal::Signal),
}

#[test]
fn watch_draws_the_tier_in_a_terminal_and_q_gives_it_back() {
    let main = memcached(&[]).expect("start memcached");
    let backup = memcached(&[]).expect("start memcached");
    let proxy = start_proxy(&main, &backup);
    watch_until(&proxy, &main, &backup, Quit::Key);
}

#[test]
fn watch_gives_the_terminal_back_on_sigterm_and_sighup() {
    let main = memcached(&[]).expect("start memcached");
    let backup = memcached(&[]).expect("start memcached");
    let proxy = start_proxy(&main, &backup);
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        watch_until(&proxy, &main, &backup, Quit::Signal(signal));
    }
}

/// Runs `status --watch` on a pseudo-terminal until it has drawn the tier, stops it with
/// `quit`, and checks it exits 0 having left the alternate screen.
fn watch_until(proxy: &ServerProcess, main: &ServerProcess, backup: &ServerProcess, quit: Quit) {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let slave = |pty: &nix::pty::OpenptyResult| Stdio::from(pty.slave.try_clone().expect("dup"));
    // setsid: no controlling terminal, so the terminal it draws on is this pseudo-terminal
    // (its stdin and stdout), never the one the tests run from.
    let mut child = Owned(
        Command::new("setsid")
            .args([BIN, "status", "--watch", "--interval", "0.2"])
            .args([
                proxy.addr().to_string(),
                main.addr().to_string(),
                backup.addr().to_string(),
            ])
            .stdin(slave(&pty))
            .stdout(slave(&pty))
            .stderr(slave(&pty))
            .spawn()
            .expect("run status --watch"),
    );
    let nix::pty::OpenptyResult {
        master,
        slave: own_slave,
    } = pty;
    drop(own_slave);
    let mut keys = File::from(master.try_clone().expect("dup"));
    let screen = collect_terminal(master);
    let text = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let drawn = wait_for(|| {
        let t = text();
        t.contains("keepcached")
            && t.contains(&format!("main/{}", main.addr()))
            && t.contains(&format!("backup/{}", backup.addr()))
            && t.contains("ops/s")
    });
    assert!(drawn, "status --watch did not draw the tier:\n{:?}", text());
    // The alternate screen was entered; quitting leaves it and exits 0.
    assert!(text().contains("\u{1b}[?1049h"), "{:?}", text());
    match quit {
        Quit::Key => keys.write_all(b"q").expect("press q"),
        Quit::Signal(signal) => {
            let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
            nix::sys::signal::kill(pid, signal).expect("signal status --watch");
        }
    }
    let code = child_exit(&mut child.0, WAIT).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{quit:?}: {:?}", text());
    assert!(
        wait_for(|| text().contains("\u{1b}[?1049l")),
        "the terminal was not given back: {:?}",
        text()
    );
}

/// A child process killed by pid (and reaped) on drop, also when the test fails.
#[derive(Debug)]
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-connection memcached impostor on loopback: it answers `stats` with `reply` (never, if
/// `None`) and `stats backends` with `ERROR`, as a cache server does, until the client leaves.
struct Impostor {
    addr: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impostor {
    fn start(reply: Option<Vec<u8>>) -> Impostor {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let thread = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut writer = conn.try_clone().expect("clone");
            for line in std::io::BufRead::lines(std::io::BufReader::new(conn)) {
                let Ok(line) = line else {
                    return;
                };
                let answer = match (line.trim_end(), &reply) {
                    ("stats", Some(reply)) => reply.as_slice(),
                    ("stats", None) => continue,
                    _ => b"ERROR\r\n".as_slice(),
                };
                // The client may leave before reading it all (a refused answer).
                if writer.write_all(answer).is_err() {
                    return;
                }
            }
        });
        Impostor {
            addr,
            thread: Some(thread),
        }
    }

    /// Once `status` has run: the impostor's connection is over.
    fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            thread.join().expect("impostor");
        }
    }
}

/// A `stats` answer of `lines` STAT lines (the first `first_len` bytes long with its "\r\n",
/// the second `curr_items 7`), then END.
fn stats_answer(lines: usize, first_len: usize) -> Vec<u8> {
    let mut answer = b"STAT pad ".to_vec();
    answer.resize(first_len - 2, b'x');
    answer.extend_from_slice(b"\r\nSTAT curr_items 7\r\n");
    for i in 2..lines {
        answer.extend_from_slice(format!("STAT s{i} 0\r\n").as_bytes());
    }
    answer.extend_from_slice(b"END\r\n");
    answer
}

/// docs/status.md: an answer is read up to 100,000 lines (`END` included) of 64 KiB each; one
/// longer, or with a longer line, makes the target unreachable with the reason.
#[test]
fn a_stats_answer_is_read_up_to_its_caps() {
    for (lines, first_len, refused) in [
        (99_999, 100, None),
        (100_000, 100, Some("stats: more than 100000 lines")),
        (10, 65_536, None),
        (10, 65_537, Some("stats: a line longer than 65536 bytes")),
    ] {
        let impostor = Impostor::start(Some(stats_answer(lines, first_len)));
        let addr = impostor.addr.clone();
        let (report, code) = status_json(std::slice::from_ref(&addr));
        impostor.join();
        let what = format!("{lines} lines, the first of {first_len} bytes");
        match refused {
            None => {
                assert_eq!(code, Some(0), "{what}: {report:#}");
                let server = entry(&report, "servers", &addr);
                assert_eq!(server["items"], 7, "{what}: {report:#}");
            }
            Some(reason) => {
                assert_eq!(code, Some(1), "{what}: {report:#}");
                let unreachable = entry(&report, "unreachable", &addr);
                assert_eq!(unreachable["error"], reason, "{what}: {report:#}");
            }
        }
    }
}

/// docs/status.md: a target that accepts and never answers is unreachable once the 2-second
/// read timeout has passed. (The lower bound is exact; the upper one only says it does not
/// wait on.)
#[test]
fn a_target_that_never_answers_times_out_after_2_seconds() {
    let impostor = Impostor::start(None);
    let addr = impostor.addr.clone();
    let started = std::time::Instant::now();
    let (report, code) = status_json(std::slice::from_ref(&addr));
    let took = started.elapsed();
    impostor.join();
    assert_eq!(code, Some(1), "{report:#}");
    let error = entry(&report, "unreachable", &addr)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.starts_with("stats: "), "{report:#}");
    assert!(
        took >= Duration::from_secs(2) && took < WAIT,
        "status took {took:?}"
    );
}

/// An HTTP/1.0 metrics page whose one VRRP sample, `keepcached_vrrp_state{...} 1`, comes after
/// `before` bytes of response (head and comment lines), served to one client.
fn metrics_impostor(before: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut page = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    // Comment lines (a lone "\n" at worst) fill it to the byte.
    while page.len() < before {
        let line = (before - page.len()).min(1024);
        page.resize(page.len() + line - 1, b'#');
        page.push(b'\n');
    }
    page.extend_from_slice(b"keepcached_vrrp_state{instance=\"VI_1\",state=\"master\"} 1\n");
    let thread = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match std::io::Read::read(&mut conn, &mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        // A client that stops reading at its cap closes the connection: the write then fails.
        let _ = conn.write_all(&page);
    });
    (addr, thread)
}

/// docs/status.md: a metrics page is read up to 16 MiB: a VRRP sample that ends at that byte
/// is seen, one that starts there is not.
#[test]
fn a_metrics_page_is_read_up_to_16_mib() {
    const CAP: usize = 16 * 1024 * 1024;
    let sample_len = "keepcached_vrrp_state{instance=\"VI_1\",state=\"master\"} 1\n".len();
    for (before, seen) in [(CAP - sample_len, true), (CAP, false)] {
        let (addr, impostor) = metrics_impostor(before);
        let target = format!("http://{addr}/metrics");
        let (report, code) = status_json(std::slice::from_ref(&target));
        impostor.join().expect("impostor");
        if seen {
            assert_eq!(code, Some(0), "{report:#}");
            let node = entry(&report, "nodes", &target);
            assert_eq!(node["instances"][0]["state"], "master", "{report:#}");
        } else {
            assert_eq!(code, Some(1), "{report:#}");
            let error = entry(&report, "unreachable", &target)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                error.starts_with("no keepcached_vrrp_state metric"),
                "{report:#}"
            );
        }
    }
}
