//! What examples/ ships: the seed's two node files pass `keepcached node --check`, and the
//! systemd units carry what docs/node.md says they do and pass `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keepcached_testkit::env::require;
use keepcached_testkit::run_with_timeout;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn the_seeds_node_files_pass_check() {
    for host in ["memcached1", "memcached2"] {
        let path = examples().join(format!("node-{host}.toml"));
        let out = run_with_timeout(
            Command::new(BIN).args(["node", "--check", "--config", path.to_str().unwrap()]),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(0),
            "{host}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("configuration OK (server, proxy, vrrp)"),
            "{}",
            out.stderr
        );
        // The effective configuration, VRRP's defaults included, loads as it is printed.
        let print = |path: &Path| {
            run_with_timeout(
                Command::new(BIN).args([
                    "node",
                    "--print-config",
                    "--config",
                    path.to_str().unwrap(),
                ]),
                Duration::from_secs(20),
            )
            .unwrap()
        };
        let printed = print(&path);
        assert!(
            printed.stdout.contains("freebind = true"),
            "{}",
            printed.stdout
        );
        let copy =
            std::env::temp_dir().join(format!("keepcached-{host}-{}.toml", std::process::id()));
        std::fs::write(&copy, &printed.stdout).unwrap();
        let again = print(&copy);
        let _ = std::fs::remove_file(&copy);
        assert_eq!(again.stdout, printed.stdout, "{}", again.stderr);
    }
}

const UNITS: [&str; 4] = ["node", "server", "proxy", "vrrp"];

fn unit(role: &str) -> String {
    std::fs::read_to_string(examples().join(format!("systemd/keepcached-{role}.service"))).unwrap()
}

/// The `[Service]` lines as key=value pairs.
fn service(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn every_unit_is_notify_reloads_with_sighup_and_is_hardened() {
    for role in UNITS {
        let keys = service(&unit(role));
        let get = |key: &str| {
            keys.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{role}: no {key}"))
        };
        assert_eq!(get("Type"), "notify", "{role}");
        assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID", "{role}");
        assert_eq!(get("NoNewPrivileges"), "yes", "{role}");
        assert_eq!(get("ProtectSystem"), "strict", "{role}");
        assert_eq!(get("PrivateTmp"), "yes", "{role}");
        assert!(get("ReadWritePaths").starts_with('/'), "{role}");
        assert!(
            get("ExecStart").starts_with(&format!("/usr/bin/keepcached {role} ")),
            "{role}"
        );
        let caps = if role == "node" || role == "vrrp" {
            "CAP_NET_ADMIN CAP_NET_RAW"
        } else {
            ""
        };
        assert_eq!(get("CapabilityBoundingSet"), caps, "{role}");
        if !caps.is_empty() {
            assert_eq!(get("AmbientCapabilities"), caps, "{role}");
        }
    }
    // Under systemd the proxy must not daemonize, as magent does by default.
    assert!(unit("proxy").contains("keepcached proxy -D "));
}

#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    if !require(
        "systemd_analyze_verify_accepts_every_unit",
        false,
        &["systemd-analyze"],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keepcached-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for role in UNITS {
        // verify wants the program to exist: the binary under test stands in for the
        // installed one.
        let path = dir.join(format!("keepcached-{role}.service"));
        std::fs::write(&path, unit(role).replace("/usr/bin/keepcached", BIN)).unwrap();
        paths.push(path);
    }
    let out = run_with_timeout(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&paths),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    // Unknown keys and bad values are warnings that leave the status at 0.
    assert!(out.stderr.trim().is_empty(), "{}", out.stderr);
}
