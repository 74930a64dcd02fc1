//! Integration tests: the proxy in-process against real memcached (and nutcracker, PHP) processes.

mod basics;
mod common;
mod failover;
mod hold;
mod meta;
mod misbehaving;
mod php;
mod placement;
mod replication;
