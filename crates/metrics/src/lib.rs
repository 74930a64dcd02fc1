//! keepcached's Prometheus endpoint, shared by every role.
//!
//! A role describes its figures in a [`Collector`] (next to its own statistics: the server's in
//! `keepcached_server::metrics`, the proxy's and the VRRP daemon's in theirs), which reads
//! what the role already counts at scrape time, so that serving metrics adds nothing to a
//! request's path. [`Histogram`] is the one thing the roles count for metrics alone: a latency
//! histogram in per-thread shards, as cheap to update as the roles' own counters.
//!
//! [`Endpoint::bind`] opens the listener (before the role daemonizes or drops privileges, so
//! an address in use reaches the operator); [`Endpoint::serve`] answers `GET /metrics` on the
//! role's tokio runtime until its shutdown future completes. The registry is encoded by
//! prometheus-client, in OpenMetrics text; [`exposition`] turns that into Prometheus's classic
//! text format for a scraper that does not ask for OpenMetrics.

mod encode;
mod endpoint;
mod histogram;

pub use encode::{counter, counters, gauge, gauges, label_value, Labels};
pub use endpoint::{exposition, parse_addr, render, BindError, Endpoint, Format};
pub use histogram::Histogram;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
pub use prometheus_client::registry::{Registry, Unit};

/// Every metric name starts with this and an underscore.
pub const PREFIX: &str = "keepcached";

/// A registry whose metrics are named `keepcached_…`, with `collectors` in it.
pub fn registry(collectors: impl IntoIterator<Item = Box<dyn Collector>>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    for collector in collectors {
        registry.register_collector(collector);
    }
    registry
}
