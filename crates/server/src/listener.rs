//! Listening sockets and accept loops.
//!
//! Sockets are bound with the standard library before any runtime starts, so the binary can
//! bind, then daemonize and drop privileges (ports below 1024 still work), and a bind error
//! reaches the operator's terminal. [`serve`] then runs the accept loops on tokio until
//! shutdown.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::connection::{self, addr_text, ConnEntry, ConnState};
use crate::udp;
use crate::Server;
use keepcached_cache::Time;
use keepcached_runtime::{Acceptor, Workers};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to listen on TCP port {port} at {addr}: {source}")]
    Tcp {
        addr: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("failed to listen on UDP port {port} at {addr}: {source}")]
    Udp {
        addr: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("failed to listen on unix socket {path}: {source}")]
    Unix { path: PathBuf, source: io::Error },
    #[error("failed to write the port file {path} (MEMCACHED_PORT_FILENAME): {source}")]
    PortFile { path: PathBuf, source: io::Error },
    #[error("no listening socket: set a TCP port (-p), a UDP port (-U) or a unix socket (-s)")]
    NothingToListen,
}

/// Bound, not yet accepting.
#[derive(Debug)]
pub struct Listeners {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds what the settings ask for: a unix socket (which, as in memcached, replaces TCP and
    /// UDP), or TCP and (with `-U`) UDP on each `-l` address (every IPv4 and IPv6 address when
    /// none is given).
    pub fn bind(settings: &crate::Settings) -> Result<Listeners, ServeError> {
        if let Some(path) = &settings.unix_socket {
            let listener =
                bind_unix(path, settings.unix_mask).map_err(|source| ServeError::Unix {
                    path: path.clone(),
                    source,
                })?;
            return Ok(Listeners {
                tcp: Vec::new(),
                udp: Vec::new(),
                unix: Some((listener, path.clone())),
            });
        }
        let (tcp_port, udp_port) = (settings.tcp_bind_port(), settings.udp_bind_port());
        if tcp_port.is_none() && udp_port.is_none() {
            return Err(ServeError::NothingToListen);
        }
        let backlog = settings.backlog;
        let mut tcp = Vec::new();
        if let Some(port) = tcp_port {
            let error = |addr: IpAddr| move |source| ServeError::Tcp { addr, port, source };
            if settings.listen.is_empty() {
                // Like memcached: all of IPv4, and IPv6 where the host has it.
                let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                tcp.push(bind_tcp(v4, port, backlog).map_err(error(v4))?);
                if let Ok(l) = bind_tcp(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, backlog) {
                    tcp.push(l);
                }
            } else {
                for &addr in &settings.listen {
                    tcp.push(bind_tcp(addr, port, backlog).map_err(error(addr))?);
                }
            }
        }
        let udp = match udp_port {
            Some(port) => bind_udp_all(settings, port)?,
            None => Vec::new(),
        };
        let listeners = Listeners {
            tcp,
            udp,
            unix: None,
        };
        if let Some(path) = &settings.port_file {
            listeners
                .write_port_file(path)
                .map_err(|source| ServeError::PortFile {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(listeners)
    }

    /// memcached's port file: a `TCP INET: PORT` or `TCP INET6: PORT` line per TCP socket,
    /// then `UDP ...` lines, written beside the file and renamed into place so that a reader
    /// never sees it half written.
    fn write_port_file(&self, path: &Path) -> io::Result<()> {
        let mut text = String::new();
        let tcp = self.tcp.iter().map(|l| ("TCP", l.local_addr()));
        let udp = self.udp.iter().map(|s| ("UDP", s.local_addr()));
        for (transport, addr) in tcp.chain(udp) {
            let addr = addr?;
            let family = if addr.is_ipv6() { "INET6" } else { "INET" };
            text.push_str(&format!("{transport} {family}: {}\n", addr.port()));
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".lck");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, path)
    }

    /// The bound TCP addresses (useful when port 0 was not used but the OS chose).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// UDP sockets on the same addresses as TCP, when `-U` asks for them.
fn bind_udp_all(
    settings: &crate::Settings,
    port: u16,
) -> Result<Vec<std::net::UdpSocket>, ServeError> {
    let error = |addr: IpAddr| move |source| ServeError::Udp { addr, port, source };
    if settings.listen.is_empty() {
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut sockets = vec![udp::bind(SocketAddr::new(v4, port)).map_err(error(v4))?];
        if let Ok(s) = udp::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)) {
            sockets.push(s);
        }
        return Ok(sockets);
    }
    settings
        .listen
        .iter()
        .map(|&addr| udp::bind(SocketAddr::new(addr, port)).map_err(error(addr)))
        .collect()
}

fn bind_tcp(addr: IpAddr, port: u16, backlog: u32) -> io::Result<std::net::TcpListener> {
    let addr = SocketAddr::new(addr, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

fn bind_unix(path: &Path, mask: u32) -> io::Result<std::os::unix::net::UnixListener> {
    // A socket file left by a previous run would make bind fail; anything else at that path is
    // the operator's and is left alone.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mask))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How long an expired item may wait for a reader (memcached's `get_expired` counts such
/// reads) before the crawler reclaims it. memcached's LRU maintainer reclaims expired items at
/// its LRUs' tails within about as long; its crawler, which looks elsewhere, runs lazily.
const CRAWL_GRACE_SECS: u32 = 1;

/// The reply memcached gives a connection over the `-c` limit before closing it.
const TOO_MANY: &[u8] = b"ERROR Too many open connections\r\n";

/// Accepts and serves connections until `shutdown` turns true or a client sends `shutdown`
/// (with -A); then stops accepting, closes the connections and returns.
///
/// Connections are served on `-t` worker threads of their own (see [`Workers`]); this future
/// only accepts and keeps house, on whatever runtime runs it.
pub async fn serve(
    server: Arc<Server>,
    listeners: Listeners,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let workers = Arc::new(Workers::start(
        server.settings.threads,
        "keepcached-worker",
    )?);
    let mut tasks = JoinSet::new();
    // memcached counts each listening socket in total_connections, and each of its per-thread
    // UDP readers in total_connections and curr_connections; dashboards comparing the two
    // servers should see the same numbers.
    let udp_readers = listeners.udp.len() * workers.count();
    let listening = listeners.tcp.len() + usize::from(listeners.unix.is_some());
    server
        .stats
        .total_connections
        .fetch_add((listening + udp_readers) as u64, Ordering::Relaxed);
    server
        .stats
        .curr_connections
        .fetch_add(udp_readers as u64, Ordering::Relaxed);
    let now = server.clock.now();
    for listener in listeners.tcp {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let listen_addr = addr_text("tcp", &listener.local_addr()?);
        spawn_acceptor(&mut tasks, &server, &workers, listener, listen_addr, now);
    }
    for socket in listeners.udp {
        let addr = addr_text("udp", &socket.local_addr()?);
        for worker in 0..workers.count() {
            let registration =
                server
                    .conns
                    .register(ConnEntry::new(addr.clone(), None, ConnState::Read, now));
            let reader = udp::serve(server.clone(), socket.try_clone()?, registration);
            workers.spawn_on(worker, reader);
        }
    }
    let unix_path = if let Some((listener, path)) = listeners.unix {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let listen_addr = format!("unix:{}", path.display());
        spawn_acceptor(&mut tasks, &server, &workers, listener, listen_addr, now);
        Some(path)
    } else {
        None
    };
    {
        let server = server.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !server.crawler_on.load(Ordering::Relaxed) {
                    continue;
                }
                // Bounded work per tick keeps the crawler from stalling requests; a cache in
                // which nothing has expired costs nothing (Cache::crawl_expired).
                let horizon = server.clock.now().saturating_sub(CRAWL_GRACE_SECS);
                server.cache.crawl_expired(horizon, 10_000);
            }
        });
    }
    let mut requested = server.shutdown_requested.subscribe();
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => {}
        _ = requested.wait_for(|s| *s) => {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Ok(workers) = Arc::try_unwrap(workers) {
        workers.shutdown().await;
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Registers a listener in `stats conns` and accepts on it until the task is aborted.
fn spawn_acceptor<A: Acceptor>(
    tasks: &mut JoinSet<()>,
    server: &Arc<Server>,
    workers: &Arc<Workers>,
    listener: A,
    listen_addr: String,
    now: Time,
) {
    let registration = server.conns.register(ConnEntry::new(
        listen_addr.clone(),
        None,
        ConnState::Listening,
        now,
    ));
    let server = server.clone();
    let workers = workers.clone();
    tasks.spawn(async move {
        let _registration = registration;
        let mut warned = None;
        loop {
            let (stream, peer) = match listener.accept_one().await {
                Ok(accepted) => accepted,
                Err(e) if out_of_resources(&e) => {
                    match wait_for_resources(&server, &listener, &listen_addr, e, &mut warned).await
                    {
                        Some(accepted) => accepted,
                        None => continue,
                    }
                }
                // A client gone before it was accepted, and the like: the next one.
                Err(_) => continue,
            };
            // `stats conns` names a unix client by the socket it came through.
            let peer = peer.map_or_else(|| listen_addr.clone(), |p| addr_text("tcp", &p));
            admit::<A>(&server, &workers, stream, peer, &listen_addr);
        }
    });
}

/// Whether an accept failed for want of descriptors or kernel memory, which another try does
/// not cure until connections close.
fn out_of_resources(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().map(Errno::from_raw).is_some_and(|errno| {
        matches!(
            errno,
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// How often a listener that keeps running out of descriptors says so: each connection that
/// closes lets one more in, and the next may find none again.
const DISABLED_LOG_EVERY: Duration = Duration::from_secs(10);

/// A listener out of descriptors: as memcached, stops accepting (counted in
/// `listen_disabled_num`, `accepting_conns` 0 meanwhile) and tries again every 10 ms; returns
/// the connection it then accepts. It logs when it stops and when it accepts again, the first
/// time and then at most every [`DISABLED_LOG_EVERY`] (`warned`: when it last did).
async fn wait_for_resources<A: Acceptor>(
    server: &Server,
    listener: &A,
    listen_addr: &str,
    first: std::io::Error,
    warned: &mut Option<std::time::Instant>,
) -> Option<(A::Stream, Option<std::net::SocketAddr>)> {
    let stats = &server.stats;
    let times = stats.listen_disabled_num.fetch_add(1, Ordering::Relaxed) + 1;
    stats.listeners_disabled.fetch_add(1, Ordering::Relaxed);
    let log = warned.is_none_or(|at| at.elapsed() >= DISABLED_LOG_EVERY);
    if log {
        *warned = Some(std::time::Instant::now());
        tracing::warn!(
            listen = listen_addr,
            "not accepting connections: {first} (listen_disabled_num {times}); trying again \
             every 10 ms until some close"
        );
    }
    let start = std::time::Instant::now();
    let accepted = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match listener.accept_one().await {
            Ok(accepted) => break Some(accepted),
            Err(e) if out_of_resources(&e) => continue,
            Err(_) => break None,
        }
    };
    let waited = start.elapsed();
    stats
        .listen_disabled_us
        .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    stats.listeners_disabled.fetch_sub(1, Ordering::Relaxed);
    if log {
        tracing::warn!(
            listen = listen_addr,
            "accepting connections again after {} ms",
            waited.as_millis()
        );
    }
    accepted
}

/// Starts serving an accepted connection on a worker, or turns it away when the limit is
/// reached.
fn admit<A: Acceptor>(
    server: &Arc<Server>,
    workers: &Workers,
    mut stream: A::Stream,
    addr: String,
    listen_addr: &str,
) {
    let current = server.stats.curr_connections.load(Ordering::Relaxed);
    if current as usize >= server.settings.max_connections {
        server
            .stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = stream.write_all(TOO_MANY).await;
        });
        return;
    }
    let id = server.stats.connection_opened();
    let registration = server.conns.register(ConnEntry::new(
        addr,
        Some(listen_addr.to_string()),
        ConnState::NewCmd,
        server.clock.now(),
    ));
    let server = server.clone();
    workers.spawn(async move {
        if let Ok(stream) = A::rehome(stream) {
            connection::serve(&server, stream, id, &registration.entry).await;
        }
        drop(registration);
        server.stats.connection_closed();
    });
}
