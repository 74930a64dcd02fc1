//! What the stale-read tests share, in this process or across network namespaces: a memcached
//! text client (`client`) and the write/read load that counts stale reads and lost writes
//! through a proxy (`load`). Used by `resync.rs` and `resync_netns.rs`, each of which uses all
//! of it.

pub mod client;
pub mod load;

use std::time::Duration;

/// Generous: a debug build on two busy cores.
pub const WAIT: Duration = Duration::from_secs(30);
