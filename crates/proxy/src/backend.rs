//! One cache server as the proxy sees it: its pipelined connections (one lane per worker
//! thread, each connection a task of conn.rs), its standing (health.rs: state, failures, the
//! keys it missed), and the types of what is sent to it and what comes back.
//!
//! A request enters through [`Backend::call`], which picks a connection of the caller's lane and
//! hands it a job. Every call has a deadline, enforced by the connection. A server that is down,
//! drained or has never answered is not called at all: the call fails at once, and the caller
//! (replicate.rs) records the write as missed so the server is repaired before it is read.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use keepcached_protocol::response::{MetaCode, Status};
use keepcached_runtime::{worker_index, Workers};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{BackendConfig, ResyncConfig};
use crate::conn::{connection_task, Job};
use crate::health::{Health, State};

/// Jobs queued per connection before callers wait; bounds memory when a server slows down.
const QUEUE_DEPTH: usize = 1024;

/// Why a call to a backend failed. Every variant means the server did not (or may not) have
/// executed the request, so another replica can be tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend {addr} is down (skipped until a probe succeeds)")]
    Down { addr: Arc<str> },
    #[error("backend {addr}: cannot connect: {reason}")]
    Connect { addr: Arc<str>, reason: String },
    #[error("backend {addr}: no reply within {ms} ms")]
    Timeout { addr: Arc<str>, ms: u64 },
    #[error("backend {addr}: connection closed")]
    Closed { addr: Arc<str> },
    #[error("backend {addr}: unexpected reply {detail:?}")]
    Protocol { addr: Arc<str>, detail: String },
    /// A reply that does not belong to the request it would answer (an unsolicited or extra
    /// reply, a missing one, another request's opaque): the connection is closed and nothing
    /// read on it since the last verified point is passed on.
    #[error("backend {addr}: reply out of step with the requests ({detail}); connection closed")]
    OutOfStep { addr: Arc<str>, detail: String },
    /// Not sent: an earlier write of the key, on a connection the proxy gave up on, may still
    /// be applied there after it (health.rs, fences).
    #[error("backend {addr}: an earlier write of the key may still be applied there")]
    Fenced { addr: Arc<str> },
}

impl BackendError {
    /// Whether the same request may succeed elsewhere (always: no variant is about the request
    /// itself) or later on this server (all but a protocol error, which means a bug or a foreign
    /// server on that port).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            BackendError::Protocol { .. } | BackendError::OutOfStep { .. }
        )
    }
}

/// What kind of reply a request gets, so the reader knows where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `VALUE` items, then `END` (the get family).
    Values,
    /// One line (with a data block for `VA`).
    Line,
    /// A quiet meta request (`q`), which may get no reply at all: the writer sends `mn` after
    /// it, and the reply is whatever came before `MN` ([`Reply::Suppressed`] when nothing did).
    /// The server itself decides what quiet mode leaves out, so the proxy never has to guess.
    UntilNoop,
}

/// A request as bytes: the command line, and the data block for storage commands.
#[derive(Debug, Clone)]
pub struct Call {
    pub head: Bytes,
    pub data: Option<Bytes>,
    pub expect: Expect,
    /// The opaque token of a meta request, which its reply must carry (conn.rs checks it).
    pub opaque: Option<Opaque>,
}

/// A meta request's opaque token (the `O` flag's value), checked against its reply's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opaque {
    pub token: Bytes,
    /// The proxy added it (the client sent none): it is taken out of the reply again.
    pub added: bool,
}

/// One item of a get reply, as the server sent it (`VALUE <key> <flags> <bytes>[ <cas>]`, its
/// data block and the line ends): the client is answered with these very bytes, a slice of the
/// connection's read buffer (no copy, nothing encoded again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub(crate) raw: Bytes,
    /// Where the key is in `raw`.
    pub(crate) key_at: u16,
    pub(crate) key_len: u16,
}

impl Value {
    pub fn key(&self) -> &[u8] {
        let at = usize::from(self.key_at);
        &self.raw[at..at + usize::from(self.key_len)]
    }

    /// The item's reply lines, exactly as a client asking the same get would receive them.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Which error line a server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Error,
    Client,
    Server,
}

/// A whole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Values(Vec<Value>),
    Status(Status),
    Number(u64),
    Version(Bytes),
    /// A meta reply; `raw` is all of it as the server sent it, to pass on to the client as is.
    Meta {
        code: MetaCode,
        flags: Bytes,
        data: Option<Bytes>,
        raw: Bytes,
    },
    /// A quiet meta request's nominal reply, which the server left out.
    Suppressed,
    Error {
        kind: ErrorKind,
        text: Bytes,
    },
}

/// Per-server counters for `stats backends`: one thread's share (see [`Backend::counters`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    /// Sum of the latency of answered calls, for the average.
    pub latency_us: AtomicU64,
    pub answered: AtomicU64,
    /// Times the server was marked down.
    pub downs: AtomicU64,
    /// Times the server was found to be another process than before (it restarted).
    pub restarts: AtomicU64,
    /// Connections closed because a reply was malformed or did not match its request.
    pub bad_replies: AtomicU64,
}

/// One cache server.
#[derive(Debug)]
pub struct Backend {
    pub addr: Arc<str>,
    /// One lane per worker thread: its own connections, so that a request, its write, its
    /// reply and its caller's wake-up all stay on the caller's thread.
    lanes: Box<[Lane]>,
    pub health: Arc<Health>,
}

/// A worker thread's connections to one server, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Lane {
    conns: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

impl Backend {
    /// Starts the connection tasks of one server on every worker (each connects right away).
    /// The server's `connections` are spread over the workers, at least one each.
    pub fn start(
        addr: &str,
        settings: &BackendConfig,
        resync: &ResyncConfig,
        missed_limit: usize,
        workers: &Workers,
    ) -> Backend {
        let addr: Arc<str> = Arc::from(addr);
        let health = Arc::new(Health::new(
            addr.clone(),
            settings.clone(),
            missed_limit,
            resync.hold_returning,
        ));
        let per_worker = settings.connections.div_ceil(workers.count()).max(1);
        let lanes = (0..workers.count())
            .map(|worker| Lane {
                conns: (0..per_worker)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                        workers.spawn_on(worker, connection_task(health.clone(), rx));
                        tx
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        Backend {
            addr,
            lanes,
            health,
        }
    }

    /// What stays of a server a reload removed, where its entry was (the backends are numbered
    /// by their place, and a number is never given to another server): its health, for requests
    /// that began before the reload, and no connections. Once those requests are done, nothing
    /// holds the server's connection queues and its connection tasks end.
    pub fn retired(&self) -> Backend {
        Backend {
            addr: self.addr.clone(),
            lanes: Box::new([]),
            health: self.health.clone(),
        }
    }

    /// Whether a reload removed this server.
    pub fn is_retired(&self) -> bool {
        self.lanes.is_empty()
    }

    pub fn state(&self) -> State {
        self.health.state()
    }

    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    /// Every thread's share of the counters; `stats backends` sums them.
    pub fn counters(&self) -> impl Iterator<Item = &Counters> {
        self.health.counters.iter()
    }

    /// Sends one request and waits for its reply, within the request timeout. A server that
    /// takes no writes (down, drained, never answered) is not asked: the call fails at once.
    ///
    /// The connection enforces the deadline (it fails a job that is overdue before it is sent,
    /// and closes itself when the oldest job in flight is overdue, failing every job on it), so
    /// the call needs no timer of its own: one per request was a large share of the proxy's CPU.
    pub async fn call(&self, call: Call) -> Result<Reply, BackendError> {
        if !self.state().takes_writes() || self.is_retired() {
            return Err(BackendError::Down {
                addr: self.addr.clone(),
            });
        }
        let counters = self.health.counters.local();
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let deadline = start + self.health.settings.request_timeout();
        let (tx, rx) = oneshot::channel();
        // Off the worker threads (the supervisors, and tests that drive the proxy from their
        // own runtime) any lane will do.
        let lane = &self.lanes[worker_index().unwrap_or(0) % self.lanes.len()];
        let conn = match lane.conns.len() {
            1 => &lane.conns[0],
            n => &lane.conns[lane.next.fetch_add(1, Ordering::Relaxed) % n],
        };
        let job = Job {
            call,
            reply: tx,
            deadline,
        };
        let closed = || BackendError::Closed {
            addr: self.addr.clone(),
        };
        let result = match conn.send(job).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(closed())),
            Err(_) => Err(closed()),
        };
        match &result {
            Ok(_) => {
                let elapsed = start.elapsed();
                self.health.latency.observe(elapsed);
                let us = elapsed.as_micros() as u64;
                counters.latency_us.fetch_add(us, Ordering::Relaxed);
                counters.answered.fetch_add(1, Ordering::Relaxed);
                self.health.answered();
            }
            // Failures of the server are counted per stalled or broken connection, where they
            // happen (conn.rs): one stall fails every request pipelined on it, and counting each
            // would mark a healthy server down for a single slow reply.
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, BackendError::Timeout { .. }) {
                    counters.timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        result
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Whether a write's reply says the server did not store what it was sent: an error line that
/// is the server's (out of memory, a broken backend), not the client's.
pub fn write_failed(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::Error {
            kind: ErrorKind::Server | ErrorKind::Error,
            ..
        }
    )
}

impl Call {
    /// A request without a data block.
    pub fn line(head: impl Into<Bytes>, expect: Expect) -> Call {
        Call {
            head: head.into(),
            data: None,
            expect,
            opaque: None,
        }
    }
}
