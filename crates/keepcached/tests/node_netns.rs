//! Two `keepcached node` processes, the seed's two hosts, in network namespaces (root; CI runs
//! it): h1 and h2 each run server, proxy and VRRP from one file — the one `keepcached convert`
//! makes of the seed's keepalived.conf, magent and memcached command lines — and h3 is the
//! client. A write
//! through the VIP lands on both servers; SIGTERM on the master's node gives the VIP up before
//! its proxy stops, and h2 takes over without a restart of anything (its proxy listened on the
//! VIP all along); a node whose proxy reaches no cache server stays in FAULT, in-process,
//! even with the higher priority. h2 runs as the systemd unit runs it: an unprivileged user
//! with only CAP_NET_ADMIN and CAP_NET_RAW.

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
