//! Hostile VRRP adverts (root; CI runs it): a keepcached MASTER (h2, priority 100) and BACKUP
//! (h3, priority 99) on a bridge, and a stranger in a third namespace (h1, 198.18.0.1) that
//! injects crafted adverts through a raw IP socket (protocol 112, TTL 255 unless the scenario is
//! the TTL), each with priority 255 — the strongest claim there is, so any check that is missing
//! would move the VIP.
//!
//! What "wrongly" means, per RFC 3768 §7.1 / RFC 5798 §7.1 and keepalived: an advert that fails
//! any check (version, checksum, length, TTL, authentication, interval, address list, VRID) must
//! change nothing — the master keeps the VIP through the whole injection, the rejection is logged
//! once at warn naming the sender (rate-limited) and counted. An advert that passes every check
//! is a real router's, whoever sends it: RFC 5798 §6.4.3 has a master yield to a higher
//! priority, or to the same priority from a higher address, and keep its role against the same
//! priority from a lower address. So a stranger's valid priority-255 advert does take the VIP
//! away (the master goes BACKUP; nobody holds the VIP while the stranger, which does not
//! configure it, keeps advertising), and once the stranger falls silent the rightful master
//! takes the VIP back after Master_Down_Interval. VRRPv2 PASS authentication is a clear-text
//! password (RFC 3768 §10): it stops misconfiguration, not an attacker on the LAN.

#[allow(dead_code)]
#[path = "../vrrp_topology/mod.rs"]
mod vrrp_topology;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use keepcached_testkit::process::proc_status_kib;
use keepcached_vrrp::packet::{ipv4_header, Advert, Auth, ChecksumMode, Version, MULTICAST_V4};
use socket2::{Domain, Protocol, Socket, Type};
use vrrp_topology::{root_or_skip, Topology, VIP};

const HOSTS: [&str; 2] = ["h2", "h3"];
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Resident memory the master may gain over all the scenarios, flood included.
const GROWTH_BOUND_KIB: u64 = 4096;

fn conf(priority: u8, status: &std::path::Path) -> String {
    format!(
        r#"status_file = {status:?}

[[instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
auth_pass = "1111"
vips = [{{ address = "{VIP}/32" }}]
"#
    )
}

/// The advert a legitimate peer of VI_1 would send, at priority 255.
fn valid() -> Advert {
    Advert {
        version: Version::V2,
        vrid: 51,
        priority: 255,
        interval_cs: 100,
        auth: Auth::pass("1111"),
        addresses: vec![VIP.parse().unwrap()],
    }
}

fn encode(a: &Advert) -> Vec<u8> {
    a.encode(
        STRANGER.into(),
        MULTICAST_V4.into(),
        ChecksumMode::PseudoHeader,
    )
}

/// RFC 1071 checksum, to re-sign an advert after changing one field.
fn resum(payload: &mut [u8]) {
    payload[6] = 0;
    payload[7] = 0;
    let mut sum: u32 = payload
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    payload[6..8].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A raw socket in the stranger's namespace that sends whole IPv4 packets.
struct Injector {
    socket: Socket,
}

impl Injector {
    fn open(t: &Topology) -> Injector {
        let _in_h1 = t.enter("h1");
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
        socket.set_header_included_v4(true).unwrap();
        socket.bind_device(Some(b"eth0")).unwrap();
        Injector { socket }
    }

    fn send(&self, src: Ipv4Addr, ttl: u8, payload: &[u8]) {
        let mut packet = ipv4_header(src, MULTICAST_V4, payload.len()).to_vec();
        packet[8] = ttl;
        packet.extend_from_slice(payload);
        self.socket
            .send_to(&packet, &SocketAddrV4::new(MULTICAST_V4, 0).into())
            .unwrap();
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:").expect("VmHWM")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Sends `payload` 30 times over 1.5 s, checking between sends that h2 alone
/// holds the VIP.
fn inject_holding(t: &Topology, inj: &Injector, src: Ipv4Addr, ttl: u8, payload: &[u8]) {
    for _ in 0..30 {
        inj.send(src, ttl, payload);
        let holders = t.holders(&HOSTS);
        assert_eq!(holders, ["h2"], "the VIP moved\n{}", t.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn hostile_adverts_never_move_the_vip_wrongly() {
    if !root_or_skip("hostile_adverts_never_move_the_vip_wrongly") {
        return;
    }
    let mut t = Topology::new(3);
    let status = t.dir.join("h2.status");
    let master = t.start_vrrpd("h2", "--config", &conf(100, &status));
    let backup = t.start_vrrpd("h3", "--config", &conf(99, &t.dir.join("h3.status")));
    t.wait_holder(&HOSTS, "h2", Duration::from_secs(6));
    let inj = Injector::open(&t);
    let start_kib = vm_hwm_kib(master);

    let mut v3 = valid();
    v3.version = Version::V3;
    v3.auth = Auth::None;
    let mut v4 = encode(&valid());
    v4[0] = 0x41;
    resum(&mut v4);
    let mut bad_sum = encode(&valid());
    bad_sum[6] ^= 0xff;
    let long = encode(&valid());
    let mut wrong_pass = valid();
    wrong_pass.auth = Auth::pass("2222");
    let mut no_auth = valid();
    no_auth.auth = Auth::None;
    let mut addresses = valid();
    addresses
        .addresses
        .push(Ipv4Addr::new(198, 18, 0, 201).into());
    let mut interval = valid();
    interval.interval_cs = 200;
    let mut vrid = valid();
    vrid.vrid = 52;

    // (scenario, packet, TTL, the warning each daemon must log once)
    let rejected: Vec<(&str, Vec<u8>, u8, &str)> = vec![
        ("version 4", v4, 255, "version 4 unknown"),
        (
            "version 3 to a v2 router",
            encode(&v3),
            255,
            "VRRP version differs from ours",
        ),
        ("bad checksum", bad_sum, 255, "bad checksum"),
        (
            "truncated address list",
            long[..10].to_vec(),
            255,
            "advert shorter than its address list",
        ),
        (
            "shorter than the header",
            long[..4].to_vec(),
            255,
            "advert shorter than its address list",
        ),
        ("TTL 64", encode(&valid()), 64, "TTL 64 instead of 255"),
        (
            "wrong password",
            encode(&wrong_pass),
            255,
            "authentication password mismatch",
        ),
        (
            "no authentication",
            encode(&no_auth),
            255,
            "authentication type differs from ours",
        ),
        (
            "wrong address list",
            encode(&addresses),
            255,
            "virtual address list differs from ours",
        ),
        (
            "interval 2 s",
            encode(&interval),
            255,
            "advert interval differs from ours",
        ),
        (
            "VRID 52 with our VIP",
            encode(&vrid),
            255,
            "another VRID advertises one of our virtual addresses",
        ),
    ];
    for (scenario, packet, ttl, warning) in &rejected {
        inject_holding(&t, &inj, STRANGER, *ttl, packet);
        let needle =
            format!("WARN keepcached_vrrp::daemon: advert from {STRANGER} discarded: {warning}");
        for log in ["h2-vrrpd.log", "h3-vrrpd.log"] {
            let text = t.wait_log(log, &needle, Duration::from_secs(2));
            // "shorter than the header" shares its reason with the truncated list: still one line.
            assert_eq!(count(&text, &needle), 1, "{scenario}: {log}\n{text}");
        }
        assert!(alive(master) && alive(backup), "{scenario}");
        println!(
            "ABUSE | vrrp: {scenario}, 30 adverts at priority 255 | {} KiB | - | VIP stays on the master, one warning",
            vm_hwm_kib(master) - start_kib
        );
    }

    // Another virtual router on the LAN (VRID 53, its own address) is normal: quiet.
    let mut other = valid();
    other.vrid = 53;
    other.addresses = vec![Ipv4Addr::new(198, 18, 0, 222).into()];
    inject_holding(&t, &inj, STRANGER, 255, &encode(&other));
    assert_eq!(
        count(&t.logs(), "advert from 198.18.0.1 discarded: another VRID"),
        2
    );

    // A valid advert at the master's own priority from a lower address: the master keeps the
    // VIP (RFC 5798 §6.4.3) and answers at once.
    let mut equal = valid();
    equal.priority = 100;
    inject_holding(&t, &inj, STRANGER, 255, &encode(&equal));
    println!(
        "ABUSE | vrrp: valid advert, same priority, lower address | {} KiB | - | master keeps the VIP",
        vm_hwm_kib(master) - start_kib
    );

    // A flood of wrong-password adverts from 20,000 spoofed sources: the warnings are bounded by
    // the rate limiter's table (256 pairs, then one shared line), and so is memory.
    let wrong = encode(&wrong_pass);
    for n in 0..20_000u32 {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n);
        // The v2 checksum does not cover the IPv4 source: the same payload passes the checksum.
        inj.send(src, 255, &wrong);
        if n % 2000 == 0 {
            assert_eq!(t.holders(&HOSTS), ["h2"], "the VIP moved\n{}", t.logs());
        }
    }
    t.wait_log(
        "h2-vrrpd.log",
        "(and other peers) discarded: authentication password mismatch",
        Duration::from_secs(3),
    );
    let log = std::fs::read_to_string(t.dir.join("h2-vrrpd.log")).unwrap();
    let lines = count(&log, "discarded: authentication password mismatch");
    assert!(lines <= 258, "{lines} warnings for the flood");
    let growth = vm_hwm_kib(master) - start_kib;
    assert!(growth < GROWTH_BOUND_KIB, "grew {growth} KiB");
    assert_eq!(t.holders(&HOSTS), ["h2"]);
    println!(
        "ABUSE | vrrp: 20,000 wrong-password adverts from spoofed sources | {growth} KiB | - | VIP stays, {lines} warnings (bounded)"
    );

    // Counted where the operator reads them (the file is rewritten within a second).
    let fields = [
        "rejected_version=30",
        "rejected_auth_type=30",
        "rejected_interval=30",
        "rejected_addresses=30",
        "rejected_vrid=30",
        "invalid_ttl=30",
        "invalid_checksum=30",
        "invalid_length=60",
        "invalid_version=30",
        "state=MASTER",
    ];
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let words: Vec<&str> = text.split_whitespace().collect();
        let missing: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| !words.contains(f))
            .collect();
        if missing.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains(" accepted="), "{text}");

    // Finally a stranger's VALID priority-255 advert: per RFC it outranks the master, which
    // yields; when the stranger falls silent the master takes the VIP back.
    let claim = encode(&valid());
    let mut last_claim = Instant::now();
    for _ in 0..3 {
        inj.send(STRANGER, 255, &claim);
        last_claim = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(t.holders(&HOSTS), Vec::<String>::new(), "{}", t.logs());
    t.wait_log(
        "h2-vrrpd.log",
        "MASTER -> BACKUP (priority 100) because: 198.18.0.1 advertises priority 255, which outranks ours",
        Duration::from_secs(1),
    );
    t.wait_holder(&HOSTS, "h2", Duration::from_secs(6));
    let back = last_claim.elapsed();
    t.wait_log(
        "h2-vrrpd.log",
        "BACKUP -> MASTER (priority 100) because: master 198.18.0.1 silent for",
        Duration::from_secs(1),
    );
    assert!(alive(master) && alive(backup));
    println!(
        "ABUSE | vrrp: a stranger's valid priority-255 advert | {} KiB | - | master yields (RFC 5798 6.4.3), takes the VIP back {:.1} s after the stranger stops",
        vm_hwm_kib(master) - start_kib,
        back.as_secs_f64()
    );
}
