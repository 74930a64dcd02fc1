//! Integration tests: the proxy in-process against real memcached (and nutcracker, PHP) processes.

mod basics;
mod common;
mod failover;
mod php;
mod placement;
mod replication;
