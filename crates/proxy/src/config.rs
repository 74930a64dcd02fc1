//! The proxy's configuration: magent's command line ([`ProxyArgs`]) and the TOML file
//! ([`ProxyConfig`]), both ending in one validated [`ProxyConfig`] before any socket is bound.
//!
//! magent's flags map onto the file like this (flags given with `--config` override the file):
//!
//! | magent | TOML | meaning |
//! |---|---|---|
//! | `-s host[:port]` (repeat) | `[[pools]] name = "main"` | the main servers: one pool |
//! | `-b host[:port]` (repeat) | `[[pools]] name = "backup"` | the backup servers: a second pool |
//! | `-l ip` / `-p port` | `listen = ["ip:port"]` | TCP listener (`-p 0`: none) |
//! | `-f path` | `unix_socket` | unix socket listener |
//! | `-n N` | `max_connections` | client connection limit |
//! | `-i N` | `backend.connections` | pipelined connections per server |
//! | `-k` | — | accepted; ketama is always on |
//! | `-t N`, `--threads N` (not in magent) | `threads` | worker threads (0: one per CPU) |
//! | `--item-size-max SIZE` (not in magent) | `item_size_max` | largest item, as the servers' `-I` |
//! | `-u`/`-g`/`-D`/`-v` | — | for the binary: user, group, foreground, verbosity |

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ring::Node;

/// magent's default port and the ketama port that twemproxy leaves out of point names.
const DEFAULT_PORT: u16 = 11211;
/// A replica set holds one server per pool; this bounds its inline storage.
pub const MAX_POOLS: usize = 8;
/// memcached's bounds for `-I`.
const ITEM_SIZE_MIN: usize = 1024;
const ITEM_SIZE_MAX: usize = 1024 * 1024 * 1024;

/// A configuration that cannot be used: which file or flag, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (The OS error is part of the message, not a source: printed as a chain it would show
    /// twice.)
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// What an acknowledged write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteAck {
    /// Every healthy replica applied it (safe default).
    #[default]
    All,
    /// The first replica applied it; the others finish in the background.
    First,
}

/// What a multi-get answers for keys whose every replica is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Leave them out, as misses (counted in `stats` as `get_unavailable`).
    #[default]
    Miss,
    /// Answer the whole request with `SERVER_ERROR`.
    ServerError,
}

/// The whole proxy configuration, as read from TOML (`keepcached proxy --config FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// TCP listen addresses, `host:port` (IPv6 as `[addr]:port`). Empty: no TCP listener.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// A unix socket path to listen on as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// Client connections beyond this are answered with an error and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The pools, main first: a key's replicas are one server of each pool, in this order.
    pub pools: Vec<PoolConfig>,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub resync: ResyncConfig,
    /// How long a shutdown waits for client connections to finish what they sent.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Listen on addresses this host does not hold yet (IP_FREEBIND), such as a VRRP virtual IP
    /// held by the other node: the proxy then never needs restarting when the VIP moves here.
    #[serde(default)]
    pub freebind: bool,
    /// The largest item (key, value and memcached's per-item overhead) in bytes: the servers'
    /// `-I`. A client's value that cannot fit is refused here with memcached's own error, and
    /// its data is read and dropped without reaching a server.
    #[serde(default = "default_item_size_max")]
    pub item_size_max: usize,
    /// Reply bytes one client connection may make the proxy hold: its reads run at most
    /// `client_reply_budget / item_size_max` keys at a time (at least one), and its replies are
    /// written out before its next requests run, so a client that does not read holds at most
    /// about this much (or one item, if larger) however much it asks for (docs/limits.md).
    #[serde(default = "default_client_reply_budget")]
    pub client_reply_budget: usize,
    /// Worker threads serving client connections, each with its own backend connections;
    /// 0: one per CPU.
    #[serde(default)]
    pub threads: usize,
}

/// One pool: servers on one ketama ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `host:port[:weight][ name]`, as in twemproxy (`name` replaces `host:port` in the ring, so
    /// a server can move address and keep its keys).
    pub servers: Vec<String>,
}

/// Backend connections, timeouts and health checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Pipelined connections per server, shared by all clients.
    pub connections: usize,
    pub connect_timeout_ms: u64,
    /// From sending a request to its whole reply.
    pub request_timeout_ms: u64,
    /// Failures with no answer between them that mark a server down (it is then skipped
    /// without waiting). A failure is a stall or a broken connection, however many pipelined
    /// requests it fails, and failures within one request timeout of each other are one.
    pub failure_limit: u32,
    /// First delay before probing a down server; doubles after each failed probe.
    pub probe_interval_ms: u64,
    pub probe_max_interval_ms: u64,
    /// How often a server in service is checked (`stats`: is it the same process, does it
    /// answer) even when no client uses it, so an idle proxy knows its servers too.
    pub health_interval_ms: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            connections: 2,
            connect_timeout_ms: 200,
            request_timeout_ms: 500,
            failure_limit: 2,
            probe_interval_ms: 100,
            probe_max_interval_ms: 5_000,
            health_interval_ms: 1_000,
        }
    }
}

impl BackendConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
}

/// How writes reach the replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub write_ack: WriteAck,
    pub multiget_unavailable: Unavailable,
    /// Keys remembered per server that missed writes, each repaired before the server is read
    /// again; beyond this the server is flushed and warmed instead.
    pub missed_keys_limit: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            write_ack: WriteAck::All,
            multiget_unavailable: Unavailable::Miss,
            missed_keys_limit: 100_000,
        }
    }
}

/// How a server that missed writes, restarted or was flushed is brought back (see resync.rs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResyncConfig {
    /// Items copied per second, at most, while warming a server (0: no limit).
    pub warmup_items_per_sec: u64,
    /// Value bytes copied per second, at most, while warming a server (0: no limit).
    pub warmup_bytes_per_sec: u64,
    /// Keys repaired or copied at once.
    pub concurrency: usize,
    /// Fill a flushed or restarted server from a healthy replica before it counts as up.
    pub warmup: bool,
    /// Record on the other servers that a server missed writes, so another proxy (after the
    /// VIP moved) does not read it stale (docs/resync.md).
    pub ledger: bool,
    /// Hold a server marked down by its failures out of reads when it returns, until the
    /// operator says `backend up|warm`.
    pub hold_returning: bool,
}

impl Default for ResyncConfig {
    fn default() -> Self {
        ResyncConfig {
            warmup_items_per_sec: 50_000,
            warmup_bytes_per_sec: 64 * 1024 * 1024,
            concurrency: 16,
            warmup: true,
            ledger: true,
            hold_returning: false,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec![format!("0.0.0.0:{DEFAULT_PORT}")]
}

fn default_max_connections() -> usize {
    4096
}

fn default_drain_timeout_ms() -> u64 {
    5_000
}

fn default_client_reply_budget() -> usize {
    16 * 1024 * 1024
}

fn default_item_size_max() -> usize {
    keepcached_protocol::Limits::default().item_size_max
}

/// A size as memcached's `-I` takes it: bytes, or a number with a `k` or `m` suffix.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1024),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?}: expected a size such as 1048576, 512k or 2m"))
}

/// A parsed server entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub name: Option<String>,
}

impl ServerSpec {
    /// Parses `host[:port][:weight][ name]`; IPv6 hosts are bracketed (`[::1]:11211`).
    pub fn parse(text: &str) -> Result<ServerSpec, String> {
        let text = text.trim();
        let (address, name) = match text.split_once(' ') {
            Some((a, n)) if !n.trim().is_empty() => (a, Some(n.trim().to_string())),
            _ => (text, None),
        };
        let (host, rest) = if let Some(bracketed) = address.strip_prefix('[') {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: missing ']' after an IPv6 address"))?;
            let rest = match rest {
                "" => "",
                r => r
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{text:?}: expected ':' after ']'"))?,
            };
            (host, rest)
        } else {
            match address.split_once(':') {
                Some((h, r)) => (h, r),
                None => (address, ""),
            }
        };
        if host.is_empty() {
            return Err(format!("{text:?}: empty host"));
        }
        let mut numbers = rest.split(':');
        let port = match numbers.next() {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{text:?}: bad port {p:?}"))?,
        };
        let weight = match numbers.next() {
            None => 1,
            Some(w) => w
                .parse::<u32>()
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| format!("{text:?}: bad weight {w:?} (a positive integer)"))?,
        };
        if numbers.next().is_some() {
            return Err(format!(
                "{text:?}: expected host:port[:weight][ name] (bracket IPv6 addresses)"
            ));
        }
        Ok(ServerSpec {
            host: host.to_string(),
            port,
            weight,
            name,
        })
    }

    /// The address to connect to, resolvable by `lookup_host`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The server as the ketama ring names it (twemproxy's rule).
    pub fn ring_node(&self) -> Node {
        let name = match &self.name {
            Some(n) => n.clone(),
            None if self.port == DEFAULT_PORT => self.host.clone(),
            None => format!("{}:{}", self.host, self.port),
        };
        Node {
            name,
            weight: self.weight,
        }
    }
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address())
    }
}

/// A pool after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub servers: Vec<ServerSpec>,
}

impl ProxyConfig {
    /// Parses a TOML file's text; `path` is only for messages.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
        let config: ProxyConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        ProxyConfig::from_toml(&text, path)
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// How many worker threads to run: `threads`, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Checks everything that can be checked without the network, and returns the parsed pools.
    pub fn validate(&self) -> Result<Vec<PoolSpec>, ConfigError> {
        if self.pools.is_empty() {
            return Err(ConfigError::invalid(
                "pools",
                "no pools: give -s HOST:PORT or at least one [[pools]] with servers",
            ));
        }
        if self.pools.len() > MAX_POOLS {
            return Err(ConfigError::invalid(
                "pools",
                format!(
                    "{} pools; at most {MAX_POOLS} are supported",
                    self.pools.len()
                ),
            ));
        }
        if self.listen.is_empty() && self.unix_socket.is_none() {
            return Err(ConfigError::invalid(
                "listen",
                "nothing to listen on: give a TCP address or unix_socket",
            ));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            let spec = ServerSpec::parse(addr)
                .map_err(|why| ConfigError::invalid(format!("listen[{i}]"), why))?;
            if spec.weight != 1 || spec.name.is_some() {
                return Err(ConfigError::invalid(
                    format!("listen[{i}]"),
                    format!("{addr:?}: expected host:port"),
                ));
            }
        }
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("backend.connections", self.backend.connections as u64),
            (
                "backend.connect_timeout_ms",
                self.backend.connect_timeout_ms,
            ),
            (
                "backend.request_timeout_ms",
                self.backend.request_timeout_ms,
            ),
            (
                "backend.failure_limit",
                u64::from(self.backend.failure_limit),
            ),
            ("backend.probe_interval_ms", self.backend.probe_interval_ms),
            (
                "backend.health_interval_ms",
                self.backend.health_interval_ms,
            ),
            ("resync.concurrency", self.resync.concurrency as u64),
            ("client_reply_budget", self.client_reply_budget as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if !(ITEM_SIZE_MIN..=ITEM_SIZE_MAX).contains(&self.item_size_max) {
            return Err(ConfigError::invalid(
                "item_size_max",
                format!(
                    "{} bytes; memcached's -I takes {ITEM_SIZE_MIN} bytes to 1 GiB",
                    self.item_size_max
                ),
            ));
        }
        if self.backend.probe_max_interval_ms < self.backend.probe_interval_ms {
            return Err(ConfigError::invalid(
                "backend.probe_max_interval_ms",
                "must not be less than backend.probe_interval_ms",
            ));
        }
        let mut pools = Vec::with_capacity(self.pools.len());
        for (p, pool) in self.pools.iter().enumerate() {
            if pool.servers.is_empty() {
                return Err(ConfigError::invalid(
                    format!("pools[{p}].servers"),
                    format!("pool {:?} has no servers", pool.name),
                ));
            }
            let mut servers = Vec::with_capacity(pool.servers.len());
            for (s, text) in pool.servers.iter().enumerate() {
                let spec = ServerSpec::parse(text)
                    .map_err(|why| ConfigError::invalid(format!("pools[{p}].servers[{s}]"), why))?;
                if servers
                    .iter()
                    .any(|o: &ServerSpec| o.address() == spec.address())
                {
                    return Err(ConfigError::invalid(
                        format!("pools[{p}].servers[{s}]"),
                        format!("{} appears twice in pool {:?}", spec, pool.name),
                    ));
                }
                servers.push(spec);
            }
            pools.push(PoolSpec {
                name: pool.name.clone(),
                servers,
            });
        }
        Ok(pools)
    }
}

/// `-l`'s comma-separated list, as memcached takes it (`-l VIP,127.0.0.1`): each entry a host
/// (IPv6 bare or in brackets) on `-p`'s port, or `host:port` / `[v6]:port` with a port of its
/// own.
fn listen_list(hosts: &str, port: u16) -> Result<Vec<String>, ConfigError> {
    hosts
        .split(',')
        .map(str::trim)
        .map(|host| match host.matches(':').count() {
            _ if host.is_empty() => Err(ConfigError::invalid(
                "-l",
                format!("{hosts:?}: an empty address in the list"),
            )),
            _ if host.starts_with('[') && host.contains("]:") => Ok(host.to_string()),
            _ if host.starts_with('[') => Ok(format!("{host}:{port}")),
            0 => Ok(format!("{host}:{port}")),
            1 => Ok(host.to_string()),
            _ => Ok(format!("[{host}]:{port}")),
        })
        .collect()
}

/// One setting a reloaded configuration changes, by its TOML name (`backend.request_timeout_ms`;
/// lists such as `pools` and `listen` as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// The settings `new` changes from `old`.
pub fn changes(old: &ProxyConfig, new: &ProxyConfig) -> Vec<Change> {
    let flat = |config: &ProxyConfig| {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(value) = toml::Value::try_from(config) {
            flatten("", &value, &mut out);
        }
        out
    };
    let (old, new) = (flat(old), flat(new));
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let unset = || "(unset)".to_string();
    keys.into_iter()
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| Change {
            key: key.clone(),
            from: old.get(key).cloned().unwrap_or_else(unset),
            to: new.get(key).cloned().unwrap_or_else(unset),
        })
        .collect()
}

fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

impl Change {
    /// Copies this change from `new` into `running` when it may change while the proxy runs:
    /// timeouts, failure and probe settings, replication policies, warm-up and ledger
    /// settings, the reply budget and the drain timeout. Listeners, threads, connection counts
    /// and sizes fixed at startup need a restart (`false`); `pools` is not applied here but by
    /// the routing, when it can be done safely (lib.rs `reroute`).
    pub fn apply(&self, new: &ProxyConfig, running: &mut ProxyConfig) -> bool {
        let (b, r, s) = (&new.backend, &new.replication, &new.resync);
        match self.key.as_str() {
            "backend.connect_timeout_ms" => {
                running.backend.connect_timeout_ms = b.connect_timeout_ms;
            }
            "backend.request_timeout_ms" => {
                running.backend.request_timeout_ms = b.request_timeout_ms;
            }
            "backend.failure_limit" => running.backend.failure_limit = b.failure_limit,
            "backend.probe_interval_ms" => running.backend.probe_interval_ms = b.probe_interval_ms,
            "backend.probe_max_interval_ms" => {
                running.backend.probe_max_interval_ms = b.probe_max_interval_ms;
            }
            "backend.health_interval_ms" => {
                running.backend.health_interval_ms = b.health_interval_ms;
            }
            "replication.write_ack" => running.replication.write_ack = r.write_ack,
            "replication.multiget_unavailable" => {
                running.replication.multiget_unavailable = r.multiget_unavailable;
            }
            "resync.warmup_items_per_sec" => {
                running.resync.warmup_items_per_sec = s.warmup_items_per_sec;
            }
            "resync.warmup_bytes_per_sec" => {
                running.resync.warmup_bytes_per_sec = s.warmup_bytes_per_sec;
            }
            "resync.concurrency" => running.resync.concurrency = s.concurrency,
            "resync.warmup" => running.resync.warmup = s.warmup,
            "resync.ledger" => running.resync.ledger = s.ledger,
            "client_reply_budget" => running.client_reply_budget = new.client_reply_budget,
            "drain_timeout_ms" => running.drain_timeout_ms = new.drain_timeout_ms,
            _ => return false,
        }
        true
    }
}

/// magent's command line, for `keepcached proxy`.
///
/// `-u`, `-g`, `-D` and `-v` are for the binary (drop privileges, stay in the foreground or
/// daemonize, log level); `-n` also tells it how far to raise the open-file limit.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// TOML configuration file; the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// A main server, host[:port] (repeatable; default port 11211).
    #[arg(short = 's', value_name = "HOST:PORT")]
    pub servers: Vec<String>,
    /// A backup server, host[:port] (repeatable): every write is replicated to it.
    #[arg(short = 'b', value_name = "HOST:PORT")]
    pub backups: Vec<String>,
    /// Local addresses to listen on, comma-separated (`-l VIP,127.0.0.1`); an entry may carry
    /// its own port (`host:port`, `[v6]:port`) [default: 0.0.0.0].
    #[arg(short = 'l', value_name = "IP[,IP...]")]
    pub listen: Option<String>,
    /// TCP port to listen on, 0 to disable TCP [default: 11211].
    #[arg(short = 'p', value_name = "PORT")]
    pub port: Option<u16>,
    /// Maximum client connections [default: 4096].
    #[arg(short = 'n', value_name = "NUMBER")]
    pub max_connections: Option<usize>,
    /// Unix socket path to listen on.
    #[arg(short = 'f', value_name = "FILE")]
    pub unix_socket: Option<PathBuf>,
    /// Listen on the address even when this host does not hold it yet (a VRRP VIP).
    #[arg(long)]
    pub freebind: bool,
    /// Pipelined connections kept to each server [default: 2].
    #[arg(short = 'i', value_name = "NUMBER")]
    pub backend_connections: Option<usize>,
    /// Largest item, as the servers' -I: bytes, or with a k or m suffix [default: 1m].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub item_size_max: Option<usize>,
    /// Reply bytes one client may make the proxy hold: bytes, or with a k or m suffix
    /// [default: 16m].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub client_reply_budget: Option<usize>,
    /// Worker threads, each with its own backend connections [default: one per CPU].
    #[arg(short = 't', long = "threads", value_name = "NUMBER")]
    pub threads: Option<usize>,
    /// Use ketama (accepted for magent compatibility; always on).
    #[arg(short = 'k')]
    pub ketama: bool,
    /// Run as this user.
    #[arg(short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Run as this group.
    #[arg(short = 'g', value_name = "GROUP")]
    pub group: Option<String>,
    /// Do not go to the background.
    #[arg(short = 'D')]
    pub foreground: bool,
    /// Verbose logging (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl ProxyArgs {
    /// The validated configuration: the file if given, with the flags applied over it.
    pub fn into_config(self) -> Result<ProxyConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => ProxyConfig::from_file(path)?,
            None => ProxyConfig {
                listen: default_listen(),
                unix_socket: None,
                max_connections: default_max_connections(),
                pools: Vec::new(),
                backend: BackendConfig::default(),
                replication: ReplicationConfig::default(),
                resync: ResyncConfig::default(),
                drain_timeout_ms: default_drain_timeout_ms(),
                item_size_max: default_item_size_max(),
                client_reply_budget: default_client_reply_budget(),
                freebind: false,
                threads: 0,
            },
        };
        if !self.servers.is_empty() || !self.backups.is_empty() {
            if self.servers.is_empty() {
                return Err(ConfigError::invalid(
                    "-b",
                    "backup servers need main servers (-s)",
                ));
            }
            config.pools = vec![PoolConfig {
                name: "main".into(),
                servers: self.servers,
            }];
            if !self.backups.is_empty() {
                config.pools.push(PoolConfig {
                    name: "backup".into(),
                    servers: self.backups,
                });
            }
        }
        if self.listen.is_some() || self.port.is_some() || self.config.is_none() {
            let hosts = self.listen.unwrap_or_else(|| "0.0.0.0".into());
            let port = self.port.unwrap_or(DEFAULT_PORT);
            config.listen = if port == 0 {
                Vec::new()
            } else {
                listen_list(&hosts, port)?
            };
        }
        if let Some(path) = self.unix_socket {
            config.unix_socket = Some(path);
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if self.freebind {
            config.freebind = true;
        }
        if let Some(n) = self.backend_connections {
            config.backend.connections = n;
        }
        if let Some(n) = self.item_size_max {
            config.item_size_max = n;
        }
        if let Some(n) = self.client_reply_budget {
            config.client_reply_budget = n;
        }
        if let Some(n) = self.threads {
            config.threads = n;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// docs/proxy-config.md promises a complete file with every key at its default: the file
    /// parses, every key `--print-config` prints appears in it, and apart from the pools it
    /// equals the defaults.
    #[test]
    fn the_reference_in_docs_is_complete_and_its_defaults_true() {
        let doc = include_str!("../../../docs/proxy-config.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in docs/proxy-config.md");
        let documented = ProxyConfig::from_toml(block, std::path::Path::new("proxy-config.md"))
            .expect("the documented file parses");
        let defaults = ProxyConfig::from_toml(
            "[[pools]]\nname = \"main\"\nservers = [\"a:1\"]\n",
            std::path::Path::new("defaults"),
        )
        .expect("a minimal file parses");
        assert_eq!(
            ProxyConfig {
                pools: defaults.pools.clone(),
                ..documented.clone()
            },
            defaults,
            "a default in docs/proxy-config.md is not the code's"
        );
        let printed: toml::Table = toml::from_str(&defaults.to_toml()).expect("printed config");
        let mut block_keys = String::new();
        for line in block.lines().map(str::trim_start) {
            block_keys.push_str(line.trim_start_matches("# "));
            block_keys.push('\n');
        }
        for (key, value) in &printed {
            let nested = value.as_table().into_iter().flatten();
            for name in std::iter::once(key).chain(nested.map(|(k, _)| k)) {
                assert!(
                    block_keys
                        .lines()
                        .any(|l| l.starts_with(&format!("{name} = "))
                            || l.starts_with(&format!("[{name}]"))
                            || l.starts_with(&format!("[[{name}]]"))),
                    "docs/proxy-config.md does not document {name}"
                );
            }
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    fn parse_args(line: &[&str]) -> Result<ProxyConfig, ConfigError> {
        let mut argv = vec!["proxy"];
        argv.extend(line);
        Cli::try_parse_from(argv).unwrap().args.into_config()
    }

    #[test]
    fn the_seeds_magent_line() {
        let config = parse_args(&[
            "-u",
            "root",
            "-n",
            "51200",
            "-l",
            "192.168.111.100",
            "-p",
            "12000",
            "-s",
            "192.168.111.4:11211",
            "-b",
            "192.168.111.5:11211",
        ])
        .unwrap();
        assert_eq!(config.listen, vec!["192.168.111.100:12000"]);
        assert_eq!(config.max_connections, 51200);
        assert_eq!(config.pools.len(), 2);
        assert_eq!(config.pools[0].servers, vec!["192.168.111.4:11211"]);
        assert_eq!(config.pools[1].servers, vec!["192.168.111.5:11211"]);
    }

    #[test]
    fn defaults_follow_magent() {
        let config = parse_args(&["-s", "10.1.2.1", "-k", "-D", "-v", "-v"]).unwrap();
        assert_eq!(config.listen, vec!["0.0.0.0:11211"]);
        let pools = config.validate().unwrap();
        assert_eq!(pools[0].servers[0].port, 11211);
    }

    #[test]
    fn a_reload_applies_timeouts_and_keeps_what_needs_a_restart() {
        let old = parse_args(&["-s", "a:1", "-l", "127.0.0.1"]).unwrap();
        let mut new = old.clone();
        new.backend.request_timeout_ms = 900;
        new.replication.multiget_unavailable = Unavailable::ServerError;
        new.pools[0].servers.push("b:2".into());
        new.threads = 3;
        let changes = changes(&old, &new);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "backend.request_timeout_ms",
                "pools",
                "replication.multiget_unavailable",
                "threads"
            ]
        );
        assert_eq!((&changes[0].from[..], &changes[0].to[..]), ("500", "900"));
        let mut running = old.clone();
        let applied: Vec<bool> = changes
            .iter()
            .map(|c| c.apply(&new, &mut running))
            .collect();
        assert_eq!(applied, vec![true, false, true, false]);
        assert_eq!(running.backend.request_timeout_ms, 900);
        assert_eq!(
            running.replication.multiget_unavailable,
            Unavailable::ServerError
        );
        assert_eq!(running.pools, old.pools);
        assert_eq!(running.threads, old.threads);
        assert!(super::changes(&old, &old).is_empty());
    }

    #[test]
    fn listen_takes_a_list_like_memcached() {
        let config = parse_args(&["-s", "h", "-l", "10.0.0.9,127.0.0.1", "-p", "12000"]).unwrap();
        assert_eq!(config.listen, vec!["10.0.0.9:12000", "127.0.0.1:12000"]);
        let config = parse_args(&["-s", "h", "-l", "::1, [fe80::1],127.0.0.1:9,[::2]:8"]).unwrap();
        assert_eq!(
            config.listen,
            vec!["[::1]:11211", "[fe80::1]:11211", "127.0.0.1:9", "[::2]:8"]
        );
        let empty = parse_args(&["-s", "h", "-l", "10.0.0.9,"]).unwrap_err();
        assert!(empty.to_string().contains("empty address"), "{empty}");
    }

    #[test]
    fn ipv6_and_hostnames() {
        let config =
            parse_args(&["-s", "[::1]:11300", "-s", "cache-a", "-l", "::1", "-p", "1"]).unwrap();
        assert_eq!(config.listen, vec!["[::1]:1"]);
        let pools = config.validate().unwrap();
        assert_eq!(pools[0].servers[0].address(), "[::1]:11300");
        assert_eq!(pools[0].servers[1].address(), "cache-a:11211");
    }

    #[test]
    fn no_servers_is_an_error() {
        let err = parse_args(&["-p", "12000"]).unwrap_err();
        assert!(err.to_string().contains("-s HOST:PORT"), "{err}");
    }

    #[test]
    fn server_specs_follow_twemproxy() {
        let s = ServerSpec::parse("127.0.0.1:11211:3 alpha").unwrap();
        assert_eq!((s.port, s.weight), (11211, 3));
        assert_eq!(s.ring_node().name, "alpha");
        assert_eq!(
            ServerSpec::parse("10.0.0.1:11211")
                .unwrap()
                .ring_node()
                .name,
            "10.0.0.1"
        );
        assert_eq!(
            ServerSpec::parse("10.0.0.1:22122")
                .unwrap()
                .ring_node()
                .name,
            "10.0.0.1:22122"
        );
        assert!(ServerSpec::parse("h:0").is_err());
        assert!(ServerSpec::parse("h:1:0").is_err());
        assert!(ServerSpec::parse("::1:11211").is_err());
    }

    #[test]
    fn toml_rejects_unknown_keys_and_names_the_problem() {
        let path = std::path::Path::new("proxy.toml");
        let err = ProxyConfig::from_toml(
            "listen = [\"127.0.0.1:1\"]\ncolour = 1\n[[pools]]\nname = \"a\"\nservers = [\"h:1\"]\n",
            path,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = ProxyConfig::from_toml(
            "[[pools]]\nname = \"a\"\nservers = [\"h:1\"]\n[backend]\nrequest_timeout_ms = 0\n",
            path,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("backend.request_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn item_size_max_from_the_command_line_and_the_file() {
        assert_eq!(default_item_size_max(), 1024 * 1024);
        let config = parse_args(&["-s", "a:1", "--item-size-max", "2m"]).unwrap();
        assert_eq!(config.item_size_max, 2 * 1024 * 1024);
        let config = parse_args(&["-s", "a:1", "--item-size-max", "4096"]).unwrap();
        assert_eq!(config.item_size_max, 4096);
        let err = parse_args(&["-s", "a:1", "--item-size-max", "512"]).unwrap_err();
        assert!(err.to_string().contains("item_size_max"), "{err}");
        assert!(parse_size("1x").is_err());
        assert_eq!(parse_size("64K"), Ok(65536));
        let config = ProxyConfig::from_toml(
            "item_size_max = 5242880\n[[pools]]\nname = \"a\"\nservers = [\"h:1\"]\n",
            std::path::Path::new("proxy.toml"),
        )
        .unwrap();
        assert_eq!(config.item_size_max, 5 * 1024 * 1024);
    }

    #[test]
    fn toml_round_trips() {
        let config = parse_args(&["-s", "a:1", "-b", "b:2"]).unwrap();
        let again = ProxyConfig::from_toml(&config.to_toml(), std::path::Path::new("x")).unwrap();
        assert_eq!(config, again);
    }
}
