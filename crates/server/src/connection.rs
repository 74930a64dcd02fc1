//! One client connection: read, parse every complete request in the buffer, execute, and write
//! all their replies at once.
//!
//! Pipelined requests therefore cost one read and one write per batch, not per request. An idle
//! connection holds no buffers: the read buffer is allocated when data arrives and released when
//! the batch is fully consumed, so many thousands of idle clients cost little memory.

use std::io;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use keepcached_protocol::binary::{parse_binary, REQUEST_MAGIC};
use keepcached_protocol::{parse_command, Command};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

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
/// Buffers larger than this are released after use instead of kept for the next batch.
const KEEP_BUFFER: usize = 64 * 1024;

/// A stream the server can serve: TCP or unix.
pub trait Socket: AsyncWrite + Unpin {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
}

impl Socket for tokio::net::TcpStream {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        tokio::net::TcpStream::try_read_buf(self, buf)
    }
}

impl Socket for tokio::net::UnixStream {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        tokio::net::UnixStream::readable(self)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        tokio::net::UnixStream::try_read_buf(self, buf)
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
}

pub async fn serve<S: Socket>(
    server: &Server,
    stream: S,
    id: u64,
    mut stop: watch::Receiver<bool>,
) {
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
    };
    let idle = server.settings.idle_timeout;
    loop {
        let wait = conn.stream.readable();
        let ready = tokio::select! {
            r = async {
                match idle {
                    Some(limit) => tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
                    }),
                    None => wait.await,
                }
            } => r,
            _ = stop.wait_for(|s| *s) => return,
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
        if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            self.input.reserve(READ_CHUNK);
        }
        let n = match self.stream.try_read_buf(&mut self.input) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        };
        self.counters.bytes_read += n as u64;
        let keep_open = self.handle_input().await?;
        if self.input.is_empty() && self.input.capacity() > 0 && self.swallow == 0 {
            // Nothing pending: give the buffer back so an idle connection holds none.
            self.input = BytesMut::new();
        }
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::new();
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
            let next = match parsed {
                Command::Text(text) => match text.outcome {
                    Ok(request) => session.execute(request),
                    Err(invalid) => session.invalid(invalid),
                },
                Command::Meta(meta) => match meta.outcome {
                    Ok(request) => session.execute_meta(request),
                    Err(reject) => session.meta_reject(reject),
                },
            };
            self.input.advance(consumed);
            if let Some(stop) = self.after(next) {
                return stop;
            }
        }
        Stop::Yield
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
