//! VRRP for keepcached: moves a virtual IP between proxy hosts, wire-compatible
//! with keepalived's VRRP (v2 and v3 over IPv4, v3 over IPv6), tracking the
//! local proxy without shell glue.
//!
//! Data flows one way: (packet | timer | tracking change) -> [`instance::Event`]
//! -> [`instance::Instance`] (pure state machine) -> [`instance::Action`]s ->
//! the executor in `daemon.rs` (socket, netlink, gratuitous ARP, notify).
//!
//! | file | role |
//! |---|---|
//! | `packet.rs` | advert codec, IPv4 header, IPv6 header checks, checksums |
//! | `instance.rs` | RFC 5798 §6 state machine, no I/O, no clock |
//! | `config.rs` | TOML configuration and validation |
//! | `keepalived_conf.rs` | reader for an existing keepalived.conf |
//! | `daemon.rs` | tasks, timers, executing actions, shutdown |
//! | `network.rs` | raw protocol-112 sockets (IPv4, IPv6), interface addresses |
//! | `netlink.rs` | virtual addresses and link state via rtnetlink |
//! | `garp.rs`, `sys.rs` | gratuitous ARP (the only `unsafe`, in `sys.rs`) |
//! | `ndisc.rs` | unsolicited neighbour advertisements for IPv6 addresses |
//! | `track.rs` | scripts, proxy check, interfaces -> effective priority |
//! | `notify.rs` | notify scripts with keepalived's arguments |
//! | `privileges.rs` | drop capabilities once the sockets are open |
//! | `status.rs` | instance state and advert counters for operators |
//! | `metrics.rs` | the same figures for Prometheus |
//! | `rejects.rs` | rate limiting of the warnings about discarded adverts |

pub mod config;
mod daemon;
mod garp;
pub mod instance;
pub mod keepalived_conf;
pub mod metrics;
mod ndisc;
mod netlink;
mod network;
mod notify;
pub mod packet;
mod privileges;
mod rejects;
pub mod status;
mod sys;
pub mod track;

pub use config::{ConfError, VrrpConfig};
pub use daemon::{run, run_with, Embedding, Error, Reload};
pub use keepalived_conf::{parse_keepalived_conf, Warning};
