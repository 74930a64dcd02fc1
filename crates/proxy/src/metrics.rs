//! The proxy's Prometheus metrics (docs/metrics.md), read at scrape time from what `stats` and
//! `stats backends` report: the proxy's counter shards (stats.rs) and each server's counters,
//! state, missed keys and warm-up progress (health.rs). The one figure kept for metrics alone
//! is each server's latency histogram ([`crate::health::Health::latency`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use keepcached_metrics::{
    counter, counters, gauge, gauges, label_value, Collector, DescriptorEncoder, Histogram, Labels,
};

use crate::backend::{Backend, Counters as BackendCounters};
use crate::health::State;
use crate::stats::Counters;
use crate::Context;

/// Every state a server can be in, for the state gauges (one series per state).
const STATES: [State; 6] = [
    State::Connecting,
    State::Up,
    State::Suspect,
    State::Warming,
    State::Down,
    State::Drained,
];

/// The proxy's collector, from [`crate::Bound::metrics`]. Until the proxy serves (and after it
/// stopped) a scrape shows none of its metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub(crate) ctx: Arc<OnceLock<Weak<Context>>>,
}

/// The sum of one counter over the threads' shares (gauges among them add with wrap-around).
fn sum(ctx: &Context, field: fn(&Counters) -> &AtomicU64) -> u64 {
    ctx.stats.shards().fold(0u64, |sum, c| {
        sum.wrapping_add(field(c).load(Ordering::Relaxed))
    })
}

fn backend_sum(backend: &Backend, field: fn(&BackendCounters) -> &AtomicU64) -> u64 {
    backend
        .counters()
        .map(|c| field(c).load(Ordering::Relaxed))
        .sum()
}

impl Collector for ProxyMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(ctx) = self.ctx.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let enc = &mut enc;
        let s = |field: fn(&Counters) -> &AtomicU64| sum(&ctx, field);
        gauge(
            enc,
            "proxy_connections_open",
            "Open client connections.",
            None,
            s(|c| &c.curr_connections),
        )?;
        counter(
            enc,
            "proxy_connections_accepted",
            "Client connections accepted.",
            s(|c| &c.total_connections),
        )?;
        counter(
            enc,
            "proxy_connections_rejected",
            "Client connections refused because max_connections (-n) were open.",
            s(|c| &c.rejected_connections),
        )?;
        let commands: [(&str, u64); 7] = [
            ("get", s(|c| &c.cmd_get)),
            ("set", s(|c| &c.cmd_set)),
            ("delete", s(|c| &c.cmd_delete)),
            ("touch", s(|c| &c.cmd_touch)),
            ("incr", s(|c| &c.cmd_incr)),
            ("decr", s(|c| &c.cmd_decr)),
            ("flush", s(|c| &c.cmd_flush)),
        ];
        counters(
            enc,
            "proxy_commands",
            "Commands received from clients, by command (get: keys asked for by the get \
             family; set: every storage command).",
            commands
                .iter()
                .map(|&(command, n)| (vec![("command", command.into())], n)),
        )?;
        counter(
            enc,
            "proxy_get_hits",
            "Keys of the get family found on a replica.",
            s(|c| &c.get_hits),
        )?;
        counter(
            enc,
            "proxy_get_misses",
            "Keys of the get family not found.",
            s(|c| &c.get_misses),
        )?;
        counter(
            enc,
            "proxy_get_unavailable",
            "Keys no replica could answer.",
            s(|c| &c.get_unavailable),
        )?;
        counter(
            enc,
            "proxy_get_failovers",
            "Reads retried on the next replica after a failure.",
            s(|c| &c.get_failovers),
        )?;
        counter(
            enc,
            "proxy_unavailable_errors",
            "Requests answered with SERVER_ERROR because no replica answered.",
            s(|c| &c.unavailable_errors),
        )?;
        counter(
            enc,
            "proxy_replica_write_failures",
            "Writes a replica failed or missed while down (each key is remembered for it).",
            s(|c| &c.replica_write_failures),
        )?;
        counter(
            enc,
            "proxy_replica_copies",
            "Items copied from the executing replica to the others after a conditional write.",
            s(|c| &c.replica_copies),
        )?;
        counter(
            enc,
            "proxy_replica_deletes",
            "Keys deleted on the other replicas because an outcome could not be copied exactly.",
            s(|c| &c.replica_deletes),
        )?;
        counter(
            enc,
            "proxy_repaired_keys",
            "Missed keys repaired on a returning server (copied from a replica, or deleted).",
            s(|c| &c.repaired_keys),
        )?;
        counter(
            enc,
            "proxy_warmup_copies",
            "Items copied to warming servers.",
            s(|c| &c.warmup_copies),
        )?;
        gauge(
            enc,
            "proxy_serving",
            "1 when this proxy served a data request in the last 30 s.",
            None,
            u64::from(ctx.serving()),
        )?;
        gauge(
            enc,
            "proxy_other_proxy_serving",
            "1 when another proxy's serving heartbeat was on the servers at the last look.",
            None,
            u64::from(ctx.others_serving()),
        )?;
        backends(enc, &ctx)
    }
}

/// The per-server families, labelled `pool` and `backend` (its address).
fn backends(enc: &mut DescriptorEncoder, ctx: &Context) -> std::fmt::Result {
    let router = ctx.router();
    let servers: Vec<(Labels<'_>, &Arc<Backend>)> = router
        .pools
        .iter()
        .flat_map(|pool| {
            pool.servers.iter().map(|&id| {
                let backend = &router.backends[id];
                let labels: Labels<'_> = vec![
                    ("pool", label_value(&pool.name).into_owned().into()),
                    ("backend", label_value(&backend.addr).into_owned().into()),
                ];
                (labels, backend)
            })
        })
        .collect();
    let per = |f: &dyn Fn(&Backend) -> u64| -> Vec<(Labels<'_>, u64)> {
        servers
            .iter()
            .map(|(labels, backend)| (labels.clone(), f(backend)))
            .collect()
    };
    let mut states = Vec::with_capacity(servers.len() * STATES.len());
    for (labels, backend) in &servers {
        let now = backend.state();
        for state in STATES {
            let mut labels = labels.clone();
            labels.push(("state", state.name().into()));
            states.push((labels, u64::from(state == now)));
        }
    }
    gauges(
        enc,
        "proxy_backend_state",
        "1 for the server's current state, 0 for the others (connecting, up, suspect, \
         warming, down, drained).",
        None,
        states,
    )?;
    type Field = fn(&BackendCounters) -> &AtomicU64;
    let counters_of: [(&str, &str, Field); 6] = [
        (
            "proxy_backend_requests",
            "Requests sent to the server.",
            |c| &c.requests,
        ),
        (
            "proxy_backend_errors",
            "Requests to the server that failed (timeouts included).",
            |c| &c.errors,
        ),
        (
            "proxy_backend_timeouts",
            "Requests to the server that got no reply in time.",
            |c| &c.timeouts,
        ),
        (
            "proxy_backend_downs",
            "Times the server was marked down.",
            |c| &c.downs,
        ),
        (
            "proxy_backend_restarts",
            "Times the server was found to have restarted.",
            |c| &c.restarts,
        ),
        (
            "proxy_backend_bad_replies",
            "Connections closed because a reply was malformed or out of step.",
            |c| &c.bad_replies,
        ),
    ];
    for (name, help, field) in counters_of {
        counters(enc, name, help, per(&|b| backend_sum(b, field)))?;
    }
    Histogram::encode_family(
        enc,
        "proxy_backend_request_duration",
        "Time from sending a request to the server to its reply, for answered requests.",
        servers
            .iter()
            .map(|(labels, backend)| (labels.clone(), &backend.health.latency)),
    )?;
    gauges(
        enc,
        "proxy_backend_failures",
        "Consecutive failures counted against the server now.",
        None,
        per(&|b| u64::from(b.health.failures())),
    )?;
    gauges(
        enc,
        "proxy_backend_missed_keys",
        "Keys the server missed (written while it could not take them) and that wait for \
         repair.",
        None,
        per(&|b| b.health.standing.lock().missed_len() as u64),
    )?;
    gauges(
        enc,
        "proxy_backend_needs_flush",
        "1 when the server missed too much to repair key by key and is flushed and warmed.",
        None,
        per(&|b| u64::from(b.health.standing.lock().needs_flush())),
    )?;
    // Warm-up figures exist only while a server warms.
    let warming: Vec<_> = servers
        .iter()
        .filter_map(|(labels, backend)| {
            let p = backend.health.progress.lock().clone()?;
            Some((labels.clone(), p))
        })
        .collect();
    let warm = |f: fn(&crate::health::Progress) -> u64| -> Vec<(Labels<'_>, u64)> {
        warming.iter().map(|(l, p)| (l.clone(), f(p))).collect()
    };
    gauges(
        enc,
        "proxy_backend_warmup_listed_keys",
        "Items of the healthy replicas listed so far by the running warm-up.",
        None,
        warm(|p| p.done),
    )?;
    gauges(
        enc,
        "proxy_backend_warmup_source_keys",
        "Items the healthy replicas held when the warm-up started (an estimate of its length).",
        None,
        warm(|p| p.total),
    )?;
    gauges(
        enc,
        "proxy_backend_warmup_copied_keys",
        "Items copied to the server by the running warm-up.",
        None,
        warm(|p| p.copied),
    )?;
    gauges(
        enc,
        "proxy_backend_warmup_copied_bytes",
        "Bytes copied to the server by the running warm-up.",
        None,
        warm(|p| p.bytes),
    )?;
    gauges(
        enc,
        "proxy_backend_warmup_progress_ratio",
        "Listed over source items of the running warm-up, 0 to 1.",
        None,
        warming
            .iter()
            .map(|(l, p)| (l.clone(), (p.done as f64 / p.total.max(1) as f64).min(1.0))),
    )
}
