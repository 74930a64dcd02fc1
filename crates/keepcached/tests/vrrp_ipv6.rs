//! VRRPv3 over IPv6 in network namespaces (root; CI runs it): our daemon and
//! Debian's keepalived 2.2 elect the higher priority, which holds the IPv6
//! VIP; a client in a third namespace reaches it and, after the master is
//! killed, follows it to the other host because of the new master's
//! unsolicited neighbour advertisement; adverts that are routed, not from a
//! link-local address, badly summed or otherwise wrong are discarded with
//! their reason; and one daemon runs an IPv4 and an IPv6 instance side by
//! side.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::process::Command;
use std::time::{Duration, Instant};

use keepcached_vrrp::packet::{Advert, Auth, ChecksumMode, Version, MULTICAST_V6};
use nix::sys::signal::Signal;
use socket2::{Domain, Protocol, Socket, Type};
use vrrp_topology::{root_or_skip, Topology, VIP, VIP6};

const HOSTS: [&str; 2] = ["h1", "h2"];
const PORT: u16 = 12000;

/// A TCP responder on every IPv6 address answering each line with
/// `VERSION <name>`: shows the client which host holds the VIP.
const RESPONDER6: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[2]))); s.listen(64)
def serve(c):
    f = c.makefile("rb")
    for _ in f:
        c.sendall(b"VERSION " + sys.argv[1].encode() + b"\r\n")
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// keepalived's configuration of one IPv6 instance: with an IPv6 VIP it runs
/// VRRPv3 without being told.
fn keepalived_conf(priority: u8) -> String {
    format!(
        "vrrp_instance V6 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 61\n  \
         priority {priority}\n  advert_int 1\n  virtual_ipaddress {{\n    {VIP6}/64\n  }}\n}}\n"
    )
}

/// Our configuration of the same instance.
fn keepcached_conf(priority: u8) -> String {
    format!(
        "[[instance]]\nname = \"V6\"\ninterface = \"eth0\"\nvrid = 61\nversion = 3\n\
         priority = {priority}\nadvert_interval = 1\nvips = [{{ address = \"{VIP6}/64\" }}]\n"
    )
}

/// A responder on each host, listening before anything is asked of it.
fn start_responders(t: &mut Topology) {
    for h in HOSTS {
        t.spawn(
            h,
            &format!("{h}-responder.log"),
            &["python3", "-c", RESPONDER6, h, &PORT.to_string()],
        );
    }
}

/// Asks `[VIP6]:PORT` from `host` which host answers; empty if none does.
fn who_answers6(t: &Topology, host: &str) -> String {
    let code = format!(
        "import socket\ns=socket.create_connection(('{VIP6}',{PORT}),timeout=1)\n\
         s.sendall(b'version\\r\\n')\nprint(s.makefile().readline().strip())"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(host), "python3", "-c", &code])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until `client` reaches the VIP on `host`.
fn wait_answer(t: &Topology, client: &str, host: &str, limit: Duration) {
    let start = Instant::now();
    let want = format!("VERSION {host}");
    loop {
        let got = who_answers6(t, client);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?} [{VIP6}]:{PORT} answers `{got}`, wanted `{want}`\n{}",
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hardware address of `host`'s eth0.
fn mac(t: &Topology, host: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &t.ns(host), "-br", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(2).expect("a MAC").to_owned()
}

/// Waits until `host`'s neighbour entry for the VIP has link-layer address
/// `mac`: it learned where the VIP went without asking, from an unsolicited
/// neighbour advertisement.
fn wait_neighbour(t: &Topology, host: &str, mac: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let out = Command::new("ip")
            .args([
                "-n",
                &t.ns(host),
                "-6",
                "neigh",
                "show",
                VIP6,
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains(&format!("lladdr {mac}")) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?} {host} has `{}` for {VIP6}, wanted {mac}\n{}",
            text.trim(),
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round: the higher priority on h1 (ours from TOML, or keepalived), the
/// other on h2 (keepalived, or ours from the same keepalived.conf); h3 is the
/// client.
fn election_and_failover(ours_is_master: bool) {
    let s = Duration::from_secs;
    let mut t = Topology::new(3);
    start_responders(&mut t);
    let (master, master_name) = if ours_is_master {
        let pid = t.start_vrrpd("h1", "--config", &keepcached_conf(150));
        t.start_keepalived("h2", &keepalived_conf(100));
        (pid, "keepcached")
    } else {
        let pid = t.start_keepalived("h1", &keepalived_conf(150));
        // Ours reads keepalived's own file here.
        t.start_vrrpd("h2", "--keepalived-conf", &keepalived_conf(100));
        (pid, "keepalived")
    };
    t.wait_holder_of(&HOSTS, "h1", VIP6, s(8));
    t.stays_holder_of(&HOSTS, "h1", VIP6, s(2));
    wait_answer(&t, "h3", "h1", s(3));
    let h2_mac = mac(&t, "h2");
    assert_ne!(mac(&t, "h1"), h2_mac);

    if ours_is_master {
        // No goodbye: h2 waits Master_Down_Interval. The killed daemon leaves
        // its address behind, as keepalived would, so the client follows the
        // VIP only because h2 announces it.
        t.signal(master, Signal::SIGKILL);
        let start = Instant::now();
        while !t.has_addr("h2", VIP6) {
            assert!(start.elapsed() < s(6), "h2 never took over\n{}", t.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        // keepalived stops cleanly: priority 0, address removed.
        t.signal(master, Signal::SIGTERM);
        t.wait_holder_of(&HOSTS, "h2", VIP6, s(4));
    }
    eprintln!("{master_name} master killed: VIP on h2");
    wait_neighbour(&t, "h3", &h2_mac, s(3));
    wait_answer(&t, "h3", "h2", s(3));
}

#[test]
fn keepcached_master_keepalived_backup_over_ipv6() {
    if !root_or_skip("keepcached_master_keepalived_backup_over_ipv6")
        || !keepcached_testkit::env::require(
            "keepcached_master_keepalived_backup_over_ipv6",
            true,
            &["/usr/sbin/keepalived"],
        )
    {
        return;
    }
    election_and_failover(true);
}

#[test]
fn keepalived_master_keepcached_backup_over_ipv6() {
    if !root_or_skip("keepalived_master_keepcached_backup_over_ipv6")
        || !keepcached_testkit::env::require(
            "keepalived_master_keepcached_backup_over_ipv6",
            true,
            &["/usr/sbin/keepalived"],
        )
    {
        return;
    }
    election_and_failover(false);
}

/// Two instances under the same VRID, one per family: the families are
/// separate protocols, so they neither clash nor see each other's adverts.
/// The IPv6 one announces its address in one burst of 3.
fn dual_conf(priority: u8) -> String {
    format!(
        "[[instance]]\nname = \"V4\"\ninterface = \"eth0\"\nvrid = 71\nversion = 3\n\
         priority = {priority}\nadvert_interval = 0.5\nvips = [{{ address = \"{VIP}/32\" }}]\n\n\
         [[instance]]\nname = \"V6\"\ninterface = \"eth0\"\nvrid = 71\nversion = 3\n\
         priority = {priority}\nadvert_interval = 0.5\ngarp_master_repeat = 3\n\
         garp_master_delay = 0\nvips = [{{ address = \"{VIP6}/64\" }}]\n"
    )
}

/// An ICMPv6 socket on `host`'s eth0, to watch neighbour advertisements.
fn icmpv6_listener(t: &Topology, host: &str) -> Socket {
    let _in_host = t.enter(host);
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
    socket.bind_device(Some(b"eth0")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    socket
}

/// The unsolicited neighbour advertisements (type 136, override set,
/// solicited clear) for `target` that `socket` receives until `until`.
fn unsolicited_nas(socket: &Socket, target: Ipv6Addr, until: Instant) -> usize {
    use std::io::Read;
    let mut n = 0;
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        let Ok(len) = (&*socket).read(&mut buf) else {
            continue;
        };
        let m = &buf[..len];
        if len >= 24 && m[0] == 136 && m[4] & 0x60 == 0x20 && m[8..24] == target.octets() {
            n += 1;
        }
    }
    n
}

#[test]
fn one_daemon_runs_an_ipv4_and_an_ipv6_instance() {
    if !root_or_skip("one_daemon_runs_an_ipv4_and_an_ipv6_instance") {
        return;
    }
    let s = Duration::from_secs;
    let mut t = Topology::new(2);
    let h1 = t.start_vrrpd("h1", "--config", &dual_conf(150));
    t.start_vrrpd("h2", "--config", &dual_conf(100));
    t.wait_holder_of(&HOSTS, "h1", VIP, s(6));
    t.wait_holder_of(&HOSTS, "h1", VIP6, s(6));
    t.stays_holder_of(&HOSTS, "h1", VIP6, s(1));
    t.stays_holder(&HOSTS, "h1", s(1));
    for (host, log) in [("h1", "h1-vrrpd.log"), ("h2", "h2-vrrpd.log")] {
        let text = t.wait_log(log, "V6", s(1));
        assert!(!text.contains("discarded"), "{host}: {text}");
    }
    // h1 stops: it gives up both, and h2 takes both and announces the IPv6
    // one by exactly `garp_master_repeat` unsolicited advertisements.
    let listener = icmpv6_listener(&t, "h1");
    t.signal(h1, Signal::SIGTERM);
    t.wait_holder_of(&HOSTS, "h2", VIP, s(3));
    t.wait_holder_of(&HOSTS, "h2", VIP6, s(3));
    let target: Ipv6Addr = VIP6.parse().unwrap();
    assert_eq!(
        unsolicited_nas(&listener, target, Instant::now() + s(2)),
        3,
        "{}",
        t.logs()
    );
    let log = t.wait_log("h2-vrrpd.log", "V6", s(1));
    assert_eq!(log.matches("-> MASTER").count(), 2, "{log}");
}

/// `host`'s link-local address on eth0.
fn link_local(t: &Topology, host: &str) -> Ipv6Addr {
    let out = Command::new("ip")
        .args([
            "-n",
            &t.ns(host),
            "-6",
            "-br",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .args(["scope", "link"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let addr = text
        .split_whitespace()
        .nth(2)
        .expect("a link-local address");
    addr.split('/').next().unwrap().parse().unwrap()
}

/// Sends one advert from `src` with hop limit `hops` to ff02::12 out of
/// `host`'s eth0.
fn inject(t: &Topology, host: &str, src: Ipv6Addr, hops: u32, payload: &[u8]) {
    let _in_host = t.enter(host);
    let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(112))).unwrap();
    socket.bind_device(Some(b"eth0")).unwrap();
    socket
        .bind(&SocketAddrV6::new(src, 0, 0, ifindex).into())
        .unwrap();
    socket.set_multicast_hops_v6(hops).unwrap();
    socket.set_multicast_if_v6(ifindex).unwrap();
    socket
        .send_to(
            payload,
            &SocketAddrV6::new(MULTICAST_V6, 0, 0, ifindex).into(),
        )
        .unwrap();
}

#[test]
fn bad_ipv6_adverts_are_discarded_with_their_reason() {
    if !root_or_skip("bad_ipv6_adverts_are_discarded_with_their_reason") {
        return;
    }
    let s = Duration::from_secs;
    let mut t = Topology::new(2);
    t.start_vrrpd("h1", "--config", &keepcached_conf(150));
    t.wait_holder_of(&HOSTS, "h1", VIP6, s(6));
    let ll = link_local(&t, "h2");
    let global: Ipv6Addr = "2001:2::2".parse().unwrap();
    // Each would take the VIP from h1 (priority 200) if it were accepted.
    let advert = Advert {
        version: Version::V3,
        vrid: 61,
        priority: 200,
        interval_cs: 100,
        auth: Auth::None,
        addresses: vec![VIP6.parse().unwrap()],
    };
    let encode = |a: &Advert, src: Ipv6Addr| {
        a.encode(
            IpAddr::V6(src),
            IpAddr::V6(MULTICAST_V6),
            ChecksumMode::PseudoHeader,
        )
    };
    let mut bad_sum = encode(&advert, ll);
    bad_sum[7] ^= 0xff;
    let other_list = Advert {
        addresses: vec!["2001:2::200".parse().unwrap()],
        ..advert.clone()
    };
    let cases = [
        (ll, 64, encode(&advert, ll), "hop limit 64 instead of 255"),
        (
            global,
            255,
            encode(&advert, global),
            "multicast from a source that is not link-local",
        ),
        (ll, 255, bad_sum, "bad checksum"),
        (
            ll,
            255,
            encode(&other_list, ll),
            "virtual address list differs from ours",
        ),
    ];
    for (src, hops, payload, why) in &cases {
        inject(&t, "h2", *src, *hops, payload);
        t.wait_log(
            "h1-vrrpd.log",
            &format!("WARN keepcached_vrrp::daemon: advert from {src} discarded: {why}"),
            s(2),
        );
        assert!(t.has_addr("h1", VIP6), "{why}: h1 let go\n{}", t.logs());
    }
    // The same advert, well formed, is obeyed: h1 gives way.
    let start = Instant::now();
    while t.has_addr("h1", VIP6) {
        assert!(
            start.elapsed() < s(3),
            "h1 ignored a valid advert\n{}",
            t.logs()
        );
        inject(&t, "h2", ll, 255, &encode(&advert, ll));
        std::thread::sleep(Duration::from_millis(100));
    }
    t.wait_log("h1-vrrpd.log", "MASTER -> BACKUP", s(1));
}

/// keepalived's `unicast_peer` over IPv6: adverts between global addresses.
fn unicast_conf(me: u8, peer: u8, priority: u8) -> String {
    format!(
        "[[instance]]\nname = \"V6\"\ninterface = \"eth0\"\nvrid = 61\nversion = 3\n\
         priority = {priority}\nsource = \"2001:2::{me}\"\nunicast_peers = [\"2001:2::{peer}\"]\n\
         vips = [{{ address = \"{VIP6}/64\" }}]\n"
    )
}

#[test]
fn unicast_peers_over_ipv6() {
    if !root_or_skip("unicast_peers_over_ipv6") {
        return;
    }
    let s = Duration::from_secs;
    let mut t = Topology::new(2);
    let h1 = t.start_vrrpd("h1", "--config", &unicast_conf(1, 2, 150));
    t.start_vrrpd("h2", "--config", &unicast_conf(2, 1, 100));
    t.wait_holder_of(&HOSTS, "h1", VIP6, s(6));
    t.stays_holder_of(&HOSTS, "h1", VIP6, s(2));
    t.signal(h1, Signal::SIGTERM);
    t.wait_holder_of(&HOSTS, "h2", VIP6, s(2));
    let log = t.wait_log("h2-vrrpd.log", "-> MASTER", s(1));
    assert!(log.contains("master 2001:2::1 left"), "{log}");
}
