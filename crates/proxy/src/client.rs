//! One client connection: read bytes, parse requests, route each one, encode its reply.
//!
//! Requests are parsed with the cache server's own parser (so bad input gets the same replies as
//! from the cache server) and executed in order, text commands here and meta commands in
//! meta.rs; the replies of everything the client pipelined
//! leave in one write. What a read brought is frozen into one shared chunk and each request is
//! parsed once from it, so keys and values travel to the backends as slices of the bytes the
//! client sent, without copies.
//!
//! Consecutive pipelined reads (get, gets, and mg that changes nothing) run at once, each into its
//! own reply buffer, and their replies are appended in request order: a client that pipelines
//! gets waits for one round trip to the backends, not one per get. Any other request waits for
//! the reads before it and runs alone, so a read never overtakes a write the client sent first.
//!
//! A client's pending replies are bounded. They are written out once [`HIGH_WATER`] bytes wait,
//! and the client's next request runs only when the client has taken them (the write
//! completes): a client that pipelines and never reads stops its own requests, not the proxy.
//! Reads run at most [`Context::read_window`] keys at a time (the reply budget over the largest
//! item), so what a client can make the proxy hold is one window of values plus the
//! high-water mark, however many keys it names (docs/limits.md).
//!
//! The backend connections are shared and pipelined: one client's replies arrive on them among
//! other clients' replies. Stopping their reads for a slow client would stall every client of
//! that server, so the bound is cut here instead: a client waiting for its own writes asks the
//! backends for nothing more, and what it has in flight is bounded by the window.
//!
//! At shutdown a connection finishes the requests it has read, sends their replies and closes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use keepcached_protocol::meta::MetaCommand;
use keepcached_protocol::reply::{self, ErrorReply};
use keepcached_protocol::{
    parse_command, Command, Invalid, Keys, Parsed, Request, StoreKind, Verb,
};
use keepcached_runtime::{spare, Socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::admin;
use crate::forward;
use crate::meta;
use crate::read;
use crate::replicate::{self, Conditional, Leaves};
use crate::reply::{answer, Next, Output};
use crate::stats::{self, Stats, VERSION};
use crate::Context;

const READ_CHUNK: usize = 16 * 1024;
/// Replies are written mid-pipeline once this much is waiting, and the client's next request
/// waits until the client has taken them.
const HIGH_WATER: usize = 256 * 1024;
/// Pipelined reads run together, at most this many keys at a time (fewer when the reply budget
/// says so, [`Context::read_window`]).
pub const MAX_READS: usize = 64;

/// A client connection's output: its reply buffer, written to the client at the high-water
/// mark.
struct ClientOut<'a, S> {
    stream: &'a mut S,
    buf: &'a mut Vec<u8>,
}

impl<S: Socket + Send> Output for ClientOut<'_, S> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    async fn relieve(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= HIGH_WATER {
            self.stream.write_all(self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Serves one client until it quits, the connection fails, or the proxy shuts down.
pub async fn serve<S>(
    ctx: Arc<Context>,
    mut stream: S,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: Socket + Send,
{
    // Both buffers are held only while there is work: an idle client costs no buffer memory.
    let mut rbuf = BytesMut::new();
    let mut out = Vec::new();
    let mut swallow = 0usize;
    // How many bytes the partial request at the front of `rbuf` needs before it can be parsed
    // (the end of its data block, when known): a large value is parsed once, when complete,
    // not once per read.
    let mut need = 0usize;
    // One wait for shutdown for the connection's whole life: a fresh one per read would take
    // the signal's lock twice per request.
    let stopping = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let mut stopped = false;
    loop {
        let mut close = false;
        if !rbuf.is_empty() && rbuf.len() >= need {
            // Everything read so far becomes one shared, immutable chunk: each request is
            // parsed once, and its keys and value travel to the backends as slices of it.
            let chunk = rbuf.split().freeze();
            let ran = run_chunk(&ctx, &chunk, &mut swallow, &mut stream, &mut out).await?;
            close = ran.close;
            // A partial request waits for the rest of its bytes in the read buffer.
            rbuf.extend_from_slice(&chunk[ran.used..]);
            need = ran.need;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close || stopped {
            return Ok(());
        }
        if rbuf.is_empty() && rbuf.capacity() > 0 {
            spare::give_back_input(std::mem::take(&mut rbuf), READ_CHUNK);
        }
        if out.capacity() > 0 {
            spare::give_back_output(std::mem::take(&mut out));
        }
        tokio::select! {
            ready = stream.readable() => ready?,
            _ = &mut stopping, if !stopped => {
                stopped = true;
                continue;
            }
        }
        if rbuf.capacity() == 0 {
            rbuf = spare::take_input(READ_CHUNK);
        }
        let room = (READ_CHUNK / 4).max(need.saturating_sub(rbuf.len()));
        if rbuf.capacity() - rbuf.len() < room {
            rbuf.reserve(room.max(READ_CHUNK));
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        if out.capacity() == 0 {
            out = spare::take_output();
        }
    }
}

/// What [`run_chunk`] did with a chunk of input.
struct Ran {
    /// Bytes of complete requests (and discarded data); the rest is a partial request.
    used: usize,
    /// The partial request's full length, when its line says it (0 when unknown).
    need: usize,
    close: bool,
}

/// Parses and executes every complete request in `chunk`, in order, appending their replies.
async fn run_chunk<S: Socket + Send>(
    ctx: &Arc<Context>,
    chunk: &Bytes,
    swallow: &mut usize,
    stream: &mut S,
    out: &mut Vec<u8>,
) -> std::io::Result<Ran> {
    let mut ran = Ran {
        used: 0,
        need: 0,
        close: false,
    };
    let mut out = ClientOut { stream, buf: out };
    let window = ctx.read_window();
    let mut reads = Reads::default();
    loop {
        if *swallow > 0 {
            let n = (*swallow).min(chunk.len() - ran.used);
            ran.used += n;
            *swallow -= n;
            if *swallow > 0 {
                break;
            }
        }
        let command = match parse_command(&chunk[ran.used..], &ctx.limits) {
            Ok(command) => command,
            Err(incomplete) => {
                ran.need = incomplete.needed.unwrap_or(0);
                break;
            }
        };
        let frame = chunk.slice(ran.used..ran.used + command.consumed());
        ran.used += frame.len();
        if is_read(&command) {
            // The reads held together stay within the window; one read that names more keys
            // than it runs alone, in windows of its own (read::get).
            let keys = read_keys(&command);
            if reads.keys > 0 && reads.keys + keys > window {
                reads.run(ctx, &mut out).await?;
                out.relieve().await?;
            }
            reads.hold(frame, command, keys);
            if reads.keys >= window {
                reads.run(ctx, &mut out).await?;
                out.relieve().await?;
            }
            continue;
        }
        reads.run(ctx, &mut out).await?;
        out.relieve().await?;
        match dispatch(ctx, &frame, command, &mut out).await? {
            Next::Continue => {}
            Next::Close => {
                ran.close = true;
                break;
            }
            Next::Swallow(n) => *swallow = n,
        }
        out.relieve().await?;
    }
    reads.run(ctx, &mut out).await?;
    Ok(ran)
}

/// How many keys a read names (a get line's keys; one for anything else).
fn read_keys(command: &Command<'_>) -> usize {
    match command {
        Command::Text(Parsed {
            outcome: Ok(Request::Get { keys, .. }),
            ..
        }) => keys.iter().count(),
        _ => 1,
    }
}

/// Whether a request only reads, so that it may run alongside its neighbours: get and gets
/// (gat and gats also touch), and mg without flags that change the item (T, N, R).
fn is_read(command: &Command<'_>) -> bool {
    match command {
        Command::Text(parsed) => matches!(parsed.outcome, Ok(Request::Get { exptime: None, .. })),
        Command::Meta(parsed) => parsed.outcome.as_ref().is_ok_and(|r| {
            let o = &r.options;
            r.command == MetaCommand::Get
                && o.ttl.is_none()
                && o.vivify.is_none()
                && o.recache.is_none()
        }),
    }
}

/// Pipelined reads held back to run together. The first is kept as parsed, so that a client
/// that does not pipeline (one get at a time) runs it as is and allocates nothing here.
#[derive(Default)]
struct Reads<'c> {
    first: Option<(Bytes, Command<'c>)>,
    more: Vec<Read<'c>>,
    /// How many keys they name at most.
    keys: usize,
}

/// A held read once others join it: a get's keys, or any other read's bytes (parsed again when
/// it runs; pipelined meta reads are rare, and a parsed one is large).
enum Read<'c> {
    Get(Verb, Keys<'c>),
    Other(Bytes),
}

impl<'c> Read<'c> {
    fn new(frame: Bytes, command: Command<'c>) -> Read<'c> {
        match command {
            Command::Text(Parsed {
                outcome:
                    Ok(Request::Get {
                        verb,
                        exptime: None,
                        keys,
                    }),
                ..
            }) => Read::Get(verb, keys),
            _ => Read::Other(frame),
        }
    }
}

/// A run of pipelined reads: text gets with one verb, read as one batch, or any other read.
enum Segment<'c> {
    Gets(Verb, Vec<Keys<'c>>),
    Other(Bytes),
}

impl<'c> Reads<'c> {
    fn hold(&mut self, frame: Bytes, command: Command<'c>, keys: usize) {
        self.keys += keys;
        match self.first {
            None => self.first = Some((frame, command)),
            Some(_) => self.more.push(Read::new(frame, command)),
        }
    }

    /// Runs the reads held back, all at once, and appends their replies in request order.
    /// Consecutive text gets with the same verb are one batch ([`read::get`]): one multi-get
    /// per server for all their keys, instead of a call per get.
    async fn run<O: Output>(&mut self, ctx: &Arc<Context>, out: &mut O) -> std::io::Result<()> {
        self.keys = 0;
        let Some((frame, command)) = self.first.take() else {
            return Ok(());
        };
        if self.more.is_empty() {
            dispatch(ctx, &frame, command, out).await?;
            return Ok(());
        }
        let mut segments: Vec<Segment<'c>> = Vec::new();
        for read in std::iter::once(Read::new(frame, command)).chain(self.more.drain(..)) {
            match (read, segments.last_mut()) {
                (Read::Get(verb, keys), Some(Segment::Gets(last, batch))) if *last == verb => {
                    batch.push(keys);
                }
                (Read::Get(verb, keys), _) => segments.push(Segment::Gets(verb, vec![keys])),
                (Read::Other(frame), _) => segments.push(Segment::Other(frame)),
            }
        }
        if let [Segment::Gets(verb, batch)] = &segments[..] {
            return read::get(ctx, *verb, None, batch, out).await;
        }
        let mut replies: FuturesOrdered<_> = segments
            .into_iter()
            .map(|segment| async move {
                let mut reply = Vec::new();
                match segment {
                    Segment::Gets(verb, batch) => {
                        let _ = read::get(ctx, verb, None, &batch, &mut reply).await;
                    }
                    // Boxed: the future of every other command would make each segment's
                    // future, allocated and moved once per segment, much larger.
                    Segment::Other(frame) => {
                        if let Ok(command) = parse_command(&frame, &ctx.limits) {
                            let _ = Box::pin(dispatch(ctx, &frame, command, &mut reply)).await;
                        }
                    }
                }
                reply
            })
            .collect();
        while let Some(reply) = replies.next().await {
            out.buf().extend_from_slice(&reply);
        }
        Ok(())
    }
}

/// Executes one parsed request (`frame` holds all its bytes) and appends its reply; an error
/// means the client is gone.
async fn dispatch<O: Output>(
    ctx: &Arc<Context>,
    frame: &Bytes,
    command: Command<'_>,
    out: &mut O,
) -> std::io::Result<Next> {
    match command {
        Command::Text(parsed) => execute(ctx, frame, parsed.outcome, out).await,
        Command::Meta(parsed) => Ok(meta::execute(ctx, frame, parsed.outcome, out.buf()).await),
    }
}

/// Executes one parsed request and appends its reply.
async fn execute<O: Output>(
    ctx: &Arc<Context>,
    frame: &Bytes,
    outcome: Result<Request<'_>, Invalid<'_>>,
    sink: &mut O,
) -> std::io::Result<Next> {
    let counters = ctx.stats.counters();
    if let Ok(Request::Get {
        verb,
        exptime,
        keys,
    }) = outcome
    {
        read::get(ctx, verb, exptime, &[keys], sink).await?;
        return Ok(Next::Continue);
    }
    let out = sink.buf();
    let request = match outcome {
        Ok(request) => request,
        Err(Invalid::Reply {
            error: ErrorReply::Error,
            ..
        }) if admin::is_admin(frame) => {
            admin::execute(ctx, frame, out);
            return Ok(Next::Continue);
        }
        Err(Invalid::Reply { error, noreply }) => {
            if !noreply {
                reply::line(out, error.as_str().as_bytes());
            }
            return Ok(Next::Continue);
        }
        Err(Invalid::TooLarge {
            kind,
            key,
            swallow,
            noreply,
        }) => {
            // memcached drops the old item of a failed set, so no stale value survives it.
            if kind == StoreKind::Set {
                let _ = replicate::fanout(
                    ctx,
                    frame.slice_ref(key),
                    forward::delete(key),
                    Leaves::Latest,
                )
                .await;
            }
            if !noreply {
                out.extend_from_slice(reply::TOO_LARGE);
            }
            return Ok(Next::Swallow(swallow));
        }
        Err(Invalid::Close) => return Ok(Next::Close),
    };
    match request {
        // Answered above, in windows written as they come.
        Request::Get { .. } => {}
        Request::Store {
            kind,
            key,
            flags,
            exptime,
            data,
            cas,
            noreply,
        } => {
            Stats::add(&counters.cmd_set, 1);
            let data = frame.slice_ref(data);
            let key_bytes = frame.slice_ref(key);
            let result = if kind == StoreKind::Set {
                let call = forward::write(frame, noreply, || {
                    forward::store(kind, key, flags, exptime, data, 0)
                });
                replicate::fanout(ctx, key_bytes, call, Leaves::Latest).await
            } else {
                let command = Conditional::Store {
                    kind,
                    flags,
                    exptime,
                    data,
                    cas,
                };
                replicate::execute_then_copy(ctx, key_bytes, command).await
            };
            answer(ctx, result, noreply, out);
        }
        Request::Delete { key, noreply } => {
            Stats::add(&counters.cmd_delete, 1);
            let call = forward::write(frame, noreply, || forward::delete(key));
            let result = replicate::fanout(ctx, frame.slice_ref(key), call, Leaves::Latest).await;
            answer(ctx, result, noreply, out);
        }
        Request::Touch {
            key,
            exptime,
            noreply,
        } => {
            Stats::add(&counters.cmd_touch, 1);
            let call = forward::write(frame, noreply, || forward::touch(key, exptime));
            let result = replicate::fanout(ctx, frame.slice_ref(key), call, Leaves::Change).await;
            answer(ctx, result, noreply, out);
        }
        Request::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            Stats::add(
                if incr {
                    &counters.cmd_incr
                } else {
                    &counters.cmd_decr
                },
                1,
            );
            let command = Conditional::Arith { incr, delta };
            let result = replicate::execute_then_copy(ctx, frame.slice_ref(key), command).await;
            answer(ctx, result, noreply, out);
        }
        Request::FlushAll { delay, noreply } => {
            Stats::add(&counters.cmd_flush, 1);
            let result = replicate::broadcast(ctx, forward::flush_all(delay), true).await;
            answer(ctx, result, noreply, out);
        }
        Request::CacheMemlimit { megabytes, noreply } => {
            let result = replicate::broadcast(ctx, forward::cache_memlimit(megabytes), false).await;
            answer(ctx, result, noreply, out);
        }
        Request::Version => {
            out.extend_from_slice(b"VERSION ");
            reply::line(out, VERSION.as_bytes());
        }
        // Verbosity is a server's logging level; the proxy's own is set on its command line.
        Request::Verbosity { noreply, .. } => {
            if !noreply {
                out.extend_from_slice(reply::OK);
            }
        }
        Request::Quit => return Ok(Next::Close),
        // As memcached without -A: a client must not stop the shared proxy.
        Request::Shutdown { .. } => reply::line(out, b"ERROR: shutdown not enabled"),
        Request::Stats { args } => stats::answer(ctx, args.iter(), out),
        // The crawler walks one server's memory; through the proxy it would mix several.
        Request::LruCrawler { .. } => reply::line(
            out,
            b"CLIENT_ERROR lru_crawler is not available through the proxy; ask a server directly",
        ),
        // Each server's memory is its own; through the proxy the command would reach several.
        Request::Slabs { .. } => reply::line(
            out,
            b"CLIENT_ERROR slabs is not available through the proxy; ask a server directly",
        ),
        Request::MetaNoop => out.extend_from_slice(reply::MN),
    }
    Ok(Next::Continue)
}
