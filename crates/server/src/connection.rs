//! One client connection: read, parse every complete request in the buffer, execute, and write
//! all their replies at once.
//!
//! Pipelined requests therefore cost one read and one write per batch, not per request. An idle
//! connection holds no buffers: its read and write buffers come from its worker thread's spares
//! when data arrives and go back when the batch is done, so many thousands of idle clients cost
//! little memory.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use keepcached_protocol::binary::{parse_binary, REQUEST_MAGIC};
use keepcached_protocol::parse_command;
use keepcached_runtime::{spare, Socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{self, AsciiAuth, Verdict};
use crate::binary::BinaryState;
use crate::execute::{Next, Session};
use crate::settings::Protocol;
use crate::stats::Counters;
use crate::Server;

/// Bytes to read at a time when no larger need is known.
const READ_CHUNK: usize = 16 * 1024;
/// Replies buffered beyond this are written out before more requests are executed, so a
/// pipeline of large gets cannot grow the output without bound.
const OUT_HIGH_WATER: usize = 1024 * 1024;

/// What a connection is doing, in memcached's state names (`stats conns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    Listening,
    /// Waiting for a request.
    NewCmd,
    /// Part of a request line has arrived.
    Read,
    /// Executing requests.
    ParseCmd,
    /// The request line has arrived, its data not all yet.
    NRead,
    /// Discarding the data of a rejected value.
    Swallow,
}

impl ConnState {
    const ALL: [ConnState; 6] = [
        ConnState::Listening,
        ConnState::NewCmd,
        ConnState::Read,
        ConnState::ParseCmd,
        ConnState::NRead,
        ConnState::Swallow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnState::Listening => "conn_listening",
            ConnState::NewCmd => "conn_new_cmd",
            ConnState::Read => "conn_read",
            ConnState::ParseCmd => "conn_parse_cmd",
            ConnState::NRead => "conn_nread",
            ConnState::Swallow => "conn_swallow",
        }
    }
}

/// One line set of `stats conns`: a client connection or a listening socket.
#[derive(Debug)]
pub struct ConnEntry {
    /// `tcp:IP:PORT`, `udp:IP:PORT`, `unix:PATH` (IPv6 as `tcp6:[IP]:PORT`).
    pub addr: String,
    /// The listening socket a client came through; `None` for listening sockets.
    pub listen_addr: Option<String>,
    state: AtomicU8,
    /// Server time (relative seconds) of the last request.
    last_cmd: AtomicU32,
}

impl ConnEntry {
    pub fn new(addr: String, listen_addr: Option<String>, state: ConnState, now: u32) -> Self {
        ConnEntry {
            addr,
            listen_addr,
            state: AtomicU8::new(state as u8),
            last_cmd: AtomicU32::new(now),
        }
    }

    pub fn state(&self) -> ConnState {
        let raw = self.state.load(Ordering::Relaxed);
        ConnState::ALL
            .into_iter()
            .find(|s| *s as u8 == raw)
            .unwrap_or(ConnState::NewCmd)
    }

    pub fn set_state(&self, state: ConnState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn last_cmd(&self) -> u32 {
        self.last_cmd.load(Ordering::Relaxed)
    }

    pub fn touch(&self, now: u32) {
        self.last_cmd.store(now, Ordering::Relaxed);
    }
}

/// Every open connection and listening socket, in the order they were opened. A connection
/// touches only its own entry's atomics while it works; the table's lock is taken when a
/// connection opens or closes and by `stats conns`.
#[derive(Debug, Default)]
pub struct ConnTable {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Arc<ConnEntry>>>,
}

impl ConnTable {
    /// Adds an entry; the returned guard removes it when dropped.
    pub fn register(self: &Arc<Self>, entry: ConnEntry) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(entry);
        self.lock().insert(id, entry.clone());
        Registration {
            table: self.clone(),
            id,
            entry,
        }
    }

    /// The entries with their numbers, oldest first.
    pub fn snapshot(&self) -> Vec<(u64, Arc<ConnEntry>)> {
        self.lock()
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnEntry>>> {
        // The map stays consistent even if a holder panicked: every change is one insert or
        // remove.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's place in the [`ConnTable`], removed on drop (also when its task is aborted).
#[derive(Debug)]
pub struct Registration {
    table: Arc<ConnTable>,
    id: u64,
    pub entry: Arc<ConnEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

/// `stats conns`' form of a socket address: `tcp:1.2.3.4:5` or `tcp6:[::1]:5`.
pub fn addr_text(transport: &str, addr: &std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => format!("{transport}:{}:{}", a.ip(), a.port()),
        std::net::SocketAddr::V6(a) => format!("{transport}6:[{}]:{}", a.ip(), a.port()),
    }
}

/// Why a batch of parsing stopped.
enum Stop {
    /// The buffer holds no complete request.
    NeedInput,
    /// Output reached the high-water mark, or the `-R` budget ran out: write, then go on.
    Yield,
    Close,
}

struct Conn<'a, S> {
    server: &'a Server,
    stream: S,
    input: BytesMut,
    out: Vec<u8>,
    /// Bytes still to discard from a rejected value.
    swallow: usize,
    counters: Counters,
    /// The connection's number, for verbose logs.
    id: u64,
    /// Whether the client speaks the binary protocol; `None` until its first byte decides
    /// (`-B auto`).
    binary: Option<bool>,
    binary_state: BinaryState,
    /// False until an ASCII client passes `-Y` authentication; always true without `-Y`.
    authenticated: bool,
    /// What `stats conns` shows of this connection.
    entry: &'a ConnEntry,
}

/// Serves one client until it closes, fails, idles past `-o idle_timeout` or sends `quit`;
/// the server's shutdown drops this future.
pub async fn serve<S: Socket>(server: &Server, stream: S, id: u64, entry: &ConnEntry) {
    if server.verbosity.load(Ordering::Relaxed) > 1 {
        eprintln!("<{id} new client connection");
    }
    let mut conn = Conn {
        id,
        server,
        stream,
        input: BytesMut::new(),
        out: Vec::new(),
        swallow: 0,
        counters: Counters::default(),
        binary: match server.settings.protocol {
            Protocol::Ascii => Some(false),
            Protocol::Binary => Some(true),
            Protocol::Auto => None,
        },
        binary_state: BinaryState::default(),
        authenticated: server.settings.ascii_auth.is_none(),
        entry,
    };
    let idle = server.settings.idle_timeout;
    loop {
        let wait = conn.stream.readable();
        let ready = match idle {
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))),
            None => wait.await,
        };
        if ready.is_err() {
            break;
        }
        match conn.read().await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    conn.flush_counters();
}

impl<S: Socket> Conn<'_, S> {
    /// Reads what is available and handles it. `Ok(false)` when the connection should close.
    async fn read(&mut self) -> io::Result<bool> {
        if self.input.capacity() == 0 {
            self.input = spare::take_input(READ_CHUNK);
        } else if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            self.input.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.input).await?;
        if n == 0 {
            return Ok(false);
        }
        self.counters.bytes_read += n as u64;
        self.entry.touch(self.server.clock.now());
        self.entry.set_state(ConnState::ParseCmd);
        if self.out.capacity() == 0 {
            self.out = spare::take_output();
        }
        let keep_open = self.handle_input().await?;
        self.entry.set_state(self.waiting_state());
        if self.input.is_empty() && self.input.capacity() > 0 && self.swallow == 0 {
            // Nothing pending: give the buffer back so an idle connection holds none.
            spare::give_back_input(std::mem::take(&mut self.input), READ_CHUNK);
        }
        if self.out.is_empty() {
            spare::give_back_output(std::mem::take(&mut self.out));
        }
        self.flush_counters();
        Ok(keep_open)
    }

    async fn handle_input(&mut self) -> io::Result<bool> {
        loop {
            self.discard_swallowed();
            let stop = if self.swallow > 0 {
                Stop::NeedInput
            } else {
                self.run_batch()
            };
            // memcached answers a rejected value only once its data has been swallowed.
            if self.swallow == 0 || matches!(stop, Stop::Close) {
                self.write_out().await?;
            }
            match stop {
                Stop::NeedInput => return Ok(true),
                Stop::Close => return Ok(false),
                Stop::Yield => {
                    self.counters.conn_yields += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// What the connection waits for between reads, as `stats conns` names it.
    fn waiting_state(&self) -> ConnState {
        if self.swallow > 0 {
            ConnState::Swallow
        } else if self.input.is_empty() {
            ConnState::NewCmd
        } else if self.binary == Some(true) {
            // A binary request's header tells its length: once it is in, the rest is data.
            if self.input.len() >= keepcached_protocol::binary::HEADER_LEN {
                ConnState::NRead
            } else {
                ConnState::Read
            }
        } else if self.input.contains(&b'\n') {
            ConnState::NRead
        } else {
            ConnState::Read
        }
    }

    fn discard_swallowed(&mut self) {
        if self.swallow > 0 {
            let n = self.swallow.min(self.input.len());
            self.input.advance(n);
            self.swallow -= n;
        }
    }

    /// Executes complete requests from the input buffer.
    fn run_batch(&mut self) -> Stop {
        let limits = &self.server.limits;
        let budget = self.server.settings.reqs_per_event.max(1);
        let verbose = self.server.verbosity.load(Ordering::Relaxed) > 1;
        for _ in 0..budget {
            let binary = match self.binary {
                Some(binary) => binary,
                None => match self.input.first() {
                    // memcached's negotiation: a binary request starts with its magic byte.
                    Some(&first) => *self.binary.insert(first == REQUEST_MAGIC),
                    None => return Stop::NeedInput,
                },
            };
            if binary {
                let parsed = match parse_binary(&self.input, limits) {
                    Ok(parsed) => parsed,
                    Err(incomplete) => {
                        if let Some(needed) = incomplete.needed {
                            self.input.reserve(needed.saturating_sub(self.input.len()));
                        }
                        return Stop::NeedInput;
                    }
                };
                let consumed = parsed.consumed;
                let mut session = Session {
                    server: self.server,
                    out: &mut self.out,
                    counters: &mut self.counters,
                };
                let next = session.execute_binary(parsed, &mut self.binary_state);
                self.input.advance(consumed);
                match self.after(next) {
                    Some(stop) => return stop,
                    None => continue,
                }
            }
            if !self.authenticated {
                match self.authenticate() {
                    Some(stop) => return stop,
                    None => continue,
                }
            }
            let parsed = match parse_command(&self.input, limits) {
                Ok(parsed) => parsed,
                Err(incomplete) => {
                    if let Some(needed) = incomplete.needed {
                        self.input.reserve(needed.saturating_sub(self.input.len()));
                    }
                    return Stop::NeedInput;
                }
            };
            if verbose {
                let line = self.input[..parsed.consumed()]
                    .split(|b| *b == b'\n')
                    .next();
                eprintln!(
                    "<{} {}",
                    self.id,
                    String::from_utf8_lossy(line.unwrap_or(&[]))
                );
            }
            let consumed = parsed.consumed();
            let mut session = Session {
                server: self.server,
                out: &mut self.out,
                counters: &mut self.counters,
            };
            let next = session.execute_command(parsed);
            self.input.advance(consumed);
            if let Some(stop) = self.after(next) {
                return stop;
            }
        }
        Stop::Yield
    }

    /// Handles one request of a client that has not passed `-Y` authentication yet: `Some` when
    /// the batch must stop.
    fn authenticate(&mut self) -> Option<Stop> {
        let users = &self.server.settings.ascii_auth.as_ref()?.users;
        match auth::ascii_auth(&self.input, users) {
            AsciiAuth::Incomplete => Some(Stop::NeedInput),
            AsciiAuth::Close => Some(Stop::Close),
            AsciiAuth::Answer {
                consumed,
                swallow,
                verdict,
            } => {
                self.input.advance(consumed);
                if verdict.is_attempt() {
                    self.counters.auth_cmds += 1;
                }
                match verdict {
                    Verdict::Granted => self.authenticated = true,
                    Verdict::Denied => self.counters.auth_errors += 1,
                    _ => {}
                }
                self.out.extend_from_slice(verdict.reply());
                self.after(match swallow {
                    0 => Next::Continue,
                    n => Next::Swallow(n),
                })
            }
        }
    }

    /// What follows a request: `Some` when the batch must stop.
    fn after(&mut self, next: Next) -> Option<Stop> {
        match next {
            Next::Continue => {}
            Next::Close => return Some(Stop::Close),
            Next::Swallow(n) => {
                self.swallow = n;
                self.discard_swallowed();
                if self.swallow > 0 {
                    return Some(Stop::NeedInput);
                }
            }
        }
        (self.out.len() >= OUT_HIGH_WATER).then_some(Stop::Yield)
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out).await?;
        self.counters.bytes_written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    fn flush_counters(&mut self) {
        self.server.stats.merge(&self.counters);
        self.counters = Counters::default();
    }
}
