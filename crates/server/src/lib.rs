//! keepcached's cache server: the memcached role.
//!
//! Data flows one way: socket bytes -> [`keepcached_protocol::parse_request`] ->
//! [`execute`] (against [`keepcached_cache::Cache`]) -> reply bytes -> socket.
//!
//! - [`settings`]: what memcached's command line configures, validated.
//! - [`listener`]: binding (done before daemonizing or dropping privileges, so errors reach the
//!   operator) and the accept loops with the connection limit.
//! - [`connection`]: one client: read, parse in a loop, execute, write the pipeline's replies in
//!   one go, with what a client can make it hold bounded.
//! - [`execute`]: one request against the store, reply appended to the output buffer.
//! - [`stats`] and [`report`]: counters and the `stats` family of replies; [`metrics`]: the
//!   same figures for Prometheus.
//! - [`clock`]: memcached's relative time, which the store and expiry rules use.
//! - [`persist`]: the restartable cache (`-e FILE`): items saved to a file and loaded back.

pub mod auth;
pub mod binary;
pub mod clock;
pub mod connection;
pub mod execute;
pub mod listener;
pub mod meta;
pub mod metrics;
pub mod persist;
pub mod report;
pub mod settings;
pub mod slabs;
pub mod stats;
pub mod udp;
pub mod watch;

use std::sync::Arc;

use keepcached_cache::Cache;

pub use listener::{Listeners, ServeError};
pub use settings::Settings;

/// What every connection shares: the store, the settings, the counters and the clock.
#[derive(Debug)]
pub struct Server {
    pub cache: Cache,
    pub settings: Settings,
    /// Parser limits derived from the settings once, not per request.
    pub limits: keepcached_protocol::Limits,
    pub stats: stats::Stats,
    pub clock: clock::Clock,
    /// Current `verbosity`; the `verbosity` command changes it at run time.
    pub verbosity: std::sync::atomic::AtomicU32,
    /// Set by the `shutdown` command (with -A) so the process stops as on a signal.
    pub shutdown_requested: tokio::sync::watch::Sender<bool>,
    /// Open connections and listening sockets, for `stats conns`.
    pub conns: Arc<connection::ConnTable>,
    /// What connections' read buffers may hold beyond their first chunk, together.
    pub input_budget: connection::InputBudget,
    /// Per-prefix counters of `stats detail`.
    pub detail: report::Detail,
    /// `watch` clients and what they want to see (shared with the store's removal hook).
    pub watch: Arc<watch::Watchers>,
    /// memcached's slab classes for these settings, by which items are described.
    pub slab_classes: slabs::SlabClasses,
    /// Where the items are saved and loaded from (`-e`), if anywhere.
    pub memory_file: Option<persist::MemoryFile>,
    /// A `lru_crawler metadump hash` is being made (report::Dump).
    pub hash_dump: std::sync::atomic::AtomicBool,
    /// Whether the background crawler runs: `-o no_lru_crawler` starts it off, `lru_crawler
    /// enable` and `disable` turn it on and off.
    pub crawler_on: std::sync::atomic::AtomicBool,
    /// `slabs automove`'s level, as `stats settings` shows it.
    pub slab_automove: std::sync::atomic::AtomicU32,
    /// Evictions and reclaims per slab class, for `stats items`.
    pub class_events: Arc<slabs::ClassEvents>,
}

impl Server {
    /// Writes one of memcached's `-v`/`-vv` lines (a client's request, a new connection): to
    /// stderr, as memcached does, or into the log with [`Settings::verbose_to_log`].
    pub fn verbose_line(&self, line: std::fmt::Arguments<'_>) {
        if self.settings.verbose_to_log {
            tracing::info!(target: "keepcached::server", "{line}");
        } else {
            eprintln!("{line}");
        }
    }

    pub fn new(settings: Settings) -> Arc<Server> {
        let cache = Cache::new(settings.cache_config());
        let (shutdown_requested, _) = tokio::sync::watch::channel(false);
        let detail = report::Detail::new(settings.prefix_delimiter, settings.detail_enabled);
        let memory_file = settings.memory_file.clone().map(persist::MemoryFile::new);
        let input_budget = connection::InputBudget::new(settings.read_buffer_budget());
        let watch = Arc::new(watch::Watchers::new(settings.watcher_logbuf_size));
        let slab_classes = slabs::SlabClasses::new(
            settings.slab_growth_factor,
            settings.slab_min_size,
            settings.item_size_max,
        );
        let class_events = Arc::new(slabs::ClassEvents::default());
        cache.set_removal_hook(watch::removal_hook(
            watch.clone(),
            slab_classes.clone(),
            settings.cas,
            class_events.clone(),
        ));
        let crawler_on = settings.lru_crawler.into();
        let slab_automove = settings.slab_automove.into();
        Arc::new(Server {
            cache,
            verbosity: std::sync::atomic::AtomicU32::new(settings.verbose),
            limits: settings.limits(),
            settings,
            stats: stats::Stats::default(),
            clock: clock::Clock::start(),
            shutdown_requested,
            conns: Arc::default(),
            input_budget,
            detail,
            slab_classes,
            watch,
            memory_file,
            hash_dump: Default::default(),
            crawler_on,
            slab_automove,
            class_events,
        })
    }
}
