//! One client connection: read, parse every complete request in the buffer, execute, and write
//! all their replies at once.
//!
//! Pipelined requests therefore cost one read and one write per batch, not per request. An idle
//! connection holds no buffers: its read and write buffers come from its worker thread's spares
//! when data arrives and go back when the batch is done, so many thousands of idle clients cost
//! little memory.
//!
//! What a client can make a connection hold is bounded (docs/limits.md): replies pending past
//! the high-water mark (256 KiB) are written, and the client must read them, before anything
//! more is executed, down to the next key of a multi-get; a multi-get's large values are sent
//! from the stored item by reference; read buffers beyond one read chunk (values being
//! received, long multi-get lines) draw on the server-wide [`InputBudget`], and a store it
//! cannot hold is refused as memcached refuses one it has no memory for.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use keepcached_protocol::binary::{
    self, parse_binary, BinaryOutcome, BinaryParsed, Status, REQUEST_MAGIC,
};
use keepcached_protocol::meta::{
    parse_command_with, LongOpaque, MetaCommand, MetaParsed, MetaReject,
};
use keepcached_protocol::reply::ErrorReply;
use keepcached_protocol::{
    parse_command, reply, Command, Invalid, Limits, Parsed, Request, StoreKind,
};
use keepcached_runtime::{spare, Socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{self, AsciiAuth, Verdict};
use crate::binary::BinaryState;
use crate::execute::{Next, Session, Spliced};
use crate::report::{self, Dump, Progress, StatsWalk};
use crate::settings::Protocol;
use crate::stats::Counters;
use crate::Server;

/// Bytes to read at a time when no larger need is known; also the read buffer every connection
/// may hold without drawing on the [`InputBudget`].
const READ_CHUNK: usize = 16 * 1024;
/// Replies buffered beyond this are written out, and the client must read them, before more is
/// executed: the next request of a pipeline, or the next key of a multi-get. A connection's
/// pending output is therefore at most this plus one value.
const OUT_HIGH_WATER: usize = 256 * 1024;
/// Pieces per vectored write (Linux takes up to 1024).
const MAX_IOVECS: usize = 64;
/// Unconsumed input up to this long is kept between reads in a buffer of its own size rather
/// than a read chunk.
const SHORT_TAIL: usize = 1024;

/// What the connections' read buffers may hold beyond their first read chunk (16 KiB each),
/// together: values still arriving and long multi-get lines. memcached reads a value into item
/// memory it allocates when the request line arrives, and refuses the store when it cannot;
/// this budget is our equivalent, so a thousand clients that each start a large set and stall
/// hold no more than it.
#[derive(Debug)]
pub struct InputBudget {
    limit: usize,
    used: AtomicUsize,
    /// Connections holding a share now.
    holders: AtomicUsize,
}

impl InputBudget {
    pub fn new(limit: usize) -> InputBudget {
        InputBudget {
            limit,
            used: AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
        }
    }

    /// Bytes currently held by connections beyond their first read chunk.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections whose read buffer is larger than a read chunk now.
    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The share of the [`InputBudget`] one connection holds, given back when it is dropped (also
/// when the connection's task is aborted).
#[derive(Debug)]
struct Held<'a> {
    budget: &'a InputBudget,
    bytes: usize,
}

impl Held<'_> {
    /// Makes the share exactly `bytes`; false, holding what it held, when the budget lacks the
    /// difference.
    fn set(&mut self, bytes: usize) -> bool {
        // The counter is shared by every worker: touched only when the share changes, which
        // for the usual request (a read chunk, no share) is never.
        if bytes > self.bytes {
            if !self.budget.take(bytes - self.bytes) {
                return false;
            }
        } else if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
        }
        match (self.bytes, bytes) {
            (0, 1..) => self.budget.holders.fetch_add(1, Ordering::Relaxed),
            (1.., 0) => self.budget.holders.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        self.bytes = bytes;
        true
    }

    fn release(&mut self) {
        self.set(0);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

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

/// memcached's queue of text replies not yet sent. memcached writes what it has queued after
/// a completed get, after `mn`, and when its read buffer holds no complete request; until then
/// a get with a key over 250 bytes throws the queue away, and `lru_crawler metadump` refuses to
/// run behind it. keepcached writes at the end of each batch, so the queue is the part of `out`
/// since the last of those points within the batch.
#[derive(Debug, Default)]
struct Unsent {
    /// Where the queue starts in `out`.
    from: usize,
    /// The requests it answers, silent ones (`noreply`, `q`) included.
    requests: usize,
}

impl Unsent {
    /// Throws the queue away from `out` and `spliced`.
    fn discard(&mut self, out: &mut Vec<u8>, spliced: &mut Spliced) {
        out.truncate(self.from);
        // A value at `from` was added after the queue began: a value is always followed by
        // its CRLF in `out`, so one sent earlier lies before `from`.
        spliced.retain(|offset| offset < self.from);
        self.requests = 0;
    }
}

/// What a text request does to the [`Unsent`] queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// Adds its reply.
    Add,
    /// Throws the queue away, then adds its error.
    Discard,
    /// Closes the connection without sending the queue (`quit` is not one: it sends it).
    Close,
    /// Adds its reply and sends the queue.
    Flush,
    /// A metadump with nothing queued: a dump is sent at once, a refusal queued.
    Dump,
    /// A metadump behind queued replies: refused.
    RefuseDump,
    /// `watch`: the connection becomes a log stream.
    Watch,
}

const METADUMP_PIPELINED: &[u8] = b"ERROR cannot pipeline other commands before metadump\r\n";
const GET_OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory writing get response\r\n";

/// Whether `line` is a `watch` request (its first word).
fn is_watch(line: &[u8]) -> bool {
    line.strip_prefix(b"watch")
        .is_some_and(|rest| matches!(rest.first(), Some(b' ' | b'\r' | b'\n')))
}

/// Whether `line` starts a text retrieval (get, gets, gat, gats), whose keys may make a line of
/// any length.
fn is_retrieval(line: &[u8]) -> bool {
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|verb| line.starts_with(verb))
}

/// Why a batch of parsing stopped.
enum Stop {
    /// The buffer holds no complete request.
    NeedInput,
    /// Output reached the high-water mark, or the `-R` budget ran out: write, then go on.
    Yield,
    /// A walk over the store (`stats items`, a metadump, ...) made a step: the worker's other
    /// connections run, then it goes on. Not a yield memcached would count.
    Step,
    Close,
}

struct Conn<'a, S> {
    server: &'a Server,
    stream: S,
    input: BytesMut,
    /// The size `input`'s buffer was allocated with: [`READ_CHUNK`] for a read chunk, which
    /// goes back to the thread's spares when done.
    input_size: usize,
    /// What `input` holds of the [`InputBudget`]: its capacity beyond [`READ_CHUNK`].
    held: Held<'a>,
    /// Keys of the multi-get at the head of `input` already answered: it stopped there at the
    /// output's high-water mark and goes on once the client has read.
    resume: usize,
    /// A `lru_crawler metadump` at the head of `input` that has written part of its dump: it
    /// goes on from here once the client has read that part.
    dump: Dump<'a>,
    /// A `stats` that walks the store (`items`, `slabs`, ...) at the head of `input`, whose
    /// walk has begun.
    stats_walk: StatsWalk,
    /// How much unconsumed input the request at the head of `input` needs, when the parser
    /// knows (a value's length); 0 otherwise. `input` has room for it.
    need: usize,
    out: Vec<u8>,
    /// Values of a multi-get that go out by reference to the stored bytes, between parts of
    /// `out`.
    spliced: Spliced,
    /// The replies memcached would not have sent yet, which some requests look at.
    unsent: Unsent,
    /// Bytes still to discard from a rejected value.
    swallow: usize,
    /// Discarding the rest of a multi-get line the budget could not hold.
    skip_line: bool,
    /// Set by `watch`: the connection now streams log lines (crate::watch).
    watcher: Option<crate::watch::WatchGuard<'a>>,
    /// memcached's reason for the close, for `watch connevents`.
    close_reason: &'static str,
    /// Counts of the requests since the last merge into the server's totals, which happens
    /// once per batch, before its replies are written.
    counters: Counters,
    /// Whether the current read's requests wrote any reply (its latency is measured then).
    wrote: bool,
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
        server.verbose_line(format_args!("<{id} new client connection"));
    }
    let mut conn = Conn {
        id,
        server,
        stream,
        input: BytesMut::new(),
        input_size: 0,
        held: Held {
            budget: &server.input_budget,
            bytes: 0,
        },
        resume: 0,
        dump: Dump::default(),
        stats_walk: StatsWalk::default(),
        need: 0,
        out: Vec::new(),
        spliced: Spliced::default(),
        unsent: Unsent::default(),
        swallow: 0,
        skip_line: false,
        watcher: None,
        close_reason: "normal",
        counters: Counters::default(),
        wrote: false,
        binary: match server.settings.protocol {
            Protocol::Ascii => Some(false),
            Protocol::Binary => Some(true),
            Protocol::Auto => None,
        },
        binary_state: BinaryState::default(),
        authenticated: server.settings.ascii_auth.is_none(),
        entry,
    };
    if server.watch.wants(crate::watch::CONNEVENTS) {
        server.watch.conn_new(&entry.addr, id);
    }
    let idle = server.settings.idle_timeout;
    loop {
        let wait = conn.stream.readable();
        let ready = match idle {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(ready) => ready,
                // As memcached: only a connection waiting for a request (or in the middle of
                // its line) is idle; one waiting for a value's data is left alone.
                Err(_) if matches!(entry.state(), ConnState::NRead | ConnState::Swallow) => {
                    continue
                }
                Err(_) => {
                    conn.counters.idle_kicks += 1;
                    conn.close_reason = "idle_timeout";
                    break;
                }
            },
            None => wait.await,
        };
        if ready.is_err() {
            break;
        }
        match conn.read().await {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => {
                conn.close_reason = "error";
                break;
            }
        }
    }
    conn.flush_counters();
    if let Some(watcher) = conn.watcher.take() {
        watcher.stream(&mut conn.stream).await;
    }
    if server.watch.wants(crate::watch::CONNEVENTS) {
        server.watch.conn_close(&entry.addr, id, conn.close_reason);
    }
}

impl<S: Socket> Conn<'_, S> {
    /// Reads what is available and handles it. `Ok(false)` when the connection should close.
    async fn read(&mut self) -> io::Result<bool> {
        let pending = self.input.len();
        let room = if self.need > pending {
            // Made when the need became known (again here if the buffer was trimmed since).
            self.need
        } else if self.input.capacity() - pending < READ_CHUNK / 4 {
            // A read chunk; for a line longer than most of one (a long multi-get), twice its
            // length, from the budget.
            if pending <= READ_CHUNK * 3 / 4 {
                READ_CHUNK
            } else {
                (2 * pending).max(pending + READ_CHUNK)
            }
        } else {
            0
        };
        if !self.make_room(room) {
            if self.binary == Some(false) && is_retrieval(&self.input) {
                // memcached answers a multi-get it has no memory for with an error once the
                // line is read, and goes on with the next request.
                self.out.extend_from_slice(GET_OUT_OF_MEMORY);
                self.counters.response_obj_oom += 1;
                self.skip_line = true;
                self.input.clear();
            } else {
                return Ok(self.close_for_memory(pending));
            }
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
        // The latency of what this read brought in: until its replies are written. A read
        // that completes no request (part of a value) or only quiet ones writes nothing and
        // is not counted.
        let started = self.server.stats.timing().then(std::time::Instant::now);
        self.wrote = false;
        let keep_open = self.handle_input().await?;
        if let Some(started) = started.filter(|_| self.wrote) {
            self.server.stats.latency.observe(started.elapsed());
        }
        self.entry.set_state(self.waiting_state());
        let pending = self.input.len();
        if pending == 0 && self.input.capacity() > 0 {
            // Nothing pending: give the buffer back so an idle connection holds none.
            self.swap_input(BytesMut::new(), 0);
            self.held.release();
        } else if self.need <= READ_CHUNK
            && (pending <= SHORT_TAIL || (self.held.bytes > 0 && pending <= READ_CHUNK / 2))
        {
            // A client that stops mid-request holds what it sent, not a read chunk (thousands
            // of slow clients), and the buffer of a large value or line that is done goes back
            // to the budget; the next read takes a chunk again.
            let rest = BytesMut::from(&self.input[..]);
            self.swap_input(rest, pending);
            self.held.release();
        }
        if self.out.is_empty() {
            spare::give_back_output(std::mem::take(&mut self.out));
        }
        Ok(keep_open)
    }

    /// Answers a `watch` line: `OK` with the connection registered as a watcher, or memcached's
    /// refusal.
    fn start_watching(&mut self, line: &[u8]) -> &'static [u8] {
        if !self.server.settings.watch_enabled {
            return crate::watch::NOT_ALLOWED;
        }
        let words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .skip(1);
        let Some(flags) = crate::watch::parse_flags(words) else {
            return b"ERROR\r\n";
        };
        match self.server.watch.add(flags) {
            Some(guard) => {
                self.watcher = Some(guard);
                reply::OK
            }
            None => crate::watch::TOO_MANY,
        }
    }

    /// A line other than a multi-get that the budget cannot hold: memcached, too, drops the
    /// client. Always false (close).
    fn close_for_memory(&self, pending: usize) -> bool {
        if self.server.verbosity.load(Ordering::Relaxed) > 0 {
            self.server.verbose_line(format_args!(
                "<{} closing: no read buffer memory left for a {pending}-byte line",
                self.id
            ));
        }
        false
    }

    async fn handle_input(&mut self) -> io::Result<bool> {
        loop {
            self.need = 0;
            self.discard_swallowed();
            let stop = if self.swallow > 0 || self.skip_line {
                Stop::NeedInput
            } else {
                self.run_batch()
            };
            // memcached answers a rejected value only once its data has been swallowed.
            if (self.swallow == 0 && !self.skip_line) || matches!(stop, Stop::Close) {
                self.write_out().await?;
            } else {
                self.flush_counters();
            }
            match stop {
                Stop::NeedInput => return Ok(true),
                Stop::Close => return Ok(false),
                Stop::Yield => {
                    self.counters.conn_yields += 1;
                    tokio::task::yield_now().await;
                }
                Stop::Step => tokio::task::yield_now().await,
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
        if self.skip_line {
            match self.input.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.input.advance(end + 1);
                    self.skip_line = false;
                }
                None => self.input.clear(),
            }
        }
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
                    Err(incomplete) => match self.wait_for(incomplete.needed) {
                        true => return Stop::NeedInput,
                        false => match self.refuse_binary() {
                            Some(stop) => return stop,
                            None => continue,
                        },
                    },
                };
                let consumed = parsed.consumed;
                let mut session = Session {
                    server: self.server,
                    out: &mut self.out,
                    counters: &mut self.counters,
                    conn_id: self.id,
                };
                let next = session.execute_binary_into(
                    parsed,
                    &mut self.binary_state,
                    Some(&mut self.spliced),
                );
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
            let parsed = match parse_command_with(&self.input, limits, LongOpaque::Run) {
                Ok(parsed) => parsed,
                Err(incomplete) => match self.wait_for(incomplete.needed) {
                    true => return Stop::NeedInput,
                    false => match self.refuse_text() {
                        Some(stop) => return stop,
                        None => continue,
                    },
                },
            };
            if verbose && self.resume == 0 && !self.dump.started() && !self.stats_walk.started() {
                let line = self.input[..parsed.consumed()]
                    .split(|b| *b == b'\n')
                    .next();
                self.server.verbose_line(format_args!(
                    "<{} {}",
                    self.id,
                    String::from_utf8_lossy(line.unwrap_or(&[]))
                ));
            }
            let consumed = parsed.consumed();
            let queue = match &parsed {
                Command::Text(Parsed {
                    outcome:
                        Err(Invalid::Reply {
                            error: ErrorReply::GetKeyTooLong,
                            ..
                        }),
                    ..
                }) => Queue::Discard,
                Command::Text(Parsed {
                    outcome: Err(Invalid::Close),
                    ..
                }) => Queue::Close,
                // `watch` is not a request the parser knows: it ends the request stream.
                Command::Text(Parsed {
                    outcome:
                        Err(Invalid::Reply {
                            error: ErrorReply::Error,
                            ..
                        }),
                    consumed,
                }) if is_watch(&self.input[..*consumed]) => Queue::Watch,
                Command::Text(Parsed {
                    outcome: Ok(Request::LruCrawler { args }),
                    ..
                }) if report::is_metadump(self.server, *args) => match self.unsent.requests {
                    0 => Queue::Dump,
                    _ => Queue::RefuseDump,
                },
                Command::Text(Parsed {
                    outcome: Ok(Request::Get { .. } | Request::MetaNoop),
                    ..
                }) => Queue::Flush,
                Command::Meta(MetaParsed {
                    outcome: Ok(request),
                    ..
                }) if request.command == MetaCommand::Noop => Queue::Flush,
                _ => Queue::Add,
            };
            match queue {
                Queue::Discard | Queue::Close => {
                    if queue == Queue::Close {
                        self.close_reason = "error";
                    }
                    self.unsent.discard(&mut self.out, &mut self.spliced)
                }
                Queue::Watch => {
                    let line = self.input[..consumed].to_vec();
                    let reply = self.start_watching(&line);
                    self.out.extend_from_slice(reply);
                    self.input.advance(consumed);
                    if self.watcher.is_some() {
                        return Stop::Close;
                    }
                    if let Some(stop) = self.after(Next::Continue) {
                        return stop;
                    }
                    continue;
                }
                Queue::RefuseDump => {
                    self.out.extend_from_slice(METADUMP_PIPELINED);
                    self.unsent.requests += 1;
                    self.input.advance(consumed);
                    if let Some(stop) = self.after(Next::Continue) {
                        return stop;
                    }
                    continue;
                }
                _ => {}
            }
            // A `stats` that walks the store, read once per step.
            let mut walk = match &parsed {
                Command::Text(Parsed {
                    outcome: Ok(Request::Stats { args }),
                    ..
                }) => report::store_walk(self.server, *args),
                _ => None,
            };
            let before = self.out.len();
            let mut session = Session {
                server: self.server,
                out: &mut self.out,
                counters: &mut self.counters,
                conn_id: self.id,
            };
            let next = match parsed {
                Command::Text(Parsed {
                    outcome:
                        Ok(Request::Get {
                            verb,
                            exptime,
                            keys,
                        }),
                    ..
                }) => {
                    if let Some(answered) = session.get_keys(
                        verb,
                        exptime,
                        keys,
                        self.resume,
                        OUT_HIGH_WATER,
                        Some(&mut self.spliced),
                    ) {
                        // The rest of the keys wait until the client has read these.
                        self.resume = answered;
                        return Stop::Yield;
                    }
                    self.resume = 0;
                    Next::Continue
                }
                Command::Text(Parsed {
                    outcome: Ok(Request::Stats { .. }),
                    ..
                }) if walk.is_some() => {
                    let words = walk.take().unwrap_or_default();
                    let step = report::stats_walk(
                        self.server,
                        session.out,
                        &words,
                        &mut self.stats_walk,
                        report::WALK_STEP,
                        OUT_HIGH_WATER,
                    );
                    if step == Progress::More {
                        // The request stays at the head of the input: the walk goes on once the
                        // worker's other connections have had their turn.
                        return Stop::Step;
                    }
                    self.stats_walk = StatsWalk::default();
                    Next::Continue
                }
                Command::Text(Parsed {
                    outcome: Ok(Request::LruCrawler { args }),
                    ..
                }) if queue == Queue::Dump => {
                    let progress = report::metadump(
                        self.server,
                        session.out,
                        args,
                        &mut self.dump,
                        OUT_HIGH_WATER,
                    );
                    if progress == Progress::More {
                        // The request stays at the head of the input: the dump goes on from
                        // `self.dump` once this part is written (the client has read what did
                        // not fit in the socket) and the worker's other clients have run.
                        return Stop::Step;
                    }
                    self.dump = Dump::default();
                    Next::Continue
                }
                command => session.execute_command_into(command, Some(&mut self.spliced)),
            };
            // A dump is written at once; a refused one is queued.
            let dumped = queue == Queue::Dump && self.out[before..].ends_with(reply::END);
            if queue == Queue::Flush || dumped {
                self.unsent = Unsent {
                    from: self.out.len(),
                    requests: 0,
                };
            } else {
                self.unsent.requests += 1;
            }
            self.input.advance(consumed);
            if dumped {
                // memcached hands the connection to its crawler for the dump and back after
                // it: requests pipelined behind the dump wait until the client sends more.
                return Stop::NeedInput;
            }
            if let Some(stop) = self.after(next) {
                return stop;
            }
        }
        Stop::Yield
    }

    /// Prepares to wait for the rest of an incomplete request, `needed` bytes in all when the
    /// parser knows: false when the budget cannot hold it.
    fn wait_for(&mut self, needed: Option<usize>) -> bool {
        let Some(needed) = needed else {
            return true;
        };
        if !self.make_room(needed) {
            return false;
        }
        self.need = needed;
        true
    }

    /// Makes `input` able to hold `total` bytes of unconsumed input (a read chunk at least). A
    /// buffer larger than [`READ_CHUNK`] is allocated to size, its excess drawn from the
    /// [`InputBudget`]: false, with `input` unchanged, when the budget lacks it.
    fn make_room(&mut self, total: usize) -> bool {
        if self.input.capacity() >= total {
            return true;
        }
        let size = total.max(READ_CHUNK);
        if !self.held.set(size - READ_CHUNK) {
            self.counters.read_buf_oom += 1;
            return false;
        }
        let mut buf = if size == READ_CHUNK {
            spare::take_input(READ_CHUNK)
        } else {
            BytesMut::with_capacity(size)
        };
        buf.extend_from_slice(&self.input);
        self.swap_input(buf, size);
        true
    }

    /// Puts `buf`, allocated with `size` bytes, in place of `input`, whose buffer goes back to
    /// the thread's spares if it is a read chunk.
    fn swap_input(&mut self, buf: BytesMut, size: usize) {
        let old = std::mem::replace(&mut self.input, buf);
        if std::mem::replace(&mut self.input_size, size) == READ_CHUNK {
            spare::give_back_input(old, READ_CHUNK);
        }
    }

    /// Refuses the text or meta store at the head of `input`, whose value the budget cannot
    /// hold, as memcached refuses a value it has no memory for: `SERVER_ERROR out of memory
    /// storing object` (silenced by `noreply`), the key's current item removed for a set, the
    /// data discarded as it arrives. `Some` when the batch must stop.
    fn refuse_text(&mut self) -> Option<Stop> {
        let server = self.server;
        let now = server.clock.now();
        // Parsed as if no value could fit, which yields the key, the data length and noreply.
        let probe = Limits {
            item_size_max: 0,
            ..server.limits.clone()
        };
        let (consumed, swallow) = match parse_command(&self.input, &probe) {
            Ok(Command::Text(Parsed {
                consumed,
                outcome:
                    Err(Invalid::TooLarge {
                        kind,
                        key,
                        swallow,
                        noreply,
                    }),
            })) => {
                if kind == StoreKind::Set {
                    server.cache.delete(key, now);
                }
                if !noreply {
                    self.out.extend_from_slice(reply::OUT_OF_MEMORY_STORING);
                }
                (consumed, swallow)
            }
            Ok(Command::Meta(MetaParsed {
                consumed,
                outcome: Err(MetaReject {
                    unlink, swallow, ..
                }),
            })) => {
                if let Some(key) = unlink {
                    server.cache.delete(key.as_bytes(), now);
                }
                self.out.extend_from_slice(reply::OUT_OF_MEMORY_STORING);
                (consumed, swallow)
            }
            // Only a store announces data; anything else is not ours to answer.
            _ => return Some(Stop::Close),
        };
        self.counters.store_no_memory += 1;
        self.input.advance(consumed);
        self.after(Next::Swallow(swallow))
    }

    /// [`Conn::refuse_text`] for a binary store: memcached's `Out of memory` status (sent
    /// for quiet commands too, as every error is). A packet that is not a store, or comes
    /// before a required SASL authentication, closes the connection instead.
    fn refuse_binary(&mut self) -> Option<Stop> {
        let server = self.server;
        let probe = Limits {
            item_size_max: 0,
            ..server.limits.clone()
        };
        let may_store = server.settings.sasl_users.is_none() || self.binary_state.authenticated;
        match parse_binary(&self.input, &probe) {
            Ok(BinaryParsed {
                consumed,
                outcome: BinaryOutcome::Reject(reject),
            }) if reject.status == Status::TooLarge && may_store => {
                binary::error(&mut self.out, &reject.header, Status::OutOfMemory);
                if let Some(key) = reject.unlink {
                    server.cache.delete(key, server.clock.now());
                }
                let swallow = reject.swallow;
                self.counters.store_no_memory += 1;
                self.input.advance(consumed);
                self.after(Next::Swallow(swallow))
            }
            _ => Some(Stop::Close),
        }
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
        (self.out.len() + self.spliced.bytes >= OUT_HIGH_WATER).then_some(Stop::Yield)
    }

    /// Writes the batch's replies, once its counts are in the server's totals: memcached
    /// counts a request before it replies, so a client that has its reply and then asks
    /// `stats` (on any connection) or scrapes the metrics sees that request counted.
    async fn write_out(&mut self) -> io::Result<()> {
        // memcached, too, writes its queue when it runs out of complete requests.
        self.unsent = Unsent::default();
        if self.out.is_empty() {
            self.flush_counters();
            return Ok(());
        }
        // Counted as handed to the kernel, so that one merge per batch carries them too; a
        // write that fails closes the connection with its bytes counted.
        self.counters.bytes_written += (self.out.len() + self.spliced.bytes) as u64;
        self.flush_counters();
        self.wrote = true;
        if self.spliced.values.is_empty() {
            self.stream.write_all(&self.out).await?;
        } else {
            self.write_spliced().await?;
        }
        self.out.clear();
        self.spliced = Spliced::default();
        Ok(())
    }

    /// Writes `out` with the spliced values in their places, in vectored writes.
    async fn write_spliced(&mut self) -> io::Result<()> {
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(2 * self.spliced.values.len() + 1);
        let mut at = 0;
        for (offset, value) in &self.spliced.values {
            pieces.push(&self.out[at..*offset]);
            pieces.push(value);
            at = *offset;
        }
        pieces.push(&self.out[at..]);
        let mut pieces = &mut pieces[..];
        while !pieces.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = pieces
                .iter()
                .take(MAX_IOVECS)
                .map(|piece| io::IoSlice::new(piece))
                .collect();
            let mut written = self.stream.write_vectored(&slices).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while let Some(first) = pieces.first_mut() {
                if written < first.len() {
                    *first = &first[written..];
                    break;
                }
                written -= first.len();
                pieces = &mut pieces[1..];
            }
        }
        Ok(())
    }

    fn flush_counters(&mut self) {
        self.server.stats.merge(&self.counters);
        self.counters = Counters::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::Settings;

    /// A server on a loopback port; every accepted client is served by [`serve`].
    async fn start(settings: Settings) -> (Arc<Server>, std::net::SocketAddr) {
        let server = Server::new(settings);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = server.clone();
        tokio::spawn(async move {
            let mut id = 0;
            while let Ok((stream, _)) = listener.accept().await {
                id += 1;
                let server = shared.clone();
                tokio::spawn(async move {
                    let entry = ConnEntry::new(String::new(), None, ConnState::NewCmd, 0);
                    serve(&server, stream, id, &entry).await;
                });
            }
        });
        (server, addr)
    }

    /// Reads until the reply ends with `end`.
    async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !reply.ends_with(end) {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
        reply
    }

    async fn call(addr: std::net::SocketAddr, request: &[u8], end: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_until(&mut stream, end).await
    }

    fn set(key: &str, value: &[u8]) -> Vec<u8> {
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        req
    }

    /// Waits until the budget's use is `bytes` (connections give theirs back as they close).
    async fn budget_used(server: &Server, bytes: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.input_budget.used() != bytes {
            assert!(
                Instant::now() < deadline,
                "{} used",
                server.input_budget.used()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_multiget_beyond_the_high_water_mark_resumes_where_it_stopped() {
        let (_server, addr) = start(Settings::default()).await;
        let value = |i: usize| vec![b'a' + (i % 26) as u8; 20_000 + i];
        let mut load = Vec::new();
        for i in 0..40 {
            load.extend(set(&format!("k{i}"), &value(i)));
        }
        let stored = call(addr, &load, &b"STORED\r\n".repeat(40)).await;
        assert_eq!(stored.len(), 8 * 40);
        // Hits, misses and repeats, far more than the high-water mark in all.
        let keys: Vec<String> = (0..120)
            .map(|n| match n % 4 {
                3 => format!("missing{n}"),
                _ => format!("k{}", (n * 7) % 40),
            })
            .collect();
        let mut expected = Vec::new();
        for key in &keys {
            if let Some(i) = key.strip_prefix('k').and_then(|i| i.parse::<usize>().ok()) {
                let v = value(i);
                expected.extend(format!("VALUE {key} 0 {}\r\n", v.len()).into_bytes());
                expected.extend(v);
                expected.extend_from_slice(b"\r\n");
            }
        }
        let version = format!("VERSION {}\r\n", crate::execute::PROTOCOL_VERSION);
        expected.extend_from_slice(b"END\r\n");
        expected.extend_from_slice(version.as_bytes());
        assert!(expected.len() > 4 * OUT_HIGH_WATER);
        let request = format!("get {}\r\nversion\r\n", keys.join(" "));
        let reply = call(addr, request.as_bytes(), version.as_bytes()).await;
        assert!(
            reply == expected,
            "the reply differs from the values in order"
        );

        // The same values by a pipeline of mg, those past the first few sent by reference.
        let mut request = Vec::new();
        let mut expected = Vec::new();
        for key in &keys {
            request.extend(format!("mg {key} s v k O1\r\n").into_bytes());
            match key.strip_prefix('k').and_then(|i| i.parse::<usize>().ok()) {
                Some(i) => {
                    let v = value(i);
                    let len = v.len();
                    expected.extend(format!("VA {len} s{len} k{key} O1\r\n").into_bytes());
                    expected.extend(v);
                    expected.extend_from_slice(b"\r\n");
                }
                None => expected.extend(format!("EN k{key} O1\r\n").into_bytes()),
            }
        }
        request.extend_from_slice(b"mn\r\n");
        expected.extend_from_slice(b"MN\r\n");
        let reply = call(addr, &request, b"MN\r\n").await;
        let at = equal_up_to(&reply, &expected);
        assert!(
            reply == expected,
            "the mg replies differ from the values in order at byte {at}: {:?}",
            String::from_utf8_lossy(&reply[at.saturating_sub(40)..(at + 40).min(reply.len())])
        );
    }

    /// How many leading bytes `a` and `b` have in common.
    fn equal_up_to(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    /// A binary request packet with no extras and no value.
    fn binary_get(opcode: u8, key: &[u8], opaque: u32) -> Vec<u8> {
        let mut packet = vec![0x80, opcode];
        packet.extend_from_slice(&(key.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0]);
        packet.extend_from_slice(&(key.len() as u32).to_be_bytes());
        packet.extend_from_slice(&opaque.to_be_bytes());
        packet.extend_from_slice(&[0; 8]);
        packet.extend_from_slice(key);
        packet
    }

    #[tokio::test]
    async fn binary_gets_of_large_values_come_whole_and_in_order() {
        let (_server, addr) = start(Settings::default()).await;
        // Around the size from which values go out by reference, and far past it in all.
        let value = |i: usize| vec![b'a' + (i % 26) as u8; 6_000 + 1_000 * i];
        let mut load = Vec::new();
        for i in 0..30 {
            load.extend(set(&format!("k{i}"), &value(i)));
        }
        call(addr, &load, &b"STORED\r\n".repeat(30)).await;
        const GETK: u8 = 0x0c;
        const GETKQ: u8 = 0x0d;
        const GET: u8 = 0x00;
        let mut request = Vec::new();
        let mut expected = Vec::new();
        for n in 0..150u32 {
            let i = (n as usize * 7) % 30;
            let missing = n % 5 == 4;
            let key = if missing {
                format!("missing{n}")
            } else {
                format!("k{i}")
            };
            let opcode = [GETKQ, GETK, GET][n as usize % 3];
            request.extend(binary_get(opcode, key.as_bytes(), n));
            if missing && opcode == GETKQ {
                continue;
            }
            let (status, key_part, body): (u16, &[u8], Vec<u8>) = match (missing, opcode) {
                (true, GET) => (1, b"", b"Not found".to_vec()),
                (true, _) => (1, key.as_bytes(), Vec::new()),
                (false, GET) => (0, b"", value(i)),
                (false, _) => (0, key.as_bytes(), value(i)),
            };
            let extras: &[u8] = if missing { &[] } else { &[0, 0, 0, 0] };
            expected.extend_from_slice(&[0x81, opcode]);
            expected.extend_from_slice(&(key_part.len() as u16).to_be_bytes());
            expected.extend_from_slice(&[extras.len() as u8, 0]);
            expected.extend_from_slice(&status.to_be_bytes());
            let total = extras.len() + key_part.len() + body.len();
            expected.extend_from_slice(&(total as u32).to_be_bytes());
            expected.extend_from_slice(&n.to_be_bytes());
            // The CAS is the item's: compared below by position, not value.
            expected.extend_from_slice(&[0; 8]);
            expected.extend_from_slice(extras);
            expected.extend_from_slice(key_part);
            expected.extend(body);
        }
        request.extend(binary_get(0x0a, b"", 0xffff));
        let mut noop = vec![0x81, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        noop.extend_from_slice(&0xffffu32.to_be_bytes());
        noop.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&noop);
        assert!(expected.len() > 4 * OUT_HIGH_WATER);
        let mut reply = call(addr, &request, &noop).await;
        // Blank out the CAS of each response packet.
        let mut at = 0;
        while at + 24 <= reply.len() {
            let body = u32::from_be_bytes(reply[at + 8..at + 12].try_into().unwrap()) as usize;
            reply[at + 16..at + 24].fill(0);
            at += 24 + body;
        }
        let same = equal_up_to(&reply, &expected);
        assert!(
            reply == expected,
            "{} bytes expected, {} received, equal up to byte {same}",
            expected.len(),
            reply.len()
        );
    }

    #[tokio::test]
    async fn values_beyond_the_read_budget_are_refused_and_swallowed() {
        let settings = Settings {
            read_buf_mem_limit: 1024 * 1024,
            ..Settings::default()
        };
        let (server, addr) = start(settings).await;
        let shown = call(addr, b"stats settings\r\n", b"END\r\n").await;
        let shown = String::from_utf8_lossy(&shown);
        assert!(
            shown.contains("STAT read_buf_mem_limit 1048576\r\n"),
            "{shown}"
        );
        assert_eq!(
            call(addr, &set("old", b"kept until a failed set"), b"\r\n").await,
            b"STORED\r\n"
        );
        // Holds most of the budget: a 900 KB value, all but its end sent.
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder
            .write_all(&set("held", &[b'h'; 900_000])[..500_000])
            .await
            .unwrap();
        budget_used(&server, set("held", &[0; 900_000]).len() - READ_CHUNK).await;

        let big = [b'x'; 300_000];
        let mut refused = set("old", &big);
        refused.extend(format!("set quiet 0 0 {} noreply\r\n", big.len()).into_bytes());
        refused.extend_from_slice(&big);
        refused.extend_from_slice(b"\r\n");
        refused.extend(format!("ms meta {} T0\r\n", big.len()).into_bytes());
        refused.extend_from_slice(&big);
        refused.extend_from_slice(b"\r\nget old\r\n");
        let reply = call(addr, &refused, b"END\r\n").await;
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "SERVER_ERROR out of memory storing object\r\n\
             SERVER_ERROR out of memory storing object\r\n\
             END\r\n",
            "noreply silences the error; a failed set removes the old value"
        );

        // A binary SETQ: its error is sent, quiet or not.
        let mut packet = vec![0x80, 0x11, 0, 1, 8, 0, 0, 0];
        packet.extend_from_slice(&(8 + 1 + big.len() as u32).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0; 8]);
        packet.push(b'b');
        packet.extend_from_slice(&big);
        packet.extend_from_slice(&[0x80, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0; 12]);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&packet).await.unwrap();
        let mut header = [0u8; 24];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x81);
        assert_eq!(header[1], 0x11, "the SETQ's answer");
        assert_eq!(u16::from_be_bytes([header[6], header[7]]), 0x82);
        assert_eq!(&header[12..16], &[0, 0, 0, 7], "its opaque");
        let mut body = vec![0u8; u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize];
        stream.read_exact(&mut body).await.unwrap();
        assert_eq!(body, b"Out of memory");
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[1], 0x0a, "then the NOOP's");

        // The held value completes; once it is stored the budget is free again.
        holder
            .write_all(&set("held", &[b'h'; 900_000])[500_000..])
            .await
            .unwrap();
        assert_eq!(read_until(&mut holder, b"\r\n").await, b"STORED\r\n");
        budget_used(&server, 0).await;
        assert_eq!(call(addr, &set("old", &big), b"\r\n").await, b"STORED\r\n");
    }

    #[tokio::test]
    async fn a_multiget_line_beyond_the_read_budget_is_refused() {
        let settings = Settings {
            read_buf_mem_limit: 1024 * 1024,
            ..Settings::default()
        };
        let (server, addr) = start(settings).await;
        let mut long = TcpStream::connect(addr).await.unwrap();
        let line = format!("get{}", " key".repeat(1_000_000));
        long.write_all(line.as_bytes()).await.unwrap();
        // The rest of the line is discarded as it arrives, holding nothing of the budget.
        budget_used(&server, 0).await;
        long.write_all(b"\r\nversion\r\n").await.unwrap();
        let expected = format!(
            "SERVER_ERROR out of memory writing get response\r\nVERSION {}\r\n",
            crate::execute::PROTOCOL_VERSION
        );
        let reply = read_until(&mut long, expected.as_bytes()).await;
        assert_eq!(reply, expected.as_bytes());
    }
}
