//! Interop with Debian's keepalived 2.2 (root; CI runs it): the seed's two
//! keepalived.conf files, translated to the test network, run one by
//! keepalived and one by us, and each takes over from the other, in both
//! directions, with VRRPv2 PASS and with VRRPv3.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::time::Duration;

use nix::sys::signal::Signal;
use vrrp_topology::{root_or_skip, Topology};

const HOSTS: [&str; 2] = ["h1", "h2"];

/// The seed's file for `memcached1` or `memcached2`, on the test network.
fn seed(t: &Topology, file: &str, v3: bool) -> String {
    let path = format!(
        "{}/../vrrp/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let check = t.write("check.sh", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut text = std::fs::read_to_string(path)
        .unwrap()
        .replace("ens32", "eth0")
        .replace("192.168.111.100", vrrp_topology::VIP)
        .replace("/opt/magent.sh", check.to_str().unwrap());
    if v3 {
        let start = text.find("    authentication {").unwrap();
        let end = start + text[start..].find("}\n").unwrap() + 2;
        text.replace_range(start..end, "");
        text = text.replace(
            "   vrrp_skip_check_adv_addr",
            "   vrrp_skip_check_adv_addr\n   vrrp_version 3",
        );
    }
    text
}

fn keepalived_present() -> bool {
    let present = std::path::Path::new("/usr/sbin/keepalived").exists();
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs keepalived installed"
        );
        eprintln!("SKIPPED: /usr/sbin/keepalived is not installed");
    }
    present
}

fn takeovers(v3: bool) {
    let s = Duration::from_secs;
    // keepalived master, keepcached backup; then the other way round.
    for ours_is_master in [false, true] {
        let mut t = Topology::new(2);
        let c1 = seed(&t, "seed-memcached1.conf", v3);
        let c2 = seed(&t, "seed-memcached2.conf", v3);
        let master;
        if ours_is_master {
            master = t.start_vrrpd("h1", "--keepalived-conf", &c1);
            t.start_keepalived("h2", &c2);
        } else {
            master = t.start_keepalived("h1", &c1);
            t.start_vrrpd("h2", "--keepalived-conf", &c2);
        }
        t.wait_holder(&HOSTS, "h1", s(8));
        t.stays_holder(&HOSTS, "h1", s(2));
        // The master stops cleanly: the peer takes over.
        t.signal(master, Signal::SIGTERM);
        t.wait_holder(&HOSTS, "h2", s(4));
        // The master comes back and preempts the peer.
        if ours_is_master {
            t.start_vrrpd("h1", "--keepalived-conf", &c1);
        } else {
            t.start_keepalived("h1", &c1);
        }
        t.wait_holder(&HOSTS, "h1", s(8));
        t.stays_holder(&HOSTS, "h1", s(2));
    }
}

#[test]
fn keepalived_and_keepcached_take_over_from_each_other_v2_pass() {
    if root_or_skip("interop v2") && keepalived_present() {
        takeovers(false);
    }
}

#[test]
fn keepalived_and_keepcached_take_over_from_each_other_v3() {
    if root_or_skip("interop v3") && keepalived_present() {
        takeovers(true);
    }
}
