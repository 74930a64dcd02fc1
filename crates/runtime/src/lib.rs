//! The thread model the cache server and the proxy share.
//!
//! [`Workers`]: `-t` threads, each running a single-threaded tokio runtime; a connection lives on
//! one of them from accept to close, as in memcached. [`Sharded`]: counters every request bumps,
//! split so that each thread writes cache lines of its own. [`Socket`] and [`spare`]: connections
//! that hold no buffers while idle.

mod accept;
mod sharded;
mod socket;
pub mod spare;
mod workers;

pub use accept::Acceptor;
pub use sharded::Sharded;
pub use socket::Socket;
pub use workers::{worker_index, Workers};
