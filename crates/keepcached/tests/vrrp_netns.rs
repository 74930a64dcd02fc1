//! Two of our daemons on a bridge, in network namespaces (root; CI runs it):
//! election, the master stopped, killed, frozen and cut off, preemption back,
//! the tracked proxy dying, a client in a third namespace following the VIP, and READY=1 after
//! a reload only once it is applied.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::time::Duration;

use nix::sys::signal::Signal;
use vrrp_topology::{root_or_skip, who_answers, Topology, RESPONDER};

const HOSTS: [&str; 2] = ["h1", "h2"];
const PORT: u16 = 12000;

fn toml(priority: u8, version: u8, interval: &str, extra: &str) -> String {
    let auth = if version == 2 {
        "auth_pass = \"1111\""
    } else {
        ""
    };
    format!(
        r#"{extra}
[[instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
version = {version}
advert_interval = {interval}
{auth}
vips = [{{ address = "198.18.0.100/32", label = "eth0:2" }}]
track_proxy = [{{ name = "proxy" }}]

[proxy_check.proxy]
address = "127.0.0.1:{PORT}"
interval = 0.2
timeout = 0.5
fall = 3
"#
    )
}

/// A `version` responder on each host, up before the daemons start checking it.
fn start_responders(t: &mut Topology) -> Vec<u32> {
    let pids = HOSTS
        .iter()
        .map(|h| {
            t.spawn(
                h,
                &format!("{h}-responder.log"),
                &["python3", "-c", RESPONDER, h, "12000"],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    pids
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn two_daemons_fail_over_every_way() {
    if !root_or_skip("two_daemons_fail_over_every_way") {
        return;
    }
    let mut t = Topology::new(3);
    let responders = start_responders(&mut t);
    let dir = t.dir.clone();
    let status_file = |h: &str| dir.join(format!("{h}.status"));
    let status_line = |h: &str| format!("status_file = {:?}", status_file(h));
    // A notify script that records the capabilities it runs with.
    let script_caps = dir.join("h1-notify-caps");
    let notify = format!(
        r#"notify = {{ master = "/bin/sh -c \"grep CapEff /proc/self/status > {}\"" }}
track_proxy = "#,
        script_caps.display()
    );
    let h1_conf = toml(100, 2, "1", &status_line("h1")).replace("track_proxy = ", &notify);
    let h2_conf = toml(99, 2, "1", &status_line("h2"));
    let mut h1 = t.start_vrrpd("h1", "--config", &h1_conf);
    t.start_vrrpd("h2", "--config", &h2_conf);

    // Election: the higher priority wins once Master_Down_Interval has passed.
    t.wait_holder(&HOSTS, "h1", secs(6.0));
    t.stays_holder(&HOSTS, "h1", secs(1.5));
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h1");

    // With its sockets open, the daemon keeps CAP_NET_ADMIN (bit 12) and
    // CAP_NET_RAW (bit 13, for the sockets of instances a reload adds) alone.
    let proc_status = std::fs::read_to_string(format!("/proc/{h1}/status")).unwrap();
    for (set, want) in [
        ("CapEff", "0000000000003000"),
        ("CapPrm", "0000000000003000"),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
    ] {
        let line = proc_status
            .lines()
            .find(|l| l.starts_with(set))
            .unwrap_or_else(|| panic!("no {set} in {proc_status}"));
        assert!(line.ends_with(want), "{line}");
    }

    // Its scripts, started as root, still get root's capabilities (as under
    // keepalived): the bounding set, which the daemon leaves alone.
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = ours.lines().find(|l| l.starts_with("CapBnd")).unwrap();
    let script = std::fs::read_to_string(&script_caps).unwrap();
    assert_eq!(
        script.trim().rsplit('\t').next(),
        bounding.rsplit('\t').next(),
        "{script}"
    );

    // The status file and SIGUSR1 show each instance's state and counters.
    let h1_status = std::fs::read_to_string(status_file("h1")).unwrap();
    assert!(
        h1_status.contains("\nVI_1 state=MASTER priority=100 base_priority=100 "),
        "{h1_status}"
    );
    let h2_status = std::fs::read_to_string(status_file("h2")).unwrap();
    assert!(
        h2_status.contains("\nVI_1 state=BACKUP priority=99 "),
        "{h2_status}"
    );
    assert!(!h2_status.contains(" accepted=0 "), "{h2_status}");
    t.signal(h1, Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(t.dir.join("h1-vrrpd.log")).unwrap();
    assert!(log.contains("status VI_1 state=MASTER"), "{log}");

    // SIGTERM: priority 0, and the backup takes over after its fast-takeover
    // wait (157 ms at priority 99) rather than Skew_Time (613 ms).
    t.signal(h1, Signal::SIGTERM);
    let took = t.wait_holder(&HOSTS, "h2", secs(2.0));
    eprintln!("SIGTERM failover seen in {took:?}");
    assert!(took < secs(0.5), "took {took:?}\n{}", t.logs());
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h2");

    // Back: h1 restarts and preempts.
    h1 = t.start_vrrpd("h1", "--config", &h1_conf);
    t.wait_holder(&HOSTS, "h1", secs(6.0));
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h1");

    // SIGKILL: no goodbye, the backup waits Master_Down_Interval (3.61 s).
    // The killed master leaves its address behind, as keepalived does, so
    // the check is that h2 holds it and the client reaches h2.
    t.signal(h1, Signal::SIGKILL);
    let start = std::time::Instant::now();
    while !t.has_vip("h2") {
        assert!(
            start.elapsed() < secs(6.0),
            "h2 never took over\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("SIGKILL failover seen in {:?}", start.elapsed());
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h2");
    // The restarted h1 finds its stale address, preempts, and h2 lets go.
    h1 = t.start_vrrpd("h1", "--config", &h1_conf);
    t.wait_holder(&HOSTS, "h1", secs(6.0));

    // SIGSTOP: h2 takes over; SIGCONT: h1 resumes as master, h2 yields.
    t.signal(h1, Signal::SIGSTOP);
    let start = std::time::Instant::now();
    while !t.has_vip("h2") {
        assert!(
            start.elapsed() < secs(6.0),
            "h2 never took over from a frozen h1\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.signal(h1, Signal::SIGCONT);
    t.wait_holder(&HOSTS, "h1", secs(4.0));
    t.stays_holder(&HOSTS, "h1", secs(1.5));

    // Link cut: h1 goes to FAULT and drops the VIP, h2 takes over; link back, h1 preempts.
    t.link("h1", false);
    t.wait_holder(&HOSTS, "h2", secs(6.0));
    t.link("h1", true);
    t.wait_holder(&HOSTS, "h1", secs(6.0));
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h1");

    // The tracked proxy dies on h1: FAULT, the VIP moves to h2.
    t.signal(responders[0], Signal::SIGKILL);
    t.wait_holder(&HOSTS, "h2", secs(3.0));
    assert_eq!(who_answers(&t, "h3", PORT), "VERSION h2");
}

#[test]
fn v3_fast_adverts_fail_over_within_half_a_second() {
    if !root_or_skip("v3_fast_adverts_fail_over_within_half_a_second") {
        return;
    }
    let mut t = Topology::new(2);
    start_responders(&mut t);
    let h1 = t.start_vrrpd("h1", "--config", &toml(100, 3, "0.1", ""));
    t.start_vrrpd("h2", "--config", &toml(99, 3, "0.1", ""));
    t.wait_holder(&HOSTS, "h1", secs(6.0));
    t.stays_holder(&HOSTS, "h1", secs(0.5));
    t.signal(h1, Signal::SIGKILL);
    let start = std::time::Instant::now();
    while !t.has_vip("h2") {
        assert!(
            start.elapsed() < secs(2.0),
            "h2 never took over\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    eprintln!("v3 0.1 s SIGKILL failover seen in {took:?}");
    assert!(took < secs(0.5), "took {took:?}");
}

/// One v2 instance on eth0 with VIP `198.18.0.<vip>`, tracking only the interface.
fn plain_instance(name: &str, vrid: u8, priority: u8, vip: u8) -> String {
    format!(
        r#"
[[instance]]
name = "{name}"
interface = "eth0"
vrid = {vrid}
priority = {priority}
auth_pass = "1111"
vips = [{{ address = "198.18.0.{vip}/32" }}]
"#
    )
}

#[test]
fn sighup_reloads_the_configuration_like_keepalived() {
    if !root_or_skip("sighup_reloads_the_configuration_like_keepalived") {
        return;
    }
    let mut t = Topology::new(2);
    let vi_1 = |p| plain_instance("VI_1", 51, p, 100);
    let vi_2 = |p| plain_instance("VI_2", 52, p, 101);
    let h1 = t.start_vrrpd("h1", "--config", &vi_1(100));
    let h2 = t.start_vrrpd("h2", "--config", &vi_1(99));
    t.wait_holder(&HOSTS, "h1", secs(6.0));
    // The cause depends on which daemon started first: "no master heard for
    // 3.61 s", or "preempting master 198.18.0.2 of lower priority 99".
    t.wait_log(
        "h1-vrrpd.log",
        "BACKUP -> MASTER (priority 100) because: ",
        secs(1.0),
    );

    // The same file again: the master keeps its state and its VIP.
    t.signal(h1, Signal::SIGHUP);
    t.wait_log(
        "h1-vrrpd.log",
        "configuration reloaded: 1 instances kept, 0 started, 0 stopped",
        secs(2.0),
    );
    t.stays_holder(&HOSTS, "h1", secs(2.0));

    // A broken file is reported with its name and problem; nothing changes.
    let conf = t.write("h1.conf", "[[instance]]\nname = \"VI_1\"\nvrid = 300\n");
    t.signal(h1, Signal::SIGHUP);
    let log = t.wait_log("h1-vrrpd.log", "configuration not reloaded", secs(2.0));
    let line = log
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(conf.to_str().unwrap()), "{line}");
    assert!(line.contains("vrid"), "{line}");
    t.stays_holder(&HOSTS, "h1", secs(1.5));

    // A lower priority takes effect: h1 re-advertises at 98, h2 (99) preempts it.
    t.write("h1.conf", &vi_1(98));
    t.signal(h1, Signal::SIGHUP);
    t.wait_log(
        "h1-vrrpd.log",
        "effective priority 100 -> 98: configured priority",
        secs(1.0),
    );
    t.wait_holder(&HOSTS, "h2", secs(6.0));
    t.wait_log(
        "h2-vrrpd.log",
        "BACKUP -> MASTER (priority 99) because: preempting master 198.18.0.1 of lower priority 98",
        secs(1.0),
    );

    // An instance added on both hosts starts; h2 (100) wins it over h1 (50).
    t.write("h1.conf", &(vi_1(98) + &vi_2(50)));
    t.write("h2.conf", &(vi_1(99) + &vi_2(100)));
    t.signal(h1, Signal::SIGHUP);
    t.signal(h2, Signal::SIGHUP);
    let start = std::time::Instant::now();
    while !t.has_addr("h2", "198.18.0.101") || t.has_addr("h1", "198.18.0.101") {
        assert!(start.elapsed() < secs(6.0), "VI_2 not on h2\n{}", t.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    t.stays_holder(&HOSTS, "h2", secs(0.5));

    // Removed from h2, VI_2 says goodbye with priority 0: h1 takes over after
    // its fast-takeover wait (206 ms at priority 50), not Master_Down_Interval
    // (3.8 s). VI_1, unchanged, stays where it is.
    t.write("h2.conf", &vi_1(99));
    t.signal(h2, Signal::SIGHUP);
    let start = std::time::Instant::now();
    while !t.has_addr("h1", "198.18.0.101") || t.has_addr("h2", "198.18.0.101") {
        assert!(
            start.elapsed() < secs(2.0),
            "VI_2 did not move to h1 at once\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.wait_log(
        "h2-vrrpd.log",
        "MASTER -> STOP (priority 100) because: removed from the configuration by a reload",
        secs(1.0),
    );
    t.stays_holder(&HOSTS, "h2", secs(1.5));

    // The master's VIP list grows: it adds the new address and never drops
    // the old one; then shrinks back: the address goes, the other stays.
    let two_vips = |p| {
        vi_1(p).replace(
            r#"vips = [{ address = "198.18.0.100/32" }]"#,
            r#"vips = [{ address = "198.18.0.100/32" }, { address = "198.18.0.102/32" }]"#,
        )
    };
    for (h1_conf, h2_conf, present) in [
        (two_vips(98), two_vips(99), true),
        (vi_1(98), vi_1(99), false),
    ] {
        t.write("h2.conf", &h2_conf);
        t.write("h1.conf", &h1_conf);
        t.signal(h2, Signal::SIGHUP);
        t.signal(h1, Signal::SIGHUP);
        let start = std::time::Instant::now();
        while t.has_addr("h2", "198.18.0.102") != present {
            assert!(start.elapsed() < secs(1.0), "{}", t.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        t.stays_holder(&HOSTS, "h2", secs(1.5));
        assert!(!t.has_addr("h1", "198.18.0.102"));
    }

    // A new source address needs a new socket: the instance is stopped (priority 0, h1 takes
    // over) and started again, and preempts h1 back.
    t.write(
        "h2.conf",
        &vi_1(99).replace("vrid = 51", "vrid = 51\nsource = \"198.18.0.2\""),
    );
    t.signal(h2, Signal::SIGHUP);
    t.wait_log(
        "h2-vrrpd.log",
        "configuration reloaded: 0 instances kept, 1 started, 1 stopped",
        secs(2.0),
    );
    t.wait_log("h2-vrrpd.log", "starting again", secs(1.0));
    t.wait_holder(&HOSTS, "h2", secs(6.0));
    let log = t.wait_log("h2-vrrpd.log", "", secs(0.0));
    let preempted = "BACKUP -> MASTER (priority 99) because: preempting master 198.18.0.1";
    assert_eq!(log.matches(preempted).count(), 2, "{log}");

    // SIGTERM: priority 0, the VIP removed, a clean exit.
    let status = t.stop_with(h2, Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!t.has_vip("h2"));
    t.wait_holder(&HOSTS, "h1", secs(1.0));
}

/// The recipe of docs/vrrp.md ("The proxy on the VIP"), as written there, on
/// two hosts: each runs a cache server, the proxy in front of both, and
/// `keepcached vrrp` tracking the proxy on 127.0.0.1. Exactly one host holds
/// the VIP (before the recipe was fixed, both sat in FAULT: the check went
/// to an address the proxy did not listen on), and the VIP follows the proxy.
#[test]
fn docs_recipe_elects_one_holder_and_follows_the_proxy() {
    if !root_or_skip("docs_recipe_elects_one_holder_and_follows_the_proxy") {
        return;
    }
    let mut t = Topology::new(3);
    let exe = vrrp_topology::keepcached();
    let exe = exe.to_str().unwrap();
    let mut proxies = Vec::new();
    for (h, priority) in [("h1", 100), ("h2", 99)] {
        t.spawn(
            h,
            &format!("{h}-server.log"),
            &[exe, "server", "-u", "root", "-p", "11211", "-U", "0"],
        );
        // As the docs say: the VIP for clients (bound before this host holds it, hence
        // --freebind) and loopback for the check.
        proxies.push(t.spawn(
            h,
            &format!("{h}-proxy.log"),
            &[
                exe,
                "proxy",
                "-D",
                "-u",
                "root",
                "-n",
                "51200",
                "-l",
                "198.18.0.100,127.0.0.1",
                "-p",
                "12000",
                "-s",
                "198.18.0.1:11211",
                "-b",
                "198.18.0.2:11211",
                "--freebind",
            ],
        ));
        let conf = RECIPE
            .replace("ens32", "eth0")
            .replace("192.168.111.100", vrrp_topology::VIP)
            .replace("priority = 100", &format!("priority = {priority}"));
        t.start_vrrpd(h, "--config", &conf);
    }
    t.wait_holder(&HOSTS, "h1", secs(8.0));
    t.stays_holder(&HOSTS, "h1", secs(1.0));
    let stored = vrrp_topology::client(&t, "h3", "set k 0 0 2\r\nhi\r\n");
    assert_eq!(stored, "STORED", "{}", t.logs());

    // The master's proxy dies: its check fails, FAULT, the VIP moves.
    t.signal(proxies[0], Signal::SIGKILL);
    t.wait_holder(&HOSTS, "h2", secs(5.0));
    t.wait_log(
        "h1-vrrpd.log",
        "INFO keepcached_vrrp::track: proxy check `proxy` failed: connecting to 127.0.0.1:12000: \
         Connection refused (os error 111) (down after 2 failures in a row)",
        secs(1.0),
    );
    t.wait_log(
        "h1-vrrpd.log",
        "WARN keepcached_vrrp::track: proxy check `proxy` down: failed 2 times in a row",
        secs(1.0),
    );
    t.wait_log(
        "h1-vrrpd.log",
        "MASTER -> FAULT (priority 100) because: proxy check `proxy` down (failed 2 times in a row, last: connecting to 127.0.0.1:12000",
        secs(1.0),
    );
    let read = vrrp_topology::client(&t, "h3", "get k\r\n");
    assert_eq!(read, "VALUE k 0 2", "{}", t.logs());
}

/// docs/vrrp.md's configuration for the recipe, word for word.
const RECIPE: &str = r#"
[proxy_check.proxy]
address = "127.0.0.1:12000"
interval = 0.5
timeout = 0.5
fall = 2

[[instance]]
name = "VI_1"
interface = "ens32"
vrid = 51
priority = 100
auth_pass = "1111"
vips = [{ address = "192.168.111.100/32" }]
track_proxy = [{ name = "proxy" }]
"#;

/// A keepalived.conf instance for h1, with `password`.
fn keepalived_instance(password: &str) -> String {
    format!(
        "vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    \
         priority 100\n    advert_int 1\n    authentication {{\n        auth_type PASS\n        \
         auth_pass {password}\n    }}\n    virtual_ipaddress {{\n        {}/32\n    }}\n}}\n",
        vrrp_topology::VIP
    )
}

/// Peers with different passwords each discard the other's adverts, so both
/// hold the VIP (keepalived behaves the same): the split brain is logged at
/// warn, once per peer and reason, naming the peer; fixing the password with a
/// reload of the keepalived.conf (SIGHUP) ends it.
#[test]
fn password_mismatch_is_logged_and_a_reload_fixes_it() {
    if !root_or_skip("password_mismatch_is_logged_and_a_reload_fixes_it") {
        return;
    }
    let mut t = Topology::new(2);
    let h1 = t.start_vrrpd("h1", "--keepalived-conf", &keepalived_instance("2222"));
    t.start_vrrpd("h2", "--config", &plain_instance("VI_1", 51, 99, 100));
    let start = std::time::Instant::now();
    while t.holders(&HOSTS).len() < 2 {
        assert!(start.elapsed() < secs(6.0), "no split brain\n{}", t.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both masters now advertise once a second; wait for a few.
    std::thread::sleep(Duration::from_secs(3));
    for (log, peer) in [
        ("h1-vrrpd.log", "198.18.0.2"),
        ("h2-vrrpd.log", "198.18.0.1"),
    ] {
        let needle = format!(
            "WARN keepcached_vrrp::daemon: advert from {peer} discarded: authentication password mismatch"
        );
        let text = t.wait_log(log, &needle, secs(1.0));
        assert_eq!(
            text.lines().filter(|l| l.contains(&needle)).count(),
            1,
            "{text}"
        );
    }
    t.write("h1.conf", &keepalived_instance("1111"));
    t.signal(h1, Signal::SIGHUP);
    t.wait_holder(&HOSTS, "h1", secs(3.0));
    t.wait_log(
        "h2-vrrpd.log",
        "MASTER -> BACKUP (priority 99) because: 198.18.0.1 advertises priority 100, which outranks ours",
        secs(1.0),
    );

    // SIGINT, like SIGTERM: priority 0, the VIP removed, a clean exit.
    let status = t.stop_with(h1, Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!t.has_vip("h1"));
    t.wait_holder(&HOSTS, "h2", secs(1.0));
    t.wait_log(
        "h2-vrrpd.log",
        "BACKUP -> MASTER (priority 99) because: master 198.18.0.1 left (advertised priority 0)",
        secs(1.0),
    );
}

/// READY=1 after a SIGHUP comes once the daemon has applied the new file (its "configuration
/// reloaded" line is in the log when READY=1 arrives, read once), or refused it; systemd's
/// notify socket is a real datagram socket.
#[test]
fn ready_follows_the_applied_configuration_after_sighup() {
    if !root_or_skip("ready_follows_the_applied_configuration_after_sighup") {
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let mut t = Topology::new(1);
    let notify_path = t.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let wait_for = |t: &Topology, line: &str| {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == line)
                {
                    return;
                }
            }
            assert!(start.elapsed() < secs(10.0), "no {line}\n{}", t.logs());
        }
    };
    let conf = t.write("h1.conf", &plain_instance("VI_1", 51, 100, 100));
    let notify_env = format!("NOTIFY_SOCKET={}", notify_path.display());
    let exe = vrrp_topology::keepcached();
    let h1 = t.spawn(
        "h1",
        "h1-vrrpd.log",
        &[
            "env",
            &notify_env,
            exe.to_str().unwrap(),
            "vrrp",
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    wait_for(&t, "READY=1");
    let log_path = t.dir.join("h1-vrrpd.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    const APPLIED: &str = "configuration reloaded:";
    for round in 0..10u8 {
        t.write("h1.conf", &plain_instance("VI_1", 51, 90 + round, 100));
        let before = log().matches(APPLIED).count();
        t.signal(h1, Signal::SIGHUP);
        wait_for(&t, "RELOADING=1");
        wait_for(&t, "READY=1");
        let text = log();
        assert_eq!(
            text.matches(APPLIED).count(),
            before + 1,
            "round {round}: READY=1 before the reload was applied:\n{text}"
        );
    }
    t.write("h1.conf", "[[instance]]\nname = \"VI_1\"\nvrid = 300\n");
    t.signal(h1, Signal::SIGHUP);
    wait_for(&t, "RELOADING=1");
    wait_for(&t, "READY=1");
    assert!(log().contains("configuration not reloaded"), "{}", log());
}
