//! One client connection: read bytes, parse requests, route each one, encode its reply.
//!
//! Requests are parsed with the cache server's own parser (so bad input gets the same replies as
//! from the cache server) and executed in order, text commands here and meta commands in
//! meta.rs; the replies of everything the client pipelined
//! leave in one write. Each complete request is split off the read buffer and frozen, so keys and
//! values travel to the backends as slices of the bytes the client sent, without copies.
//!
//! Consecutive pipelined reads (get, gets, and mg that changes nothing) run at once, each into its
//! own reply buffer, and their replies are appended in request order: a client that pipelines
//! gets waits for one round trip to the backends, not one per get. Any other request waits for
//! the reads before it and runs alone, so a read never overtakes a write the client sent first.
//!
//! At shutdown a connection finishes the requests it has read, sends their replies and closes.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use keepcached_protocol::meta::MetaCommand;
use keepcached_protocol::reply::{self, ErrorReply};
use keepcached_protocol::{parse_command, Command, Invalid, Keys, Request, StoreKind, Verb};
use keepcached_runtime::{spare, Socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::backend::{ErrorKind, Reply};
use crate::error::ProxyError;
use crate::forward;
use crate::meta;
use crate::read;
use crate::replicate::{self, Conditional};
use crate::stats::{Stats, VERSION};
use crate::Context;

const READ_CHUNK: usize = 16 * 1024;
/// Replies are flushed mid-pipeline once this much is waiting.
const FLUSH_AT: usize = 256 * 1024;
/// Pipelined reads run together, at most this many at a time.
const MAX_READS: usize = 64;

/// What the connection does after a request.
pub enum Next {
    Continue,
    Close,
    /// Discard this many more bytes (the data block of a value too large to store).
    Swallow(usize),
}

/// Serves one client until it quits, the connection fails, or the proxy shuts down.
pub async fn serve<S>(
    ctx: Arc<Context>,
    mut stream: S,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: Socket,
{
    // Both buffers are held only while there is work: an idle client costs no buffer memory.
    let mut rbuf = BytesMut::new();
    let mut out = Vec::new();
    let mut swallow = 0usize;
    let mut reads: Vec<Bytes> = Vec::new();
    // One wait for shutdown for the connection's whole life: a fresh one per read would take
    // the signal's lock twice per request.
    let stopping = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let mut stopped = false;
    loop {
        let mut close = false;
        loop {
            if swallow > 0 {
                let n = swallow.min(rbuf.len());
                rbuf.advance(n);
                swallow -= n;
                if swallow > 0 {
                    break;
                }
            }
            let (consumed, read) = match parse_command(&rbuf, &ctx.limits) {
                Ok(parsed) => (parsed.consumed(), is_read(&parsed)),
                Err(incomplete) => {
                    if let Some(needed) = incomplete.needed {
                        rbuf.reserve(needed.saturating_sub(rbuf.len()));
                    }
                    break;
                }
            };
            let frame = rbuf.split_to(consumed).freeze();
            if read {
                reads.push(frame);
                if reads.len() >= MAX_READS {
                    run_reads(&ctx, &mut reads, &mut out).await;
                }
                continue;
            }
            run_reads(&ctx, &mut reads, &mut out).await;
            let next = dispatch(&ctx, &frame, &mut out).await;
            match next {
                Next::Continue => {}
                Next::Close => {
                    close = true;
                    break;
                }
                Next::Swallow(n) => swallow = n,
            }
            if out.len() >= FLUSH_AT {
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        run_reads(&ctx, &mut reads, &mut out).await;
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
        } else if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        if out.capacity() == 0 {
            out = spare::take_output();
        }
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

/// A run of pipelined reads: text gets with one verb, read as one batch, or any other read.
enum Segment<'a> {
    Gets(Verb, Vec<Keys<'a>>),
    Other(&'a Bytes),
}

/// Runs the reads held back, all at once, and appends their replies in request order.
/// Consecutive text gets with the same verb are one batch ([`read::get`]): one multi-get per
/// server for all their keys, instead of a call per get.
async fn run_reads(ctx: &Arc<Context>, reads: &mut Vec<Bytes>, out: &mut Vec<u8>) {
    if reads.len() <= 1 {
        if let Some(frame) = reads.pop() {
            dispatch(ctx, &frame, out).await;
        }
        return;
    }
    let frames = std::mem::take(reads);
    let mut segments: Vec<Segment<'_>> = Vec::new();
    for frame in &frames {
        let get = match parse_command(frame, &ctx.limits) {
            Ok(Command::Text(parsed)) => match parsed.outcome {
                Ok(Request::Get {
                    verb,
                    exptime: None,
                    keys,
                }) => Some((verb, keys)),
                _ => None,
            },
            _ => None,
        };
        match (get, segments.last_mut()) {
            (Some((verb, keys)), Some(Segment::Gets(last, batch))) if *last == verb => {
                batch.push(keys);
            }
            (Some((verb, keys)), _) => segments.push(Segment::Gets(verb, vec![keys])),
            (None, _) => segments.push(Segment::Other(frame)),
        }
    }
    if let [Segment::Gets(verb, batch)] = &segments[..] {
        read::get(ctx, *verb, None, batch, out).await;
    } else {
        let mut replies: FuturesOrdered<_> = segments
            .into_iter()
            .map(|segment| async move {
                let mut reply = Vec::new();
                match segment {
                    Segment::Gets(verb, batch) => {
                        read::get(ctx, verb, None, &batch, &mut reply).await;
                    }
                    // Boxed: the future of every other command would make each segment's
                    // future, allocated and moved once per segment, much larger.
                    Segment::Other(frame) => {
                        Box::pin(dispatch(ctx, frame, &mut reply)).await;
                    }
                }
                reply
            })
            .collect();
        while let Some(reply) = replies.next().await {
            out.extend_from_slice(&reply);
        }
    }
    // Keep the buffer's capacity for the next run.
    *reads = frames;
    reads.clear();
}

/// Parses one complete request (a frame split off the read buffer) and executes it.
async fn dispatch(ctx: &Arc<Context>, frame: &Bytes, out: &mut Vec<u8>) -> Next {
    match parse_command(frame, &ctx.limits) {
        Ok(Command::Text(parsed)) => execute(ctx, frame, parsed.outcome, out).await,
        Ok(Command::Meta(parsed)) => meta::execute(ctx, frame, parsed.outcome, out).await,
        Err(_) => Next::Close,
    }
}

/// Executes one parsed request and appends its reply.
async fn execute(
    ctx: &Arc<Context>,
    frame: &Bytes,
    outcome: Result<Request<'_>, Invalid<'_>>,
    out: &mut Vec<u8>,
) -> Next {
    let counters = ctx.stats.counters();
    let request = match outcome {
        Ok(request) => request,
        Err(Invalid::Reply { error, noreply }) => {
            if !noreply {
                reply::line(out, error.as_str().as_bytes());
            }
            return Next::Continue;
        }
        Err(Invalid::TooLarge {
            kind,
            key,
            swallow,
            noreply,
        }) => {
            // memcached drops the old item of a failed set, so no stale value survives it.
            if kind == StoreKind::Set {
                let _ = replicate::fanout(ctx, frame.slice_ref(key), forward::delete(key)).await;
            }
            if !noreply {
                out.extend_from_slice(reply::TOO_LARGE);
            }
            return Next::Swallow(swallow);
        }
        Err(Invalid::Close) => return Next::Close,
    };
    match request {
        Request::Get {
            verb,
            exptime,
            keys,
        } => read::get(ctx, verb, exptime, &[keys], out).await,
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
                let call = forward::store(kind, key, flags, exptime, data, 0);
                replicate::fanout(ctx, key_bytes, call).await
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
            let result = replicate::fanout(ctx, frame.slice_ref(key), forward::delete(key)).await;
            answer(ctx, result, noreply, out);
        }
        Request::Touch {
            key,
            exptime,
            noreply,
        } => {
            Stats::add(&counters.cmd_touch, 1);
            let call = forward::touch(key, exptime);
            let result = replicate::fanout(ctx, frame.slice_ref(key), call).await;
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
            let result = replicate::broadcast(ctx, forward::flush_all(delay)).await;
            answer(ctx, result, noreply, out);
        }
        Request::CacheMemlimit { megabytes, noreply } => {
            let result = replicate::broadcast(ctx, forward::cache_memlimit(megabytes)).await;
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
        Request::Quit => return Next::Close,
        // As memcached without -A: a client must not stop the shared proxy.
        Request::Shutdown { .. } => reply::line(out, b"ERROR: shutdown not enabled"),
        Request::Stats { args } => {
            let mut args = args.iter();
            match (args.next(), args.next()) {
                (None, _) => ctx.stats.write_general(out, &ctx.router),
                (Some(b"backends"), None) => Stats::write_backends(out, &ctx.router),
                (Some(b"reset"), None) => {
                    ctx.stats.reset();
                    out.extend_from_slice(reply::RESET);
                }
                _ => reply::line(out, ErrorReply::Error.as_str().as_bytes()),
            }
        }
        // The crawler walks one server's memory; through the proxy it would mix several.
        Request::LruCrawler { .. } => reply::line(
            out,
            b"CLIENT_ERROR lru_crawler is not available through the proxy; ask a server directly",
        ),
        Request::MetaNoop => out.extend_from_slice(reply::MN),
    }
    Next::Continue
}

/// Appends a write's reply (unless `noreply`).
pub fn answer(ctx: &Context, result: Result<Reply, ProxyError>, noreply: bool, out: &mut Vec<u8>) {
    match result {
        Ok(_) if noreply => {}
        Ok(Reply::Status(status)) => out.extend_from_slice(status.as_line()),
        Ok(Reply::Number(n)) => reply::number(out, n),
        Ok(Reply::Error { kind, text }) => {
            out.extend_from_slice(match kind {
                ErrorKind::Error => b"ERROR",
                ErrorKind::Client => b"CLIENT_ERROR",
                ErrorKind::Server => b"SERVER_ERROR",
            });
            if !text.is_empty() {
                out.push(b' ');
                out.extend_from_slice(&text);
            }
            out.extend_from_slice(b"\r\n");
        }
        Ok(other) => {
            tracing::error!(?other, "backend answered a write with an unexpected reply");
            reply::line(
                out,
                b"SERVER_ERROR keepcached-proxy: unexpected reply from backend",
            );
        }
        // A client that asked for no reply gets none, even for a failure (as with memcached).
        Err(_) if noreply => Stats::add(&ctx.stats.counters().unavailable_errors, 1),
        Err(e) => unavailable(ctx, &e, out),
    }
}

pub fn unavailable(ctx: &Context, error: &ProxyError, out: &mut Vec<u8>) {
    Stats::add(&ctx.stats.counters().unavailable_errors, 1);
    reply::line(
        out,
        format!("SERVER_ERROR keepcached-proxy: {error}").as_bytes(),
    );
}
