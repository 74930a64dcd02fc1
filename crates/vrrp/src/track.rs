//! Health tracking: periodic scripts, the built-in proxy check and interface
//! state, turned into an effective priority and a fault flag per instance.
//!
//! Each check runs in its own task and publishes its up/down state into one
//! shared [`Status`] (a `watch` channel); instances read it whenever it
//! changes and compute [`effective`]. The arithmetic and the rise/fall
//! counting are pure and tested here; the tasks only do the I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, MissedTickBehavior};

use crate::config::{split_command, ProxyCheck, ScriptCheck};
use crate::instance::PRIORITY_OWNER;
use crate::netlink::Netlink;

/// What a tracked item is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Script(String),
    Proxy(String),
    Interface(String),
}

/// Up (`true`) or down of every tracked item; items not yet checked are absent
/// and count as up, as keepalived starts its scripts.
pub type Status = BTreeMap<Key, bool>;

/// keepalived's effective priority: a positive weight is added while its item
/// is up, a negative one while it is down, and an item of weight 0 that is
/// down puts the instance in FAULT. The result stays within 1..=254; the owner
/// (255) keeps its priority.
pub fn effective(base: u8, items: impl IntoIterator<Item = (i32, bool)>) -> (u8, bool) {
    let mut sum = i32::from(base);
    let mut fault = false;
    for (weight, up) in items {
        match (weight, up) {
            (0, false) => fault = true,
            (w, true) if w > 0 => sum += w,
            (w, false) if w < 0 => sum += w,
            _ => {}
        }
    }
    if base == PRIORITY_OWNER {
        return (base, fault);
    }
    (sum.clamp(1, 254) as u8, fault)
}

/// Rise/fall counting: an up item goes down after `fall` failures in a row, a
/// down item comes up after `rise` successes in a row.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl Hysteresis {
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
        }
    }

    /// Records one result; returns whether the item is up now.
    pub fn record(&mut self, success: bool) -> bool {
        if success == self.up {
            self.streak = 0;
        } else {
            self.streak += 1;
            let needed = if self.up { self.fall } else { self.rise };
            if self.streak >= needed {
                self.up = success;
                self.streak = 0;
            }
        }
        self.up
    }
}

fn publish(status: &watch::Sender<Status>, key: &Key, up: bool) {
    status.send_if_modified(|s| s.insert(key.clone(), up) != Some(up));
}

/// Runs a script check forever. A script that cannot be started, exits
/// non-zero, is killed by a signal or runs past its timeout has failed;
/// keepalived counts a script it cannot execute as a success, which hides
/// broken checks.
pub async fn script_task(name: String, check: ScriptCheck, status: watch::Sender<Status>) {
    let key = Key::Script(name.clone());
    let argv = split_command(&check.command);
    let mut h = Hysteresis::new(check.rise, check.fall);
    let mut ticks = tokio::time::interval(check.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let ok = run_script(&argv, check.timeout()).await;
        if !ok {
            tracing::debug!(script = %name, "check failed");
        }
        publish(&status, &key, h.record(ok));
    }
}

async fn run_script(argv: &[String], limit: Duration) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    matches!(timeout(limit, child.wait()).await, Ok(Ok(s)) if s.success())
}

/// Runs the built-in proxy check forever.
pub async fn proxy_task(name: String, check: ProxyCheck, status: watch::Sender<Status>) {
    let key = Key::Proxy(name);
    let mut h = Hysteresis::new(check.rise, check.fall);
    let mut ticks = tokio::time::interval(check.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let ok = timeout(check.timeout(), proxy_answers(check.address)).await == Ok(true);
        publish(&status, &key, h.record(ok));
    }
}

/// Whether a memcached-protocol server at `addr` answers `version`.
pub async fn proxy_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"version\r\n").await.is_err() {
        return false;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    matches!(reader.read_line(&mut line).await, Ok(n) if n > 0) && line.starts_with("VERSION ")
}

/// How often interface state is read; keepalived reacts to netlink events,
/// a 100 ms poll keeps the reaction well inside one advert interval.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Follows the state of interface `name` forever.
pub async fn interface_task(name: String, status: watch::Sender<Status>) {
    let key = Key::Interface(name.clone());
    let mut netlink = None;
    let mut ticks = tokio::time::interval(LINK_POLL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let up = link_up(&mut netlink, &name);
        publish(&status, &key, up);
    }
}

fn link_up(netlink: &mut Option<Netlink>, name: &str) -> bool {
    let Ok(index) = crate::network::interface_index(name) else {
        return false;
    };
    if netlink.is_none() {
        *netlink = Netlink::open().ok();
    }
    match netlink.as_mut().map(|n| n.link(index)) {
        Some(Ok(link)) => link.usable,
        _ => {
            *netlink = None;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_keepalived() {
        // The seed: weight 20 script up on the 100 master.
        assert_eq!(effective(100, [(20, true)]), (120, false));
        assert_eq!(effective(100, [(20, false)]), (100, false));
        assert_eq!(effective(100, [(-30, false), (10, true)]), (80, false));
        assert_eq!(effective(100, [(-30, true)]), (100, false));
        assert_eq!(effective(100, [(0, false)]), (100, true));
        assert_eq!(effective(100, [(0, true)]), (100, false));
        assert_eq!(effective(250, [(20, true)]), (254, false));
        assert_eq!(effective(10, [(-50, false)]), (1, false));
        assert_eq!(effective(255, [(-50, false), (0, false)]), (255, true));
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut h = Hysteresis::new(2, 3);
        assert!(h.record(false));
        assert!(h.record(false));
        assert!(h.record(true), "a success resets the failure streak");
        assert!(h.record(false));
        assert!(h.record(false));
        assert!(!h.record(false));
        assert!(!h.record(true));
        assert!(!h.record(false));
        assert!(!h.record(true));
        assert!(h.record(true));
    }

    #[tokio::test]
    async fn scripts_that_cannot_run_fail() {
        let t = Duration::from_secs(5);
        assert!(run_script(&["true".into()], t).await);
        assert!(!run_script(&["false".into()], t).await);
        assert!(!run_script(&["/nonexistent/check".into()], t).await);
        assert!(!run_script(&[], t).await);
        assert!(!run_script(&["sleep".into(), "5".into()], Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn proxy_check_wants_a_version_line() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for reply in [&b"VERSION 1.6.21\r\n"[..], b"ERROR\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 9];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"version\r\n");
                s.write_all(reply).await.unwrap();
            }
        });
        assert!(proxy_answers(addr).await);
        assert!(!proxy_answers(addr).await);
        server.await.unwrap();
        assert!(!proxy_answers(addr).await, "nothing listens any more");
    }
}
