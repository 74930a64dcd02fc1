//! Server counters, in memcached's names.
//!
//! Each connection counts into a plain [`Counters`] while it works through a batch of requests
//! and adds it to the shared [`Stats`] once per batch, so the hot path touches no shared cache
//! line per request.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Per-batch counts, merged into [`Stats`] with [`Stats::merge`].
        #[derive(Debug, Default, Clone, Copy)]
        pub struct Counters {
            $(pub $name: u64,)*
        }

        /// Counters shared by all connections.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            pub curr_connections: AtomicU64,
            pub total_connections: AtomicU64,
            pub rejected_connections: AtomicU64,
        }

        impl Stats {
            pub fn merge(&self, c: &Counters) {
                $(if c.$name != 0 {
                    self.$name.fetch_add(c.$name, Ordering::Relaxed);
                })*
            }

            /// A consistent-enough copy for reporting.
            pub fn snapshot(&self) -> Counters {
                Counters {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }

            /// `stats reset`: counters go to zero; gauges (current connections) stay.
            pub fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
                self.total_connections.store(0, Ordering::Relaxed);
                self.rejected_connections.store(0, Ordering::Relaxed);
            }
        }
    };
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
    bytes_read,
    bytes_written,
    conn_yields,
);

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
