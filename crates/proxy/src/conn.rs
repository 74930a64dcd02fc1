//! One pipelined connection to a cache server, as a task: its writer half copies jobs into one
//! write buffer (many clients' requests leave in one `write`), and its reader half parses
//! replies with [`parse_response`] and completes the jobs in order: memcached answers a
//! connection's requests in the order it received them, so the oldest job in flight owns the
//! next reply.
//!
//! Plain gets waiting in the same write buffer are merged into one multi-get (`get a` and
//! `get b c` go out as `get a b c`), and its reply is split back among their callers.
//! memcached writes a reply per get it is sent; per multi-get it writes once, which under many
//! concurrent clients halves what the backend and the proxy spend per request.
//!
//! Every reply is verified before it is passed on, so that a server that sends a reply nobody
//! asked for (or leaves one out) cannot make the proxy hand each caller its neighbour's reply
//! from then on:
//! - a get's values must name keys it asked for, in the order asked (the server answers hits in
//!   that order);
//! - a meta request's reply must carry the request's opaque token (forward.rs gives a quiet one
//!   a token of the proxy's: a quiet request may have no reply, so only a token tells its reply
//!   from a stray one);
//! - text commands answered by one line (set, delete, incr, ...) and meta requests without a
//!   token carry nothing to check, so a batch that holds any of them ends with a sync point:
//!   the replies read before it must be exactly one per request, and they are handed to their
//!   callers only once the sync point's reply is where it belongs. The sync point is the
//!   batch's last request when that is a get (its values name its keys, or it is a bare `END`:
//!   no one-line reply passes for that, so a reply too many or too few before it shows; an
//!   error line, which names nothing, does not count and fails the batch), and otherwise an
//!   `mn` added to the batch, whose `MN` nothing else produces.
//!
//! On any mismatch the connection is closed with every request on it failed. A batch of gets
//! and tokened meta requests needs no sync point: its replies check themselves. (Tokens on
//! every request would cost a rewrite of every request and reply. An `mn` after every batch of
//! writes cost 7–9% of the proxy's CPU per request under 90% gets / 10% sets, where nearly
//! every batch holds a set; most such batches end with a get.)
//!
//! A connection whose oldest job is overdue is given up on (its remaining jobs fail at once),
//! because a server that answers nothing — a stopped process, a dead host — would otherwise hold
//! every later job on that connection too. That stall is one failure of the server (see
//! [`Health::failed`]), however many requests it failed. The server may still apply what
//! reached it, later than a write sent on another connection: the connection is retired, not
//! reset, and the keys written on it are fenced until the server closes it ([`drain`], and
//! health.rs).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use keepcached_protocol::response::{parse_response, MetaCode, Response};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::backend::{BackendError, Call, ErrorKind, Expect, Opaque, Reply, Value};
use crate::health::{Health, Settings};

/// A writer stops batching and writes once this much is buffered.
const WRITE_BATCH: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Gets merged into one multi-get stop growing its line here (memcached reads a long get line
/// in pieces; a bound keeps each reply a reasonable size).
const MERGED_LINE_MAX: usize = 8 * 1024;
/// The sync point that ends a batch holding replies that cannot check themselves, and its reply.
const SYNC: &[u8] = b"mn\r\n";
const SYNC_REPLY: &[u8] = b"MN\r\n";
/// The longest reply with a data block a server may announce: memcached's largest item size
/// (`-I 1024m`) and a reply line.
const MAX_REPLY: usize = (1 << 30) + 64 * 1024;

/// Opens a connection to a server. Dropped, it is closed abortively (SO_LINGER 0: a reset, and
/// whatever is still queued in this host's kernel is dropped): a connection is only ever closed
/// because it failed or the proxy stops. One that failed while the server may still apply what
/// was sent on it is not dropped but retired ([`drain`]), and the keys it carried are fenced
/// until the server has closed it.
pub async fn connect(addr: &Arc<str>, settings: &Settings) -> Result<TcpStream, BackendError> {
    let error = |reason: String| BackendError::Connect {
        addr: addr.clone(),
        reason,
    };
    match tokio::time::timeout(settings.connect_timeout(), TcpStream::connect(&**addr)).await {
        Ok(Ok(stream)) => {
            // Requests are small and latency-bound; Nagle would hold them back.
            stream.set_nodelay(true).map_err(|e| error(e.to_string()))?;
            socket2::SockRef::from(&stream)
                .set_linger(Some(std::time::Duration::ZERO))
                .map_err(|e| error(e.to_string()))?;
            Ok(stream)
        }
        Ok(Err(e)) => Err(error(e.to_string())),
        Err(_) => Err(error(format!(
            "no answer within {} ms",
            settings.connect_timeout_ms()
        ))),
    }
}

/// A request handed to a connection task.
#[derive(Debug)]
pub struct Job {
    pub call: Call,
    pub reply: ReplyTx,
    pub deadline: Instant,
}

/// Where a caller waits for its reply.
pub type ReplyTx = oneshot::Sender<Result<Reply, BackendError>>;

/// A request whose bytes are in the write buffer or written, and whose reply is awaited.
#[derive(Debug)]
struct InFlight {
    expect: Expect,
    /// How many values its reply may hold at most (0 unless a get), to size their list once.
    keys: usize,
    waiter: Waiter,
    /// The oldest deadline of its callers.
    deadline: Instant,
    /// The opaque token its reply must carry (a meta request).
    opaque: Option<Opaque>,
    /// A get's request line, whose keys its values must name (a merged get's are its callers').
    head: Option<Bytes>,
    /// Its reply waits for the batch's sync point before it is handed over.
    held: bool,
    /// A get that ends a batch of held replies, in place of an `mn`: its verified reply
    /// releases them.
    anchor: bool,
}

/// Who a reply is for: one caller, or every caller whose get went out in one merged multi-get.
#[derive(Debug)]
enum Waiter {
    One(ReplyTx),
    /// Each caller's own request line (to pick its values out of the shared reply), in the order
    /// their keys appear in the merged line.
    Merged(Vec<(Bytes, ReplyTx)>),
    /// The `mn` that ends a batch: its `MN` releases the replies read before it.
    Sync,
}

impl Waiter {
    fn deliver(self, result: Result<Reply, BackendError>) {
        match self {
            Waiter::One(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Sync => {}
            Waiter::Merged(callers) => match result {
                Ok(Reply::Values(values)) => {
                    // The server answers hits in the order the keys were asked (a key asked
                    // twice, twice), so one pass hands each caller the hits of its own keys:
                    // the next run of values.
                    let mut values = values.into_iter();
                    for (head, tx) in callers {
                        let mut hits = 0;
                        for key in get_keys(&head) {
                            if values.as_slice().get(hits).is_some_and(|v| v.key() == key) {
                                hits += 1;
                            }
                        }
                        let mine = values.by_ref().take(hits).collect();
                        let _ = tx.send(Ok(Reply::Values(mine)));
                    }
                }
                other => {
                    for (_, tx) in callers {
                        let _ = tx.send(other.clone());
                    }
                }
            },
        }
    }
}

/// The verb of a plain `get`/`gets` line, the requests that may share one multi-get.
fn get_verb(call: &Call) -> Option<&'static [u8]> {
    if call.expect != Expect::Values || call.data.is_some() {
        return None;
    }
    [&b"get"[..], b"gets"]
        .into_iter()
        .find(|verb| call.head.starts_with(verb) && call.head.get(verb.len()) == Some(&b' '))
}

/// The keys of a `get`/`gets` line as [`forward::get`](crate::forward::get) writes it.
fn get_keys(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let start = head
        .iter()
        .position(|b| *b == b' ')
        .map_or(head.len(), |i| i + 1);
    let end = head.len().saturating_sub(2).max(start);
    head[start..end]
        .split(|b| *b == b' ')
        .filter(|k| !k.is_empty())
}

/// One pipelined connection: connects at once, serves until the connection fails, fails what
/// was in flight, and connects again when the next job arrives or a probe finds the server up.
///
/// Connects do not wait for a job: all of a server's connections start together at startup
/// (and after the server was down, when the probe finds it up), so memcached, which hands each
/// accepted connection to its next worker thread in turn, spreads them over its threads. Opened
/// one by one on first use, with other clients connecting in between, two of them could share
/// one thread and leave the server's other threads idle.
pub async fn connection_task(health: Arc<Health>, mut jobs: mpsc::Receiver<Job>) {
    let (addr, settings) = (&health.addr, &health.settings);
    let mut opened = connect_unasked(addr, settings)
        .await
        .map(|stream| (stream, None));
    loop {
        let (stream, first) = match opened.take() {
            Some(opened) => opened,
            None => match reopen(&health, &mut jobs).await {
                Some(opened) => opened,
                None => return,
            },
        };
        let pending = Mutex::new(VecDeque::new());
        let (error, rd, wr) = serve(addr, settings, stream, first, &mut jobs, &pending).await;
        let pending = pending.into_inner();
        if let BackendError::Protocol { detail, .. } | BackendError::OutOfStep { detail, .. } =
            &error
        {
            health
                .counters
                .local()
                .bad_replies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                backend = %addr,
                reason = %detail,
                failed_requests = pending.len(),
                "closing a backend connection: its reply does not match the request"
            );
        }
        if !pending.is_empty() || !matches!(error, BackendError::Closed { .. }) {
            // A stall or a broken connection under requests: one failure of the server,
            // however many requests it fails.
            health.failed(&error);
        }
        if !*health.shutdown.borrow() {
            // The server may have restarted (empty, or with an older `-e` file): the next
            // connection would reach the new process, so it is not read until its supervisor
            // has seen who it is.
            health.unverified();
            // The server is still there and may yet apply what was sent (a stalled or
            // misbehaving server; one that closed the connection is done with it): retired
            // before the requests fail, so the misses their callers record are fenced by it.
            if !pending.is_empty() && !matches!(error, BackendError::Closed { .. }) {
                let fence = health.retire();
                tokio::spawn(drain(health.clone(), fence, rd, wr));
            }
        }
        for job in pending {
            job.waiter.deliver(Err(error.clone()));
        }
    }
}

/// Waits until the server is finished with a retired connection: ends the proxy's side after
/// what was written (a request cut short there can never be completed, so it is dropped) and
/// reads, discarding the replies, until the server closes it or resets it. memcached and
/// keepcached's server close a connection only after handling everything read before the end
/// of it, so from then on nothing sent on it can be applied. The fence also ends when the
/// proxy stops, or when the server turns out to be another process (resync.rs).
///
/// Not reset at once, as a connection that failed otherwise is: what the server had already
/// received would still be applied, at an unknown time. An orderly end lets the kernel go on
/// sending what it still holds (to a server behind a cut link, once the link is back); the
/// fence covers that too, as it lasts until the server has closed the connection.
async fn drain(health: Arc<Health>, fence: u64, mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf) {
    let mut shutdown = health.shutdown.clone();
    let started = Instant::now();
    let finished = async {
        if wr.shutdown().await.is_err() {
            return;
        }
        let mut discard = vec![0; READ_CHUNK];
        while let Ok(n) = rd.read(&mut discard).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::select! {
        () = finished => tracing::debug!(
            backend = %health.addr,
            ms = started.elapsed().as_millis() as u64,
            "the server closed a connection given up on"
        ),
        () = health.lifted(fence) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    health.drained(fence);
}

/// Waits for a reason to connect again (a job, or a probe finding the server up) and connects:
/// the connection and the job that asked for it, if one did. `None` once the proxy shuts down.
async fn reopen(
    health: &Health,
    jobs: &mut mpsc::Receiver<Job>,
) -> Option<(TcpStream, Option<Job>)> {
    let (addr, settings) = (&health.addr, &health.settings);
    loop {
        let first = tokio::select! {
            job = jobs.recv() => job?,
            () = health.back_up.notified() => match connect_unasked(addr, settings).await {
                Some(stream) => return Some((stream, None)),
                None => continue,
            },
        };
        // The callers have no timers of their own: the first job's deadline bounds the connect.
        let connected = match tokio::time::timeout_at(first.deadline, connect(addr, settings)).await
        {
            Ok(connected) => connected,
            Err(_) => Err(BackendError::Timeout {
                addr: addr.clone(),
                ms: settings.request_timeout_ms(),
            }),
        };
        match connected {
            Ok(stream) => return Some((stream, Some(first))),
            Err(error) => {
                health.failed(&error);
                // The jobs already queued would wait for the same unreachable server.
                let _ = first.reply.send(Err(error.clone()));
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// A connect no request asked for (at startup, or when a probe found the server up). Its
/// failure fails no request: the next job connects again, and counts that.
async fn connect_unasked(addr: &Arc<str>, settings: &Settings) -> Option<TcpStream> {
    match connect(addr, settings).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(backend = %addr, %error, "connection not opened ahead of a request");
            None
        }
    }
}

/// Runs the writer and reader halves of one connection until either fails: why, and the
/// halves (to be retired, or dropped).
async fn serve(
    addr: &Arc<str>,
    settings: &Settings,
    stream: TcpStream,
    first: Option<Job>,
    jobs: &mut mpsc::Receiver<Job>,
    pending: &Mutex<VecDeque<InFlight>>,
) -> (BackendError, OwnedReadHalf, OwnedWriteHalf) {
    let (mut rd, mut wr) = stream.into_split();
    let sent = Notify::new();
    let closed = || BackendError::Closed { addr: addr.clone() };
    let overdue = || BackendError::Timeout {
        addr: addr.clone(),
        ms: settings.request_timeout_ms(),
    };
    let writer = async {
        let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut open = None;
        let mut next = first;
        loop {
            let Some(job) = next.take() else {
                match jobs.recv().await {
                    Some(job) => next = Some(job),
                    // The proxy is shutting down.
                    None => return closed(),
                }
                continue;
            };
            // A job that waited past its deadline (behind a full queue or a reconnect) fails
            // without being sent, as its caller would have given up on it.
            let now = Instant::now();
            let mut batch = Some(job);
            // Requests queued in this batch, and whether one has a reply that cannot be checked
            // by itself.
            let (mut queued, mut unchecked) = (0, false);
            while let Some(job) = batch.take() {
                if job.deadline <= now {
                    let _ = job.reply.send(Err(overdue()));
                } else if let Some(checked) = enqueue(job, &mut wbuf, pending, &mut open) {
                    queued += 1;
                    unchecked |= !checked;
                }
                if wbuf.len() < WRITE_BATCH {
                    batch = jobs.try_recv().ok();
                }
            }
            if wbuf.is_empty() {
                continue;
            }
            if unchecked {
                let mut pending = pending.lock();
                for job in pending.iter_mut().rev().take(queued) {
                    job.held = true;
                }
                // A batch that ends with a get needs no `mn`: the get's reply is its sync point.
                if let Some(last) = pending.back_mut().filter(|p| p.expect == Expect::Values) {
                    last.held = false;
                    last.anchor = true;
                } else {
                    wbuf.extend_from_slice(SYNC);
                    pending.push_back(InFlight {
                        expect: Expect::Line,
                        keys: 0,
                        waiter: Waiter::Sync,
                        deadline: now + settings.request_timeout(),
                        opaque: None,
                        head: None,
                        held: false,
                        anchor: false,
                    });
                }
            }
            sent.notify_one();
            if wr.write_all(&wbuf).await.is_err() {
                return closed();
            }
            wbuf.clear();
            open = None;
        }
    };
    let reader = async {
        // Replies read since the last sync point, handed over at the next one.
        let mut ready: Vec<(Waiter, Reply)> = Vec::new();
        let error = read_replies(addr, settings, &mut rd, pending, &sent, &mut ready).await;
        for (waiter, _) in ready {
            waiter.deliver(Err(error.clone()));
        }
        error
    };
    let error = tokio::select! {
        error = writer => error,
        error = reader => error,
    };
    (error, rd, wr)
}

/// The reader half of a connection: parses replies, verifies each against its request and
/// hands them over at each sync point, until the connection fails (the returned error).
async fn read_replies(
    addr: &Arc<str>,
    settings: &Settings,
    rd: &mut OwnedReadHalf,
    pending: &Mutex<VecDeque<InFlight>>,
    sent: &Notify,
    ready: &mut Vec<(Waiter, Reply)>,
) -> BackendError {
    let closed = || BackendError::Closed { addr: addr.clone() };
    let overdue = || BackendError::Timeout {
        addr: addr.clone(),
        ms: settings.request_timeout_ms(),
    };
    let out_of_step = |detail: String| BackendError::OutOfStep {
        addr: addr.clone(),
        detail,
    };
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut partial = Partial::default();
    // One timer for the connection, moved only when it fires or a job is due before it (a
    // timer armed per read cost more than the reads). It never runs later than the oldest
    // job's deadline; when it fires early, it is set again for the oldest job then.
    let timer = tokio::time::sleep(settings.request_timeout());
    tokio::pin!(timer);
    loop {
        loop {
            let front = pending.lock().front().map(|p| (p.expect, p.keys));
            let Some((expect, keys)) = front else {
                if !rbuf.is_empty() {
                    return out_of_step(format!(
                        "a reply nobody asked for: {:?}",
                        String::from_utf8_lossy(&rbuf[..rbuf.len().min(64)])
                    ));
                }
                break;
            };
            let reply = match assemble(&mut rbuf, expect, keys, &mut partial) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(detail) => {
                    return BackendError::Protocol {
                        addr: addr.clone(),
                        detail,
                    }
                }
            };
            let Some(job) = pending.lock().pop_front() else {
                break;
            };
            let is_sync = matches!(
                reply,
                Reply::Meta {
                    code: MetaCode::Noop,
                    ..
                }
            );
            match job.waiter {
                Waiter::Sync if is_sync => {
                    for (waiter, reply) in ready.drain(..) {
                        waiter.deliver(Ok(reply));
                    }
                }
                Waiter::Sync => {
                    return out_of_step(format!(
                        "{} where the batch ended: a reply nobody asked for",
                        describe(&reply)
                    ))
                }
                waiter => {
                    let checked = if is_sync {
                        Err("the batch ended before this request's reply".to_string())
                    } else {
                        verify(reply, job.opaque.as_ref()).and_then(|reply| {
                            if asked_for(&reply, &waiter, job.head.as_ref()) {
                                Ok(reply)
                            } else {
                                Err(format!(
                                    "{} to a get that did not ask for them",
                                    describe(&reply)
                                ))
                            }
                        })
                    };
                    let checked = checked.and_then(|reply| match reply {
                        // An error line names no key: it could be a stray or another
                        // request's reply, so it cannot vouch for the replies before it.
                        Reply::Error { .. } if job.anchor => Err(format!(
                            "{} where the batch's last get was answered",
                            describe(&reply)
                        )),
                        reply => Ok(reply),
                    });
                    match checked {
                        Ok(reply) if job.held => ready.push((waiter, reply)),
                        Ok(reply) => {
                            // An anchor's reply releases the replies held before it (none are
                            // held otherwise).
                            for (waiter, reply) in ready.drain(..) {
                                waiter.deliver(Ok(reply));
                            }
                            waiter.deliver(Ok(reply));
                        }
                        // The request taken off the queue fails with the others.
                        Err(detail) => {
                            let error = out_of_step(detail);
                            waiter.deliver(Err(error.clone()));
                            return error;
                        }
                    }
                }
            }
        }
        let deadline = pending.lock().front().map(|p| p.deadline);
        if let Some(d) = deadline.filter(|d| *d < timer.deadline()) {
            timer.as_mut().reset(d);
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = rd.read_buf(&mut rbuf) => match read {
                Ok(0) | Err(_) => return closed(),
                Ok(_) => {}
            },
            _ = sent.notified() => {}
            () = &mut timer => {
                let now = Instant::now();
                match pending.lock().front().map(|p| p.deadline) {
                    Some(d) if d <= now => return overdue(),
                    Some(d) => timer.as_mut().reset(d),
                    None => timer.as_mut().reset(now + settings.request_timeout()),
                }
            }
        }
    }
}

/// Whether a get's values name keys it asked for, in the order asked (`head`: its line; a
/// merged get's lines are its callers').
fn asked_for(reply: &Reply, waiter: &Waiter, head: Option<&Bytes>) -> bool {
    let Reply::Values(values) = reply else {
        return true;
    };
    match (waiter, head) {
        (Waiter::Merged(callers), _) => {
            in_order(callers.iter().flat_map(|(head, _)| get_keys(head)), values)
        }
        (_, Some(head)) => in_order(get_keys(head), values),
        (_, None) => values.is_empty(),
    }
}

/// Whether each value names one of `keys`, each after the one before.
fn in_order<'a>(mut keys: impl Iterator<Item = &'a [u8]>, values: &[Value]) -> bool {
    values
        .iter()
        .all(|value| keys.any(|key| key == value.key()))
}

/// A reply, shortly, for a log line.
fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Values(values) => format!(
            "{} values ({})",
            values.len(),
            values
                .first()
                .map_or_else(String::new, |v| String::from_utf8_lossy(v.key())
                    .into_owned())
        ),
        Reply::Meta { raw, .. } => {
            let line = raw.split(|&b| b == b'\r').next().unwrap_or_default();
            format!("{:?}", String::from_utf8_lossy(&line[..line.len().min(64)]))
        }
        other => format!("{other:?}"),
    }
}

/// Checks that a meta reply carries its request's opaque token (error lines carry none, and a
/// quiet request's left-out reply has nothing to check), and takes out a token the proxy added.
fn verify(reply: Reply, opaque: Option<&Opaque>) -> Result<Reply, String> {
    let (Some(opaque), Reply::Meta { flags, raw, .. }) = (opaque, &reply) else {
        return Ok(reply);
    };
    let token = flags
        .split(|&b| b == b' ')
        .find_map(|t| t.strip_prefix(b"O"));
    if token != Some(&opaque.token[..]) {
        return Err(format!(
            "{} to a request with opaque {:?}",
            describe(&reply),
            String::from_utf8_lossy(&opaque.token)
        ));
    }
    if !opaque.added {
        return Ok(reply);
    }
    // The line without ` O<token>`, then the data block as it came.
    let line_end = raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let line = &raw[..line_end];
    let needle = 2 + opaque.token.len();
    let at = (0..line.len())
        .find(|&at| {
            line[at..].starts_with(b" O")
                && line[at + 2..].starts_with(&opaque.token)
                && matches!(line.get(at + needle), Some(b' ' | b'\r' | b'\n'))
        })
        .ok_or_else(|| "opaque token not where expected".to_string())?;
    let mut stripped = BytesMut::with_capacity(raw.len() - needle);
    stripped.extend_from_slice(&raw[..at]);
    stripped.extend_from_slice(&raw[at + needle..]);
    owned_reply(stripped.freeze(), Expect::Line, &mut Partial::default())
}

/// Writes a job into the batch. Its reply is awaited on its own (`Some`: whether the reply can
/// be checked by itself, [`asked_for`] and [`verify`]) or as part of the open get it joined
/// (`None`).
fn enqueue(
    job: Job,
    wbuf: &mut BytesMut,
    pending: &Mutex<VecDeque<InFlight>>,
    open: &mut Option<OpenGet>,
) -> Option<bool> {
    let verb = get_verb(&job.call);
    if let (Some(verb), Some(get)) = (verb, open.as_ref()) {
        let keys = &job.call.head[verb.len()..job.call.head.len() - 2];
        if get.verb == verb && wbuf.len() - get.start + keys.len() <= MERGED_LINE_MAX {
            // Concurrent gets from different clients become one multi-get: the server answers
            // it in one write instead of one per get, which costs it (and the reads here) far
            // less than the gets one by one.
            wbuf.truncate(wbuf.len() - 2);
            wbuf.extend_from_slice(keys);
            wbuf.extend_from_slice(b"\r\n");
            let mut pending = pending.lock();
            let last = pending.back_mut().expect("an open get is pending");
            last.deadline = last.deadline.min(job.deadline);
            last.keys += most_keys(keys);
            let caller = (job.call.head, job.reply);
            let callers = match std::mem::replace(&mut last.waiter, Waiter::Merged(Vec::new())) {
                Waiter::One(first) => {
                    let mut callers = Vec::with_capacity(8);
                    callers.extend([(get.head.clone(), first), caller]);
                    callers
                }
                Waiter::Merged(mut callers) => {
                    callers.push(caller);
                    callers
                }
                // The sync point is queued just before the batch is written, and the open get
                // is forgotten then.
                Waiter::Sync => unreachable!("an open get is the last request queued"),
            };
            last.waiter = Waiter::Merged(callers);
            return None;
        }
    }
    *open = verb.map(|verb| OpenGet {
        verb,
        start: wbuf.len(),
        head: job.call.head.clone(),
    });
    wbuf.extend_from_slice(&job.call.head);
    if let Some(data) = &job.call.data {
        wbuf.extend_from_slice(data);
        wbuf.extend_from_slice(b"\r\n");
    }
    if job.call.expect == Expect::UntilNoop {
        wbuf.extend_from_slice(b"mn\r\n");
    }
    let values = job.call.expect == Expect::Values;
    let checked = values || job.call.opaque.is_some();
    pending.lock().push_back(InFlight {
        expect: job.call.expect,
        keys: if values { most_keys(&job.call.head) } else { 0 },
        waiter: Waiter::One(job.reply),
        deadline: job.deadline,
        opaque: job.call.opaque,
        head: values.then_some(job.call.head),
        held: false,
        anchor: false,
    });
    Some(checked)
}

/// At most how many keys a get line names (one per space; add one for a bare list of keys), to
/// size a list of them without splitting the line first.
pub fn most_keys(line: &[u8]) -> usize {
    line.iter().filter(|b| **b == b' ').count()
}

/// The last request in the unwritten buffer, when it is a get that later gets may join.
#[derive(Debug)]
struct OpenGet {
    verb: &'static [u8],
    /// Where its line starts in the write buffer.
    start: usize,
    /// Its first caller's request line.
    head: Bytes,
}

/// A reply read so far: the items of a get, or a quiet meta request's reply before its `MN`.
#[derive(Debug, Default)]
struct Partial {
    values: Vec<Value>,
    held: Option<Reply>,
}

/// Consumes reply lines from the front of `rbuf` until the reply to a request of kind `expect`
/// (naming at most `keys` keys, if a get) is complete (`Some`), or more bytes are needed (`None`).
fn assemble(
    rbuf: &mut BytesMut,
    expect: Expect,
    keys: usize,
    partial: &mut Partial,
) -> Result<Option<Reply>, String> {
    loop {
        let parsed = match parse_response(rbuf) {
            Ok(parsed) => parsed,
            Err(incomplete) => {
                if let Some(needed) = incomplete.needed {
                    // A length no value can have is refused before it is reserved: a failed
                    // allocation would end the process.
                    if needed > MAX_REPLY {
                        return Err(format!("a reply of {needed} bytes, more than any value"));
                    }
                    rbuf.reserve(needed.saturating_sub(rbuf.len()));
                }
                return Ok(None);
            }
        };
        let consumed = parsed.consumed;
        // The frequent replies are taken from this one parse: a value is split off whole (its
        // key found by offset), a status or number holds nothing of the buffer.
        let reply = match (expect, parsed.response) {
            (Expect::Values, Response::Value { key, .. }) => {
                // A get is answered at most one value per key asked: a server that sends more
                // is out of step, and is stopped before the list grows without bound.
                if partial.values.len() >= keys {
                    return Err(format!("more values than the {keys} keys asked"));
                }
                let key_at = key.as_ptr() as usize - rbuf.as_ptr() as usize;
                let (Ok(key_at), Ok(key_len)) = (u16::try_from(key_at), u16::try_from(key.len()))
                else {
                    return Err("VALUE line too long".into());
                };
                if partial.values.capacity() == 0 {
                    partial.values.reserve_exact(keys);
                }
                partial.values.push(Value {
                    raw: rbuf.split_to(consumed).freeze(),
                    key_at,
                    key_len,
                });
                continue;
            }
            (Expect::Values, Response::End) => {
                Some(Reply::Values(std::mem::take(&mut partial.values)))
            }
            (Expect::Line, Response::Status(status)) => Some(Reply::Status(status)),
            (Expect::Line, Response::Number(n)) => Some(Reply::Number(n)),
            // A sync point's `MN`, one per batch of writes: nothing of the buffer is kept, and
            // the line is not parsed a second time.
            (
                Expect::Line,
                Response::Meta {
                    code: MetaCode::Noop,
                    ..
                },
            ) if rbuf.starts_with(SYNC_REPLY) => Some(Reply::Meta {
                code: MetaCode::Noop,
                flags: Bytes::new(),
                data: None,
                raw: Bytes::from_static(SYNC_REPLY),
            }),
            (
                Expect::UntilNoop,
                Response::Meta {
                    code: MetaCode::Noop,
                    ..
                },
            ) => {
                rbuf.advance(consumed);
                return Ok(Some(partial.held.take().unwrap_or(Reply::Suppressed)));
            }
            _ => None,
        };
        let reply = match reply {
            Some(reply) => {
                rbuf.advance(consumed);
                reply
            }
            None => owned_reply(rbuf.split_to(consumed).freeze(), expect, partial)?,
        };
        if expect == Expect::UntilNoop {
            // One request, one reply at most: a second one means the stream is out of step.
            if partial.held.replace(reply).is_some() {
                return Err("two replies to one quiet meta request".into());
            }
            continue;
        }
        return Ok(Some(reply));
    }
}

/// The reply in `frame` (one whole reply line, with its data block), whose parts are slices of
/// the frame rather than copies.
fn owned_reply(frame: Bytes, expect: Expect, partial: &mut Partial) -> Result<Reply, String> {
    let response = match parse_response(&frame) {
        Ok(parsed) => parsed.response,
        Err(_) => return Err("reply changed while parsing".into()),
    };
    let owned = |s: &[u8]| frame.slice_ref(s);
    Ok(match (expect, response) {
        (_, Response::Error(text)) => error_reply(ErrorKind::Error, owned(text), partial),
        (_, Response::ClientError(text)) => error_reply(ErrorKind::Client, owned(text), partial),
        (_, Response::ServerError(text)) => error_reply(ErrorKind::Server, owned(text), partial),
        (Expect::Line, Response::Version(v)) => Reply::Version(owned(v)),
        (Expect::Line | Expect::UntilNoop, Response::Meta { code, flags, data }) => Reply::Meta {
            code,
            flags: owned(flags),
            data: data.map(owned),
            raw: frame.clone(),
        },
        (_, other) => return Err(format!("{other:?}")),
    })
}

/// An error line ends any reply; items read before it are dropped, as the client would.
fn error_reply(kind: ErrorKind, text: Bytes, partial: &mut Partial) -> Reply {
    partial.values.clear();
    Reply::Error { kind, text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use keepcached_protocol::response::Status;
    use std::time::Duration;

    fn assemble_all(input: &[u8], expect: Expect) -> (Vec<Reply>, usize) {
        let mut rbuf = BytesMut::from(input);
        let mut partial = Partial::default();
        let mut replies = Vec::new();
        while let Some(reply) = assemble(&mut rbuf, expect, 4, &mut partial).unwrap() {
            replies.push(reply);
        }
        (replies, rbuf.remaining())
    }

    #[test]
    fn values_are_collected_until_end() {
        let (replies, left) = assemble_all(
            b"VALUE a 1 1\r\nx\r\nVALUE b 0 2 9\r\nyy\r\nEND\r\nVALUE c 0 1\r\n",
            Expect::Values,
        );
        assert_eq!(left, b"VALUE c 0 1\r\n".len());
        let Reply::Values(values) = &replies[0] else {
            panic!("{replies:?}")
        };
        assert_eq!(values.len(), 2);
        assert_eq!(values[1].key(), b"b");
        assert_eq!(values[1].raw(), b"VALUE b 0 2 9\r\nyy\r\n");
    }

    #[test]
    fn lines_and_errors() {
        let (replies, _) = assemble_all(b"STORED\r\n42\r\nSERVER_ERROR oom\r\n", Expect::Line);
        assert_eq!(
            replies,
            vec![
                Reply::Status(Status::Stored),
                Reply::Number(42),
                Reply::Error {
                    kind: ErrorKind::Server,
                    text: Bytes::from_static(b"oom")
                }
            ]
        );
    }

    #[test]
    fn a_sync_points_reply_is_read_as_the_server_sent_it() {
        let (replies, left) = assemble_all(b"MN\r\nMN\nMN O1\r\nMN", Expect::Line);
        assert_eq!(left, 2);
        let raws: Vec<&[u8]> = replies
            .iter()
            .map(|reply| match reply {
                Reply::Meta {
                    code: MetaCode::Noop,
                    raw,
                    ..
                } => &raw[..],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(raws, [&b"MN\r\n"[..], b"MN\n", b"MN O1\r\n"]);
    }

    #[test]
    fn a_quiet_meta_reply_is_what_came_before_mn() {
        let (replies, left) = assemble_all(
            b"MN\r\nVA 1 O5\r\nx\r\nMN\r\nSERVER_ERROR oom\r\nMN\r\nHD",
            Expect::UntilNoop,
        );
        assert_eq!(left, 2);
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert_eq!(replies[0], Reply::Suppressed);
        let Reply::Meta {
            code: MetaCode::Value,
            raw,
            data: Some(data),
            ..
        } = &replies[1]
        else {
            panic!("{replies:?}")
        };
        assert_eq!((&raw[..], &data[..]), (&b"VA 1 O5\r\nx\r\n"[..], &b"x"[..]));
        assert!(matches!(
            replies[2],
            Reply::Error {
                kind: ErrorKind::Server,
                ..
            }
        ));
        let mut rbuf = BytesMut::from(&b"HD\r\nHD\r\nMN\r\n"[..]);
        assert!(assemble(&mut rbuf, Expect::UntilNoop, 0, &mut Partial::default()).is_err());
    }

    #[test]
    fn a_get_answered_with_more_values_than_keys_asked_is_refused() {
        let mut rbuf = BytesMut::from(&b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\n"[..]);
        assert!(assemble(&mut rbuf, Expect::Values, 1, &mut Partial::default()).is_err());
    }

    #[test]
    fn a_reply_longer_than_any_value_is_refused_before_it_is_reserved() {
        let mut rbuf = BytesMut::from(&b"VALUE a 0 1099511627776\r\n"[..]);
        assert!(assemble(&mut rbuf, Expect::Values, 1, &mut Partial::default()).is_err());
        assert!(rbuf.capacity() < 1 << 20);
    }

    fn get_job(head: &'static [u8]) -> (Job, oneshot::Receiver<Result<Reply, BackendError>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            call: Call::line(Bytes::from_static(head), Expect::Values),
            reply,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        (job, rx)
    }

    fn value(key: &'static [u8]) -> Value {
        let mut raw = BytesMut::new();
        raw.extend_from_slice(b"VALUE ");
        raw.extend_from_slice(key);
        raw.extend_from_slice(b" 0 1\r\nv\r\n");
        Value {
            raw: raw.freeze(),
            key_at: 6,
            key_len: key.len() as u16,
        }
    }

    fn keys_of(reply: Result<Reply, BackendError>) -> Vec<Bytes> {
        match reply {
            Ok(Reply::Values(values)) => values
                .iter()
                .map(|v| Bytes::copy_from_slice(v.key()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// What a connection's writer makes of these jobs, queued together: its write buffer and
    /// the requests awaiting replies.
    fn enqueue_all(jobs: impl IntoIterator<Item = Job>) -> (BytesMut, VecDeque<InFlight>) {
        let pending = Mutex::new(VecDeque::new());
        let mut wbuf = BytesMut::new();
        let mut open = None;
        for job in jobs {
            enqueue(job, &mut wbuf, &pending, &mut open);
        }
        (wbuf, pending.into_inner())
    }

    #[tokio::test]
    async fn queued_gets_go_out_as_one_multi_get_and_each_caller_gets_its_own_hits() {
        let (a, rx_a) = get_job(b"get a\r\n");
        let (bc, rx_bc) = get_job(b"get b c a\r\n");
        let (gets, rx_gets) = get_job(b"gets a\r\n");
        let (last, rx_last) = get_job(b"gets c\r\n");
        let (wbuf, mut pending) = enqueue_all([a, bc, gets, last]);
        // A `gets` does not join a `get`: its reply carries CAS values the other's does not.
        assert_eq!(&wbuf[..], b"get a b c a\r\ngets a c\r\n");
        assert_eq!(pending.len(), 2);
        // b missed; a was asked twice and is answered twice, in order.
        pending
            .pop_front()
            .unwrap()
            .waiter
            .deliver(Ok(Reply::Values(vec![
                value(b"a"),
                value(b"c"),
                value(b"a"),
            ])));
        assert_eq!(keys_of(rx_a.await.unwrap()), vec![&b"a"[..]]);
        assert_eq!(keys_of(rx_bc.await.unwrap()), vec![&b"c"[..], &b"a"[..]]);
        let error = BackendError::Closed {
            addr: Arc::from("x"),
        };
        pending
            .pop_front()
            .unwrap()
            .waiter
            .deliver(Err(error.clone()));
        assert_eq!(rx_gets.await.unwrap(), Err(error.clone()));
        assert_eq!(rx_last.await.unwrap(), Err(error));
    }

    #[test]
    fn only_plain_gets_are_merged() {
        let (gat, _rx1) = get_job(b"gat 10 a\r\n");
        let (gat2, _rx2) = get_job(b"gat 10 b\r\n");
        let (get, _rx3) = get_job(b"get c\r\n");
        let (set_reply, _rx4) = oneshot::channel();
        let set = Job {
            call: Call {
                head: Bytes::from_static(b"set d 0 0 1\r\n"),
                data: Some(Bytes::from_static(b"x")),
                expect: Expect::Line,
                opaque: None,
            },
            reply: set_reply,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let (get2, _rx5) = get_job(b"get e\r\n");
        let (wbuf, pending) = enqueue_all([gat, gat2, get, set, get2]);
        assert_eq!(
            &wbuf[..],
            b"gat 10 a\r\ngat 10 b\r\nget c\r\nset d 0 0 1\r\nx\r\nget e\r\n"
        );
        assert_eq!(pending.len(), 5);
    }

    fn meta_reply(raw: &'static [u8]) -> Reply {
        let mut rbuf = BytesMut::from(raw);
        assemble(&mut rbuf, Expect::Line, 0, &mut Partial::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_meta_reply_must_carry_its_requests_opaque() {
        let theirs = Opaque {
            token: Bytes::from_static(b"12"),
            added: false,
        };
        let hit = meta_reply(b"VA 1 O12 t5\r\nx\r\n");
        assert_eq!(verify(hit.clone(), Some(&theirs)), Ok(hit));
        assert!(verify(meta_reply(b"VA 1 O1\r\nx\r\n"), Some(&theirs)).is_err());
        assert!(verify(meta_reply(b"VA 1 O123\r\nx\r\n"), Some(&theirs)).is_err());
        assert!(verify(meta_reply(b"HD\r\n"), Some(&theirs)).is_err());
        // Error lines carry no token; a request without one is checked by the sync points.
        let error = Reply::Error {
            kind: ErrorKind::Server,
            text: Bytes::from_static(b"oom"),
        };
        assert_eq!(verify(error.clone(), Some(&theirs)), Ok(error));
        let any = meta_reply(b"HD O9\r\n");
        assert_eq!(verify(any.clone(), None), Ok(any));
    }

    #[test]
    fn a_token_the_proxy_added_is_taken_out_of_the_reply() {
        let ours = Opaque {
            token: Bytes::from_static(b"1"),
            added: true,
        };
        let Ok(Reply::Meta {
            raw, flags, data, ..
        }) = verify(meta_reply(b"VA 2 s2 O1 k\r\nxy\r\n"), Some(&ours))
        else {
            panic!()
        };
        assert_eq!(&raw[..], b"VA 2 s2 k\r\nxy\r\n");
        assert_eq!(&flags[..], b"s2 k");
        assert_eq!(data.as_deref(), Some(&b"xy"[..]));
        let Ok(Reply::Meta { raw, .. }) = verify(meta_reply(b"EN O1\r\n"), Some(&ours)) else {
            panic!()
        };
        assert_eq!(&raw[..], b"EN\r\n");
    }

    #[test]
    fn a_gets_values_must_name_its_keys_in_order() {
        let (tx, _rx) = oneshot::channel();
        let one = Waiter::One(tx);
        let head = Bytes::from_static(b"get a b a\r\n");
        let values =
            |keys: &[&'static [u8]]| Reply::Values(keys.iter().map(|k| value(k)).collect());
        let good: [&[&'static [u8]]; 5] =
            [&[], &[b"a"], &[b"b"], &[b"a", b"b", b"a"], &[b"b", b"a"]];
        for good in good {
            assert!(asked_for(&values(good), &one, Some(&head)), "{good:?}");
        }
        let bad: [&[&'static [u8]]; 3] = [&[b"c"], &[b"b", b"b"], &[b"a", b"a", b"a"]];
        for bad in bad {
            assert!(!asked_for(&values(bad), &one, Some(&head)), "{bad:?}");
        }
        let (t1, _r1) = oneshot::channel();
        let (t2, _r2) = oneshot::channel();
        let merged = Waiter::Merged(vec![
            (Bytes::from_static(b"get a\r\n"), t1),
            (Bytes::from_static(b"get b c\r\n"), t2),
        ]);
        assert!(asked_for(&values(&[b"a", b"c"]), &merged, None));
        assert!(!asked_for(&values(&[b"c", b"a"]), &merged, None));
    }

    #[test]
    fn only_replies_that_cannot_check_themselves_need_a_sync_point() {
        let pending = Mutex::new(VecDeque::new());
        let (mut wbuf, mut open) = (BytesMut::new(), None);
        let (get, _r1) = get_job(b"get a\r\n");
        let (merged, _r2) = get_job(b"get b\r\n");
        let (reply, _r3) = oneshot::channel();
        let meta = Job {
            call: crate::forward::meta(Bytes::from_static(b"mg a v q\r\n"), true),
            reply,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let (reply, _r4) = oneshot::channel();
        let set = Job {
            call: Call::line(Bytes::from_static(b"delete a\r\n"), Expect::Line),
            reply,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let mut enqueue = |job| enqueue(job, &mut wbuf, &pending, &mut open);
        assert_eq!(enqueue(get), Some(true));
        assert_eq!(enqueue(merged), None);
        assert_eq!(enqueue(meta), Some(true));
        assert_eq!(enqueue(set), Some(false));
    }

    /// One batch through [`serve`] to a server of the test's: `calls` are queued before the
    /// connection starts, so that they leave in one write. Returns what the server received
    /// and each caller's result once the server answered `reply`.
    async fn one_batch(
        calls: Vec<Call>,
        sent_len: usize,
        reply: &[u8],
    ) -> (Vec<u8>, Vec<Result<Reply, BackendError>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
        let settings = Settings::new(&crate::config::BackendConfig::default());
        let stream = TcpStream::connect(&*addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (tx, mut jobs) = mpsc::channel(8);
        let mut rxs = Vec::new();
        for call in calls {
            let (reply, rx) = oneshot::channel();
            let deadline = Instant::now() + Duration::from_secs(10);
            tx.send(Job {
                call,
                reply,
                deadline,
            })
            .await
            .unwrap();
            rxs.push(rx);
        }
        let first = jobs.recv().await;
        let reply = reply.to_vec();
        let server_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0; 4096];
            while got.len() < sent_len {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed after {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            server.write_all(&reply).await.unwrap();
            (got, server)
        });
        let pending = Mutex::new(VecDeque::new());
        let mut results = Vec::new();
        let failed = tokio::select! {
            (error, _, _) = serve(&addr, &settings, stream, first, &mut jobs, &pending) => Some(error),
            () = async {
                for rx in rxs.iter_mut() {
                    results.push(rx.await.unwrap());
                }
            } => None,
        };
        if let Some(error) = failed {
            // What connection_task does with the requests left on a failed connection.
            for job in pending.into_inner() {
                job.waiter.deliver(Err(error.clone()));
            }
            for rx in rxs.iter_mut().skip(results.len()) {
                results.push(rx.await.unwrap());
            }
        }
        let (got, _server) = server_side.await.unwrap();
        drop(tx);
        (got, results)
    }

    fn set_then_get() -> (Vec<Call>, usize) {
        let set = Call::line(Bytes::from_static(b"set a 0 0 1\r\nx\r\n"), Expect::Line);
        let get = Call::line(Bytes::from_static(b"get b\r\n"), Expect::Values);
        (vec![set, get], b"set a 0 0 1\r\nx\r\nget b\r\n".len())
    }

    #[tokio::test]
    async fn a_batch_that_ends_with_a_get_is_released_by_the_gets_reply() {
        let (calls, len) = set_then_get();
        let (got, results) = one_batch(calls, len, b"NOT_STORED\r\nEND\r\n").await;
        // No `mn`: the get is the batch's sync point.
        assert_eq!(&got[..], b"set a 0 0 1\r\nx\r\nget b\r\n");
        assert_eq!(
            results,
            vec![
                Ok(Reply::Status(Status::NotStored)),
                Ok(Reply::Values(Vec::new()))
            ]
        );
    }

    #[tokio::test]
    async fn a_stray_or_missing_reply_before_a_batchs_last_get_fails_the_batch() {
        for reply in [
            // A stray STORED before the set's own reply: the get would get NOT_STORED.
            &b"STORED\r\nNOT_STORED\r\nEND\r\n"[..],
            // The set's reply left out: the set would get the get's END.
            b"END\r\n",
            // A stray error line where the get's reply belongs: it names no key.
            b"STORED\r\nSERVER_ERROR stray\r\nEND\r\n",
        ] {
            let (calls, len) = set_then_get();
            let (_, results) = one_batch(calls, len, reply).await;
            for result in &results {
                assert!(
                    matches!(
                        result,
                        Err(BackendError::OutOfStep { .. }) | Err(BackendError::Protocol { .. })
                    ),
                    "{:?}: {results:?}",
                    String::from_utf8_lossy(reply)
                );
            }
        }
    }

    #[test]
    fn a_value_where_a_line_is_expected_is_a_protocol_error() {
        let mut rbuf = BytesMut::from(&b"VALUE a 0 1\r\nx\r\n"[..]);
        assert!(assemble(&mut rbuf, Expect::Line, 0, &mut Partial::default()).is_err());
    }
}
