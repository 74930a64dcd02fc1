//! Operators' mistakes and signals: a user that does not exist, a pid file that cannot be
//! written, a port already taken, SIGHUP, SIGTERM, a log file read by a person. Each failure
//! must exit with memcached's status (sysexits) and say why once, with nothing left running;
//! each signal must do what memcached's does. Where memcached has an equivalent, it is run the
//! same way in the same test and its status and message are compared or printed beside ours.
//!
//! "Nothing left running" is checked by scanning /proc for a live process whose command line
//! holds this scenario's unique pid file path; any found is killed by pid before the test
//! fails or goes on.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::{env, free_port, keepcached_server, memcached, run_with_timeout, Client};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
/// Far above what a failing start takes (a debug build on two busy cores); a command still
/// running then is killed and the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const EX_NOUSER: i32 = 67;
const EX_OSERR: i32 = 71;
const EX_CANTCREAT: i32 = 73;

/// A directory of its own for one scenario's pid and log files, removed on drop; its path,
/// in each command line, also finds the processes the scenario started.
struct Scratch(PathBuf);

impl Scratch {
    fn new(scenario: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keepcached-ops-{scenario}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }

    /// A path whose directory does not exist: no pid file can be created there.
    fn unwritable(&self, name: &str) -> String {
        self.path(&format!("no-such-dir/{name}"))
    }

    /// Kills (by pid) every live process started with an argument under this directory, and
    /// returns their command lines.
    fn kill_leftovers(&self) -> Vec<String> {
        let marker = self.0.to_str().expect("utf-8 path");
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a.contains(marker)) || !is_alive(pid) {
                continue;
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            found.push(format!("pid {pid}: {}", args.join(" ")));
        }
        found
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.kill_leftovers();
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether `pid` is a process that has not exited: a daemon whose parent is gone is reaped by
/// init, which may take a moment, and meanwhile it is a zombie (state Z) in /proc.
fn is_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Polls `probe` every 20 ms until it gives a value, or `timeout` has passed.
fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `pid` has exited.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    poll(timeout, || (!is_alive(pid)).then_some(())).is_some()
}

/// Polls `condition` for up to ten seconds.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    poll(Duration::from_secs(10), || condition().then_some(())).is_some()
}

/// A finished command: exit status (None if it was killed at the deadline) and stderr.
struct Finished {
    status: Option<i32>,
    stderr: String,
}

fn run(program: &str, args: &[&str]) -> Finished {
    let out = run_with_timeout(Command::new(program).args(args), COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Finished {
        status: out.status.and_then(|s| s.code()),
        stderr: format!("{}{}", out.stdout, out.stderr),
    }
}

fn keepcached(args: &[&str]) -> Finished {
    run(BIN, args)
}

/// A loopback port nothing listens on, as text.
fn port() -> String {
    free_port().expect("free port").to_string()
}

fn may_run(test: &str) -> bool {
    // -u is looked up only by root (memcached and magent ignore it otherwise).
    env::require(test, true, &["memcached"])
}

/// `-u USER -l 127.0.0.1 -p PORT -U 0 -P PID`: the server's flags, memcached's too.
fn server_flags<'a>(user: &'a str, port: &'a str, pid: &'a str) -> [&'a str; 10] {
    [
        "-u",
        user,
        "-l",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        "0",
        "-P",
        pid,
    ]
}

/// `proxy -l 127.0.0.1 -p PORT -s 127.0.0.1:11211 -P PID`, daemonizing (magent's default).
fn proxy_command<'a>(port: &'a str, pid: &'a str) -> [&'a str; 9] {
    [
        "proxy",
        "-l",
        "127.0.0.1",
        "-p",
        port,
        "-s",
        "127.0.0.1:11211",
        "-P",
        pid,
    ]
}

/// The server in the foreground and under -d, and the proxy in its default (daemon) mode.
fn start_modes<'a>(server: &[&'a str], proxy: &[&'a str]) -> Vec<(&'static str, Vec<&'a str>)> {
    vec![
        ("server", [&["server"][..], server].concat()),
        ("server -d", [&["server", "-d"][..], server].concat()),
        ("proxy", proxy.to_vec()),
    ]
}

/// The loopback address of a port given as text.
fn loopback(port: &str) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse::<u16>().expect("a port")))
}

/// Runs keepcached with `args` and expects exit `status` with each of `needles` said once.
fn expect_exit(what: &str, args: &[&str], status: i32, needles: &[&str]) -> Finished {
    let ours = keepcached(args);
    assert_eq!(ours.status, Some(status), "{what}: {}", ours.stderr);
    for needle in needles {
        assert_said_once(what, &ours, needle);
    }
    ours
}

/// `expect_exit`, then nothing started by the command may be left running.
fn expect_failure(
    scratch: &Scratch,
    what: &str,
    args: &[&str],
    status: i32,
    needles: &[&str],
) -> Finished {
    let ours = expect_exit(what, args, status, needles);
    let left = scratch.kill_leftovers();
    assert!(left.is_empty(), "{what} left processes running: {left:?}");
    ours
}

/// The scenario's scratch directory, or None (after saying why) if the test cannot run here.
fn scratch_for(test: &str, scenario: &str) -> Option<Scratch> {
    may_run(test).then(|| Scratch::new(scenario))
}

fn assert_said_once(what: &str, finished: &Finished, needle: &str) {
    assert_eq!(
        finished.stderr.matches(needle).count(),
        1,
        "{what}: expected {needle:?} once in its output:\n{}",
        finished.stderr
    );
}

fn report(scenario: &str, outcome: &str) {
    println!("ABUSE | {scenario} | - | - | {outcome}");
}

#[test]
fn unknown_user_exits_67_with_memcacheds_message() {
    let Some(scratch) = scratch_for("unknown_user_exits_67_with_memcacheds_message", "nouser")
    else {
        return;
    };
    let pid = scratch.path("pid");
    let (server_port, proxy_port) = (port(), port());
    let server = server_flags("nosuchuser", &server_port, &pid);
    let proxy = proxy_command(&proxy_port, &pid);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("server", [&["server"][..], &server].concat()),
        ("server -d", [&["server", "-d"][..], &server].concat()),
        // magent's default is to daemonize.
        ("proxy", [&proxy[..], &["-u", "nosuchuser"]].concat()),
        (
            "proxy -D",
            [&proxy[..], &["-D", "-u", "nosuchuser"]].concat(),
        ),
        ("proxy -g", [&proxy[..], &["-g", "nosuchgroup"]].concat()),
    ];
    for (what, args) in &cases {
        let needle = if *what == "proxy -g" {
            "can't find the group nosuchgroup"
        } else {
            "can't find the user nosuchuser"
        };
        expect_failure(&scratch, what, args, EX_NOUSER, &[needle]);
        assert!(!Path::new(&pid).exists(), "{what}: a pid file was written");
        report(
            &format!("-u nosuchuser ({what})"),
            "exit 67, message once, nothing running",
        );
    }
    for daemon in [&[][..], &["-d"]] {
        let args = [daemon, &server].concat();
        let theirs = run("memcached", &args);
        let ours = keepcached(&[&["server"][..], &args].concat());
        assert_eq!(
            (ours.status, theirs.status),
            (Some(EX_NOUSER), Some(EX_NOUSER)),
            "ours: {}\nmemcached: {}",
            ours.stderr,
            theirs.stderr
        );
        assert!(theirs.stderr.contains("can't find the user nosuchuser"));
        assert!(scratch.kill_leftovers().is_empty());
    }
}

#[test]
fn bad_command_line_exits_64() {
    if !may_run("bad_command_line_exits_64") {
        return;
    }
    for args in [
        &["server", "--no-such-flag"][..],
        &["proxy", "--no-such-flag"],
    ] {
        let ours = expect_exit(&format!("{args:?}"), args, 64, &[]);
        assert!(ours.stderr.contains("--no-such-flag"), "{}", ours.stderr);
    }
    let theirs = run("memcached", &["--no-such-flag"]);
    assert_eq!(theirs.status, Some(1), "memcached: {}", theirs.stderr);
    assert!(
        theirs.stderr.contains("--no-such-flag"),
        "{}",
        theirs.stderr
    );
    report("unknown flag (server, proxy)", "exit 64, names the flag");
}

#[test]
fn unwritable_pid_file_fails_before_the_parent_exits() {
    let Some(scratch) = scratch_for(
        "unwritable_pid_file_fails_before_the_parent_exits",
        "pidfile",
    ) else {
        return;
    };
    let pid = scratch.unwritable("pid");
    let needle = format!("could not create the pid file {pid}");
    let (server_port, proxy_port) = (port(), port());
    let server = server_flags("root", &server_port, &pid);
    let proxy = proxy_command(&proxy_port, &pid);
    // Under -d and in the proxy's default (daemon) mode the pid file is written by the
    // daemon, after the fork: the parent learns of the failure through its pipe.
    let mut cases = start_modes(&server, &proxy);
    cases.push(("proxy -D", [&proxy[..], &["-D"]].concat()));
    for (what, args) in &cases {
        let needles = [&needle[..], "No such file or directory"];
        expect_failure(&scratch, what, args, EX_CANTCREAT, &needles);
        report(
            &format!("unwritable -P ({what})"),
            "exit 73, message once, nothing running",
        );
    }
    // A log file is opened before anything else, in the foreground.
    let bad_log = scratch.unwritable("log");
    let log_needle = format!("could not create the log file {bad_log}");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "server -d",
            [&["server", "-d", "--log-file", &bad_log][..], &server].concat(),
        ),
        ("proxy", [&proxy[..], &["--log-file", &bad_log]].concat()),
    ];
    for (what, args) in &cases {
        expect_failure(&scratch, what, args, EX_CANTCREAT, &[&log_needle]);
        report(
            &format!("unwritable --log-file ({what})"),
            "exit 73, message once",
        );
    }
    // With --log-file the failure is also in the log, where a daemon's operator looks.
    let log = scratch.path("server.log");
    let args = [&["server", "-d", "--log-file", &log][..], &server].concat();
    expect_exit("server -d --log-file", &args, EX_CANTCREAT, &[]);
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        logged
            .matches(&format!("exiting with status 73: {needle}"))
            .count(),
        1,
        "log file:\n{logged}"
    );
    assert!(scratch.kill_leftovers().is_empty());
    // memcached treats the pid file as optional: in the foreground it says so and serves on;
    // under -d the message is lost and it exits 0 with the daemon running.
    let theirs = memcached(&["-P", &pid]).expect("memcached serves without its pid file");
    assert!(
        wait_for(|| theirs
            .log_text()
            .contains(&format!("Could not open the pid file {pid}"))),
        "memcached: {}",
        theirs.log_text()
    );
    drop(theirs);
    let theirs = run("memcached", &[&["-d"][..], &server].concat());
    assert_eq!(
        (theirs.status, theirs.stderr.as_str()),
        (Some(0), ""),
        "memcached -d with an unwritable -P"
    );
    let left = scratch.kill_leftovers();
    assert_eq!(left.len(), 1, "memcached's daemon runs on: {left:?}");
}

#[test]
fn vrrp_pid_and_log_files() {
    let Some(scratch) = scratch_for("vrrp_pid_and_log_files", "vrrp") else {
        return;
    };
    // An interface that does not exist: the daemon stops at its first socket, after the pid
    // and log files, and nothing touches the host's addresses.
    let config = scratch.path("vrrp.toml");
    fs::write(
        &config,
        "[[instance]]\nname = \"VI_1\"\ninterface = \"nosuchif0\"\nvrid = 51\n\
         vips = [{ address = \"198.18.0.100/32\" }]\n",
    )
    .expect("write the config");
    let bad = scratch.unwritable("x");
    for (flag, what) in [("-P", "pid file"), ("--log-file", "log file")] {
        let args = ["vrrp", "--config", &config, flag, &bad];
        let needle = format!("could not create the {what} {bad}");
        expect_exit(flag, &args, EX_CANTCREAT, &[&needle]);
    }
    let (pid, log) = (scratch.path("vrrp.pid"), scratch.path("vrrp.log"));
    let ours = keepcached(&["vrrp", "--config", &config, "-P", &pid, "--log-file", &log]);
    let status = ours.status.filter(|&s| s != 0);
    let status = status.unwrap_or_else(|| panic!("the missing interface: {}", ours.stderr));
    assert_said_once("vrrp", &ours, "nosuchif0");
    assert!(
        !Path::new(&pid).exists(),
        "the pid file outlived the failure"
    );
    let logged = fs::read_to_string(&log).unwrap_or_default();
    let said = format!("exiting with status {status}");
    assert!(logged.contains(&said), "log:\n{logged}");
    assert!(
        !logged.contains('\u{1b}'),
        "ANSI escapes in the log:\n{logged:?}"
    );
    report(
        "vrrp: unwritable -P / --log-file",
        "exit 73; pid file removed on failure",
    );
}

#[test]
fn port_in_use_exits_71_with_the_os_error_once() {
    let Some(scratch) = scratch_for("port_in_use_exits_71_with_the_os_error_once", "bind") else {
        return;
    };
    let pid = scratch.path("pid");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a port");
    let taken_port = taken.local_addr().expect("local addr").port().to_string();
    let server = server_flags("root", &taken_port, &pid);
    let proxy = proxy_command(&taken_port, &pid);
    let cases = start_modes(&server, &proxy);
    for (what, args) in &cases {
        let ours = expect_failure(&scratch, what, args, EX_OSERR, &["Address already in use"]);
        assert!(ours.stderr.contains(&taken_port), "{what}: {}", ours.stderr);
        report(&format!("port in use ({what})"), "exit 71, OS error once");
    }
    // The same status as memcached in the foreground. memcached binds after daemonizing, so
    // under -d it exits 0 and its daemon dies unseen.
    let theirs = run("memcached", &server);
    assert_eq!(
        theirs.status,
        Some(EX_OSERR),
        "memcached: {}",
        theirs.stderr
    );
    assert!(theirs.stderr.contains("Address already in use"));
    let theirs_d = run("memcached", &[&["-d"][..], &server].concat());
    assert_eq!(
        (theirs_d.status, theirs_d.stderr.as_str()),
        (Some(0), ""),
        "memcached -d with the port in use"
    );
    drop(taken);
}

/// Sends `version` and expects an answer.
fn answers_version(addr: SocketAddr) -> bool {
    Client::connect(addr)
        .and_then(|mut c| c.call("version\r\n"))
        .is_ok_and(|reply| reply.starts_with("VERSION "))
}

#[test]
fn sighup_is_survived_like_memcached() {
    let Some(scratch) = scratch_for("sighup_is_survived_like_memcached", "sighup") else {
        return;
    };
    let pid = scratch.path("pid");
    let mut ours = keepcached_server(Path::new(BIN), &["-P", &pid]).expect("keepcached server");
    let mut theirs = memcached(&[]).expect("memcached");
    // One at a time: signals sent at once may arrive as one.
    for n in 1..=3 {
        ours.signal(Signal::SIGHUP).expect("SIGHUP");
        theirs.signal(Signal::SIGHUP).expect("SIGHUP");
        let logged = wait_for(|| ours.log_text().matches("SIGHUP received: ignored").count() == n);
        assert!(logged, "SIGHUP {n} logged:\n{}", ours.log_text());
    }
    assert!(ours.is_running() && theirs.is_running());
    assert!(answers_version(ours.addr()) && answers_version(theirs.addr()));
    assert!(Path::new(&pid).exists(), "the pid file is still there");
    report(
        "SIGHUP x3 (server)",
        "alive, answers version, like memcached",
    );

    let backend = keepcached_server(Path::new(BIN), &[]).expect("backend");
    let mut proxy = Proxy::start(&scratch, backend.addr(), &[]);
    for _ in 0..3 {
        proxy.signal(Signal::SIGHUP);
    }
    assert!(answers_version(proxy.addr()), "{}", proxy.log_text());
    assert!(proxy.child.try_wait().expect("try_wait").is_none());
    report("SIGHUP x3 (proxy)", "alive, answers version");
}

#[test]
fn sigterm_and_sigint_remove_the_pid_file_and_exit_0() {
    let Some(scratch) = scratch_for(
        "sigterm_and_sigint_remove_the_pid_file_and_exit_0",
        "sigterm",
    ) else {
        return;
    };
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let pid = scratch.path(&format!("server-{signal}.pid"));
        let mut ours = keepcached_server(Path::new(BIN), &["-P", &pid]).expect("server");
        // At the default verbosity, the server's lifecycle is logged at info. It listens a
        // moment before it writes the pid file and says it serves.
        let serving = format!("cache server serving, pid {}", ours.pid());
        assert!(
            wait_for(|| ours.log_text().contains(&serving)),
            "{serving:?} not logged:\n{}",
            ours.log_text()
        );
        assert_eq!(read_pid(&pid), Some(ours.pid() as i32));
        ours.signal(signal).expect("signal");
        let status = ours.wait_exit(COMMAND_TIMEOUT).expect("wait");
        let log = ours.log_text();
        assert_exited_0(status, &log);
        assert!(!Path::new(&pid).exists(), "{signal}: the pid file is left");
        let received = log.find(&format!("{signal} received: shutting down"));
        let stopped = log.rfind("stopped");
        assert!(
            received.is_some() && stopped > received,
            "{signal}: the log should say it was received, then stopped:\n{log}"
        );
        report(&format!("{signal} (server)"), "exit 0, pid file removed");

        let pid = scratch.path(&format!("proxy-{signal}.pid"));
        let backend = keepcached_server(Path::new(BIN), &[]).expect("backend");
        let mut proxy = Proxy::start(&scratch, backend.addr(), &["-P", &pid]);
        // The pid file is written after the bind, just before the proxy says it serves.
        let serving = format!("proxy serving, pid {}", proxy.child.id());
        assert!(
            wait_for(|| proxy.log_text().contains(&serving)),
            "{serving:?} not logged:\n{}",
            proxy.log_text()
        );
        assert_eq!(read_pid(&pid), Some(proxy.child.id() as i32));
        proxy.signal(signal);
        let status = proxy.wait_exit();
        assert_exited_0(status, &proxy.log_text());
        assert!(
            !Path::new(&pid).exists(),
            "{signal}: the proxy's pid file is left"
        );
        report(&format!("{signal} (proxy)"), "exit 0, pid file removed");
    }
    // A daemon: the pid file names the daemon (not the parent that exited), and goes with it.
    let pid = scratch.path("daemon.pid");
    let server_port = port();
    let args = [
        &["server", "-d"][..],
        &server_flags("root", &server_port, &pid),
    ]
    .concat();
    expect_exit("server -d", &args, 0, &[]);
    let daemon = read_pid(&pid).expect("the daemon's pid file");
    assert!(
        answers_version(loopback(&server_port)),
        "the daemon serves once its parent exited 0"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), Signal::SIGTERM).expect("kill");
    assert!(
        wait_gone(daemon, COMMAND_TIMEOUT),
        "the daemon ignored SIGTERM"
    );
    assert!(
        wait_for(|| !Path::new(&pid).exists()),
        "the daemon left its pid file"
    );
    report("SIGTERM (server -d)", "daemon gone, pid file removed");

    // memcached run the same way, for comparison.
    let mcpid = scratch.path("memcached.pid");
    let mut theirs = memcached(&["-P", &mcpid]).expect("memcached");
    theirs.signal(Signal::SIGTERM).expect("signal");
    let status = theirs.wait_exit(COMMAND_TIMEOUT).expect("wait");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "memcached on SIGTERM"
    );
    assert!(Path::new(&mcpid).exists(), "memcached removed its -P file");
}

fn assert_exited_0(status: Option<ExitStatus>, log: &str) {
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
}

fn read_pid(path: &str) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn log_file_is_plain_text_even_from_a_terminal() {
    let Some(scratch) = scratch_for("log_file_is_plain_text_even_from_a_terminal", "logfile")
    else {
        return;
    };
    let log = scratch.path("server.log");
    let server_port = port();
    // stderr is a terminal, where colours are welcome: the log file must still have none.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = Owned(
        Command::new(BIN)
            .args([
                "server",
                "-v",
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-p",
                &server_port,
            ])
            .args(["-U", "0", "--log-file", &log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pty.slave))
            .spawn()
            .expect("start keepcached server"),
    );
    let addr = loopback(&server_port);
    assert!(wait_for(|| answers_version(addr)), "server did not start");
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    assert!(wait_for(
        || fs::read_to_string(&log).is_ok_and(|t| t.contains("SIGHUP"))
    ));
    // logrotate's copytruncate: the next line goes to the start of the emptied file.
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(0))
        .expect("truncate the log");
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let status = wait_child(&mut child.0);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let text = fs::read(&log).expect("log file");
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("SIGTERM received"), "log:\n{text}");
    assert!(text.contains("stopped"), "log:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in the log file:\n{text:?}"
    );
    assert!(
        !text.starts_with('\0'),
        "after a truncation the log continued at its old offset (not opened for append)"
    );
    drop(pty.master);
    report(
        "--log-file from a terminal",
        "plain text, copytruncate-safe",
    );

    // The proxy logs at info by default; to a file or a pipe, it must be plain text too.
    let backend = keepcached_server(Path::new(BIN), &[]).expect("backend");
    let proxy = Proxy::start(&scratch, backend.addr(), &[]);
    assert!(answers_version(proxy.addr()));
    let text = proxy.log_text();
    assert!(text.contains("proxy serving"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in the proxy's log:\n{text:?}"
    );
}

/// A child process killed (by pid) and reaped if the test ends before it exits.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// Waits for `child` to exit; one still running at the deadline is killed and reaped.
fn wait_child(child: &mut Child) -> Option<ExitStatus> {
    let status = poll(COMMAND_TIMEOUT, || child.try_wait().ok().flatten());
    if status.is_none() {
        kill_and_reap(child);
    }
    status
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `keepcached proxy -D -l 127.0.0.1 -p PORT -s BACKEND EXTRA...`, its output in a log file of
/// the scratch directory, killed by pid on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    fn start(scratch: &Scratch, backend: SocketAddr, extra: &[&str]) -> Proxy {
        let mut last_log = String::new();
        // A free port can be taken before the proxy binds it; it then exits and we try again.
        for attempt in 0..8 {
            let port = free_port().expect("free port");
            let log = PathBuf::from(scratch.path(&format!("proxy-{port}-{attempt}.log")));
            let out = fs::File::create(&log).expect("proxy log");
            let child = Command::new(BIN)
                .args(["proxy", "-D", "-l", "127.0.0.1", "-p", &port.to_string()])
                .args(["-s", &backend.to_string()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("proxy log"))
                .stderr(out)
                .spawn()
                .expect("start keepcached proxy");
            let mut proxy = Proxy { child, port, log };
            let ready = wait_for(|| {
                matches!(proxy.child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect_timeout(&proxy.addr(), Duration::from_millis(100)).is_ok()
            });
            if ready && matches!(proxy.child.try_wait(), Ok(None)) {
                return proxy;
            }
            last_log = proxy.log_text();
        }
        panic!("keepcached proxy never listened; its last output:\n{last_log}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the proxy");
    }

    fn wait_exit(&mut self) -> Option<ExitStatus> {
        wait_child(&mut self.child)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
