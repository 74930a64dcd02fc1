//! What an operator can read of a running daemon: per instance, its state,
//! priorities, when it last changed state, and the fate of every advert it
//! received (accepted, or why it was rejected, as keepalived would reject it).
//!
//! Instances publish a [`InstanceStatus`] after every event into shared
//! [`Slots`]; [`report_task`] logs them on request (SIGUSR1 in `keepcached
//! vrrp`) and keeps the status file, if configured, up to date: rewritten
//! (write then rename, so a reader never sees half of it) at most once a
//! second when something changed, at once on request, and at shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::instance::{RxStats, State};
use crate::packet::DecodeError;

/// One instance as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub name: String,
    pub state: State,
    /// Effective priority (configured plus tracking weights).
    pub priority: u8,
    pub base_priority: u8,
    /// When the instance entered its state.
    pub since: SystemTime,
    pub transitions: u64,
    pub rx: RxStats,
    /// Packets that did not decode.
    pub invalid: Invalid,
    /// Adverts handed to the network (one per destination: the group, or each unicast peer).
    pub sent: u64,
    /// Virtual addresses the instance has added to its interfaces and not removed since.
    pub vips_held: u32,
}

/// Packets that did not decode, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Invalid {
    /// TTL (IPv4) or hop limit (IPv6) other than 255.
    pub ttl: u64,
    pub checksum: u64,
    pub length: u64,
    pub version: u64,
    /// Any other reason (IPv4 header, type, authentication type, interval 0).
    pub other: u64,
}

impl Invalid {
    pub fn total(&self) -> u64 {
        self.ttl + self.checksum + self.length + self.version + self.other
    }

    pub fn count(&mut self, e: &DecodeError) {
        match e {
            DecodeError::BadTtl(_) | DecodeError::BadHopLimit(_) => self.ttl += 1,
            DecodeError::BadChecksum => self.checksum += 1,
            DecodeError::BadLength => self.length += 1,
            DecodeError::BadVersion(_) => self.version += 1,
            _ => self.other += 1,
        }
    }
}

/// The latest status of every instance, by the order in which they started
/// (configuration order, then instances added by reloads).
pub type Slots = Arc<Mutex<BTreeMap<u64, InstanceStatus>>>;

fn snapshot(slots: &Slots) -> Vec<InstanceStatus> {
    slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// One line, `NAME key=value ...`, for logs and the status file.
impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let rx = &self.rx;
        write!(
            f,
            "{} state={} priority={} base_priority={} since={}.{:03} transitions={} \
             accepted={} other_vrid={} own={} rejected_version={} rejected_auth_type={} \
             rejected_auth_password={} rejected_interval={} rejected_addresses={} rejected_vrid={} \
             invalid={} invalid_ttl={} invalid_checksum={} invalid_length={} invalid_version={}",
            self.name,
            self.state.keepalived_name(),
            self.priority,
            self.base_priority,
            since.as_secs(),
            since.subsec_millis(),
            self.transitions,
            rx.accepted,
            rx.other_vrid,
            rx.own,
            rx.version,
            rx.auth_type,
            rx.auth_password,
            rx.interval,
            rx.addresses,
            rx.vrid,
            self.invalid.total(),
            self.invalid.ttl,
            self.invalid.checksum,
            self.invalid.length,
            self.invalid.version,
        )
    }
}

/// The status file: a comment naming the process, then one line per instance.
pub fn render(instances: &[InstanceStatus]) -> String {
    let mut out = format!("# keepcached vrrp, pid {}\n", std::process::id());
    for i in instances {
        out += &format!("{i}\n");
    }
    out
}

fn write_file(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), "status file not written: {e}");
    }
}

/// Logs every instance when `request` is notified, and keeps `file` current.
pub async fn report_task(slots: Slots, file: Option<PathBuf>, request: Arc<Notify>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut written: Option<Vec<InstanceStatus>> = None;
    loop {
        let asked = tokio::select! {
            _ = request.notified() => true,
            _ = tick.tick() => false,
        };
        let now = snapshot(&slots);
        if asked {
            for i in &now {
                tracing::info!("status {i}");
            }
        }
        if let Some(path) = &file {
            if asked || written.as_ref() != Some(&now) {
                write_file(path, &render(&now));
                written = Some(now);
            }
        }
    }
}

/// The last write, when the instances have stopped.
pub fn write_final(slots: &Slots, file: Option<&Path>) {
    if let Some(path) = file {
        write_file(path, &render(&snapshot(slots)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_instance_with_every_counter() {
        let status = InstanceStatus {
            name: "VI_1".into(),
            state: State::Master,
            priority: 120,
            base_priority: 100,
            since: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            transitions: 2,
            rx: RxStats {
                accepted: 10,
                auth_password: 3,
                ..RxStats::default()
            },
            invalid: Invalid {
                checksum: 1,
                ..Invalid::default()
            },
            sent: 7,
            vips_held: 1,
        };
        let text = render(&[status]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("# keepcached vrrp, pid "));
        assert_eq!(
            lines[1],
            "VI_1 state=MASTER priority=120 base_priority=100 since=1700000000.250 transitions=2 \
             accepted=10 other_vrid=0 own=0 rejected_version=0 rejected_auth_type=0 \
             rejected_auth_password=3 rejected_interval=0 rejected_addresses=0 rejected_vrid=0 \
             invalid=1 invalid_ttl=0 invalid_checksum=1 invalid_length=0 invalid_version=0"
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("kcv-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vrrp.status");
        write_file(&path, "one\n");
        write_file(&path, "two\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert!(!dir.join("vrrp.status.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
