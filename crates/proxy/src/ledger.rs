//! The ledger: what one proxy tells another about servers that missed writes, kept on the cache
//! servers themselves.
//!
//! A proxy keeps the keys each server missed in its own memory (health.rs). When the VIP moves,
//! the other host's proxy has none of that: without help it would read a returning server that
//! missed writes made through the first proxy. So before the first write a server missed is
//! acknowledged, the proxy appends its id to the item `keepcached:missed:<server>` on every other
//! server that takes writes. A proxy that finds another proxy's id there for a server it is about
//! to read treats that server as stale as a whole: it flushes it and warms it before reading it.
//! A proxy that repaired a server removes its own id (all ids, after a flush), with `cas` so a
//! concurrent mark is not lost.
//!
//! Limits (docs/resync.md): the mark is a cache item and can be evicted under memory pressure
//! (the servers should not run full with eviction on); a mark lives on the servers that were up
//! when it was made, so losing every one of them loses it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use keepcached_protocol::response::{MetaCode, Status};
use keepcached_protocol::{StoreKind, Verb};

use crate::backend::{Backend, Reply};
use crate::forward;
use crate::Context;

/// Items under this prefix are the proxies' marks; warm-up does not copy them.
const PREFIX: &[u8] = b"keepcached:missed:";
/// The item a proxy that serves clients keeps fresh on the servers (its id, a short TTL): a
/// standby proxy that sees another proxy's id there leaves the servers' repair to it.
const SERVING: &[u8] = b"keepcached:serving";

/// Whether `key` is one of the proxies' own items, which a warm-up does not copy.
pub fn is_own(key: &[u8]) -> bool {
    key.starts_with(PREFIX) || key == SERVING
}

fn key(server: &Backend) -> Bytes {
    let mut key = BytesMut::with_capacity(PREFIX.len() + server.addr.len());
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(server.addr.as_bytes());
    key.freeze()
}

/// The other servers that take writes: where marks about `server` are kept.
fn keepers(ctx: &Context, server: &Backend) -> Vec<Arc<Backend>> {
    ctx.router()
        .live()
        .filter(|b| !std::ptr::eq(&***b, server) && b.state().takes_writes())
        .cloned()
        .collect()
}

/// Records, before the write `server` missed is acknowledged, that it missed writes through
/// this proxy. Done once until the server is repaired. When no other server takes the mark, the
/// misses of the next second do not wait for another try (a client write must not queue behind
/// marks that keep timing out).
pub async fn mark(ctx: &Context, server: &Backend) {
    let health = &server.health;
    if !ctx.live().resync.ledger
        || health.ledger_marked.load(Ordering::Acquire)
        || health.ledger_backoff()
    {
        return;
    }
    let _serial = health.ledger_lock.lock().await;
    if health.ledger_marked.load(Ordering::Acquire) || health.ledger_backoff() {
        return;
    }
    let key = key(server);
    let token = format!(" {}", ctx.proxy_id);
    let holders = keepers(ctx, server);
    let mut appends: FuturesUnordered<_> = holders
        .iter()
        .map(|keeper| append_token(keeper, &key, token.as_bytes()))
        .collect();
    let (mut asked, mut kept) = (0, 0);
    while let Some(appended) = appends.next().await {
        asked += 1;
        kept += usize::from(appended);
    }
    if asked == 0 {
        // No other server takes writes: the write that was missed failed everywhere, and
        // there is nowhere to tell; the next miss tries again.
        return;
    }
    if kept > 0 {
        health.ledger_marked.store(true, Ordering::Release);
        tracing::info!(backend = %server.addr, keepers = kept, "recorded in the ledger that it missed writes");
    } else {
        health.ledger_back_off();
        tracing::warn!(backend = %server.addr, "no other server took the ledger mark; another proxy could not know this server missed writes");
    }
}

async fn append_token(keeper: &Backend, key: &[u8], token: &[u8]) -> bool {
    for kind in [StoreKind::Append, StoreKind::Add, StoreKind::Append] {
        let value = if kind == StoreKind::Add {
            &token[1..]
        } else {
            token
        };
        let call = forward::store(kind, key, 0, 0, Bytes::copy_from_slice(value), 0);
        match keeper.call(call).await {
            Ok(Reply::Status(Status::Stored)) => return true,
            Ok(Reply::Status(Status::NotStored)) => continue,
            _ => return false,
        }
    }
    false
}

/// What the ledger says about a server.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Another proxy recorded misses for it.
    pub foreign: bool,
    /// This proxy's own mark is there.
    pub ours: bool,
    /// Every keeper answered: a mark that is not seen is not there.
    pub complete: bool,
}

/// Reads the marks about `server` on every other server that takes writes.
pub async fn look(ctx: &Context, server: &Backend) -> Marks {
    let mut marks = Marks {
        complete: true,
        ..Marks::default()
    };
    if !ctx.live().resync.ledger {
        return marks;
    }
    let key = key(server);
    // All keepers at once: a stalled one costs one request timeout, not one each.
    let holders = keepers(ctx, server);
    let mut reads: FuturesUnordered<_> = holders.iter().map(|keeper| read(keeper, &key)).collect();
    while let Some(read) = reads.next().await {
        let Ok(read) = read else {
            marks.complete = false;
            continue;
        };
        if let Some((tokens, _)) = read {
            for token in tokens.split(|b| *b == b' ').filter(|t| !t.is_empty()) {
                if token == ctx.proxy_id.as_bytes() {
                    marks.ours = true;
                } else {
                    marks.foreign = true;
                }
            }
        }
    }
    marks
}

/// Keeps this proxy's serving heartbeat fresh on every server that takes writes, for `ttl`
/// seconds.
pub async fn heartbeat(ctx: &Context, ttl: i32) {
    let id = Bytes::copy_from_slice(ctx.proxy_id.as_bytes());
    let router = ctx.router();
    let mut sets: FuturesUnordered<_> = router
        .live()
        .filter(|b| b.state().takes_writes())
        .map(|b| b.call(forward::set(SERVING, 0, ttl, id.clone())))
        .collect();
    while sets.next().await.is_some() {}
}

/// What a look at the serving heartbeats found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// Another proxy's heartbeat is on a server.
    pub others: bool,
    /// At least one server that takes writes was read and every one answered: a heartbeat
    /// that was not seen is not there.
    pub complete: bool,
}

/// Whether another proxy's serving heartbeat is on any server that takes writes. A server that
/// does not answer leaves the look incomplete: the heartbeat may be on it alone.
pub async fn others_serving(ctx: &Context) -> Serving {
    let router = ctx.router();
    let mut reads: FuturesUnordered<_> = router
        .live()
        .filter(|b| b.state().takes_writes())
        .map(|b| read(b, SERVING))
        .collect();
    let (mut others, mut answered, mut failed) = (false, 0, 0);
    while let Some(read) = reads.next().await {
        match read {
            Ok(Some((id, _))) => {
                answered += 1;
                others |= id != ctx.proxy_id.as_bytes();
            }
            Ok(None) => answered += 1,
            Err(()) => failed += 1,
        }
    }
    Serving {
        others,
        complete: answered > 0 && failed == 0,
    }
}

/// How many of the proxies' own items (marks about any server, the serving heartbeat)
/// `keeper` holds.
pub async fn marks_on(ctx: &Context, keeper: &Backend) -> u64 {
    let router = ctx.router();
    let keys = router
        .live()
        .map(|server| key(server))
        .chain(std::iter::once(Bytes::from_static(SERVING)));
    let mut reads: FuturesUnordered<_> = keys
        .map(|key| async move { matches!(read(keeper, &key).await, Ok(Some(_))) })
        .collect();
    let mut marks = 0;
    while let Some(held) = reads.next().await {
        marks += u64::from(held);
    }
    marks
}

/// A mark's ids and CAS; `Ok(None)` when there is none, `Err` when the keeper did not answer.
async fn read(keeper: &Backend, key: &[u8]) -> Result<Option<(Bytes, u64)>, ()> {
    let gets = forward::get(Verb::Gets, None, std::iter::once(key));
    let Ok(Reply::Values(values)) = keeper.call(gets).await else {
        return Err(());
    };
    Ok(values.first().and_then(|value| parse_mark(value.raw())))
}

fn parse_mark(raw: &[u8]) -> Option<(Bytes, u64)> {
    // `VALUE <key> <flags> <bytes> <cas>\r\n<data>\r\n`
    let eol = raw.iter().position(|b| *b == b'\n')?;
    let header = &raw[..eol.saturating_sub(1)];
    let cas = std::str::from_utf8(header.rsplit(|b| *b == b' ').next()?)
        .ok()?
        .parse()
        .ok()?;
    let data = &raw[eol + 1..raw.len().saturating_sub(2)];
    Some((Bytes::copy_from_slice(data), cas))
}

/// Removes this proxy's mark about `server` (`all`: every proxy's, because the server was
/// flushed and holds nothing any of them could read stale).
pub async fn clear(ctx: &Context, server: &Backend, all: bool) {
    let health = &server.health;
    health.ledger_marked.store(false, Ordering::Release);
    if !ctx.live().resync.ledger {
        return;
    }
    let key = key(server);
    // All keepers at once: the caller holds the ledger lock, which a miss's mark waits for.
    let holders = keepers(ctx, server);
    let mut clears: FuturesUnordered<_> = holders
        .iter()
        .map(|keeper| clear_on(ctx, keeper, &key, all))
        .collect();
    while clears.next().await.is_some() {}
}

async fn clear_on(ctx: &Context, keeper: &Backend, key: &[u8], all: bool) {
    // A concurrent mark makes the cas fail: read again and retry, a few times.
    for _ in 0..4 {
        let Ok(Some((tokens, cas))) = read(keeper, key).await else {
            return;
        };
        let kept: Vec<&[u8]> = tokens
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty() && !all && *t != ctx.proxy_id.as_bytes())
            .collect();
        let call = if kept.is_empty() {
            forward::delete_cas(key, cas)
        } else {
            let ids = Bytes::from(kept.join(&b' '));
            forward::store(StoreKind::Cas, key, 0, 0, ids, cas)
        };
        match keeper.call(call).await {
            Ok(Reply::Status(Status::Stored | Status::NotFound))
            | Ok(Reply::Meta {
                code: MetaCode::Header | MetaCode::NotFound,
                ..
            })
            | Err(_) => return,
            Ok(_) => {}
        }
    }
}
