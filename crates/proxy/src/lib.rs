//! keepcached's proxy: the magent role, done right.
//!
//! Clients speak memcached's text and meta protocols to the proxy; the proxy shards keys over pools of
//! cache servers with a ketama ring (placement-compatible with twemproxy), replicates every write
//! to one server of each pool, fails reads over to the next replica, never waits on a dead
//! server longer than its timeout, and never reads a server that missed a write (or restarted)
//! before it is repaired or warmed.
//!
//! Data path, one module per step:
//!
//! ```text
//! client bytes -> client.rs (parse with keepcached-protocol; meta.rs for the meta commands)
//!              -> route.rs (ring.rs: key -> one server per pool)
//!              -> read.rs (get family and mg: split by server, fail over, merge in order)
//!                 replicate.rs (writes: fan out, or execute on one replica and copy the result)
//!              -> backend.rs (a server's call path) -> conn.rs (pipelined connections,
//!                 deadlines; forward.rs encodes the requests, keepcached-protocol's response
//!                 parser reads replies)
//!              -> reply.rs (write the outcome) -> client
//! ```
//!
//! Beside the data path, each server has a supervisor (resync.rs): health.rs holds its state and
//! the keys it missed, resync.rs checks it and repairs it, warmup.rs fills it, ledger.rs tells
//! the other proxies what it missed; admin.rs takes the operator's orders (docs/resync.md).
//! config.rs holds magent's command line and the TOML file, stats.rs the `stats` answers
//! (metrics.rs the same figures for Prometheus, from [`Bound::metrics`]),
//! error.rs the error types. [`run`] binds the listeners, serves until its shutdown future
//! completes, then drains the client connections; [`Bound::serve_reloading`] also takes
//! reloaded configurations (SIGHUP) and applies what may change while running.

mod admin;
mod backend;
mod client;
pub mod config;
mod conn;
mod error;
mod forward;
mod health;
mod ledger;
mod meta;
mod metrics;
mod read;
mod replicate;
mod reply;
mod resync;
pub mod ring;
mod route;
mod stats;
mod warmup;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keepcached_protocol::Limits;
use keepcached_runtime::{Acceptor, Workers};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};

pub use backend::BackendError;
pub use config::{
    BackendConfig, ConfigError, PoolConfig, ProxyArgs, ProxyConfig, ReplicationConfig,
    ResyncConfig, Unavailable, WriteAck,
};
pub use error::{Origin, ProxyError};
pub use metrics::ProxyMetrics;

use replicate::KeyLocks;
use route::Router;
use stats::Stats;

/// memcached's answer when it has no room for another connection.
const TOO_MANY_CONNECTIONS: &[u8] = b"ERROR Too many open connections\r\n";

/// Everything a client connection needs, shared by all of them.
#[derive(Debug)]
struct Context {
    /// The configuration the proxy started with: what a reload cannot change (listeners,
    /// threads, limits fixed at startup) is read here; the pools are in [`Context::live`].
    config: ProxyConfig,
    /// The configuration as last reloaded (SIGHUP, [`reload`]), for what a reload changes;
    /// the hot paths read their part of it from the atomics below.
    live: parking_lot::RwLock<Arc<ProxyConfig>>,
    /// [`Context::read_window`], [`Context::multiget_unavailable`], [`Context::write_ack`].
    read_window: std::sync::atomic::AtomicUsize,
    multiget_error: std::sync::atomic::AtomicBool,
    write_first: std::sync::atomic::AtomicBool,
    /// The routing, replaced whole when a reload adds or removes servers (see [`Router`] for
    /// why a backend's index stays valid across it).
    routing: Routing,
    /// What a reload needs to start a server's connections.
    workers: Arc<Workers>,
    stats: Stats,
    locks: KeyLocks,
    limits: Limits,
    connections: Arc<Semaphore>,
    /// This proxy process, in the ledger (ledger.rs): random, so a restarted proxy is another.
    proxy_id: String,
    /// When the ledger was last read for a new client ([`resync::vouch`]), and its single flight.
    vouched: parking_lot::Mutex<Option<std::time::Instant>>,
    vouching: tokio::sync::Mutex<()>,
    /// The data requests counted when [`Context::serving`] last saw the count move, and when.
    activity: parking_lot::Mutex<(u64, Option<std::time::Instant>)>,
    /// Whether another proxy serves the clients, as the last look at the servers found
    /// ([`resync`]: a standby decides on a look made when it is about to act, not on this).
    others: parking_lot::Mutex<resync::OthersKnown>,
    /// Data broadcasts (`flush_all`) sent so far: a copy (repair, warm-up) that read its item
    /// before one and stored it after deletes it again.
    flushes: std::sync::atomic::AtomicU64,
}

/// A proxy that served no data request for this long no longer counts as serving.
const STANDBY_AFTER: Duration = Duration::from_secs(30);

impl Context {
    /// How many keys one client's reads may have in flight at once: what its reply budget
    /// allows at the largest item size, at least one.
    fn read_window(&self) -> usize {
        self.read_window.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn multiget_unavailable(&self) -> Unavailable {
        if self
            .multiget_error
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Unavailable::ServerError
        } else {
            Unavailable::Miss
        }
    }

    fn write_ack(&self) -> WriteAck {
        if self.write_first.load(std::sync::atomic::Ordering::Relaxed) {
            WriteAck::First
        } else {
            WriteAck::All
        }
    }

    /// The routing now.
    fn router(&self) -> Arc<Router> {
        self.routing.get()
    }

    /// The configuration as last reloaded.
    fn live(&self) -> Arc<ProxyConfig> {
        self.live.read().clone()
    }

    /// Makes `config` the running configuration's reloadable part (the hot paths' atomics,
    /// every server's timeouts, the rest through [`Context::live`]).
    fn apply(&self, config: ProxyConfig) {
        use std::sync::atomic::Ordering::Relaxed;
        let window = (config.client_reply_budget / self.config.item_size_max).max(1);
        self.read_window
            .store(window.min(client::MAX_READS), Relaxed);
        self.multiget_error.store(
            config.replication.multiget_unavailable == Unavailable::ServerError,
            Relaxed,
        );
        self.write_first
            .store(config.replication.write_ack == WriteAck::First, Relaxed);
        for backend in &self.router().backends {
            backend.health.settings.update(&config.backend);
        }
        *self.live.write() = Arc::new(config);
    }

    /// Whether another proxy's serving heartbeat was on the servers at the last look.
    fn others_serving(&self) -> bool {
        self.others.lock().found() == resync::Others::Serving
    }

    /// Whether this proxy served clients lately (see [`STANDBY_AFTER`]).
    fn serving(&self) -> bool {
        let count = self.stats.data_requests();
        let mut activity = self.activity.lock();
        if activity.0 != count {
            *activity = (count, Some(std::time::Instant::now()));
        }
        activity.1.is_some_and(|at| at.elapsed() < STANDBY_AFTER)
    }
}

/// Runs the proxy: [`bind`], then [`Bound::serve`].
///
/// Must run inside a tokio runtime, which only accepts connections: they are served on worker
/// threads of the proxy's own (`threads` in the configuration).
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    bind(config)?.serve(shutdown).await
}

/// A validated configuration with its listening sockets bound, not yet serving.
#[derive(Debug)]
pub struct Bound {
    config: ProxyConfig,
    pools: Vec<config::PoolSpec>,
    tcp: Vec<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    reach: watch::Sender<Option<Reach>>,
    /// Filled with the running proxy once it serves, for [`ProxyMetrics`].
    metrics: Arc<std::sync::OnceLock<std::sync::Weak<Context>>>,
}

/// How many of the proxy's servers it reaches (up, or answering while being repaired or
/// warmed: not down, still connecting or drained by the operator), out of how many: what a
/// process embedding the proxy (`keepcached node`, whose VRRP tracks it) judges it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub up: usize,
    pub servers: usize,
}

/// How often [`Bound::reach`] is brought up to date: well inside one VRRP advert interval.
const REACH_EVERY: Duration = Duration::from_millis(100);

/// Validates `config` and binds its listeners without a runtime, so the binary can bind, then
/// daemonize and drop privileges, and a bind error still reaches the operator's terminal.
pub fn bind(config: ProxyConfig) -> Result<Bound, ProxyError> {
    let pools = config.validate()?;
    let mut tcp = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let bind_error = |error: std::io::Error| {
            // The address is not on this host: on a VRRP backup, the VIP it does not hold yet.
            let hint = if error.kind() == std::io::ErrorKind::AddrNotAvailable && !config.freebind {
                format!(
                    "; this host does not hold {addr}: to listen on it before it arrives (a VRRP \
                     virtual IP), add --freebind (freebind = true in the config file)"
                )
            } else {
                String::new()
            };
            ProxyError::Bind {
                addr: addr.clone(),
                error,
                hint,
            }
        };
        tcp.push(bind_tcp(addr, config.freebind).map_err(bind_error)?);
    }
    let unix = match &config.unix_socket {
        Some(path) => Some(bind_unix(path)?),
        None => None,
    };
    Ok(Bound {
        config,
        pools,
        tcp,
        unix,
        reach: watch::channel(None).0,
        metrics: Arc::default(),
    })
}

impl Bound {
    /// Follows [`Reach`] while the proxy serves: `None` until it has first met its servers
    /// (when it starts accepting clients), then updated as their states change.
    pub fn reach(&self) -> watch::Receiver<Option<Reach>> {
        self.reach.subscribe()
    }

    /// The proxy's Prometheus collector: it shows the proxy once [`Bound::serve`] has first
    /// contacted every server and serves clients.
    pub fn metrics(&self) -> ProxyMetrics {
        ProxyMetrics {
            ctx: self.metrics.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open connections
    /// `drain_timeout_ms` to finish what they sent.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        self.serve_reloading(shutdown, mpsc::channel(1).1).await
    }

    /// [`Bound::serve`], taking each configuration `reloads` yields (the binary reads the file
    /// again on SIGHUP): what can change while running changes, each change logged at info;
    /// what needs a restart is logged at warn and the running value kept; a configuration that
    /// could not be read or is invalid is logged at warn and the running one kept.
    pub async fn serve_reloading(
        self,
        shutdown: impl Future<Output = ()>,
        reloads: mpsc::Receiver<Result<ProxyConfig, ConfigError>>,
    ) -> Result<(), ProxyError> {
        let Bound {
            config,
            pools,
            tcp,
            unix,
            reach,
            metrics,
        } = self;
        let tcp = tcp
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ProxyError::bind("tcp listener", error))?;
        let unix = unix
            .map(UnixListener::from_std)
            .transpose()
            .map_err(|error| ProxyError::bind("unix listener", error))?;
        let workers = Arc::new(
            Workers::start(config.worker_threads(), "keepcached-proxy")
                .map_err(|error| ProxyError::bind("worker threads", error))?,
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let router = Router::start(
            &pools,
            &route::Start {
                settings: &config.backend,
                resync: &config.resync,
                missed_limit: config.replication.missed_keys_limit,
                workers: &workers,
            },
        );
        let limits = Limits {
            item_size_max: config.item_size_max,
            ..Limits::default()
        };
        let others = resync::OthersKnown::new(config.resync.ledger);
        let ctx = Arc::new(Context {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            live: parking_lot::RwLock::new(Arc::new(config.clone())),
            read_window: Default::default(),
            multiget_error: Default::default(),
            write_first: Default::default(),
            config,
            routing: Routing::new(router, workers.count()),
            workers: workers.clone(),
            stats: Stats::default(),
            locks: KeyLocks::default(),
            limits,
            proxy_id: proxy_id(),
            vouched: parking_lot::Mutex::new(None),
            vouching: tokio::sync::Mutex::new(()),
            activity: parking_lot::Mutex::new((0, None)),
            others: parking_lot::Mutex::new(others),
            flushes: std::sync::atomic::AtomicU64::new(0),
        });
        ctx.apply(ctx.config.clone());
        tokio::spawn(reloading(ctx.clone(), reloads, stop_rx.clone()));
        resync::start(&ctx, &stop_rx);
        resync::first_contact(&ctx).await;
        // Shown once it serves (docs/metrics.md): during the first contact a scrape would show
        // a proxy not yet in service, its servers `connecting` and its counters at 0.
        // Weak: the endpoint must not keep the workers alive past the shutdown below.
        let _ = metrics.set(Arc::downgrade(&ctx));
        tokio::spawn(following_reach(ctx.clone(), reach, stop_rx.clone()));
        for listener in &tcp {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "proxy listening");
            }
        }
        // Each worker's connections watch a stop signal of their own: a signal shared by all
        // would have every worker's connections queue on one lock at every read.
        let (stops, worker_stops): (Vec<_>, Vec<_>) =
            (0..workers.count()).map(|_| watch::channel(false)).unzip();
        let worker_stops: Arc<[watch::Receiver<bool>]> = worker_stops.into();
        // Each connection holds a clone of `done`; the receiver sees the channel close when the
        // last connection has ended.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let accepting = Accepting {
            ctx: ctx.clone(),
            workers: workers.clone(),
            stops: worker_stops,
            done,
            stop: stop_rx,
        };
        let mut acceptors: Vec<_> = tcp
            .into_iter()
            .map(|listener| tokio::spawn(accepting.clone().run(listener)))
            .collect();
        if let Some(listener) = unix {
            acceptors.push(tokio::spawn(accepting.clone().run(listener)));
        }
        drop(accepting);
        shutdown.await;
        tracing::info!("proxy shutting down");
        let drain = Duration::from_millis(ctx.live().drain_timeout_ms);
        let _ = stop_tx.send(true);
        for backend in &ctx.router().backends {
            backend.health.stop();
        }
        for stop in &stops {
            let _ = stop.send(true);
        }
        for acceptor in acceptors {
            let _ = acceptor.await;
        }
        if tokio::time::timeout(drain, all_done.recv()).await.is_err() {
            tracing::warn!(
                ?drain,
                "client connections still open after the drain timeout"
            );
        }
        if let Some(path) = &ctx.config.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        drop(ctx);
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.shutdown().await;
        }
        Ok(())
    }
}

/// Keeps `reach` up to date until the proxy stops.
async fn following_reach(
    ctx: Arc<Context>,
    reach: watch::Sender<Option<Reach>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(REACH_EVERY);
    loop {
        let router = ctx.router();
        let now = Reach {
            up: router
                .live()
                .filter(|b| {
                    use health::State;
                    matches!(b.state(), State::Up | State::Suspect | State::Warming)
                })
                .count(),
            servers: router.live().count(),
        };
        reach.send_if_modified(|r| r.replace(now) != Some(now));
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Takes each reloaded configuration until the proxy stops.
async fn reloading(
    ctx: Arc<Context>,
    mut reloads: mpsc::Receiver<Result<ProxyConfig, ConfigError>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = reloads.recv() => next,
            _ = stop.wait_for(|stop| *stop) => None,
        };
        match next {
            None => return,
            Some(Err(error)) => tracing::warn!(
                %error,
                "configuration not reloaded; the running configuration is kept"
            ),
            Some(Ok(config)) => reload(&ctx, config),
        }
    }
}

/// Applies what a reloaded configuration changes and may change while running; logs the rest.
fn reload(ctx: &Arc<Context>, new: ProxyConfig) {
    let old = ctx.live();
    let changes = config::changes(&old, &new);
    if changes.is_empty() {
        tracing::info!("configuration reloaded: nothing changed");
        return;
    }
    let mut applied = (*old).clone();
    let mut later = 0;
    for change in &changes {
        let done = if change.key == "pools" {
            reroute(ctx, &new, &mut applied)
        } else {
            change.apply(&new, &mut applied)
        };
        if done {
            tracing::info!(
                key = %change.key,
                from = %change.from,
                to = %change.to,
                "configuration change applied"
            );
        } else {
            later += 1;
            tracing::warn!(
                key = %change.key,
                from = %change.from,
                to = %change.to,
                "configuration change needs a restart of the proxy; the running value is kept"
            );
        }
    }
    ctx.apply(applied);
    tracing::info!(
        applied = changes.len() - later,
        need_restart = later,
        "configuration reloaded"
    );
}

/// Applies a reload's servers and pools when that can be done without a stale read or a lost
/// write (see [`Router::reconfigure`]): added servers start flushed and cold, and are warmed
/// before they are read; removed ones take no new request, and their connections, supervisor
/// and warm-up stop once the requests already sent to them are done; kept servers that take
/// over keys are flushed and warmed. False, with the reason logged, when it needs a restart.
fn reroute(ctx: &Arc<Context>, new: &ProxyConfig, applied: &mut ProxyConfig) -> bool {
    let Ok(specs) = new.validate() else {
        return false;
    };
    // The servers it starts take this very reload's timeouts (applied before: "backend.*"
    // comes before "pools"), and the connection count the proxy started with.
    let start = route::Start {
        settings: &applied.backend,
        resync: &ctx.config.resync,
        missed_limit: ctx.config.replication.missed_keys_limit,
        workers: &ctx.workers,
    };
    // Every thread waits for the new routing from here: a server marked below is flushed and
    // warmed by the new routing's rings, never by the old one's.
    let mut copies = ctx.routing.lock();
    let current = copies[0].clone();
    let next = match current.reconfigure(&specs, &start) {
        Ok(next) => next,
        Err(why) => {
            tracing::warn!(reason = %why, "servers and pools not changed");
            return false;
        }
    };
    const ADDED: &str = "added by a configuration reload: it may hold old values, and holds none of the keys it now serves";
    const GAINING: &str =
        "a configuration reload gave it keys it did not hold: it may hold old values of them";
    for &id in &next.added {
        let backend = &next.router.backends[id];
        backend.health.remember_missed_all(ADDED);
        tracing::info!(backend = %backend.addr, "server added: flushed and warmed before it is read");
    }
    for &id in &next.gaining {
        let backend = &next.router.backends[id];
        backend.health.remember_missed_all(GAINING);
        tracing::info!(backend = %backend.addr, "server takes over keys: flushed and warmed before it is read again");
    }
    let removed: Vec<Arc<backend::Backend>> = next
        .removed
        .iter()
        .map(|&id| current.backends[id].clone())
        .collect();
    for copy in copies.iter_mut() {
        **copy = Arc::new(next.router.clone());
    }
    drop(copies);
    for backend in removed {
        backend.health.stop();
        backend
            .health
            .set_state(health::State::Drained, "removed by a configuration reload");
        tracing::info!(backend = %backend.addr, "server removed: no new requests; its connections close once the requests sent to it are done");
    }
    for id in next.added {
        tokio::spawn(resync::supervise(ctx.clone(), id));
    }
    applied.pools = new.pools.clone();
    true
}

/// What an accept loop hands each connection.
#[derive(Clone)]
struct Accepting {
    ctx: Arc<Context>,
    workers: Arc<Workers>,
    /// Per worker: the signal that the proxy is shutting down.
    stops: Arc<[watch::Receiver<bool>]>,
    done: mpsc::Sender<()>,
    /// The proxy is shutting down: stop accepting.
    stop: watch::Receiver<bool>,
}

impl Accepting {
    /// Accepts connections until shutdown, each served by its own task on a worker thread.
    async fn run<A: Acceptor>(mut self, listener: A) {
        let ctx = &self.ctx;
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept_one() => accepted,
                _ = self.stop.wait_for(|stop| *stop) => return,
            };
            let (mut stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin, and go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let peer = peer.map_or_else(|| "unix".to_string(), |p| p.to_string());
            let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
                Stats::add(&ctx.stats.counters().rejected_connections, 1);
                tokio::spawn(async move {
                    let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                });
                continue;
            };
            let counters = ctx.stats.counters();
            Stats::add(&counters.total_connections, 1);
            Stats::add(&counters.curr_connections, 1);
            let worker = next % self.workers.count();
            next += 1;
            let (ctx, stop, done) = (ctx.clone(), self.stops[worker].clone(), self.done.clone());
            self.workers.spawn_on(worker, async move {
                resync::vouch(&ctx).await;
                let served = match A::rehome(stream) {
                    Ok(stream) => client::serve(ctx.clone(), stream, stop).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = served {
                    let error = ProxyError::Client { peer, error };
                    tracing::debug!(%error, "client connection ended");
                }
                ctx.stats
                    .counters()
                    .curr_connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                drop(permit);
                drop(done);
            });
        }
    }
}

/// The routing as the threads read it: a copy for each worker thread and one for the other
/// threads, each on cache lines of its own, so that taking it for a request writes no line
/// another worker reads (one shared copy's lock and count would travel between the cores on
/// every request). A reload replaces every copy under all their locks at once: a thread that
/// reads after it sees the new routing, whichever copy it reads.
#[derive(Debug)]
struct Routing {
    copies: Box<[RoutingCopy]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct RoutingCopy(parking_lot::RwLock<Arc<Router>>);

impl Routing {
    fn new(router: Router, workers: usize) -> Routing {
        Routing {
            copies: (0..=workers)
                .map(|_| RoutingCopy(parking_lot::RwLock::new(Arc::new(router.clone()))))
                .collect(),
        }
    }

    /// The calling thread's copy.
    fn get(&self) -> Arc<Router> {
        let at = keepcached_runtime::worker_index().map_or(0, |w| w + 1);
        self.copies[at % self.copies.len()].0.read().clone()
    }

    /// Every copy, locked: readers wait until the guards are dropped.
    fn lock(&self) -> Vec<parking_lot::RwLockWriteGuard<'_, Arc<Router>>> {
        self.copies.iter().map(|copy| copy.0.write()).collect()
    }
}

/// A random id for this proxy process.
fn proxy_id() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = foldhash::fast::RandomState::default().hash_one((std::process::id(), nanos));
    format!("{hash:016x}")
}

/// Binds a TCP listener; with `freebind` the address need not be on this host yet.
fn bind_tcp(addr: &str, freebind: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolves to nothing",
        )
    })?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if freebind {
        if addr.is_ipv6() {
            socket.set_freebind_ipv6(true)?;
        } else {
            socket.set_freebind(true)?;
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds a unix socket, replacing a stale socket file left by a previous run.
fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ProxyError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let bind_error = |error| ProxyError::bind(path.display().to_string(), error);
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}
