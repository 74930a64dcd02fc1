//! The server's configuration: what memcached's command line sets, with memcached's defaults.
//!
//! The binary turns flags into [`Settings`]; everything here is already validated, so the
//! server never meets a setting it cannot honour.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use keepcached_cache::Config as CacheConfig;
use keepcached_protocol::Limits;

#[derive(Debug, Clone)]
pub struct Settings {
    /// TCP port (`-p`); 0 disables TCP.
    pub port: u16,
    /// UDP port (`-U`); 0 (the default) disables UDP.
    pub udp_port: u16,
    /// `-p -1`: TCP on a port the kernel chooses, for each listening socket (`port` is 0).
    pub tcp_ephemeral: bool,
    /// `-U -1`: the same for UDP.
    pub udp_ephemeral: bool,
    /// `MEMCACHED_PORT_FILENAME`: the file the ports actually bound are written to.
    pub port_file: Option<PathBuf>,
    /// Reply bytes one UDP request datagram may cause (`-o udp_reply_limit`); `None`: ten
    /// times the datagram's size, and at least one reply datagram (crate::udp).
    pub udp_reply_limit: Option<usize>,
    /// Addresses to listen on (`-l`); empty means every address, IPv4 and IPv6.
    pub listen: Vec<IpAddr>,
    /// Unix socket (`-s`); when set, TCP and UDP are off, as in memcached.
    pub unix_socket: Option<PathBuf>,
    /// Permissions of the unix socket (`-a`, octal).
    pub unix_mask: u32,
    /// Connection limit (`-c`).
    pub max_connections: usize,
    /// Worker threads (`-t`).
    pub threads: usize,
    /// Memory for items (`-m`), in bytes.
    pub max_bytes: u64,
    /// `false` with `-M`: return an error instead of evicting.
    pub evictions: bool,
    /// Largest item (`-I`), in bytes.
    pub item_size_max: usize,
    /// `-v` count.
    pub verbose: u32,
    /// Requests handled per connection before yielding to others (`-R`).
    pub reqs_per_event: usize,
    /// Listen backlog (`-b`).
    pub backlog: u32,
    /// `false` with `-C`.
    pub cas: bool,
    /// `false` with `-F`.
    pub flush_enabled: bool,
    /// Where `-v`/`-vv` lines go: stderr, as memcached prints them (false), or into the
    /// process's log (a node, whose log may be a file).
    pub verbose_to_log: bool,
    /// memcached's `slab_automove` level (`-o slab_automove=N`), which `slabs automove` changes:
    /// kept and shown, since keepcached's memory has no slab pages to move.
    pub slab_automove: u32,
    /// `-X` turns it off: `stats cachedump` and `lru_crawler metadump` are refused, so a
    /// client cannot list the keys.
    pub dump_enabled: bool,
    /// `true` with `-A`.
    pub shutdown_command: bool,
    /// `-o idle_timeout`: close connections idle this long.
    pub idle_timeout: Option<Duration>,
    /// `-o no_lru_crawler` turns off the background reclaim of expired items.
    pub lru_crawler: bool,
    /// Which protocols clients may speak (`-B`).
    pub protocol: Protocol,
    /// `-S`: binary clients must authenticate with SASL PLAIN against these users (loaded
    /// from the file `MEMCACHED_SASL_PWDB` names); `None` when SASL is off.
    pub sasl_users: Option<crate::auth::Users>,
    /// `-Y`: ASCII clients must first authenticate against this file's users.
    pub ascii_auth: Option<crate::auth::AuthFile>,
    /// `-D`: the byte that ends a key's prefix in `stats detail`.
    pub prefix_delimiter: u8,
    /// Whether `stats detail` counts from the start (`-D` turns it on, as in memcached).
    pub detail_enabled: bool,
    /// `-e`: the file the items are saved to on a graceful shutdown and loaded from at start.
    pub memory_file: Option<PathBuf>,
    /// `-f`: the growth factor of memcached's slab classes, which `stats items`, `stats slabs`
    /// and `lru_crawler metadump` describe items by (crate::slabs).
    pub slab_growth_factor: f64,
    /// `-n`: the item space of memcached's first slab class.
    pub slab_min_size: u32,
    /// `false` with `-W`: `watch` is refused.
    pub watch_enabled: bool,
    /// `-o watcher_logbuf_size` (given in KiB): what a watcher's unread log lines may hold
    /// before lines are skipped.
    pub watcher_logbuf_size: usize,
    /// `-o track_sizes`: `stats sizes` answers with the items per 32-byte size bucket.
    pub track_sizes: bool,
    /// `-o read_buf_mem_limit`: what connections' read buffers may hold together beyond their
    /// first 16 KiB each (values still arriving, long multi-get lines), in bytes; 0 means as
    /// much as `-m`.
    pub read_buf_mem_limit: u64,
}

/// memcached's `-B`: ascii, binary, or auto (each connection's first byte decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Ascii,
    Binary,
    Auto,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ascii => "ascii",
            Protocol::Binary => "binary",
            Protocol::Auto => "auto-negotiate",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            port: 11211,
            udp_port: 0,
            tcp_ephemeral: false,
            udp_ephemeral: false,
            port_file: None,
            udp_reply_limit: None,
            listen: Vec::new(),
            unix_socket: None,
            unix_mask: 0o700,
            max_connections: 1024,
            threads: 4,
            max_bytes: 64 * 1024 * 1024,
            evictions: true,
            item_size_max: 1024 * 1024,
            verbose: 0,
            reqs_per_event: 20,
            backlog: 1024,
            cas: true,
            flush_enabled: true,
            dump_enabled: true,
            slab_automove: 1,
            verbose_to_log: false,
            shutdown_command: false,
            idle_timeout: None,
            lru_crawler: true,
            protocol: Protocol::Auto,
            sasl_users: None,
            ascii_auth: None,
            prefix_delimiter: b':',
            detail_enabled: false,
            memory_file: None,
            read_buf_mem_limit: 0,
            slab_growth_factor: 1.25,
            slab_min_size: 48,
            track_sizes: false,
            watch_enabled: true,
            watcher_logbuf_size: crate::watch::BUF_LIMIT,
        }
    }
}

/// memcached's item header size; part of the size limit so that the largest value we accept is
/// exactly the largest memcached accepts.
const MEMCACHED_ITEM_HEADER: usize = 48;

impl Settings {
    pub fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            max_bytes: self.max_bytes,
            item_size_max: self.item_size_max,
            evict: self.evictions,
            cas: self.cas,
            shards: (self.threads * 4).next_power_of_two(),
        }
    }

    /// The bytes of the connections' shared read buffer budget (`-o read_buf_mem_limit`, by
    /// default `-m`): a store whose value would go beyond it is refused as memcached refuses
    /// one it has no item memory for.
    pub fn read_buffer_budget(&self) -> usize {
        let bytes = match self.read_buf_mem_limit {
            0 => self.max_bytes,
            limit => limit,
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// The TCP port to bind (0: the kernel's choice), or `None` when TCP is off.
    pub fn tcp_bind_port(&self) -> Option<u16> {
        (self.port != 0 || self.tcp_ephemeral).then_some(self.port)
    }

    /// The UDP port to bind (0: the kernel's choice), or `None` when UDP is off.
    pub fn udp_bind_port(&self) -> Option<u16> {
        (self.udp_port != 0 || self.udp_ephemeral).then_some(self.udp_port)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            item_size_max: self.item_size_max,
            item_overhead: MEMCACHED_ITEM_HEADER + 1 + 2 + if self.cas { 8 } else { 0 },
            ..Limits::default()
        }
    }
}
