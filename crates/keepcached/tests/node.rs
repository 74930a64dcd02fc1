//! `keepcached node --config FILE` on loopback: the server and the proxy of one host from one
//! file, a write through the proxy landing on the server, the save at SIGTERM; `--check` and
//! `--print-config`; systemd's notifications (READY=1 only once the ports accept,
//! STOPPING=1 at SIGTERM, READY=1 after a reload only once it is applied) for the node and for
//! each standalone role; a second signal that cuts the proxy's drain or the node's save short;
//! `-u` refused with `[vrrp]`, and (root: CI) SIGUSR1 logging VRRP's status.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepcached_testkit::free_port;
use keepcached_testkit::process::run_with_timeout;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("keepcached-node-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by pid) and reaped on drop, its output in a log file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(args: &[&str], log: PathBuf, env: &[(&str, &Path)]) -> Running {
        let mut command = Command::new(BIN);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Running::spawn(&mut command, log)
    }

    fn spawn(command: &mut Command, log: PathBuf) -> Running {
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; its status code.
    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `port` on 127.0.0.1 accepts a connection.
fn wait_accepting(port: u16, process: &mut Running) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            s.set_read_timeout(Some(WAIT)).unwrap();
            return s;
        }
        if let Some(status) = process.child.try_wait().unwrap() {
            panic!("exited with {status}:\n{}", process.log());
        }
        assert!(
            Instant::now() < deadline,
            "port {port} never accepted:\n{}",
            process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` and reads lines until one equals `last`.
fn call(stream: &mut TcpStream, request: &str, last: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed after {reply:?}"
        );
        reply.push_str(&line);
        if line.trim_end() == last {
            return reply;
        }
    }
}

/// Sends `request` and reads one line.
fn one_line(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

fn node_toml(server_port: u16, proxy_port: u16, save: &Path) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1\"]\nport = {server_port}\nmemory_limit = \"16m\"\n\
         threads = 2\nmax_connections = 64\nsave_file = \"{}\"\n\n\
         [proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nthreads = 1\n\
         pools = [{{ name = \"main\", servers = [\"127.0.0.1:{server_port}\"] }}]\n",
        save.display()
    )
}

#[test]
fn a_set_through_the_proxy_lands_on_the_server_and_is_saved_at_sigterm() {
    let dir = Scratch::new("serve");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let save = dir.0.join("cache.dat");
    let config = dir.file("node.toml", &node_toml(server_port, proxy_port, &save));
    let config = config.to_str().unwrap();
    let mut node = Running::start(&["node", "--config", config], dir.0.join("log"), &[]);
    let mut proxy = wait_accepting(proxy_port, &mut node);
    // The proxy may still be meeting its server: a write it cannot place yet is refused, so
    // poll until one is stored.
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = one_line(&mut proxy, "set seed 0 0 5\r\nnihao\r\n");
        let reply = reply.trim_end();
        if reply == "STORED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never stored: {reply}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = wait_accepting(server_port, &mut node);
    assert_eq!(
        call(&mut server, "get seed\r\n", "END"),
        "VALUE seed 0 5\r\nnihao\r\nEND\r\n",
        "the write reached the node's own server"
    );
    drop((proxy, server));
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait(), 0, "{}", node.log());
    let log = node.log();
    let proxy_stop = log.find("stopping the proxy").expect(&log);
    let server_stop = log.find("stopping the cache server").expect(&log);
    assert!(
        proxy_stop < server_stop,
        "the proxy drains before the server stops:\n{log}"
    );
    assert!(log.contains("saved 1 items"), "{log}");
    // The saved item comes back with the next start.
    let mut node = Running::start(&["node", "--config", config], dir.0.join("log2"), &[]);
    let mut server = wait_accepting(server_port, &mut node);
    assert_eq!(
        call(&mut server, "get seed\r\n", "END"),
        "VALUE seed 0 5\r\nnihao\r\nEND\r\n"
    );
}

fn check(config: &Path) -> (i32, String) {
    let out = run_with_timeout(
        Command::new(BIN).args(["node", "--check", "--config", config.to_str().unwrap()]),
        WAIT,
    )
    .unwrap();
    (out.status.and_then(|s| s.code()).unwrap_or(-1), out.stderr)
}

#[test]
fn check_refuses_bad_files_with_64_naming_file_and_key() {
    let dir = Scratch::new("check");
    let port = free_port().unwrap();
    let cases = [
        (
            "[server]\nport = 1\ncolour = \"red\"\n",
            "line 3: server.colour: unknown field `colour`",
        ),
        (
            "[server]\nthreads = 0\n",
            "server.threads: Number of threads must be greater than 0",
        ),
        (
            "[server]\nmemory_limit = \"lots\"\n",
            "server.memory_limit: invalid memory limit: lots",
        ),
        ("[proxy]\npools = []\n", "proxy.pools: no pools"),
        ("[vrrp]\n", "vrrp.instance: no instance configured"),
        ("[server]\nport = ", "line 2: server.port: "),
        ("", "nothing to run"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.file(&format!("bad{i}.toml"), text);
        let (status, stderr) = check(&path);
        assert_eq!(status, 64, "{text:?}: {stderr}");
        let named = format!("{}: ", path.display());
        assert!(
            stderr.contains(&named),
            "{text:?} should name the file: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{text:?}: expected {expected:?} in {stderr}"
        );
    }
    let missing = dir.0.join("missing.toml");
    let (status, stderr) = check(&missing);
    assert_eq!(status, 64, "{stderr}");
    assert!(stderr.contains("missing.toml: cannot read"), "{stderr}");
    // Nothing was bound: a bad file leaves the port free.
    let bad = dir.file(
        "late.toml",
        &format!("[server]\nport = {port}\n[proxy]\npools = []\n"),
    );
    let out = run_with_timeout(
        Command::new(BIN).args(["node", "--config", bad.to_str().unwrap()]),
        WAIT,
    )
    .unwrap();
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(64),
        "{}",
        out.stderr
    );
    assert!(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
}

#[test]
fn print_config_shows_every_default_and_its_output_passes_check() {
    let dir = Scratch::new("print");
    let text = node_toml(11311, 12000, &dir.0.join("cache.dat"));
    let config = dir.file("node.toml", &text);
    let out = run_with_timeout(
        Command::new(BIN).args([
            "node",
            "--print-config",
            "--config",
            config.to_str().unwrap(),
        ]),
        WAIT,
    )
    .unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    for default in [
        "udp_port = 0",
        "max_item_size = \"1m\"",
        "drain_timeout_ms = 5000",
        "[proxy.backend]",
        "write_ack = \"all\"",
    ] {
        assert!(
            out.stdout.contains(default),
            "{default} missing from:\n{}",
            out.stdout
        );
    }
    let printed = dir.file("printed.toml", &out.stdout);
    let (status, stderr) = check(&printed);
    assert_eq!(status, 0, "{stderr}\n{}", out.stdout);
    let again = run_with_timeout(
        Command::new(BIN).args([
            "node",
            "--print-config",
            "--config",
            printed.to_str().unwrap(),
        ]),
        WAIT,
    )
    .unwrap();
    assert_eq!(again.stdout, out.stdout, "printing is a fixed point");
}

/// systemd's side of `Type=notify`: a datagram socket the process writes to.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Scratch) -> NotifySocket {
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket { socket, path }
    }

    /// The next message, if one arrives within 50 ms.
    fn poll(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        self.socket
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a message containing `line`; every message seen before it.
    fn wait_for(&self, line: &str, process: &mut Running) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            if let Some(message) = self.poll() {
                let found = message.lines().any(|l| l == line);
                seen.push(message);
                if found {
                    return seen;
                }
                continue;
            }
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "exited with {status} before {line}; saw {seen:?}:\n{}",
                    process.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line}; saw {seen:?}:\n{}",
                process.log()
            );
        }
    }
}

/// Whether 127.0.0.1:port accepts a connection now.
fn accepts(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Starts `args` with NOTIFY_SOCKET set, asserts READY=1 arrives and that every port in
/// `ports` accepts by then, then SIGTERM and STOPPING=1.
fn notifies_ready_then_stopping(name: &str, args: &[&str], ports: &[u16]) {
    let dir = Scratch::new(name);
    let notify = NotifySocket::new(&dir);
    let mut process = Running::start(args, dir.0.join("log"), &[("NOTIFY_SOCKET", &notify.path)]);
    notify.wait_for("READY=1", &mut process);
    for &port in ports {
        assert!(
            accepts(port),
            "{name}: READY=1 before port {port} accepts:\n{}",
            process.log()
        );
    }
    process.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", &mut process);
    assert_eq!(process.wait(), 0, "{}", process.log());
}

#[test]
fn every_role_tells_systemd_ready_once_it_accepts_and_stopping_at_sigterm() {
    let dir = Scratch::new("notify-files");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.file(
        "node.toml",
        &node_toml(server_port, proxy_port, &dir.0.join("cache.dat")),
    );
    notifies_ready_then_stopping(
        "notify-node",
        &["node", "--config", config.to_str().unwrap()],
        &[server_port, proxy_port],
    );
    let port = free_port().unwrap().to_string();
    notifies_ready_then_stopping(
        "notify-server",
        &[
            "server",
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "0",
        ],
        &[port.parse().unwrap()],
    );
    let backend = free_port().unwrap();
    let port = free_port().unwrap().to_string();
    notifies_ready_then_stopping(
        "notify-proxy",
        &[
            "proxy",
            "-D",
            "-l",
            "127.0.0.1",
            "-p",
            &port,
            "-s",
            &format!("127.0.0.1:{backend}"),
        ],
        &[port.parse().unwrap()],
    );
}

/// Polls until the process's log contains `needle`.
fn wait_log(process: &mut Running, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = process.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node of `node_toml` started with a notify socket, once it has sent READY=1.
struct NotifiedNode {
    dir: Scratch,
    proxy_port: u16,
    text: String,
    config: PathBuf,
    notify: NotifySocket,
    node: Running,
}

impl NotifiedNode {
    fn start(name: &str) -> NotifiedNode {
        let dir = Scratch::new(name);
        let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
        let text = node_toml(server_port, proxy_port, &dir.0.join("cache.dat"));
        let config = dir.file("node.toml", &text);
        let notify = NotifySocket::new(&dir);
        let mut node = Running::start(
            &["node", "--config", config.to_str().unwrap()],
            dir.0.join("log"),
            &[("NOTIFY_SOCKET", &notify.path)],
        );
        notify.wait_for("READY=1", &mut node);
        NotifiedNode {
            dir,
            proxy_port,
            text,
            config,
            notify,
            node,
        }
    }
}

#[test]
fn sighup_hands_the_proxy_its_new_section_between_reloading_and_ready() {
    let NotifiedNode {
        dir: _dir,
        proxy_port,
        text,
        config,
        notify,
        mut node,
    } = NotifiedNode::start("notify-reload");
    // A proxy setting that changes while running, and a server one that needs a restart.
    let changed = text
        .replace("threads = 1\n", "threads = 1\ndrain_timeout_ms = 1234\n")
        .replace("max_connections = 64", "max_connections = 65");
    assert_ne!(changed, text);
    std::fs::write(&config, changed).unwrap();
    node.signal(Signal::SIGHUP);
    notify.wait_for("RELOADING=1", &mut node);
    notify.wait_for("READY=1", &mut node);
    let log = wait_log(&mut node, "configuration change applied");
    assert!(log.contains("drain_timeout_ms"), "{log}");
    assert!(log.contains("[server] changed"), "{log}");
    // A section removed: said at warn; the proxy runs on until a restart (checked below).
    let server_only = text.split("\n[proxy]").next().unwrap();
    std::fs::write(&config, server_only).unwrap();
    node.signal(Signal::SIGHUP);
    let log = wait_log(&mut node, "the roles configured changed");
    assert!(
        log.contains(
            "WARN keepcached::node_cmd: SIGHUP: the roles configured changed (server now, \
             server, proxy running); starting or stopping a role needs a restart"
        ),
        "{log}"
    );
    // A file that no longer loads is logged and the running configuration kept.
    std::fs::write(&config, "[server]\nthreads = 0\n").unwrap();
    node.signal(Signal::SIGHUP);
    let log = wait_log(&mut node, "configuration not reloaded");
    assert!(log.contains("server.threads: Number of threads"), "{log}");
    let mut proxy = wait_accepting(proxy_port, &mut node);
    assert!(one_line(&mut proxy, "version\r\n").starts_with("VERSION "));
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait(), 0, "{}", node.log());
}

#[test]
fn watchdog_pings_come_at_half_the_interval_systemd_asks_for() {
    let dir = Scratch::new("watchdog");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.file(
        "node.toml",
        &node_toml(server_port, proxy_port, &dir.0.join("cache.dat")),
    );
    let notify = NotifySocket::new(&dir);
    // As systemd starts it: WATCHDOG_PID names the service's own pid (exec keeps the shell's).
    let mut node = Running::spawn(
        Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
            .args([BIN, "node", "--config", config.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "200000"),
        dir.0.join("log"),
    );
    notify.wait_for("READY=1", &mut node);
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", &mut node);
    }
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait(), 0, "{}", node.log());
}

#[test]
fn daemon_mode_exits_0_once_serving_and_removes_its_pid_file_at_sigterm() {
    let dir = Scratch::new("daemon");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.file(
        "node.toml",
        &node_toml(server_port, proxy_port, &dir.0.join("cache.dat")),
    );
    let pidfile = dir.0.join("node.pid");
    let log = dir.0.join("node.log");
    let out = run_with_timeout(
        Command::new(BIN).args([
            "node",
            "-d",
            "--config",
            config.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ]),
        WAIT,
    )
    .unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Whatever happens below, the daemon does not outlive the test.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
    let _reap = Reap(pid);
    assert!(
        accepts(server_port) && accepts(proxy_port),
        "serving when -d returns"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + WAIT;
    while pidfile.exists() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pid file goes just before the last line.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("node serving") && text.contains("INFO keepcached::process: stopped") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `-vv` logs the server's client requests as memcached's `-vv` prints them, into the node's
/// log: with `--log-file`, the file, not stderr.
#[test]
fn vv_logs_client_requests_into_the_log_file() {
    let dir = Scratch::new("vv");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.file(
        "node.toml",
        &node_toml(server_port, proxy_port, &dir.0.join("cache.dat")),
    );
    let log_file = dir.0.join("node.log");
    let mut node = Running::start(
        &[
            "node",
            "-vv",
            "--config",
            config.to_str().unwrap(),
            "--log-file",
            log_file.to_str().unwrap(),
        ],
        dir.0.join("stderr"),
        &[],
    );
    let mut server = wait_accepting(server_port, &mut node);
    assert_eq!(call(&mut server, "get vv-probe\r\n", "END"), "END\r\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let logged = std::fs::read_to_string(&log_file).unwrap_or_default();
        if logged.lines().any(|line| line.ends_with(" get vv-probe")) {
            break;
        }
        assert!(Instant::now() < deadline, "not logged:\n{logged}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !node.log().contains("vv-probe"),
        "the request went to stderr:\n{}",
        node.log()
    );
}

/// `keepcached convert` on the seed's own configuration of host `n`.
fn convert_seed(n: u32) -> keepcached_testkit::CommandOutput {
    let conf = format!(
        "{}/../vrrp/tests/fixtures/seed-memcached{n}.conf",
        env!("CARGO_MANIFEST_DIR")
    );
    run_with_timeout(
        Command::new(BIN).args([
            "convert",
            "--memcached",
            "-d -m 32m -p11211 -u root",
            "--magent",
            "-u root -n 51200 -l 192.168.111.100 -p 12000 -s 192.168.111.4:11211 -b 192.168.111.5:11211",
            "--keepalived-conf",
            &conf,
        ]),
        WAIT,
    )
    .unwrap()
}

#[test]
fn convert_turns_the_seeds_hosts_into_node_files_that_pass_check() {
    let dir = Scratch::new("convert");
    for (n, priority) in [(1, 100), (2, 99)] {
        let out = convert_seed(n);
        assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
        let text = &out.stdout;
        for expected in [
            "memory_limit = 32\n",
            "listen = [\"192.168.111.100:12000\"]",
            "max_connections = 51200",
            "servers = [\"192.168.111.4:11211\"]",
            "servers = [\"192.168.111.5:11211\"]",
            &format!("priority = {priority}\n"),
            "auth_pass = \"1111\"",
            "address = \"192.168.111.100/32\"",
            "label = \"ens32:2\"",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
        // The magent script is gone, replaced by in-process tracking, and the file says so.
        assert!(!text.contains("/opt/magent.sh\""), "{text}");
        assert!(!text.contains("track_script"), "{text}");
        assert!(
            text.contains("# vrrp_script check_m (/opt/magent.sh) managed or checked magent: dropped. In a node, VRRP tracks the proxy and the cache server in-process"),
            "{text}"
        );
        let path = dir.file(&format!("converted{n}.toml"), text);
        let (status, stderr) = check(&path);
        assert_eq!(status, 0, "{stderr}\n{text}");
    }
}

#[test]
fn convert_refuses_what_it_cannot_read_with_64() {
    for args in [
        vec!["convert"],
        vec!["convert", "--magent", "-s"],
        vec!["convert", "--memcached", "-m lots"],
        vec![
            "convert",
            "--keepalived-conf",
            "/nonexistent/keepalived.conf",
        ],
    ] {
        let out = run_with_timeout(Command::new(BIN).args(&args), WAIT).unwrap();
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(64),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
    }
}

#[test]
fn convert_keeps_a_role_whose_options_are_all_defaults() {
    let dir = Scratch::new("convert-defaults");
    let out = run_with_timeout(
        Command::new(BIN).args(["convert", "--memcached", "-m 64 -p 11211"]),
        WAIT,
    )
    .unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    assert!(out.stdout.ends_with("[server]\n"), "{}", out.stdout);
    let (status, stderr) = check(&dir.file("server.toml", &out.stdout));
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("configuration OK (server)"), "{stderr}");
}

#[test]
fn the_servers_shutdown_command_stops_the_whole_node_the_clean_way() {
    let dir = Scratch::new("shutdown-command");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let text = node_toml(server_port, proxy_port, &dir.0.join("cache.dat"))
        .replace("threads = 2\n", "threads = 2\nenable_shutdown = true\n");
    let config = dir.file("node.toml", &text);
    let mut node = Running::start(
        &["node", "--config", config.to_str().unwrap()],
        dir.0.join("log"),
        &[],
    );
    let _proxy = wait_accepting(proxy_port, &mut node);
    let mut server = wait_accepting(server_port, &mut node);
    server.write_all(b"shutdown\r\n").unwrap();
    assert_eq!(node.wait(), 0, "{}", node.log());
    let log = node.log();
    assert!(
        log.contains("the cache server stopped: stopping the node"),
        "{log}"
    );
    assert!(log.contains("stopping the proxy"), "{log}");
    assert!(log.contains("saved 0 items"), "{log}");
}

/// A node without [server] handles SIGUSR2 (there is nothing to save, and it says so) rather
/// than leaving it ignored for the scripts VRRP runs, or dying of it.
#[test]
fn sigusr2_without_a_server_is_logged_and_the_node_serves_on() {
    let dir = Scratch::new("usr2-no-server");
    let backend = free_port().unwrap();
    let proxy_port = free_port().unwrap();
    let config = dir.file(
        "node.toml",
        &format!(
            "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nthreads = 1\n\
             [[proxy.pools]]\nname = \"main\"\nservers = [\"127.0.0.1:{backend}\"]\n"
        ),
    );
    let mut node = Running::start(
        &["node", "--config", config.to_str().unwrap()],
        dir.0.join("log"),
        &[],
    );
    wait_log(&mut node, "node serving");
    node.signal(Signal::SIGUSR2);
    wait_log(&mut node, "the node has no [server]");
    let mut proxy = wait_accepting(proxy_port, &mut node);
    assert!(one_line(&mut proxy, "version\r\n").starts_with("VERSION "));
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait(), 0, "{}", node.log());
}

/// How many times `needle` occurs in the process's log now.
fn log_count(process: &Running, needle: &str) -> usize {
    process.log().matches(needle).count()
}

/// SIGHUP to `process` (READY=1 seen) with `file` rewritten by `rewrite(round)` each round: as
/// systemd's reload protocol wants, READY=1 follows RELOADING=1 only once the new configuration
/// is applied: the log says so at once when READY=1 arrives (read once, not polled). Then a
/// file that does not load: READY=1 again, once the refusal is logged.
fn ready_follows_each_reload(
    process: &mut Running,
    notify: &NotifySocket,
    file: &Path,
    rewrite: impl Fn(u32) -> String,
    broken: &str,
) {
    const APPLIED: &str = "configuration change applied";
    for round in 0..10 {
        std::fs::write(file, rewrite(round)).unwrap();
        let before = log_count(process, APPLIED);
        process.signal(Signal::SIGHUP);
        notify.wait_for("RELOADING=1", process);
        notify.wait_for("READY=1", process);
        let log = process.log();
        assert_eq!(
            log.matches(APPLIED).count(),
            before + 1,
            "round {round}: READY=1 before the change was applied:\n{log}"
        );
        assert!(
            log.contains(&format!("to={}", 1000 + round)),
            "round {round}:\n{log}"
        );
    }
    std::fs::write(file, broken).unwrap();
    process.signal(Signal::SIGHUP);
    notify.wait_for("RELOADING=1", process);
    notify.wait_for("READY=1", process);
    assert_eq!(
        log_count(process, "configuration not reloaded"),
        1,
        "READY=1 before the refusal was logged:\n{}",
        process.log()
    );
    assert!(
        process.is_running(),
        "a refused reload keeps the running configuration:\n{}",
        process.log()
    );
    process.signal(Signal::SIGTERM);
    assert_eq!(process.wait(), 0, "{}", process.log());
}

#[test]
fn ready_follows_the_applied_configuration_after_sighup() {
    // The node: its proxy's new section.
    let NotifiedNode {
        dir: _dir,
        text,
        config,
        notify,
        mut node,
        ..
    } = NotifiedNode::start("reload-ready-node");
    ready_follows_each_reload(
        &mut node,
        &notify,
        &config,
        |round| {
            text.replace(
                "threads = 1\n",
                &format!("threads = 1\ndrain_timeout_ms = {}\n", 1000 + round),
            )
        },
        "[server]\nthreads = 0\n",
    );

    // The proxy with --config.
    let dir = Scratch::new("reload-ready-proxy");
    let (backend, port) = (free_port().unwrap(), free_port().unwrap());
    let proxy_toml = |drain: u32| {
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nthreads = 1\ndrain_timeout_ms = {drain}\n\
             [[pools]]\nname = \"main\"\nservers = [\"127.0.0.1:{backend}\"]\n"
        )
    };
    let config = dir.file("proxy.toml", &proxy_toml(500));
    let notify = NotifySocket::new(&dir);
    let mut proxy = Running::start(
        &["proxy", "-D", "--config", config.to_str().unwrap()],
        dir.0.join("log"),
        &[("NOTIFY_SOCKET", &notify.path)],
    );
    notify.wait_for("READY=1", &mut proxy);
    ready_follows_each_reload(
        &mut proxy,
        &notify,
        &config,
        |round| proxy_toml(1000 + round),
        "listen = 7\n",
    );
}

/// A client that asks for far more than the sockets hold and reads none of it: the proxy's
/// connection waits in a write, so the proxy's drain waits for it (up to `drain_timeout_ms`).
/// `proxy_port` forwards to a server that holds `big`.
fn client_that_never_reads(proxy_port: u16) -> TcpStream {
    let mut stream = wait_until_stored(proxy_port);
    let value = vec![b'v'; 500_000];
    stream
        .write_all(format!("set big 0 0 {}\r\n", value.len()).as_bytes())
        .unwrap();
    stream.write_all(&value).unwrap();
    stream.write_all(b"\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "STORED\r\n");
    // 100 MB of replies.
    stream
        .write_all("get big\r\n".repeat(200).as_bytes())
        .unwrap();
    // Until the proxy has answered some of them, its drain could find the connection idle
    // (the gets still unread in its socket) and end at once.
    let mut stats =
        keepcached_testkit::Client::connect((Ipv4Addr::LOCALHOST, proxy_port).into()).unwrap();
    assert!(
        keepcached_testkit::wait::poll_until(WAIT, || stats.stat("get_hits").unwrap() >= 2),
        "the proxy never answered the gets"
    );
    stream
}

/// A connection to the proxy on `port` once a write through it is stored (the proxy may still
/// be meeting its server).
fn wait_until_stored(port: u16) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            stream.set_read_timeout(Some(WAIT)).unwrap();
            if one_line(&mut stream, "set seed 0 0 1\r\nx\r\n") == "STORED\r\n" {
                return stream;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the proxy on {port} never stored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_sigterm_cuts_the_proxys_drain_short() {
    let dir = Scratch::new("second-signal-proxy");
    let server = keepcached_testkit::memcached(&[]).unwrap();
    let port = free_port().unwrap();
    // A drain far longer than the test waits.
    let config = dir.file(
        "proxy.toml",
        &format!(
            "listen = [\"127.0.0.1:{port}\"]\nthreads = 1\ndrain_timeout_ms = 600000\n\
             [[pools]]\nname = \"main\"\nservers = [\"{}\"]\n",
            server.addr()
        ),
    );
    let pidfile = dir.0.join("proxy.pid");
    let mut proxy = Running::start(
        &[
            "proxy",
            "-D",
            "--config",
            config.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
        ],
        dir.0.join("log"),
        &[],
    );
    let _client = client_that_never_reads(port);
    proxy.signal(Signal::SIGTERM);
    wait_log(&mut proxy, "proxy shutting down");
    assert!(proxy.is_running(), "draining:\n{}", proxy.log());
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait(), 1, "{}", proxy.log());
    let log = proxy.log();
    assert!(
        log.contains("second SIGTERM: exiting without finishing the drain of the proxy's clients"),
        "{log}"
    );
    assert!(!pidfile.exists(), "the pid file is removed");
}

/// Stores `count` items of about 2 KB on the server on `port`, pipelined with noreply.
fn store_items(port: u16, count: usize) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let value = "v".repeat(2000);
    let mut batch = String::new();
    for i in 0..count {
        batch.push_str(&format!("set item{i} 0 0 2000 noreply\r\n{value}\r\n"));
    }
    assert!(one_line(&mut stream, &format!("{batch}version\r\n")).starts_with("VERSION "));
}

#[test]
fn a_second_sigint_cuts_the_nodes_save_short_and_keeps_the_previous_file() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Scratch::new("second-signal-node");
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let save = dir.0.join("cache.dat");
    let config = dir.file("node.toml", &node_toml(server_port, proxy_port, &save));
    let mut node = Running::start(
        &["node", "--config", config.to_str().unwrap()],
        dir.0.join("log"),
        &[],
    );
    wait_accepting(server_port, &mut node);
    store_items(server_port, 1000);
    node.signal(Signal::SIGUSR2);
    wait_log(&mut node, "saved 1000 items");
    let previous = std::fs::read(&save).unwrap();
    store_items(server_port, 5000);

    // The final save's temporary file is a pipe the test stops reading: the save waits in
    // the middle of its writing.
    let temp = dir.0.join("cache.dat.tmp");
    nix::unistd::mkfifo(&temp, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&temp)
        .unwrap();
    node.signal(Signal::SIGINT);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !matches!(disk.read(&mut buf), Ok(n) if n > 0) {
        assert!(
            Instant::now() < deadline,
            "the save never began:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.signal(Signal::SIGINT);
    assert_eq!(node.wait(), 1, "{}", node.log());
    let log = node.log();
    assert!(
        log.contains(&format!(
            "second SIGINT: exiting without finishing the save to {}",
            save.display()
        )),
        "{log}"
    );
    assert!(
        std::fs::read(&save).unwrap() == previous,
        "the previous save is kept whole"
    );
    assert!(!temp.exists(), "the temporary file is removed");
}

/// A `[vrrp]` section of one instance on eth0 holding [`vrrp_topology::VIP`], 0.1 s adverts.
fn vrrp_section() -> String {
    format!(
        "\n[vrrp]\n{}",
        vrrp_topology::v3_instance(100).replace("[[instance]]", "[[vrrp.instance]]")
    )
}

/// docs/node.md: `-u USER` only without `[vrrp]`, which needs CAP_NET_ADMIN and CAP_NET_RAW
/// for as long as it runs. With it: 64 before anything is bound (the server's port is held
/// here, so a bind first would fail otherwise). Without it (root only): the node runs as USER.
#[test]
fn user_is_refused_with_vrrp_and_taken_without() {
    let dir = Scratch::new("user");
    let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let server_port = held.local_addr().unwrap().port();
    let proxy_port = free_port().unwrap();
    let plain = format!(
        "[server]\nlisten = [\"127.0.0.1\"]\nport = {server_port}\nmemory_limit = \"16m\"\n\
         threads = 1\n\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nthreads = 1\n\
         pools = [{{ name = \"main\", servers = [\"127.0.0.1:{server_port}\"] }}]\n"
    );
    let config = dir.file("vrrp.toml", &format!("{plain}{}", vrrp_section()));
    for flag in ["-u", "--user"] {
        let out = run_with_timeout(
            Command::new(BIN).args(["node", "--config", config.to_str().unwrap(), flag, "nobody"]),
            WAIT,
        )
        .unwrap();
        assert_eq!(out.status.and_then(|s| s.code()), Some(64), "{out:?}");
        assert!(
            out.stderr.contains("-u: a node with [vrrp]")
                && out.stderr.contains("CAP_NET_ADMIN and CAP_NET_RAW"),
            "{out:?}"
        );
        assert!(
            !out.stderr.to_ascii_lowercase().contains("in use"),
            "{out:?}"
        );
    }

    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED the -u switch of user_is_refused_with_vrrp_and_taken_without: needs root"
        );
        return;
    }
    drop(held);
    let config = dir.file("plain.toml", &plain);
    let mut node = Running::start(
        &["node", "--config", config.to_str().unwrap(), "-u", "nobody"],
        dir.0.join("node.log"),
        &[],
    );
    let mut proxy = wait_accepting(proxy_port, &mut node);
    assert_eq!(
        call(&mut proxy, "set u 0 0 1\r\nx\r\n", "STORED"),
        "STORED\r\n"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    assert!(
        uid.split_whitespace()
            .skip(1)
            .all(|id| id == nobody.to_string()),
        "{uid}"
    );
}

/// docs/node.md: SIGUSR1 logs VRRP's status line per instance. A node (server, proxy and VRRP)
/// alone on its link becomes master; each SIGUSR1 adds one status line saying so.
#[test]
fn sigusr1_logs_vrrp_status_per_instance() {
    if !vrrp_topology::root_or_skip("sigusr1_logs_vrrp_status_per_instance") {
        return;
    }
    let mut t = vrrp_topology::Topology::new(1);
    let config = t.write(
        "h1.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1\"]\nport = 11211\nmemory_limit = 16\nthreads = 1\n\n\
             [proxy]\nlisten = [\"127.0.0.1:12000\"]\nthreads = 1\n\
             pools = [{{ name = \"main\", servers = [\"127.0.0.1:11211\"] }}]\n{}",
            vrrp_section()
        ),
    );
    let exe = vrrp_topology::keepcached();
    let pid = t.spawn(
        "h1",
        "h1-node.log",
        &[
            exe.to_str().unwrap(),
            "node",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    // SIGUSR1 is handled from before this line on.
    t.wait_log("h1-node.log", "node serving", WAIT);
    t.wait_holder(&["h1"], "h1", WAIT);
    let status = "status VI_1 state=MASTER";
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    assert!(!log.contains("status VI_1"), "before any SIGUSR1:\n{log}");
    for n in 1..=2 {
        t.signal(pid, Signal::SIGUSR1);
        let deadline = Instant::now() + WAIT;
        loop {
            let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
            if log.matches(status).count() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SIGUSR1 {n}: no {status:?} in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
