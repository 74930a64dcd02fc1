//! Hostile clients and operators: each scenario asserts the process is alive and answering
//! `version` afterwards, resident memory growth under a stated bound read from /proc, and no
//! acknowledged write lost.
//!
//! Every scenario prints one line for the table:
//! `ABUSE | scenario | ours peak growth | memcached peak growth (server scenarios) | outcome`
//! (run with `--nocapture` to see them).

mod server;
