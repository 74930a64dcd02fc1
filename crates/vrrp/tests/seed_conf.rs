//! The seed deployment guide's two keepalived.conf files load as they are.

use keepcached_vrrp::config::InitialState;
use keepcached_vrrp::keepalived_conf::parse_keepalived_conf;

fn load(name: &str) -> (keepcached_vrrp::config::VrrpConfig, Vec<String>) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let (config, warnings) = parse_keepalived_conf(&text).unwrap();
    (config, warnings.iter().map(ToString::to_string).collect())
}

#[test]
fn seed_master_config_loads() {
    let (c, warnings) = load("seed-memcached1.conf");
    let i = &c.instances[0];
    assert_eq!(i.name, "VI_1");
    assert_eq!(i.interface, "ens32");
    assert_eq!((i.vrid, i.priority, i.version), (51, 100, 2));
    assert_eq!(i.initial_state, InitialState::Master);
    assert_eq!(i.advert_interval, 1.0);
    assert_eq!(i.auth_pass.as_deref(), Some("1111"));
    assert_eq!(i.vips[0].address.to_string(), "192.168.111.100/32");
    assert_eq!(i.vips[0].dev.as_deref(), Some("ens32"));
    assert_eq!(i.vips[0].label.as_deref(), Some("ens32:2"));
    assert_eq!(i.track_script[0].name, "check_m");
    assert!(
        !i.check_advert_addresses,
        "vrrp_skip_check_adv_addr applies"
    );
    assert_eq!(i.garp_interval, 0.0);
    let s = &c.script["check_m"];
    assert_eq!(
        (s.command.as_str(), s.interval, s.weight),
        ("/opt/magent.sh", 2.0, 20)
    );
    assert_eq!(
        warnings,
        [
            "line 4: `notification_email` ignored: keepcached sends no e-mail alerts",
            "line 9: `script_user` ignored: scripts run as the user keepcached runs as",
            "line 11: `notification_email_from` ignored: keepcached sends no e-mail alerts",
            "line 12: `smtp_server` ignored: keepcached sends no e-mail alerts",
            "line 13: `smtp_connect_timeout` ignored: keepcached sends no e-mail alerts",
            "line 14: `router_id` ignored: keepcached does not use it",
            "line 17: `vrrp_gna_interval` ignored: it applies to IPv6 instances only",
        ]
    );
}

#[test]
fn seed_backup_config_loads() {
    let (c, warnings) = load("seed-memcached2.conf");
    let i = &c.instances[0];
    assert_eq!((i.vrid, i.priority), (51, 99));
    assert_eq!(i.initial_state, InitialState::Backup);
    assert_eq!(warnings.len(), 7);
}
