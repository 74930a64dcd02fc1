//! The cache server's Prometheus metrics (docs/metrics.md), read at scrape time from what
//! `stats` reports: the counter shards of [`crate::stats`], the connection gauges and the
//! store's own figures. The one figure kept for metrics alone is the request latency
//! histogram, [`crate::stats::Stats::latency`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keepcached_metrics::{counter, counters, gauge, Collector, DescriptorEncoder, Labels, Unit};

use crate::Server;

/// The server's collector; register it with [`keepcached_metrics::registry`].
#[derive(Debug)]
pub struct ServerMetrics(Arc<Server>);

impl ServerMetrics {
    /// The collector of `server`, which from now on measures request latency (a server nobody
    /// scrapes reads no clock per request).
    pub fn new(server: Arc<Server>) -> ServerMetrics {
        server.stats.time_requests();
        ServerMetrics(server)
    }
}

fn by<'a>(label: &'static str, rows: &[(&'static str, u64)]) -> Vec<(Labels<'a>, u64)> {
    rows.iter()
        .map(|&(value, n)| (vec![(label, value.into())], n))
        .collect()
}

impl Collector for ServerMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let server = &self.0;
        let c = server.stats.snapshot();
        let cache = server.cache.stats();
        let enc = &mut enc;
        counters(
            enc,
            "server_commands",
            "Commands received, by command family (get: keys asked for by the get family).",
            by(
                "command",
                &[
                    ("get", c.cmd_get),
                    ("set", c.cmd_set),
                    ("touch", c.cmd_touch),
                    ("flush", c.cmd_flush),
                    ("meta", c.cmd_meta),
                ],
            ),
        )?;
        counters(
            enc,
            "server_hits",
            "Keys found, by command.",
            by(
                "command",
                &[
                    ("get", c.get_hits),
                    ("touch", c.touch_hits),
                    ("delete", c.delete_hits),
                    ("incr", c.incr_hits),
                    ("decr", c.decr_hits),
                    ("cas", c.cas_hits),
                ],
            ),
        )?;
        counters(
            enc,
            "server_misses",
            "Keys not found, by command.",
            by(
                "command",
                &[
                    ("get", c.get_misses),
                    ("touch", c.touch_misses),
                    ("delete", c.delete_misses),
                    ("incr", c.incr_misses),
                    ("decr", c.decr_misses),
                    ("cas", c.cas_misses),
                ],
            ),
        )?;
        counter(
            enc,
            "server_cas_badval",
            "CAS commands refused because the item had changed.",
            c.cas_badval,
        )?;
        counters(
            enc,
            "server_get_misses_stale",
            "Get misses on an item that was there but expired or flushed, by reason.",
            by(
                "reason",
                &[("expired", c.get_expired), ("flushed", c.get_flushed)],
            ),
        )?;
        counters(
            enc,
            "server_stores_refused",
            "Stores refused, by reason.",
            by(
                "reason",
                &[
                    ("too_large", c.store_too_large),
                    ("no_memory", c.store_no_memory),
                ],
            ),
        )?;
        counter(
            enc,
            "server_auth_commands",
            "Authentication attempts (SASL or -Y).",
            c.auth_cmds,
        )?;
        counter(
            enc,
            "server_auth_errors",
            "Failed authentication attempts.",
            c.auth_errors,
        )?;
        counter(
            enc,
            "server_received_bytes",
            "Bytes read from clients.",
            c.bytes_read,
        )?;
        counter(
            enc,
            "server_sent_bytes",
            "Bytes written to clients.",
            c.bytes_written,
        )?;
        server.stats.latency.encode(
            enc,
            "server_request_duration",
            "Time from a read of client bytes to the replies to every request in them written \
             (TCP and unix sockets; reads that got no reply are not counted).",
        )?;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            enc,
            "server_connections_open",
            "Open client connections (memcached's curr_connections).",
            None,
            load(&server.stats.curr_connections),
        )?;
        counter(
            enc,
            "server_connections_accepted",
            "Connections accepted (memcached's total_connections).",
            load(&server.stats.total_connections),
        )?;
        counter(
            enc,
            "server_connections_rejected",
            "Connections refused because -c connections were open.",
            load(&server.stats.rejected_connections),
        )?;
        gauge(
            enc,
            "server_connections_limit",
            "The connection limit (-c).",
            None,
            server.settings.max_connections as u64,
        )?;
        gauge(
            enc,
            "server_memory_used",
            "Bytes the stored items take, as the memory limit counts them.",
            Some(&Unit::Bytes),
            cache.bytes,
        )?;
        gauge(
            enc,
            "server_memory_limit",
            "The memory limit (-m).",
            Some(&Unit::Bytes),
            cache.limit_maxbytes,
        )?;
        gauge(
            enc,
            "server_items",
            "Items stored now.",
            None,
            cache.curr_items,
        )?;
        counter(
            enc,
            "server_items_stored",
            "Successful stores.",
            cache.total_items,
        )?;
        counter(
            enc,
            "server_evictions",
            "Live items removed to make room.",
            cache.evictions,
        )?;
        counter(
            enc,
            "server_evicted_unfetched",
            "Evicted items that had never been read.",
            cache.evicted_unfetched,
        )?;
        counters(
            enc,
            "server_reclaimed",
            "Expired or flushed items whose memory was taken back, by who found them (store: \
             reused to make room; crawler: the LRU crawler).",
            by(
                "by",
                &[
                    ("store", cache.reclaimed),
                    ("crawler", cache.crawler_reclaimed),
                ],
            ),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_scraped_server_reads_the_clock_per_request() {
        let server = Server::new(crate::Settings::default());
        assert!(!server.stats.timing());
        let _collector = ServerMetrics::new(server.clone());
        assert!(server.stats.timing());
    }
}
