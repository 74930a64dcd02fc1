//! A latency histogram that request paths update without sharing a cache line.
//!
//! Buckets are powers of two of a microsecond, from 1 µs to about 1 s, fixed so that an update
//! is a leading-zero count and two relaxed additions on the calling thread's own shard
//! (keepcached-runtime's [`Sharded`]); a scrape sums the shards. prometheus-client's own
//! histogram keeps one shared copy behind a lock, which every worker would write.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keepcached_runtime::Sharded;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::Labels;

/// Finite buckets: upper bounds 2^0 .. 2^20 µs (1 µs .. 1.05 s).
const FINITE: usize = 21;
/// The finite buckets and +Inf.
const BUCKETS: usize = FINITE + 1;

#[derive(Debug, Default)]
struct Shard {
    /// Observations per bucket (not cumulative).
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// Durations, counted per bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    shards: Sharded<Shard>,
}

/// The bucket of a duration of `ns` nanoseconds: the first upper bound at or above it.
fn bucket(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // The bit length of us - 1 is the exponent of the smallest power of two >= us.
    let exponent = (u64::BITS - (us - 1).leading_zeros()) as usize;
    exponent.min(FINITE)
}

/// The upper bound of bucket `i`, in seconds (+Inf for the last).
fn upper_bound(i: usize) -> f64 {
    if i >= FINITE {
        f64::MAX
    } else {
        (1u64 << i) as f64 / 1e6
    }
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let shard = self.shards.local();
        shard.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// All shards summed: per-bucket counts (bound in seconds, count), the count and the sum in
    /// seconds.
    pub fn snapshot(&self) -> Snapshot {
        let mut buckets = [0u64; BUCKETS];
        let mut sum_ns = 0u64;
        for shard in self.shards.iter() {
            for (total, n) in buckets.iter_mut().zip(&shard.buckets) {
                *total += n.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        Snapshot {
            buckets: buckets
                .iter()
                .enumerate()
                .map(|(i, &n)| (upper_bound(i), n))
                .collect(),
            count: buckets.iter().sum(),
            sum: sum_ns as f64 / 1e9,
        }
    }

    /// A histogram family in seconds: one series per row.
    pub fn encode_family<'a, 'h>(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, &'h Histogram)>,
    ) -> fmt::Result {
        let mut family =
            enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (labels, histogram) in rows {
            let s = histogram.snapshot();
            family.encode_family(&labels)?.encode_histogram(
                s.sum,
                s.count,
                &s.buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }
        Ok(())
    }

    /// One histogram in seconds, without labels.
    pub fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        let s = self.snapshot();
        enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
            .encode_histogram(
                s.sum,
                s.count,
                &s.buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )
    }
}

/// A histogram's figures at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// (upper bound in seconds, observations in this bucket alone); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1000), 0, "1 µs is within le=1µs");
        assert_eq!(bucket(1001), 1);
        assert_eq!(bucket(2000), 1);
        assert_eq!(bucket(3000), 2);
        assert_eq!(bucket(4000), 2);
        assert_eq!(bucket(4001), 3);
        assert_eq!(
            bucket(1_048_576_000),
            20,
            "2^20 µs is the last finite bound"
        );
        assert_eq!(bucket(1_048_577_000), FINITE, "beyond it: +Inf");
        assert_eq!(bucket(u64::MAX), FINITE);
    }

    #[test]
    fn threads_observe_into_one_sum() {
        let h = Histogram::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        h.observe(Duration::from_micros(3));
                        h.observe(Duration::from_secs(5));
                    }
                });
            }
        });
        let snap = h.snapshot();
        assert_eq!(snap.count, 800);
        assert_eq!(snap.buckets[2], (4e-6, 400));
        assert_eq!(snap.buckets[FINITE], (f64::MAX, 400));
        assert!(
            (snap.sum - 400.0 * (3e-6 + 5.0)).abs() < 1e-6,
            "{}",
            snap.sum
        );
    }
}
