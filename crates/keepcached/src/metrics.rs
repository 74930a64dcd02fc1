//! `--metrics ADDR:PORT`, the same on every role: the listener is bound with the role's other
//! sockets (before daemonizing, so an address in use fails in the foreground) and served on
//! the role's main runtime until the shutdown signal (docs/metrics.md).

use std::sync::Arc;

use anyhow::Context;
use keepcached_metrics::{Collector, Endpoint};
use tokio::sync::watch;

use crate::UsageError;

/// Checks a `--metrics` value before anything starts: a bad one is a usage error (exit 64).
pub fn check(addr: Option<&str>) -> Result<(), UsageError> {
    match addr {
        Some(addr) => keepcached_metrics::parse_addr(addr)
            .map(drop)
            .map_err(|e| UsageError(format!("--metrics {e}"))),
        None => Ok(()),
    }
}

/// Binds `--metrics`, if given (checked with [`check`]): an address in use exits 71, as the
/// role's own listeners do.
pub fn bind(addr: Option<&str>) -> anyhow::Result<Option<Endpoint>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let addr =
        keepcached_metrics::parse_addr(addr).map_err(|e| UsageError(format!("--metrics {e}")))?;
    Ok(Some(Endpoint::bind(addr).context("--metrics")?))
}

/// Serves `collectors` on `endpoint` until `shutdown` turns true. Call it on the role's
/// runtime.
pub fn spawn(
    endpoint: Endpoint,
    collectors: Vec<Box<dyn Collector>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registry = Arc::new(keepcached_metrics::registry(collectors));
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = endpoint.serve(registry, stop).await {
            tracing::error!("metrics listener failed: {e}");
        }
    });
}
