//! The thread model the cache server and the proxy share.
//!
//! [`Workers`]: `-t` threads, each running a single-threaded tokio runtime; a connection lives on
//! one of them from accept to close, as in memcached. [`Sharded`]: counters every request bumps,
//! split so that each thread writes cache lines of its own.

mod sharded;
mod workers;

pub use sharded::Sharded;
pub use workers::{worker_index, Workers};
