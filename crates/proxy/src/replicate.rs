//! Writes, and how the replicas of a key are kept identical.
//!
//! - `set`, `delete`, `touch` ([`fanout`]): the same command goes to every replica at once; the
//!   client gets the first replica's answer (in pool order) that arrived.
//! - `add`, `replace`, `cas`, `append`, `prepend`, `incr`, `decr` ([`execute_then_copy`]): their
//!   outcome depends on the item already stored, and the replicas' items (and CAS numbers) may
//!   differ, so they run on the first healthy replica only. So do their meta forms (`ms` in a
//!   mode other than set or with `C`/`I`, `ma`, `md` with `C`), sent as the client wrote them. Its outcome is then copied to the
//!   others: a stored add/replace/cas is the client's own value, flags and exptime, `set` on the
//!   others; the result of append/prepend/incr/decr is read back from the executing replica
//!   (`mg <key> v f t`: value, flags, remaining TTL) and `set` on the others; where the result
//!   cannot be read exactly, or the executing replica no longer has the key, the key is deleted
//!   on the others so they can never answer with a stale value. A `cas` is never sent to another
//!   replica: its CAS number is only meaningful on the replica that issued it.
//! - Writes to a key with several replicas are serialized through a striped lock held until
//!   every replica has answered, so concurrent writers leave all replicas in the same final state
//!   (two `set`s can otherwise reach two replicas in opposite orders).
//! - A replica that fails, times out, answers `SERVER_ERROR` or is down misses the write: the key
//!   is remembered for it ([`Health::remember_missed`](crate::health::Health::remember_missed)),
//!   it is not read for that key until its supervisor repaired it (resync.rs), and before the
//!   write is acknowledged the miss is recorded in the ledger for the other proxies (ledger.rs).
//!   A miss whose write may still be applied later (its connection timed out) is fenced:
//!   a later write of the key waits until the server has closed that connection ([`write`]),
//!   so that it cannot be overtaken by the old one.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use keepcached_protocol::response::{MetaCode, Status};
use keepcached_protocol::{parse_i32, parse_u32_truncating, StoreKind};
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

use crate::backend::{write_failed, Backend, BackendError, Call, Reply};
use crate::config::WriteAck;
use crate::error::ProxyError;
use crate::forward;
use crate::health::{ReadRank, State};
use crate::ledger;
use crate::resync;
use crate::route::{Replicas, Router};
use crate::stats::Stats;
use crate::Context;

/// Lock stripes; many more than concurrent writers, so unrelated keys rarely wait on each other.
const STRIPES: usize = 4096;
/// memcached reads an exptime above 30 days as a unix time, not a duration.
const MAX_RELATIVE_EXPTIME: i64 = 60 * 60 * 24 * 30;

/// Per-key write serialization.
#[derive(Debug)]
pub struct KeyLocks {
    stripes: Vec<Arc<Mutex<()>>>,
    /// Picks a key's stripe (cheaper than the ring's md5, which most keys no longer need).
    hasher: foldhash::fast::RandomState,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl KeyLocks {
    /// Serializes writes to `key` while its replicas are written; `None` for a key with one
    /// replica, which has no copies to keep in step (the server orders its own writes).
    pub async fn lock(&self, key: &[u8], replicas: &Replicas) -> Option<OwnedMutexGuard<()>> {
        if replicas.as_slice().len() < 2 {
            return None;
        }
        let stripe = self.stripes[self.hasher.hash_one(key) as usize % STRIPES].clone();
        Some(stripe.lock_owned().await)
    }
}

/// A command whose outcome depends on the stored item.
#[derive(Debug, Clone)]
pub enum Conditional {
    Store {
        kind: StoreKind,
        flags: u32,
        exptime: i32,
        data: Bytes,
        cas: u64,
    },
    Arith {
        incr: bool,
        delta: u64,
    },
    /// A meta command, forwarded as the client sent it.
    Meta {
        call: Call,
        op: MetaOp,
    },
}

/// What a conditional meta command does, for what its outcome means to the other replicas.
#[derive(Debug, Clone)]
pub enum MetaOp {
    /// `ms`. `value` is the item a success stores (add, replace, compare-and-set: the client's
    /// own value); `None` when the stored item must be read back (append, prepend, `I` mode).
    Store { add: bool, value: Option<Item> },
    /// `ma`
    Arith,
    /// `md` with a CAS.
    Delete,
}

/// The item a `set` recreates on another replica.
#[derive(Debug, Clone)]
pub struct Item {
    pub flags: u32,
    pub exptime: i32,
    pub data: Bytes,
}

/// What the other replicas need after the executing replica answered.
#[derive(Debug, PartialEq, Eq)]
enum Copy {
    Nothing,
    /// `set` the client's own value, flags and exptime.
    SameValue,
    /// Read the item back from the executing replica, then `set` it.
    ReadBack,
    Delete,
}

impl Conditional {
    fn call(&self, key: &[u8]) -> Call {
        match self {
            Conditional::Meta { call, .. } => call.clone(),
            Conditional::Store {
                kind,
                flags,
                exptime,
                data,
                cas,
            } => forward::store(*kind, key, *flags, *exptime, data.clone(), *cas),
            Conditional::Arith { incr, delta } => forward::arith(*incr, key, *delta),
        }
    }

    /// The `set` that gives another replica the item a stored add/replace/cas created.
    fn same_value(&self, key: &[u8]) -> Option<Call> {
        match self {
            Conditional::Store {
                flags,
                exptime,
                data,
                ..
            } => Some(forward::set(key, *flags, *exptime, data.clone())),
            Conditional::Meta {
                op: MetaOp::Store {
                    value: Some(item), ..
                },
                ..
            } => Some(forward::set(
                key,
                item.flags,
                item.exptime,
                item.data.clone(),
            )),
            Conditional::Arith { .. } | Conditional::Meta { .. } => None,
        }
    }

    fn copy_after(&self, reply: &Reply) -> Copy {
        if let Conditional::Meta { op, .. } = self {
            return meta_copy_after(op, reply);
        }
        let Reply::Status(status) = reply else {
            return match (self, reply) {
                (Conditional::Arith { .. }, Reply::Number(_)) => Copy::ReadBack,
                _ => Copy::Nothing,
            };
        };
        match (self, status) {
            (Conditional::Store { kind, .. }, Status::Stored) => match kind {
                StoreKind::Append | StoreKind::Prepend => Copy::ReadBack,
                _ => Copy::SameValue,
            },
            // The executing replica has no such item; neither may the others.
            (Conditional::Store { kind, .. }, Status::NotStored) if *kind != StoreKind::Add => {
                Copy::Delete
            }
            (_, Status::NotFound) => Copy::Delete,
            _ => Copy::Nothing,
        }
    }
}

/// [`Conditional::copy_after`] for meta commands. A quiet command's left-out reply is its
/// success (`HD`), the only reply quiet mode leaves out of `ms` and `ma`; for `md` success and
/// a miss both mean the others must not keep the key.
fn meta_copy_after(op: &MetaOp, reply: &Reply) -> Copy {
    let code = match reply {
        Reply::Suppressed => MetaCode::Header,
        Reply::Meta { code, .. } => *code,
        _ => return Copy::Nothing,
    };
    match (op, code) {
        (MetaOp::Store { value, .. }, MetaCode::Header) => match value {
            Some(_) => Copy::SameValue,
            None => Copy::ReadBack,
        },
        (MetaOp::Store { add: true, .. }, MetaCode::NotStored) => Copy::Nothing,
        (MetaOp::Store { .. }, MetaCode::NotStored) => Copy::Delete,
        (MetaOp::Arith, MetaCode::Header | MetaCode::Value) => Copy::ReadBack,
        (MetaOp::Delete, MetaCode::Header) => Copy::Delete,
        (_, MetaCode::NotFound) => Copy::Delete,
        _ => Copy::Nothing,
    }
}

/// A reload that changed the routing while a write of `key` ran (`before`: the routing it was
/// sent by) may have given the key servers the write did not reach: an added server, or one
/// that takes the key over, whose warm-up may have copied the key before the write reached the
/// replica it copies from. Each misses the key, before the write is acknowledged, so it is not
/// read for it until repaired from a replica that holds the write.
async fn rerouted(ctx: &Context, before: &Arc<Router>, key: &[u8]) {
    let now = ctx.router();
    if Arc::ptr_eq(&now, before) {
        return;
    }
    let written = before.replicas(key);
    for &id in now.replicas(key).as_slice() {
        if !written.as_slice().contains(&id) {
            missed(ctx, now.backend(id), key).await;
        }
    }
}

/// What a successful write leaves on a server, for the keys it missed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaves {
    /// The key's whole latest item, or its absence (`set`, `delete`): an earlier write the
    /// server missed no longer matters.
    Latest,
    /// A change to an item the server may hold stale (`touch`, `md` with `I`).
    Change,
}

/// `set`, `delete`, `touch`: `call` to every replica of `key`.
pub async fn fanout(
    ctx: &Arc<Context>,
    key: Bytes,
    call: Call,
    leaves: Leaves,
) -> Result<Reply, ProxyError> {
    let router = ctx.router();
    let result = fanout_by(ctx, &router, key.clone(), call, leaves).await;
    rerouted(ctx, &router, &key).await;
    result
}

async fn fanout_by(
    ctx: &Arc<Context>,
    router: &Router,
    key: Bytes,
    call: Call,
    leaves: Leaves,
) -> Result<Reply, ProxyError> {
    let replicas = router.replicas(&key);
    if let &[id] = replicas.as_slice() {
        // One replica: no fan-out (and no lock, see `KeyLocks::lock`).
        let backend = router.backend(id);
        return match write(backend, &key, call, leaves).await {
            Ok(reply) => {
                if write_failed(&reply) {
                    missed(ctx, backend, &key).await;
                } else if leaves == Leaves::Latest {
                    backend.health.standing.lock().wrote(&key);
                }
                Ok(reply)
            }
            Err(e) => {
                missed(ctx, backend, &key).await;
                Err(ProxyError::Unavailable { reasons: vec![e] })
            }
        };
    }
    let guard = ctx.locks.lock(&key, &replicas).await;
    let mut reasons = Vec::new();
    let mut targets = Vec::with_capacity(replicas.as_slice().len());
    for &id in replicas.as_slice() {
        let backend = router.backend(id);
        if backend.state().takes_writes() {
            targets.push(backend.clone());
        } else {
            missed(ctx, backend, &key).await;
            reasons.push(BackendError::Down {
                addr: backend.addr.clone(),
            });
        }
    }
    if targets.is_empty() {
        return Err(ProxyError::Unavailable { reasons });
    }
    match ctx.write_ack() {
        WriteAck::All => {
            let results = apply(ctx, &key, &targets, &call, leaves, None).await;
            first_success(results, reasons)
        }
        WriteAck::First => {
            let (first_tx, first_rx) = oneshot::channel();
            let task_ctx = ctx.clone();
            tokio::spawn(async move {
                let _guard = guard;
                apply(&task_ctx, &key, &targets, &call, leaves, Some(first_tx)).await;
            });
            match first_rx.await {
                Ok(reply) => Ok(reply),
                Err(_) => Err(ProxyError::Unavailable { reasons }),
            }
        }
    }
}

/// `add`, `replace`, `cas`, `append`, `prepend`, `incr`, `decr` on `key`.
pub async fn execute_then_copy(
    ctx: &Arc<Context>,
    key: Bytes,
    command: Conditional,
) -> Result<Reply, ProxyError> {
    let router = ctx.router();
    let result = execute_then_copy_by(ctx, &router, key.clone(), command).await;
    rerouted(ctx, &router, &key).await;
    result
}

async fn execute_then_copy_by(
    ctx: &Arc<Context>,
    router: &Router,
    key: Bytes,
    command: Conditional,
) -> Result<Reply, ProxyError> {
    let replicas = router.replicas(&key);
    let guard = ctx.locks.lock(&key, &replicas).await;
    let mut reasons = Vec::new();
    let mut executed = None;
    let mut others = Vec::new();
    // A server's own error (out of memory): the client's answer when no replica did better.
    let mut reasons_reply = None;
    for &id in replicas.as_slice() {
        let backend = router.backend(id);
        if executed.is_some() {
            if backend.state().takes_writes() {
                others.push(backend.clone());
            } else {
                missed(ctx, backend, &key).await;
            }
            continue;
        }
        if !backend.state().takes_writes() {
            missed(ctx, backend, &key).await;
            reasons.push(BackendError::Down {
                addr: backend.addr.clone(),
            });
            continue;
        }
        // A replica that may not hold the key's latest item (it missed an earlier write, or it
        // is being warmed and may not have the key yet) would give the command a wrong
        // outcome: an incr or append there would miss, and the copy would delete the key
        // everywhere. It runs on the next replica, and this one gets the copy.
        if backend.health.read_rank(&key) != Some(ReadRank::Current) {
            others.push(backend.clone());
            continue;
        }
        match backend.call(command.call(&key)).await {
            Ok(reply) if write_failed(&reply) => {
                missed(ctx, backend, &key).await;
                reasons_reply = Some(reply);
            }
            Ok(reply) => executed = Some((backend.clone(), reply)),
            Err(e) => {
                // It may or may not have applied the command: its copy is suspect.
                missed(ctx, backend, &key).await;
                reasons.push(e);
            }
        }
    }
    let Some((primary, reply)) = executed else {
        for other in &others {
            missed(ctx, other, &key).await;
        }
        return match reasons_reply {
            Some(reply) => Ok(reply),
            None => Err(ProxyError::Unavailable { reasons }),
        };
    };
    let copy = command.copy_after(&reply);
    if others.is_empty() || copy == Copy::Nothing {
        return Ok(reply);
    }
    let task_ctx = ctx.clone();
    let copy_to_others = async move {
        let _guard = guard;
        let call = match copy {
            Copy::SameValue => command.same_value(&key),
            Copy::ReadBack => read_back(&primary, &key).await,
            Copy::Delete | Copy::Nothing => None,
        };
        let counters = task_ctx.stats.counters();
        let call = match call {
            Some(call) => {
                Stats::add(&counters.replica_copies, 1);
                call
            }
            None => {
                Stats::add(&counters.replica_deletes, 1);
                forward::delete(&key)
            }
        };
        // A copy of the executing replica's whole item, or its delete.
        apply(&task_ctx, &key, &others, &call, Leaves::Latest, None).await;
    };
    match ctx.write_ack() {
        WriteAck::All => copy_to_others.await,
        WriteAck::First => {
            tokio::spawn(copy_to_others);
        }
    }
    Ok(reply)
}

/// `flush_all` and other server-wide commands: to every server that takes writes; the first
/// answer in configuration order is the reply. `data`: the command changes items (`flush_all`),
/// so a server that misses it may hold stale items anywhere and is flushed before it is read.
pub async fn broadcast(ctx: &Arc<Context>, call: Call, data: bool) -> Result<Reply, ProxyError> {
    const MISSED: &str = "it missed a flush_all";
    if data {
        ctx.flushes.fetch_add(1, Ordering::AcqRel);
    }
    let mut reasons = Vec::new();
    let router = ctx.router();
    let mut targets = Vec::with_capacity(router.backends.len());
    for b in router.live() {
        if b.state().takes_writes() {
            targets.push(b.clone());
        } else {
            reasons.push(BackendError::Down {
                addr: b.addr.clone(),
            });
            if data {
                missed_all(ctx, b, MISSED).await;
            }
        }
    }
    let mut calls: FuturesUnordered<_> = targets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let call = call.clone();
            async move { (i, b.call(call).await) }
        })
        .collect();
    let mut results = vec![None; targets.len()];
    while let Some((i, result)) = calls.next().await {
        if data && result.as_ref().map_or(true, write_failed) {
            missed_all(ctx, &targets[i], MISSED).await;
        }
        results[i] = Some(result);
    }
    if data {
        // The flush also removed the ledger's marks and the serving heartbeat from the servers
        // it reached: what they said is said again before the flush is acknowledged.
        resync::heartbeat(ctx).await;
        for backend in router.live() {
            if !backend.health.standing.lock().clean() {
                backend.health.ledger_marked.store(false, Ordering::Release);
                ledger::mark(ctx, backend).await;
            }
        }
    }
    first_success(results.into_iter().flatten().collect(), reasons)
}

/// Sends `call` to all `targets` at once and waits for every answer; a failed target misses
/// the key, and one that took a write that `leaves` the latest item no longer does. With
/// `first`, the first successful reply is sent there as soon as it arrives.
async fn apply(
    ctx: &Context,
    key: &[u8],
    targets: &[Arc<Backend>],
    call: &Call,
    leaves: Leaves,
    mut first: Option<oneshot::Sender<Reply>>,
) -> Vec<Result<Reply, BackendError>> {
    let mut calls: FuturesUnordered<_> = targets
        .iter()
        .enumerate()
        .map(|(i, b)| async move { (i, write(b, key, call.clone(), leaves).await) })
        .collect();
    let mut results: Vec<Option<Result<Reply, BackendError>>> = vec![None; targets.len()];
    while let Some((i, result)) = calls.next().await {
        match &result {
            Ok(reply) if !write_failed(reply) => {
                if leaves == Leaves::Latest {
                    targets[i].health.standing.lock().wrote(key);
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(reply.clone());
                }
            }
            _ => missed(ctx, &targets[i], key).await,
        }
        results[i] = Some(result);
    }
    results.into_iter().flatten().collect()
}

/// Sends a write of `key` to `backend`. One that `leaves` the latest item clears the key's
/// miss there when it succeeds, which is only right if no earlier write of the key can be
/// applied after it: while the key is fenced (an earlier write of it went out on a connection
/// the proxy gave up on, which the server has not closed yet) it waits, at most one request
/// timeout, for the server to close that connection, and is not sent if it does not (the key
/// stays missed, for a repair once the fence is down).
async fn write(
    backend: &Backend,
    key: &[u8],
    call: Call,
    leaves: Leaves,
) -> Result<Reply, BackendError> {
    let health = &backend.health;
    // A server that is up missed nothing (a miss makes it suspect before the key's lock is
    // released): no lock taken on the common path.
    if leaves == Leaves::Latest && health.state() != State::Up && health.standing.lock().fenced(key)
    {
        let deadline = tokio::time::Instant::now() + health.settings.request_timeout();
        if !health.unfenced_by(key, deadline).await {
            return Err(BackendError::Fenced {
                addr: backend.addr.clone(),
            });
        }
    }
    backend.call(call).await
}

/// The first success in replica order (a server's error line only when no replica did
/// better), else every reason.
fn first_success(
    results: Vec<Result<Reply, BackendError>>,
    mut reasons: Vec<BackendError>,
) -> Result<Reply, ProxyError> {
    let mut refused = None;
    for result in results {
        match result {
            Ok(reply) if write_failed(&reply) => {
                refused.get_or_insert(reply);
            }
            Ok(reply) => return Ok(reply),
            Err(e) => reasons.push(e),
        }
    }
    refused.ok_or(ProxyError::Unavailable { reasons })
}

/// Records that `backend` may not have taken the last write of `key`, here and (before the
/// write is acknowledged) in the ledger.
pub async fn missed(ctx: &Context, backend: &Backend, key: &[u8]) {
    Stats::add(&ctx.stats.counters().replica_write_failures, 1);
    backend.health.remember_missed(key);
    ledger::mark(ctx, backend).await;
}

/// Records that `backend` may hold stale items anywhere.
async fn missed_all(ctx: &Context, backend: &Backend, reason: &'static str) {
    Stats::add(&ctx.stats.counters().replica_write_failures, 1);
    backend.health.remember_missed_all(reason);
    ledger::mark(ctx, backend).await;
}

/// Reads `key`'s item from `source`: value, flags and the exptime that keeps its remaining
/// TTL; `None` when that cannot be done exactly (a miss, a server without meta commands, an
/// item about to expire).
pub async fn read_item(source: &Backend, key: &[u8]) -> Option<Item> {
    let Ok(Reply::Meta {
        code: MetaCode::Value,
        flags,
        data: Some(data),
        ..
    }) = source.call(forward::meta_get_item(key)).await
    else {
        return None;
    };
    let mut client_flags = None;
    let mut ttl = None;
    for token in flags.split(|b| *b == b' ') {
        match token.split_first() {
            Some((b'f', v)) => client_flags = parse_u32_truncating(v),
            Some((b't', v)) => ttl = parse_i32(v),
            _ => {}
        }
    }
    Some(Item {
        flags: client_flags?,
        exptime: exptime_for_ttl(ttl?)?,
        data,
    })
}

/// The `set` that gives another replica `key`'s item as `primary` holds it; `None` when that
/// cannot be done exactly (see [`read_item`]).
pub async fn read_back(primary: &Backend, key: &[u8]) -> Option<Call> {
    let item = read_item(primary, key).await?;
    Some(forward::set(key, item.flags, item.exptime, item.data))
}

/// The exptime that gives an item `ttl` more seconds (`-1`: never expires).
fn exptime_for_ttl(ttl: i32) -> Option<i32> {
    match i64::from(ttl) {
        -1 => Some(0),
        // It expires within the second: a copy would outlive it or vanish at once; neither is
        // exact, so the caller deletes instead.
        t if t <= 0 => None,
        t if t <= MAX_RELATIVE_EXPTIME => Some(t as i32),
        t => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
            i32::try_from(now + t).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(kind: StoreKind) -> Conditional {
        Conditional::Store {
            kind,
            flags: 0,
            exptime: 0,
            data: Bytes::new(),
            cas: 0,
        }
    }

    #[test]
    fn what_is_copied_after_each_outcome() {
        let stored = Reply::Status(Status::Stored);
        let not_stored = Reply::Status(Status::NotStored);
        assert_eq!(store(StoreKind::Add).copy_after(&stored), Copy::SameValue);
        assert_eq!(store(StoreKind::Add).copy_after(&not_stored), Copy::Nothing);
        assert_eq!(
            store(StoreKind::Replace).copy_after(&not_stored),
            Copy::Delete
        );
        assert_eq!(store(StoreKind::Cas).copy_after(&stored), Copy::SameValue);
        assert_eq!(
            store(StoreKind::Cas).copy_after(&Reply::Status(Status::Exists)),
            Copy::Nothing
        );
        assert_eq!(
            store(StoreKind::Cas).copy_after(&Reply::Status(Status::NotFound)),
            Copy::Delete
        );
        assert_eq!(store(StoreKind::Append).copy_after(&stored), Copy::ReadBack);
        assert_eq!(
            store(StoreKind::Prepend).copy_after(&not_stored),
            Copy::Delete
        );
        let incr = Conditional::Arith {
            incr: true,
            delta: 1,
        };
        assert_eq!(incr.copy_after(&Reply::Number(5)), Copy::ReadBack);
        assert_eq!(
            incr.copy_after(&Reply::Status(Status::NotFound)),
            Copy::Delete
        );
    }

    fn meta(op: MetaOp) -> Conditional {
        Conditional::Meta {
            call: forward::meta(Bytes::new(), false),
            op,
        }
    }

    fn meta_reply(code: MetaCode) -> Reply {
        Reply::Meta {
            code,
            flags: Bytes::new(),
            data: None,
            raw: Bytes::new(),
        }
    }

    #[test]
    fn what_is_copied_after_each_meta_outcome() {
        let item = Item {
            flags: 1,
            exptime: 0,
            data: Bytes::from_static(b"v"),
        };
        let add = meta(MetaOp::Store {
            add: true,
            value: Some(item),
        });
        let append = meta(MetaOp::Store {
            add: false,
            value: None,
        });
        let header = meta_reply(MetaCode::Header);
        let not_stored = meta_reply(MetaCode::NotStored);
        assert_eq!(add.copy_after(&header), Copy::SameValue);
        assert_eq!(add.copy_after(&Reply::Suppressed), Copy::SameValue);
        assert_eq!(add.copy_after(&not_stored), Copy::Nothing);
        assert_eq!(append.copy_after(&Reply::Suppressed), Copy::ReadBack);
        assert_eq!(append.copy_after(&not_stored), Copy::Delete);
        assert_eq!(
            append.copy_after(&meta_reply(MetaCode::Exists)),
            Copy::Nothing
        );
        let arith = meta(MetaOp::Arith);
        assert_eq!(
            arith.copy_after(&meta_reply(MetaCode::Value)),
            Copy::ReadBack
        );
        assert_eq!(
            arith.copy_after(&meta_reply(MetaCode::NotFound)),
            Copy::Delete
        );
        let delete = meta(MetaOp::Delete);
        assert_eq!(delete.copy_after(&Reply::Suppressed), Copy::Delete);
        assert_eq!(
            delete.copy_after(&meta_reply(MetaCode::Exists)),
            Copy::Nothing
        );
        let error = Reply::Error {
            kind: crate::backend::ErrorKind::Client,
            text: Bytes::new(),
        };
        assert_eq!(arith.copy_after(&error), Copy::Nothing);
    }

    #[test]
    fn ttl_to_exptime() {
        assert_eq!(exptime_for_ttl(-1), Some(0));
        assert_eq!(exptime_for_ttl(0), None);
        assert_eq!(exptime_for_ttl(100), Some(100));
        assert!(exptime_for_ttl(60 * 60 * 24 * 31).unwrap() > 1_600_000_000);
    }
}
