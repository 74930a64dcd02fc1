//! Health tracking: periodic scripts, the built-in proxy check and interface
//! state, turned into an effective priority and a fault flag per instance.
//!
//! Each check runs in its own task and publishes its up/down state into one
//! shared [`Status`] (a `watch` channel); instances read it whenever it
//! changes and compute [`effective`]. The arithmetic and the rise/fall
//! counting are pure and tested here; the tasks only do the I/O.

use std::collections::BTreeMap;
use std::fmt;
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
    /// A health source of the process that runs this VRRP role (see [`Local`]).
    Local(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Script(name) => write!(f, "script `{name}`"),
            Key::Proxy(name) => write!(f, "proxy check `{name}`"),
            Key::Interface(name) => write!(f, "interface {name}"),
            Key::Local(name) => write!(f, "local {name}"),
        }
    }
}

/// The state of one tracked item, and why it went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    /// For an item that is down: what its checks saw (empty while up).
    pub why: String,
}

/// Every tracked item; items not yet checked are absent and count as up, as
/// keepalived starts its scripts.
pub type Status = BTreeMap<Key, Health>;

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

/// Publishes a change of state; the reason is kept from the moment the item
/// went down, so a flapping error text does not wake every instance.
fn publish(status: &watch::Sender<Status>, key: &Key, up: bool, why: &str) {
    status.send_if_modified(|s| {
        if s.get(key).map(|h| h.up) == Some(up) {
            return false;
        }
        let why = if up { String::new() } else { why.to_owned() };
        s.insert(key.clone(), Health { up, why });
        true
    });
}

/// Follows one check's results: logs the first failure of a streak, the
/// moment the item goes down (warn, with the count and the last error) and
/// the moment it is up again, and publishes the state.
struct Reporter {
    key: Key,
    h: Hysteresis,
    fall: u32,
    failures: u32,
}

impl Reporter {
    fn new(key: Key, rise: u32, fall: u32) -> Reporter {
        Reporter {
            key,
            h: Hysteresis::new(rise, fall),
            fall: fall.max(1),
            failures: 0,
        }
    }

    fn record(&mut self, result: Result<(), String>, status: &watch::Sender<Status>) {
        let was_up = self.h.up;
        let up = self.h.record(result.is_ok());
        let key = &self.key;
        match &result {
            Ok(()) => self.failures = 0,
            Err(e) => {
                self.failures += 1;
                if was_up && up && self.failures == 1 {
                    tracing::info!(
                        "{key} failed: {e} (down after {} failures in a row)",
                        self.fall
                    );
                }
            }
        }
        let why = match &result {
            Err(e) => format!("failed {} times in a row, last: {e}", self.failures),
            Ok(()) => String::new(),
        };
        if was_up && !up {
            tracing::warn!("{key} down: {why}");
        } else if !was_up && up {
            tracing::info!("{key} up again");
        }
        publish(status, key, up, &why);
    }
}

/// Runs a script check forever. A script that cannot be started, exits
/// non-zero, is killed by a signal or runs past its timeout has failed;
/// keepalived counts a script it cannot execute as a success, which hides
/// broken checks.
pub async fn script_task(name: String, check: ScriptCheck, status: watch::Sender<Status>) {
    let argv = split_command(&check.command);
    let mut r = Reporter::new(Key::Script(name), check.rise, check.fall);
    let mut ticks = tokio::time::interval(check.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        r.record(run_script(&argv, check.timeout()).await, &status);
    }
}

/// Runs the script; `Err` says how it failed.
async fn run_script(argv: &[String], limit: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match timeout(limit, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(s.to_string()),
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        Err(_) => Err(format!("timed out after {:?}", limit)),
    }
}

/// Runs the built-in proxy check forever.
pub async fn proxy_task(name: String, check: ProxyCheck, status: watch::Sender<Status>) {
    let mut r = Reporter::new(Key::Proxy(name), check.rise, check.fall);
    let mut ticks = tokio::time::interval(check.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match timeout(check.timeout(), proxy_answers(check.address)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{}: no answer within {:?}",
                check.address,
                check.timeout()
            )),
        };
        r.record(result, &status);
    }
}

/// Whether a memcached-protocol server at `addr` answers `version`; `Err`
/// says what went wrong.
pub async fn proxy_answers(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .write_all(b"version\r\n")
        .await
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match reader.read_line(&mut line).await {
        Ok(0) => Err(format!("{addr} closed the connection")),
        Ok(_) if line.starts_with("VERSION ") => Ok(()),
        Ok(_) => Err(format!("{addr} answered `{}`", line.trim_end())),
        Err(e) => Err(format!("reading from {addr}: {e}")),
    }
}

/// A health source in the process that embeds the VRRP role (`keepcached node`: its own proxy
/// and cache server), tracked by every instance with `weight` (0: FAULT while it is down), as
/// a script would be but with no process to start and no connection to make: its state comes
/// straight from the role it describes, whether or not this host holds the VIP.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub weight: i32,
    pub health: watch::Receiver<Health>,
}

impl Local {
    pub fn key(&self) -> Key {
        Key::Local(self.name.clone())
    }
}

/// Follows a [`Local`] source forever, logging each change with its cause. A source whose
/// sender is gone (its role ended) is down.
pub async fn local_task(local: Local, status: watch::Sender<Status>) {
    let key = local.key();
    let mut health = local.health;
    let mut was_up = true;
    loop {
        let now = health.borrow_and_update().clone();
        if now.up != was_up {
            if now.up {
                tracing::info!("{key} up again");
            } else {
                tracing::warn!("{key} down: {}", now.why);
            }
            was_up = now.up;
        }
        publish(&status, &key, now.up, &now.why);
        if health.changed().await.is_err() {
            if was_up {
                tracing::warn!("{key} down: it stopped");
            }
            publish(&status, &key, false, "it stopped");
            return;
        }
    }
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
    let mut was_up = true;
    loop {
        ticks.tick().await;
        let up = link_up(&mut netlink, &name);
        if up != was_up {
            if up {
                tracing::info!("{key} up again");
            } else {
                tracing::warn!("{key} down");
            }
            was_up = up;
        }
        publish(&status, &key, up, "link down or gone");
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
        assert_eq!(run_script(&["true".into()], t).await, Ok(()));
        assert_eq!(
            run_script(&["false".into()], t).await,
            Err("exit status: 1".into())
        );
        let missing = run_script(&["/nonexistent/check".into()], t).await;
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("cannot run /nonexistent/check: ")),
            "{missing:?}"
        );
        assert_eq!(run_script(&[], t).await, Err("empty command".into()));
        assert_eq!(
            run_script(&["sleep".into(), "5".into()], Duration::from_millis(50)).await,
            Err("timed out after 50ms".into())
        );
    }

    #[tokio::test]
    async fn a_local_source_is_published_as_it_changes_and_down_once_gone() {
        let (source, health) = watch::channel(Health {
            up: true,
            why: String::new(),
        });
        let (tx, mut rx) = watch::channel(Status::new());
        let key = Key::Local("proxy".into());
        let task = tokio::spawn(local_task(
            Local {
                name: "proxy".into(),
                weight: 0,
                health,
            },
            tx,
        ));
        rx.wait_for(|s| s.get(&key).is_some_and(|h| h.up))
            .await
            .unwrap();
        source.send_replace(Health {
            up: false,
            why: "no server reachable".into(),
        });
        let down = rx
            .wait_for(|s| s.get(&key).is_some_and(|h| !h.up))
            .await
            .unwrap()[&key]
            .clone();
        assert_eq!(down.why, "no server reachable");
        source.send_replace(Health {
            up: true,
            why: String::new(),
        });
        rx.wait_for(|s| s.get(&key).is_some_and(|h| h.up))
            .await
            .unwrap();
        drop(source);
        let gone = rx
            .wait_for(|s| s.get(&key).is_some_and(|h| !h.up))
            .await
            .unwrap()[&key]
            .clone();
        assert_eq!(gone.why, "it stopped");
        task.await.unwrap();
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
        assert_eq!(proxy_answers(addr).await, Ok(()));
        assert_eq!(
            proxy_answers(addr).await,
            Err(format!("{addr} answered `ERROR`"))
        );
        server.await.unwrap();
        let refused = proxy_answers(addr).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.starts_with(&format!("connecting to {addr}: "))),
            "nothing listens any more: {refused:?}"
        );
    }
}
