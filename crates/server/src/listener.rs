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

use crate::connection;
use crate::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to listen on TCP port {port} at {addr}: {source}")]
    Tcp {
        addr: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("failed to listen on unix socket {path}: {source}")]
    Unix { path: PathBuf, source: io::Error },
    #[error("no listening socket: set a TCP port (-p) or a unix socket (-s)")]
    NothingToListen,
}

/// Bound, not yet accepting.
#[derive(Debug)]
pub struct Listeners {
    tcp: Vec<std::net::TcpListener>,
    unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds what the settings ask for: a unix socket (which, as in memcached, replaces TCP),
    /// or TCP on each `-l` address (every IPv4 and IPv6 address when none is given).
    pub fn bind(settings: &crate::Settings) -> Result<Listeners, ServeError> {
        if let Some(path) = &settings.unix_socket {
            let listener =
                bind_unix(path, settings.unix_mask).map_err(|source| ServeError::Unix {
                    path: path.clone(),
                    source,
                })?;
            return Ok(Listeners {
                tcp: Vec::new(),
                unix: Some((listener, path.clone())),
            });
        }
        if settings.port == 0 {
            return Err(ServeError::NothingToListen);
        }
        let mut tcp = Vec::new();
        if settings.listen.is_empty() {
            // Like memcached: all of IPv4, and IPv6 where the host has it.
            let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            tcp.push(
                bind_tcp(v4, settings.port, settings.backlog).map_err(|source| {
                    ServeError::Tcp {
                        addr: v4,
                        port: settings.port,
                        source,
                    }
                })?,
            );
            if let Ok(l) = bind_tcp(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                settings.port,
                settings.backlog,
            ) {
                tcp.push(l);
            }
        } else {
            for &addr in &settings.listen {
                tcp.push(
                    bind_tcp(addr, settings.port, settings.backlog).map_err(|source| {
                        ServeError::Tcp {
                            addr,
                            port: settings.port,
                            source,
                        }
                    })?,
                );
            }
        }
        Ok(Listeners { tcp, unix: None })
    }

    /// The bound TCP addresses (useful when port 0 was not used but the OS chose).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
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

/// The reply memcached gives a connection over the `-c` limit before closing it.
const TOO_MANY: &[u8] = b"ERROR Too many open connections\r\n";

/// Accepts and serves connections until `shutdown` turns true or a client sends `shutdown`
/// (with -A); then stops accepting, closes the connections and returns.
pub async fn serve(
    server: Arc<Server>,
    listeners: Listeners,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    // memcached counts each listening socket in total_connections; dashboards comparing the
    // two servers should see the same number.
    let listening = listeners.tcp.len() + usize::from(listeners.unix.is_some());
    server
        .stats
        .total_connections
        .fetch_add(listening as u64, Ordering::Relaxed);
    for listener in listeners.tcp {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let server = server.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                admit(&server, stream, &stop);
            }
        });
    }
    let unix_path = if let Some((listener, path)) = listeners.unix {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let server = server.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                admit(&server, stream, &stop);
            }
        });
        Some(path)
    } else {
        None
    };
    if server.settings.lru_crawler {
        let server = server.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                // Bounded work per tick keeps the crawler from stalling requests.
                server.cache.crawl_expired(server.clock.now(), 10_000);
            }
        });
    }
    let mut requested = server.shutdown_requested.subscribe();
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => {}
        _ = requested.wait_for(|s| *s) => {}
    }
    tasks.abort_all();
    stop_tx.send_replace(true);
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Starts serving an accepted connection, or turns it away when the limit is reached.
fn admit<S>(server: &Arc<Server>, mut stream: S, stop: &watch::Receiver<bool>)
where
    S: connection::Socket + Send + 'static,
{
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
    let server = server.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        connection::serve(&server, stream, id, stop).await;
        server.stats.connection_closed();
    });
}
