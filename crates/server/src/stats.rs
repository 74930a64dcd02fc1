//! Server counters, in memcached's names.
//!
//! Each connection counts into a plain [`Counters`] while it works through a batch of requests
//! and adds it to its thread's shard of [`Stats`] once per batch, so the hot path touches no
//! cache line another thread writes. The latency histogram ([`Stats::latency`]) is sharded the
//! same way.

use std::sync::atomic::{AtomicU64, Ordering};

use keepcached_runtime::Sharded;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Per-batch counts, merged into [`Stats`] with [`Stats::merge`].
        #[derive(Debug, Default, Clone, Copy)]
        pub struct Counters {
            $(pub $name: u64,)*
        }

        /// One thread's share of the counters.
        #[derive(Debug, Default)]
        struct Shard {
            $($name: AtomicU64,)*
        }

        impl Shard {
            fn add(&self, c: &Counters) {
                $(if c.$name != 0 {
                    self.$name.fetch_add(c.$name, Ordering::Relaxed);
                })*
            }

            fn add_to(&self, sum: &mut Counters) {
                $(sum.$name += self.$name.load(Ordering::Relaxed);)*
            }

            fn clear(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

/// Counters shared by all connections, and the connection gauges.
#[derive(Debug, Default)]
pub struct Stats {
    /// Each thread adds to its own shard; `stats` sums them.
    shards: Sharded<Shard>,
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    /// Stretches of time a listener could not accept for want of descriptors or memory
    /// (memcached's `listen_disabled_num`), their total length in microseconds
    /// (`time_in_listen_disabled_us`), and how many listeners are in one now.
    pub listen_disabled_num: AtomicU64,
    pub listen_disabled_us: AtomicU64,
    pub listeners_disabled: AtomicU64,
    /// Request latency for the metrics endpoint, in per-thread shards too; measured only once
    /// [`Stats::time_requests`] is on, so that a server without `--metrics` reads no clock.
    pub latency: keepcached_metrics::Histogram,
    timing: std::sync::atomic::AtomicBool,
}

impl Stats {
    /// Starts measuring request latency ([`Stats::latency`]).
    pub fn time_requests(&self) {
        self.timing.store(true, Ordering::Relaxed);
    }

    /// Whether request latency is measured.
    pub fn timing(&self) -> bool {
        self.timing.load(Ordering::Relaxed)
    }

    pub fn merge(&self, c: &Counters) {
        self.shards.local().add(c);
    }

    /// A consistent-enough sum for reporting.
    pub fn snapshot(&self) -> Counters {
        let mut sum = Counters::default();
        for shard in self.shards.iter() {
            shard.add_to(&mut sum);
        }
        sum
    }

    /// `stats reset`: counters go to zero; gauges (current connections) stay.
    pub fn reset(&self) {
        for shard in self.shards.iter() {
            shard.clear();
        }
        self.total_connections.store(0, Ordering::Relaxed);
        self.rejected_connections.store(0, Ordering::Relaxed);
    }
}

counters!(
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    get_expired,
    get_flushed,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
    auth_cmds,
    auth_errors,
    idle_kicks,
    response_obj_oom,
    read_buf_oom,
    bytes_read,
    bytes_written,
    conn_yields,
);

impl Counters {
    /// Counts one key read by the get family: expired and flushed misses, then a hit or miss as
    /// a get, or as a touch when the read also set a new TTL (gat, `mg T`, binary GAT), the way
    /// memcached splits them.
    pub fn count_read<R>(&mut self, lookup: &keepcached_cache::Lookup<R>, touch: bool) {
        use keepcached_cache::Lookup;
        match lookup {
            Lookup::Expired => self.get_expired += 1,
            Lookup::Flushed => self.get_flushed += 1,
            Lookup::Hit(_) | Lookup::Miss => {}
        }
        let hit = matches!(lookup, Lookup::Hit(_));
        if touch {
            self.cmd_touch += 1;
            if hit {
                self.touch_hits += 1;
            } else {
                self.touch_misses += 1;
            }
        } else {
            self.cmd_get += 1;
            if hit {
                self.get_hits += 1;
            } else {
                self.get_misses += 1;
            }
        }
    }
}

impl Stats {
    /// Counts a new connection and returns its number.
    pub fn connection_opened(&self) -> u64 {
        self.curr_connections.fetch_add(1, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn connection_closed(&self) {
        self.curr_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
