//! `keepcached status` reading two VRRP nodes' metrics endpoints (`keepcached vrrp --metrics`)
//! across a bridge of network namespaces (root; CI runs it): each node's state and priority and
//! who holds the VIP, then, after the master stops, the other node holding it and the stopped
//! one reported unreachable.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use vrrp_topology::Topology;

const WAIT: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 9150;

fn url(host: usize) -> String {
    format!("http://198.18.0.{host}:{METRICS_PORT}")
}

/// `status --json` run inside `host`'s namespace: the report, the exit status and the table
/// the same command prints without `--json`.
fn status_from(t: &Topology, host: &str, urls: &[String]) -> (Value, Option<i32>, String) {
    let run = |json: bool| {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &t.ns(host)])
            .arg(vrrp_topology::keepcached())
            .arg("status");
        if json {
            command.arg("--json");
        }
        command.args(urls).output().expect("run keepcached status")
    };
    let out = run(true);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let table = String::from_utf8_lossy(&run(false).stdout).into_owned();
    (report, out.status.code(), table)
}

fn instance<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["target"] == node))
        .map(|n| &n["instances"][0])
        .unwrap_or(&Value::Null)
}

/// Polls `status` from `host` until `holds` accepts the report; the last report otherwise.
fn wait_report(
    t: &Topology,
    host: &str,
    urls: &[String],
    holds: impl Fn(&Value, Option<i32>) -> bool,
) -> Result<(Value, String), Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (report, code, table) = status_from(t, host, urls);
        if holds(&report, code) {
            return Ok((report, table));
        }
        if Instant::now() > deadline {
            return Err(report);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_who_holds_the_vip_before_and_after_a_failover() {
    if !vrrp_topology::root_or_skip("status_shows_who_holds_the_vip_before_and_after_a_failover") {
        return;
    }
    let mut t = Topology::new(2);
    let exe = vrrp_topology::keepcached();
    let mut pids = Vec::new();
    for (i, priority) in [(1, 100), (2, 90)] {
        let path = t.write(&format!("h{i}.toml"), &vrrp_topology::v3_instance(priority));
        let flag = format!("--metrics=198.18.0.{i}:{METRICS_PORT}");
        pids.push(t.spawn(
            &format!("h{i}"),
            &format!("h{i}-vrrpd.log"),
            &[
                exe.to_str().unwrap(),
                "vrrp",
                "--config",
                path.to_str().unwrap(),
                &flag,
            ],
        ));
    }
    let urls = [url(1), url(2)];
    let (h1, h2) = (format!("{}/metrics", url(1)), format!("{}/metrics", url(2)));

    let (report, table) = wait_report(&t, "h2", &urls, |r, code| {
        code == Some(0)
            && instance(r, &h1)["state"] == "master"
            && instance(r, &h2)["state"] == "backup"
    })
    .unwrap_or_else(|last| panic!("h1 is not master and h2 backup: {last:#}\n{}", t.logs()));
    assert_eq!(report["vip"][0]["instance"], "VI_1", "{report:#}");
    assert_eq!(
        report["vip"][0]["masters"],
        serde_json::json!([h1]),
        "{report:#}"
    );
    assert_eq!(instance(&report, &h1)["priority"], 100, "{report:#}");
    assert_eq!(instance(&report, &h2)["priority"], 90, "{report:#}");
    assert_eq!(instance(&report, &h1)["vips_held"], 1, "{report:#}");
    assert!(t.has_vip("h1"));
    assert!(
        table.contains(&format!("VIP of VI_1: held by {h1}")),
        "{table}"
    );

    // The master stops (a priority-0 advert hands over at once): h2 takes the VIP, and status
    // says so, with h1's endpoint unreachable.
    let stopped = t.stop_with(pids[0], nix::sys::signal::Signal::SIGTERM);
    assert!(stopped.success(), "{stopped}\n{}", t.logs());
    let (report, table) = wait_report(&t, "h2", &urls, |r, code| {
        code == Some(1) && r["vip"][0]["masters"] == serde_json::json!([h2])
    })
    .unwrap_or_else(|last| panic!("h2 does not hold the VIP: {last:#}\n{}", t.logs()));
    assert_eq!(report["unreachable"][0]["target"], h1, "{report:#}");
    assert!(t.has_vip("h2"));
    assert!(
        table.contains(&format!("VIP of VI_1: held by {h2}")),
        "{table}"
    );
    assert!(table.contains("UNREACHABLE\ntarget"), "{table}");
}
