//! Two `keepcached node` processes, the seed's two hosts, in network namespaces (root; CI runs
//! it): h1 and h2 each run server, proxy and VRRP from one file — the one `keepcached convert`
//! makes of the seed's keepalived.conf, magent and memcached command lines — and h3 is the
//! client. A write
//! through the VIP lands on both servers; SIGTERM on the master's node gives the VIP up before
//! its proxy stops, and h2 takes over without a restart of anything (its proxy listened on the
//! VIP all along); a node whose proxy reaches no cache server stays in FAULT, in-process,
//! even with the higher priority. h2 runs as the systemd unit runs it: an unprivileged user
//! with only CAP_NET_ADMIN and CAP_NET_RAW. Then, each in a topology of its own: the node's
//! VRRP goes to FAULT when its own cache server stops, and while its proxy's one server is
//! drained by the operator (not while it is held out of reads), counts the proxy as up until
//! the proxy has first met its servers, and finishes handing the VIP over whatever a second signal says.

#[allow(dead_code)]
mod vrrp_topology;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vrrp_topology::{keepcached, root_or_skip, Topology, VIP};

const HOSTS: [&str; 2] = ["h1", "h2"];
const LIMIT: Duration = Duration::from_secs(15);

fn node_toml(priority: u8, servers: (&str, &str)) -> String {
    format!(
        r#"[server]
port = 11211
memory_limit = 16
threads = 1

[proxy]
listen = ["{VIP}:12000", "127.0.0.1:12000"]
threads = 1
pools = [
  {{ name = "main", servers = ["{}"] }},
  {{ name = "backup", servers = ["{}"] }},
]

[vrrp]
[[vrrp.instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = 1
auth_pass = "1111"
vips = [{{ address = "{VIP}/32", label = "eth0:2" }}]
"#,
        servers.0, servers.1
    )
}

const SERVERS: (&str, &str) = ("198.18.0.1:11211", "198.18.0.2:11211");

/// The seed's host `n` (1 or 2), migrated with `keepcached convert` from its own
/// keepalived.conf, magent and memcached command lines, moved onto the test's addresses.
fn converted(t: &Topology, n: u32) -> String {
    let fixture = format!(
        "{}/../vrrp/tests/fixtures/seed-memcached{n}.conf",
        env!("CARGO_MANIFEST_DIR")
    );
    let conf = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("ens32", "eth0")
        .replace("192.168.111.100", VIP);
    let conf = t.write(&format!("keepalived{n}.conf"), &conf);
    let out = std::process::Command::new(keepcached())
        .args(["convert", "--keepalived-conf", conf.to_str().unwrap()])
        .args(["--memcached", "-d -m 32m -p11211 -u root"])
        .args([
            "--magent",
            &format!(
                "-u root -n 51200 -l {VIP} -p 12000 -s {} -b {}",
                SERVERS.0, SERVERS.1
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start_node(t: &mut Topology, host: &str, config: &str, run: u32) -> u32 {
    let path = t.write(&format!("{host}-{run}.toml"), config);
    let exe = keepcached();
    let notify = format!("NOTIFY_SOCKET={}", notify_path(t, host).display());
    t.spawn(
        host,
        &format!("{host}-node-{run}.log"),
        &[
            "env",
            &notify,
            exe.to_str().unwrap(),
            "node",
            "--config",
            path.to_str().unwrap(),
        ],
    )
}

/// As examples/systemd/keepcached-node.service runs it: an unprivileged user (nobody) with
/// CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities and nothing else in its bounding set.
fn start_node_unprivileged(t: &mut Topology, host: &str, config: &str, run: u32) -> u32 {
    let path = t.write(&format!("{host}-{run}.toml"), config);
    let exe = keepcached();
    t.spawn(
        host,
        &format!("{host}-node-{run}.log"),
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_admin,+net_raw",
            "--ambient-caps=-all,+net_admin,+net_raw",
            "--bounding-set=-all,+net_admin,+net_raw",
            "--no-new-privs",
            exe.to_str().unwrap(),
            "node",
            "--config",
            path.to_str().unwrap(),
        ],
    )
}

/// Where `host`'s node sends systemd's notifications (a path, so reachable from every
/// network namespace).
fn notify_path(t: &Topology, host: &str) -> std::path::PathBuf {
    t.dir.join(format!("{host}-notify.sock"))
}

/// The notifications of `host`'s node, as systemd would receive them.
fn notify_socket(t: &Topology, host: &str) -> std::os::unix::net::UnixDatagram {
    let socket = std::os::unix::net::UnixDatagram::bind(notify_path(t, host)).unwrap();
    socket.set_read_timeout(Some(LIMIT)).unwrap();
    socket
}

fn next_notification(socket: &std::os::unix::net::UnixDatagram, t: &Topology) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification: {e}\n{}", t.logs()));
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

/// One request from h3 to `addr`; the reply up to and including the line `last`.
fn ask(t: &Topology, addr: &str, request: &str, last: &str) -> std::io::Result<String> {
    let _inside = t.enter("h3");
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(reply);
        }
        reply.push_str(&line);
        if line.trim_end() == last || line.starts_with("SERVER_ERROR") {
            return Ok(reply);
        }
    }
}

/// Sets `key` through the VIP, retrying until the proxy that holds it stores it.
fn set_through_vip(t: &Topology, key: &str) {
    let start = Instant::now();
    loop {
        let request = format!("set {key} 0 0 5\r\nnihao\r\n");
        match ask(t, &format!("{VIP}:12000"), &request, "STORED") {
            Ok(reply) if reply == "STORED\r\n" => return,
            other if start.elapsed() > LIMIT => {
                panic!("set {key} through the VIP: {other:?}\n{}", t.logs())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn get_from(t: &Topology, server: &str, key: &str) -> String {
    ask(t, server, &format!("get {key}\r\n"), "END").unwrap_or_else(|e| format!("{e}"))
}

#[test]
fn two_nodes_serve_the_vip_and_hand_it_over_cleanly() {
    if !root_or_skip("two_nodes_serve_the_vip_and_hand_it_over_cleanly") {
        return;
    }
    let mut t = Topology::new(3);
    let (c1, c2) = (converted(&t, 1), converted(&t, 2));
    let notifications = notify_socket(&t, "h1");
    let h1 = start_node(&mut t, "h1", &c1, 1);
    start_node_unprivileged(&mut t, "h2", &c2, 1);
    // READY=1 once VRRP's sockets are open too.
    assert_eq!(next_notification(&notifications, &t), "READY=1");
    t.wait_holder(&HOSTS, "h1", LIMIT);
    set_through_vip(&t, "seed");
    for server in ["198.18.0.1:11211", "198.18.0.2:11211"] {
        assert_eq!(
            get_from(&t, server, "seed"),
            "VALUE seed 0 5\r\nnihao\r\nEND\r\n",
            "{server}\n{}",
            t.logs()
        );
    }

    // SIGTERM on the master's node: VRRP leaves (priority 0, VIP removed) before its proxy
    // stops, and h2 takes over.
    let status = t.stop_with(h1, Signal::SIGTERM);
    assert!(status.success(), "{status}\n{}", t.logs());
    assert_eq!(next_notification(&notifications, &t), "STOPPING=1");
    let log = std::fs::read_to_string(t.dir.join("h1-node-1.log")).unwrap();
    let left = log.find("because: shutting down").expect(&log);
    let proxy_stops = log.find("proxy shutting down").expect(&log);
    assert!(left < proxy_stops, "the VIP is given up first:\n{log}");
    let took = t.wait_holder(&HOSTS, "h2", LIMIT);
    eprintln!("h2 held the VIP {took:?} after h1's node exited on SIGTERM");
    set_through_vip(&t, "after");
    assert_eq!(
        get_from(&t, "198.18.0.2:11211", "after"),
        "VALUE after 0 5\r\nnihao\r\nEND\r\n",
        "{}",
        t.logs()
    );

    // h1 comes back with a proxy that reaches no cache server: in-process tracking keeps it
    // in FAULT, so it does not take the VIP back despite its higher priority.
    let dead = ("198.18.0.9:11211", "198.18.0.10:11211");
    start_node(&mut t, "h1", &node_toml(100, dead), 2);
    let log = t.wait_log(
        "h1-node-2.log",
        "local proxy down: none of its 2 cache servers answers",
        LIMIT,
    );
    assert!(!log.contains("-> MASTER"), "{log}");
    t.stays_holder(&HOSTS, "h2", Duration::from_secs(3));
}

/// A node file for h1 alone: a cache server on :11211 (with `server_extra` lines), a proxy on
/// 127.0.0.1:12000 whose one pool holds `servers` (with `proxy_extra` lines after it), and VRRP
/// at `priority` with 0.1 s adverts.
fn quick_node_toml(server_extra: &str, servers: &str, proxy_extra: &str, priority: u8) -> String {
    format!(
        "[server]\nport = 11211\nmemory_limit = 16\nthreads = 1\n{server_extra}\n\
         [proxy]\nlisten = [\"127.0.0.1:12000\"]\nthreads = 1\n\
         pools = [{{ name = \"main\", servers = [\"{servers}\"] }}]\n{proxy_extra}\n\
         [vrrp]\n{}",
        vrrp_topology::v3_instance(priority).replace("[[instance]]", "[[vrrp.instance]]")
    )
}

/// Whether every thread of `pid` is stopped (SIGSTOP has taken effect on all of them).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// Polls until `addr` accepts a connection from `host`.
fn wait_accepting(t: &Topology, host: &str, addr: &str) {
    let start = Instant::now();
    loop {
        {
            let _inside = t.enter(host);
            let connected =
                TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200));
            if connected.is_ok() {
                return;
            }
        }
        assert!(
            start.elapsed() < LIMIT,
            "{addr} never accepted on {host}\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// docs/node.md, "What VRRP tracks in a node": the item `local cache server` is down once the
/// server stopped, which puts the instance in FAULT. The server stops through its `shutdown`
/// command (`enable_shutdown`); the node then stops too (the server does not come back in a
/// running node), but VRRP hears of the server first: the master goes to FAULT for that reason,
/// and the backup (h2, `keepcached vrrp`) takes the VIP.
#[test]
fn a_stopped_cache_server_puts_the_nodes_vrrp_in_fault() {
    if !root_or_skip("a_stopped_cache_server_puts_the_nodes_vrrp_in_fault") {
        return;
    }
    let mut t = Topology::new(2);
    let config = t.write(
        "h1.toml",
        &quick_node_toml("enable_shutdown = true", "127.0.0.1:11211", "", 100),
    );
    let exe = keepcached();
    let node = t.spawn(
        "h1",
        "h1-node.log",
        &[
            exe.to_str().unwrap(),
            "node",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    t.start_vrrpd("h2", "--config", &vrrp_topology::v3_instance(99));
    t.wait_holder(&HOSTS, "h1", LIMIT);
    {
        let _inside = t.enter("h1");
        let mut server = TcpStream::connect("127.0.0.1:11211").unwrap();
        server.write_all(b"shutdown\r\n").unwrap();
    }
    let status = t.wait_exit(node, LIMIT);
    assert!(status.success(), "{status}\n{}", t.logs());
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    assert!(log.contains("local cache server down: it stopped"), "{log}");
    assert!(
        log.contains(
            "MASTER -> FAULT (priority 100) because: local cache server down (it stopped)"
        ),
        "{log}"
    );
    t.wait_holder(&HOSTS, "h2", LIMIT);
}

/// docs/node.md: before the node's proxy has first met its servers, the item `local proxy`
/// counts as up (as keepalived counts a script that has not run yet), so a node does not start
/// in FAULT while its proxy is still connecting. The proxy's one server is a memcached stopped
/// with SIGSTOP: the kernel accepts the proxy's connections, but no `stats` is answered, so the
/// first contact lasts until SIGCONT (the request timeout is longer than the test). The node
/// becomes master meanwhile, and stays master once the proxy meets its server.
#[test]
fn the_proxy_counts_as_up_until_it_first_meets_its_servers() {
    if !root_or_skip("the_proxy_counts_as_up_until_it_first_meets_its_servers") {
        return;
    }
    let mut t = Topology::new(1);
    let memcached = t.spawn(
        "h1",
        "memcached.log",
        &[
            "memcached",
            "-u",
            "nobody",
            "-l",
            "127.0.0.1",
            "-p",
            "11311",
            "-U",
            "0",
            "-m",
            "16",
        ],
    );
    wait_accepting(&t, "h1", "127.0.0.1:11311");
    t.signal(memcached, Signal::SIGSTOP);
    let config = t.write(
        "h1.toml",
        &quick_node_toml(
            "",
            "127.0.0.1:11311",
            "[proxy.backend]\nrequest_timeout_ms = 60000\n",
            100,
        ),
    );
    let exe = keepcached();
    t.spawn(
        "h1",
        "h1-node.log",
        &[
            exe.to_str().unwrap(),
            "node",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    t.wait_holder(&["h1"], "h1", LIMIT);
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    // The proxy logs that it listens once its first contact is over.
    assert!(
        !log.contains("proxy listening"),
        "the first contact ended before the node became master:\n{log}"
    );
    assert!(!log.contains("FAULT"), "{log}");

    t.signal(memcached, Signal::SIGCONT);
    t.wait_log("h1-node.log", "proxy listening", LIMIT);
    t.stays_holder(&["h1"], "h1", Duration::from_secs(1));
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    assert!(!log.contains("local proxy down"), "{log}");
    assert!(!log.contains("FAULT"), "{log}");
}

/// docs/node.md, "Lifecycle": a second SIGTERM or SIGINT does not cut VRRP's handover of the
/// VIP short (priority 0 sent, the VIP removed), or both nodes would hold it. The VRRP step
/// takes milliseconds, so the second signal is made to arrive with the first: the node is
/// stopped (SIGSTOP) while SIGTERM and SIGINT are sent, and both are taken at SIGCONT, before
/// the shutdown has got past VRRP.
#[test]
fn a_second_signal_does_not_cut_vrrps_handover_short() {
    if !root_or_skip("a_second_signal_does_not_cut_vrrps_handover_short") {
        return;
    }
    let mut t = Topology::new(2);
    let config = t.write("h1.toml", &quick_node_toml("", "127.0.0.1:11211", "", 100));
    let exe = keepcached();
    let node = t.spawn(
        "h1",
        "h1-node.log",
        &[
            exe.to_str().unwrap(),
            "node",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    t.start_vrrpd("h2", "--config", &vrrp_topology::v3_instance(99));
    t.wait_holder(&HOSTS, "h1", LIMIT);
    t.wait_log("h1-node.log", "node serving", LIMIT);

    t.signal(node, Signal::SIGSTOP);
    let start = Instant::now();
    while !all_threads_stopped(node) {
        assert!(
            start.elapsed() < LIMIT,
            "the node never stopped\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Sent directly: `Topology::signal` would wait for the exit of a process stopped.
    let pid = nix::unistd::Pid::from_raw(node as i32);
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCONT] {
        nix::sys::signal::kill(pid, signal).unwrap();
    }
    let status = t.wait_exit(node, LIMIT);
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains(": the shutdown goes on: VRRP sends priority 0 and removes the VIP first"),
        "{log}"
    );
    assert!(
        log.contains("MASTER -> STOP (priority 100) because: shutting down"),
        "{log}"
    );
    assert!(!t.has_vip("h1"), "the VIP is left on h1\n{log}");
    t.wait_holder(&HOSTS, "h2", LIMIT);
}

/// One line of the proxy's operator commands, from `host` to its proxy on 127.0.0.1:12000;
/// the reply's first line.
fn operator(t: &Topology, host: &str, command: &str) -> String {
    let _inside = t.enter(host);
    let mut s = TcpStream::connect("127.0.0.1:12000").unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// docs/node.md, "What VRRP tracks in a node": the item `local proxy` is down while none of
/// the proxy's servers answers, a server drained by the operator counting as not answering
/// and one held out of reads (suspect) as answering; the instance is in FAULT while the item
/// is down and comes back once a server answers again. A node alone on its link, its proxy's
/// one server its own cache server.
#[test]
fn the_nodes_vrrp_follows_its_proxys_servers_drained_and_back() {
    if !root_or_skip("the_nodes_vrrp_follows_its_proxys_servers_drained_and_back") {
        return;
    }
    let mut t = Topology::new(1);
    let config = t.write("h1.toml", &quick_node_toml("", "127.0.0.1:11211", "", 100));
    let exe = keepcached();
    t.spawn(
        "h1",
        "h1-node.log",
        &[
            exe.to_str().unwrap(),
            "node",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    t.wait_holder(&["h1"], "h1", LIMIT);
    t.wait_log("h1-node.log", "proxy listening", LIMIT);

    assert_eq!(operator(&t, "h1", "backend hold 127.0.0.1:11211"), "OK");
    t.stays_holder(&["h1"], "h1", Duration::from_secs(1));

    assert_eq!(operator(&t, "h1", "backend drain 127.0.0.1:11211"), "OK");
    t.wait_log(
        "h1-node.log",
        "MASTER -> FAULT (priority 100) because: local proxy down (none of its 1 cache \
         servers answers)",
        LIMIT,
    );
    let start = Instant::now();
    while t.has_vip("h1") {
        assert!(
            start.elapsed() < LIMIT,
            "the VIP stays in FAULT\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    assert_eq!(operator(&t, "h1", "backend up 127.0.0.1:11211"), "OK");
    t.wait_log("h1-node.log", "local proxy up again", LIMIT);
    t.wait_holder(&["h1"], "h1", LIMIT);
    let log = std::fs::read_to_string(t.dir.join("h1-node.log")).unwrap();
    assert_eq!(log.matches("-> FAULT").count(), 1, "{log}");
}
