//! The proxy's own counters, answered to `stats` in memcached's `STAT <name> <value>` format, and
//! `stats backends`: one line per server with its state and counters.
//!
//! Every sub-command memcached answers is answered, so a tool that reads until `END` never
//! waits: `settings` with the proxy's own settings; `items`, `slabs`, `sizes`, `conns`,
//! `cachedump` and `extstore` with what the proxy holds of them (no items, no slabs: their
//! empty answer, `END`); `detail on|off` with `OK` and `detail dump` with `END` (the proxy
//! keeps no per-prefix figures); `reset`. Anything else is `ERROR`, as memcached answers it:
//! one line, which no client waits past (docs/proxy.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use keepcached_protocol::reply;
use keepcached_runtime::Sharded;

use crate::backend::Counters as BackendCounters;
use crate::config::{Unavailable, WriteAck};
use crate::route::Router;
use crate::Context;

/// The version reported by `version` and `stats`: the protocol level the proxy speaks, then
/// what it is (clients parse the leading numbers to decide which commands they may use).
pub const VERSION: &str = concat!("1.6.18-keepcached-proxy-", env!("CARGO_PKG_VERSION"));

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One thread's share of the proxy-wide counters; all relaxed atomics, summed only for
        /// `stats`. A gauge may go up in one thread's share and down in another's, so shares
        /// add with wrap-around.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            fn write(shards: &Sharded<Counters>, out: &mut Vec<u8>) {
                $(
                    let sum = shards
                        .iter()
                        .fold(0u64, |sum, c| sum.wrapping_add(c.$name.load(Ordering::Relaxed)));
                    reply::stat(out, stringify!($name), sum);
                )*
            }

            fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    curr_connections,
    total_connections,
    /// Connections refused because `max_connections` were open.
    rejected_connections,
    /// Keys asked for by the get family.
    cmd_get,
    get_hits,
    get_misses,
    /// Keys that no replica could answer (answered as misses, or the request failed).
    get_unavailable,
    /// Reads retried on the next replica after a failure.
    get_failovers,
    cmd_set,
    cmd_delete,
    cmd_touch,
    cmd_incr,
    cmd_decr,
    cmd_flush,
    /// Writes a replica failed or missed while down (each key is remembered for it).
    replica_write_failures,
    /// Items copied from the executing replica to the others after add/replace/cas/append/
    /// prepend/incr/decr.
    replica_copies,
    /// Keys deleted on the other replicas because the outcome could not be copied exactly.
    replica_deletes,
    /// Missed keys repaired on a returning server (copied from a replica, or deleted).
    repaired_keys,
    /// Items copied to a warming server.
    warmup_copies,
    /// Requests answered with SERVER_ERROR because no replica answered.
    unavailable_errors,
}

/// Answers `stats <args>` (see the module's documentation for what each sub-command gets).
pub fn answer<'a>(ctx: &Context, mut args: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    let (first, second) = (args.next(), args.next());
    match (first, second) {
        (None, _) => {
            ctx.stats
                .write_general(out, &ctx.router(), ctx.serving(), ctx.others_serving())
        }
        (Some(b"backends"), None) => Stats::write_backends(out, &ctx.router()),
        (Some(b"reset"), None) => {
            ctx.stats.reset();
            out.extend_from_slice(reply::RESET);
        }
        (Some(b"settings"), None) => write_settings(ctx, out),
        (Some(b"slabs"), None) => {
            reply::stat(out, "active_slabs", 0);
            reply::stat(out, "total_malloced", 0);
            out.extend_from_slice(reply::END);
        }
        (Some(b"sizes"), None) => {
            reply::stat(out, "sizes_status", "disabled");
            out.extend_from_slice(reply::END);
        }
        (Some(b"items" | b"conns" | b"extstore"), None) | (Some(b"cachedump"), Some(_)) => {
            out.extend_from_slice(reply::END);
        }
        (Some(b"detail"), Some(b"on" | b"off")) if args.next().is_none() => {
            out.extend_from_slice(reply::OK);
        }
        (Some(b"detail"), Some(b"dump")) if args.next().is_none() => {
            out.extend_from_slice(reply::END);
        }
        (Some(b"detail"), _) => {
            reply::line(out, b"CLIENT_ERROR usage: stats detail on|off|dump");
        }
        _ => reply::line(out, b"ERROR"),
    }
}

/// `stats settings`: the proxy's own settings, under memcached's names where they mean the same.
fn write_settings(ctx: &Context, out: &mut Vec<u8>) {
    let config = ctx.live();
    let backend = &config.backend;
    reply::stat(out, "maxconns", config.max_connections);
    // memcached's tcpport is a number: the first listener's port; `listen` has them all.
    let port = config
        .listen
        .first()
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or(0);
    reply::stat(out, "tcpport", port);
    reply::stat(out, "listen", config.listen.join(","));
    reply::stat(out, "udpport", 0);
    reply::stat(
        out,
        "domain_socket",
        config
            .unix_socket
            .as_ref()
            .map_or_else(|| "NULL".to_string(), |p| p.display().to_string()),
    );
    reply::stat(out, "num_threads", config.worker_threads());
    reply::stat(out, "item_size_max", config.item_size_max);
    reply::stat(out, "client_reply_budget", config.client_reply_budget);
    reply::stat(out, "freebind", if config.freebind { "yes" } else { "no" });
    reply::stat(out, "drain_timeout_ms", config.drain_timeout_ms);
    for pool in &config.pools {
        reply::stat(out, &format!("pool_{}", pool.name), pool.servers.join(","));
    }
    reply::stat(out, "backend_connections", backend.connections);
    reply::stat(out, "connect_timeout_ms", backend.connect_timeout_ms);
    reply::stat(out, "request_timeout_ms", backend.request_timeout_ms);
    reply::stat(out, "failure_limit", backend.failure_limit);
    reply::stat(out, "probe_interval_ms", backend.probe_interval_ms);
    reply::stat(out, "probe_max_interval_ms", backend.probe_max_interval_ms);
    reply::stat(out, "health_interval_ms", backend.health_interval_ms);
    let write_ack = match config.replication.write_ack {
        WriteAck::All => "all",
        WriteAck::First => "first",
    };
    reply::stat(out, "write_ack", write_ack);
    let unavailable = match config.replication.multiget_unavailable {
        Unavailable::Miss => "miss",
        Unavailable::ServerError => "server_error",
    };
    reply::stat(out, "multiget_unavailable", unavailable);
    reply::stat(
        out,
        "missed_keys_limit",
        config.replication.missed_keys_limit,
    );
    reply::stat(
        out,
        "warmup",
        if config.resync.warmup { "yes" } else { "no" },
    );
    reply::stat(
        out,
        "ledger",
        if config.resync.ledger { "yes" } else { "no" },
    );
    reply::stat(
        out,
        "hold_returning",
        if config.resync.hold_returning {
            "yes"
        } else {
            "no"
        },
    );
    out.extend_from_slice(reply::END);
}

/// The proxy's statistics.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    counters: Sharded<Counters>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            counters: Sharded::default(),
        }
    }
}

impl Stats {
    /// Every thread's share, for the metrics endpoint's sums.
    pub fn shards(&self) -> impl Iterator<Item = &Counters> {
        self.counters.iter()
    }

    /// The calling thread's share of the counters, to count into.
    pub fn counters(&self) -> &Counters {
        self.counters.local()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `stats`: general lines as memcached's, then the proxy counters.
    /// `serving`: this proxy served clients lately; `others_serving`: another proxy's serving
    /// heartbeat is on the servers (this one is then a standby unless it serves too).
    pub fn write_general(
        &self,
        out: &mut Vec<u8>,
        router: &Router,
        serving: bool,
        others_serving: bool,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        reply::stat(out, "pid", std::process::id());
        reply::stat(out, "uptime", self.started.elapsed().as_secs());
        reply::stat(out, "time", now);
        reply::stat(out, "version", VERSION);
        Counters::write(&self.counters, out);
        let up = router.live().filter(|b| b.is_up()).count();
        reply::stat(out, "backends", router.live().count());
        reply::stat(out, "backends_up", up);
        reply::stat(out, "serving", u8::from(serving));
        reply::stat(out, "other_proxy_serving", u8::from(others_serving));
        out.extend_from_slice(reply::END);
    }

    /// `stats backends`: `STAT <pool>/<address> state=.. requests=.. ...` per server.
    pub fn write_backends(out: &mut Vec<u8>, router: &Router) {
        for pool in &router.pools {
            for &id in &pool.servers {
                let backend = &router.backends[id];
                let sum = |field: fn(&BackendCounters) -> &AtomicU64| -> u64 {
                    backend
                        .counters()
                        .map(|c| field(c).load(Ordering::Relaxed))
                        .sum()
                };
                let answered = sum(|c| &c.answered);
                let latency = sum(|c| &c.latency_us) / answered.max(1);
                let health = &backend.health;
                let mut line = {
                    let standing = health.standing.lock();
                    format!(
                        "state={} state_s={} requests={} errors={} timeouts={} \
                         avg_latency_us={} failures={} downs={} restarts={} bad_replies={} \
                         missed_keys={} \
                         needs_flush={} cold={} held={} marked_by_other={} draining={}",
                        backend.state().name(),
                        health.state_age_s(),
                        sum(|c| &c.requests),
                        sum(|c| &c.errors),
                        sum(|c| &c.timeouts),
                        latency,
                        health.failures(),
                        sum(|c| &c.downs),
                        sum(|c| &c.restarts),
                        sum(|c| &c.bad_replies),
                        standing.missed_len(),
                        u8::from(standing.needs_flush()),
                        u8::from(standing.cold),
                        u8::from(standing.held),
                        u8::from(standing.foreign),
                        standing.draining(),
                    )
                };
                if let Some(p) = health.progress.lock().as_ref() {
                    line.push_str(&format!(
                        " warm_pass={} warm_done={} warm_total={} warm_pct={} warm_eta_s={} \
                         warm_copied={} warm_bytes={}",
                        p.pass,
                        p.done,
                        p.total,
                        p.percent(),
                        p.eta_s(),
                        p.copied,
                        p.bytes
                    ));
                }
                reply::stat(out, &format!("{}/{}", pool.name, backend.addr), line);
            }
        }
        out.extend_from_slice(reply::END);
    }

    /// Requests that name keys or change data, all threads together: a proxy whose count moves
    /// is serving clients (see `Context::serving`).
    pub fn data_requests(&self) -> u64 {
        self.counters.iter().fold(0u64, |sum, c| {
            [
                &c.cmd_get,
                &c.cmd_set,
                &c.cmd_delete,
                &c.cmd_touch,
                &c.cmd_incr,
                &c.cmd_decr,
                &c.cmd_flush,
            ]
            .iter()
            .fold(sum, |sum, n| sum.wrapping_add(n.load(Ordering::Relaxed)))
        })
    }

    /// `stats reset`: every counter but the open connections, as memcached does.
    pub fn reset(&self) {
        let open = self.counters.iter().fold(0u64, |sum, c| {
            sum.wrapping_add(c.curr_connections.load(Ordering::Relaxed))
        });
        for shard in self.counters.iter() {
            shard.reset();
        }
        Stats::add(&self.counters().curr_connections, open);
    }
}
