//! The VRRP daemon's Prometheus metrics (docs/metrics.md), read at scrape time from the status
//! every instance publishes after each event (status.rs), the same figures SIGUSR1 logs.

use std::time::UNIX_EPOCH;

use keepcached_metrics::{counters, gauges, label_value, Collector, DescriptorEncoder, Labels};

use crate::instance::State;
use crate::status::{InstanceStatus, Slots};

/// The state label's values, in the metrics' own names (lower case; `init` for an instance
/// not started or stopping).
const STATES: [(State, &str); 4] = [
    (State::Master, "master"),
    (State::Backup, "backup"),
    (State::Fault, "fault"),
    (State::Initialize, "init"),
];

/// The daemon's collector: give the same `slots` to [`crate::run_with`] (`Embedding::slots`).
#[derive(Debug, Clone, Default)]
pub struct VrrpMetrics(pub Slots);

type Row<'a, V> = (Labels<'a>, V);

fn instance(status: &InstanceStatus) -> Labels<'_> {
    vec![("instance", label_value(&status.name))]
}

/// Rejected and undecodable adverts by reason: (label value, count).
fn rejected(s: &InstanceStatus) -> [(&'static str, u64); 11] {
    [
        ("version_mismatch", s.rx.version),
        ("auth_type", s.rx.auth_type),
        ("auth_password", s.rx.auth_password),
        ("interval", s.rx.interval),
        ("addresses", s.rx.addresses),
        ("vrid", s.rx.vrid),
        ("ttl", s.invalid.ttl),
        ("checksum", s.invalid.checksum),
        ("length", s.invalid.length),
        ("bad_version", s.invalid.version),
        ("malformed", s.invalid.other),
    ]
}

impl Collector for VrrpMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let all: Vec<InstanceStatus> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let enc = &mut enc;
        let per = |f: fn(&InstanceStatus) -> u64| -> Vec<Row<'_, u64>> {
            all.iter().map(|s| (instance(s), f(s))).collect()
        };
        let mut states = Vec::new();
        for s in &all {
            for (state, name) in STATES {
                let mut labels = instance(s);
                labels.push(("state", name.into()));
                states.push((labels, u64::from(s.state == state)));
            }
        }
        gauges(
            enc,
            "vrrp_state",
            "1 for the instance's current state, 0 for the others (master, backup, fault, \
             init).",
            None,
            states,
        )?;
        gauges(
            enc,
            "vrrp_state_since_timestamp",
            "When the instance entered its current state (Unix time).",
            Some(&keepcached_metrics::Unit::Seconds),
            all.iter().map(|s| {
                let since = s.since.duration_since(UNIX_EPOCH).unwrap_or_default();
                (instance(s), since.as_secs_f64())
            }),
        )?;
        gauges(
            enc,
            "vrrp_priority",
            "The effective priority: configured, plus the weights of tracked items.",
            None,
            per(|s| u64::from(s.priority)),
        )?;
        gauges(
            enc,
            "vrrp_base_priority",
            "The configured priority.",
            None,
            per(|s| u64::from(s.base_priority)),
        )?;
        counters(
            enc,
            "vrrp_transitions",
            "State changes.",
            per(|s| s.transitions),
        )?;
        counters(
            enc,
            "vrrp_adverts_sent",
            "Adverts sent (one per destination).",
            per(|s| s.sent),
        )?;
        counters(
            enc,
            "vrrp_adverts_received",
            "Adverts received for the instance's virtual router from a peer: accepted, \
             rejected or undecodable.",
            per(|s| s.rx.accepted + rejected(s).iter().map(|(_, n)| n).sum::<u64>()),
        )?;
        counters(
            enc,
            "vrrp_adverts_accepted",
            "Adverts accepted from a peer.",
            per(|s| s.rx.accepted),
        )?;
        counters(
            enc,
            "vrrp_adverts_other_vrid",
            "Adverts of other virtual routers on the instance's interface (ignored).",
            per(|s| s.rx.other_vrid),
        )?;
        let mut reasons = Vec::new();
        for s in &all {
            for (reason, n) in rejected(s) {
                let mut labels = instance(s);
                labels.push(("reason", reason.into()));
                reasons.push((labels, n));
            }
        }
        counters(
            enc,
            "vrrp_adverts_rejected",
            "Adverts discarded, by reason: as keepalived would discard them (version_mismatch, \
             auth_type, auth_password, interval, addresses, vrid) or undecodable (ttl, \
             checksum, length, bad_version, malformed).",
            reasons,
        )?;
        gauges(
            enc,
            "vrrp_vips_held",
            "Virtual addresses the instance has added to its interfaces (all of them while \
             master, none otherwise).",
            None,
            per(|s| u64::from(s.vips_held)),
        )
    }
}
