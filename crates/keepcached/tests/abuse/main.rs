//! Hostile clients and operators: each scenario asserts the process is alive and answering
//! `version` afterwards, resident memory growth under a stated bound read from /proc, and no
//! acknowledged write lost.
//!
//! Each scenario prints one line `ABUSE | scenario | ours peak growth | memcached peak growth |
//! outcome` (run with `--nocapture` to collect them).

mod bin;
mod ops;
mod proxy;
mod server;
mod vrrp;
