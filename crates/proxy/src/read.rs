//! Reads: get, gets, gat, gats with any number of keys, and the meta reads `mg` and `me`.
//!
//! Each key is read from its first healthy replica. The keys of one request are grouped by that
//! server and each group goes out as one multi-get, all groups at once. A group whose server
//! fails or times out is regrouped on each key's next replica and sent again, so a client sees
//! no error while any replica of its keys is up. Keys with no replica left are misses, unless
//! so configured or unless no key at all could be read: then the request gets `SERVER_ERROR`.
//! The values are written back in the order of the request's keys, as memcached would answer.
//!
//! `gat`/`gats` also change the TTL, a write: after the read, each hit is touched on the key's
//! other healthy replicas so that their items expire together.
//!
//! A meta read ([`meta_get`]) names one key: it is asked of each replica in turn until one
//! answers; an `mg` with `T` copies its TTL the same way gat does.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use keepcached_protocol::{reply, Keys, Verb};

use keepcached_protocol::response::MetaCode;

use crate::backend::{write_failed, BackendError, Call, Reply, Value};
use crate::config::Unavailable;
use crate::conn::most_keys;
use crate::error::ProxyError;
use crate::forward;
use crate::replicate;
use crate::reply::{self as answer_with, Output};
use crate::route::{Replicas, Router};
use crate::stats::Stats;
use crate::Context;

/// One requested key on its way to an answer.
#[derive(Debug)]
struct Wanted<'a> {
    key: &'a [u8],
    replicas: Replicas,
    /// Index in `replicas` of the server to ask next.
    next: usize,
    /// That server, while a round of calls is being grouped.
    target: u16,
    value: Option<Value>,
    /// The backend that answered, for gat's TTL copy.
    served_by: Option<u16>,
    /// The request (of the batch) that asked for it.
    request: usize,
    /// No replica was left to ask.
    unavailable: bool,
    /// It already waited for a replica's verification ([`await_verification`]).
    waited: bool,
}

/// A get request's answer so far, across the windows its keys are read in.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Some of its keys were read.
    asked: bool,
    /// Some key of it had a replica up to read it from.
    available: bool,
    /// It was answered with `SERVER_ERROR`: the rest of its keys are not written.
    failed: bool,
}

/// Answers get-family requests with the same verb and exptime into `out`, in order: for each,
/// its values then `END`, or `SERVER_ERROR` when its keys cannot be read. The keys of all of
/// them are read together, so a client's pipelined gets cost one multi-get per server.
///
/// The keys are read in windows of at most [`Context::read_window`] keys, and each window's
/// values are written (and the client given the chance to take them, [`Output::relieve`])
/// before the next window is asked for: a client naming one large item a thousand times makes
/// the proxy hold one window of it, not a thousand copies. A request whose keys span windows
/// and whose later window cannot be read ends with `SERVER_ERROR` after the values already
/// written, as memcached ends a multi-get it cannot finish.
pub async fn get<O: Output>(
    ctx: &Arc<Context>,
    verb: Verb,
    exptime: Option<i32>,
    requests: &[Keys<'_>],
    out: &mut O,
) -> std::io::Result<()> {
    let window = ctx.read_window();
    let mut progress = vec![Progress::default(); requests.len()];
    // Why keys could not be read, each with the request it concerns (none when all goes well).
    let mut reasons: Vec<(usize, BackendError)> = Vec::new();
    let most: usize = requests
        .iter()
        .map(|keys| most_keys(keys.as_bytes()) + 1)
        .sum();
    let mut keys: Vec<(usize, &[u8])> = Vec::with_capacity(most);
    for (request, names) in requests.iter().enumerate() {
        keys.extend(names.iter().map(|key| (request, key)));
    }
    let (mut answered, mut at) = (0, 0);
    loop {
        let part = &keys[at..keys.len().min(at + window)];
        at += part.len();
        if !part.is_empty() {
            let wanted = read_part(ctx, verb, exptime, part, &mut reasons).await;
            for asked in wanted.chunk_by(|a, b| a.request == b.request) {
                let request = asked[0].request;
                // The requests before this one have all their keys written.
                finish(ctx, &progress, &mut answered, request, &reasons, out.buf());
                write_part(
                    ctx,
                    exptime,
                    asked,
                    &mut progress[request],
                    &reasons,
                    out.buf(),
                )
                .await;
            }
        }
        // Every request before the next key's is complete.
        let next = keys.get(at).map_or(requests.len(), |(request, _)| *request);
        finish(ctx, &progress, &mut answered, next, &reasons, out.buf());
        out.relieve().await?;
        if answered == requests.len() {
            return Ok(());
        }
    }
}

/// Reads one window of keys (`part`: each with the request that names it) from their first
/// healthy replicas, failing over group by group.
async fn read_part<'a>(
    ctx: &Context,
    verb: Verb,
    exptime: Option<i32>,
    part: &[(usize, &'a [u8])],
    reasons: &mut Vec<(usize, BackendError)>,
) -> Vec<Wanted<'a>> {
    let counters = ctx.stats.counters();
    // One routing for the whole window: its replica sets and the backends they name.
    let router = ctx.router();
    let mut wanted: Vec<Wanted<'_>> = part
        .iter()
        .map(|&(request, key)| Wanted {
            key,
            replicas: router.read_order(key),
            next: 0,
            target: 0,
            value: None,
            served_by: None,
            request,
            unavailable: false,
            waited: false,
        })
        .collect();
    Stats::add(&counters.cmd_get, wanted.len() as u64);
    let mut todo: Vec<usize> = (0..wanted.len()).collect();
    let mut waiting = Vec::new();
    loop {
        todo.retain(|&i| match next_healthy(&router, &mut wanted[i], reasons) {
            Some(id) => {
                wanted[i].target = id;
                true
            }
            None if !wanted[i].waited && awaits_verification(&router, wanted[i].key) => {
                waiting.push(i);
                false
            }
            None => {
                wanted[i].unavailable = true;
                false
            }
        });
        if todo.is_empty() {
            if waiting.is_empty() {
                break;
            }
            let keys = waiting.iter().map(|&i| wanted[i].key);
            await_verification(&router, keys).await;
            for i in waiting.drain(..) {
                let w = &mut wanted[i];
                (w.replicas, w.next, w.waited) = (router.read_order(w.key), 0, true);
                todo.push(i);
            }
            continue;
        }
        // Each server's keys side by side: a group is a run of `batch`, so the usual case (all
        // keys on one server) allocates nothing to group them.
        todo.sort_unstable_by_key(|&i| wanted[i].target);
        let batch = std::mem::take(&mut todo);
        let call_group = |members: &[usize]| {
            let id = wanted[members[0]].target;
            let call = forward::get(verb, exptime, members.iter().map(|&i| wanted[i].key));
            let backend = router.backend(id).clone();
            async move { (id, backend.call(call).await) }
        };
        let groups = batch.chunk_by(|&a, &b| wanted[a].target == wanted[b].target);
        // One server needs no set of futures to wait on.
        let (mut single, mut calls) = if groups.clone().count() <= 1 {
            (groups.clone().next().map(|m| (m, call_group(m))), None)
        } else {
            let calls: FuturesUnordered<_> = groups
                .map(|members| {
                    let call = call_group(members);
                    async move { (members, call.await) }
                })
                .collect();
            (None, Some(calls))
        };
        while let Some((members, (id, result))) = match (single.take(), calls.as_mut()) {
            (Some((members, call)), _) => Some((members, call.await)),
            (None, Some(calls)) => calls.next().await,
            (None, None) => None,
        } {
            match result {
                Ok(Reply::Values(values)) => {
                    // The server answers hits in the order the keys were asked (a key asked
                    // twice, twice), so one pass over the group matches them.
                    let mut at = 0;
                    for value in values {
                        while at < members.len() && wanted[members[at]].key != value.key() {
                            at += 1;
                        }
                        if let Some(&i) = members.get(at) {
                            wanted[i].value = Some(value);
                            at += 1;
                        }
                    }
                    for &i in members {
                        wanted[i].served_by.get_or_insert(id);
                    }
                }
                other => {
                    if let Err(e) = other {
                        for &i in members {
                            note(reasons, wanted[i].request, &e);
                        }
                    }
                    Stats::add(&counters.get_failovers, members.len() as u64);
                    for &i in members {
                        wanted[i].next += 1;
                    }
                    todo.extend_from_slice(members);
                }
            }
        }
    }
    wanted
}

/// Records why a request's key could not be read, once per request and reason: the error line
/// names each reason once however many keys it concerned.
fn note(reasons: &mut Vec<(usize, BackendError)>, request: usize, error: &BackendError) {
    if !reasons.iter().any(|(r, e)| *r == request && e == error) {
        reasons.push((request, error.clone()));
    }
}

/// Writes the values of one request's keys read in one window (`asked`, in the order the client
/// sent them), or its `SERVER_ERROR` when they cannot be read and so configured.
async fn write_part(
    ctx: &Context,
    exptime: Option<i32>,
    asked: &[Wanted<'_>],
    progress: &mut Progress,
    reasons: &[(usize, BackendError)],
    out: &mut Vec<u8>,
) {
    if progress.failed {
        return;
    }
    let counters = ctx.stats.counters();
    progress.asked = true;
    let unavailable = asked.iter().filter(|w| w.unavailable).count();
    if unavailable < asked.len() {
        progress.available = true;
    }
    if unavailable > 0 {
        Stats::add(&counters.get_unavailable, unavailable as u64);
        if ctx.multiget_unavailable() == Unavailable::ServerError {
            fail(ctx, asked[0].request, reasons, out);
            progress.failed = true;
            return;
        }
    }
    if let Some(exptime) = exptime {
        copy_ttl(ctx, asked, exptime).await;
    }
    let mut hits = 0;
    for w in asked {
        if let Some(v) = &w.value {
            hits += 1;
            // The server's own reply to the same verb: passed on as it came.
            out.extend_from_slice(v.raw());
        }
    }
    Stats::add(&counters.get_hits, hits);
    Stats::add(&counters.get_misses, asked.len() as u64 - hits);
}

/// Ends the requests from `answered` up to `until`, whose keys have all been written: each with
/// `END`, or `SERVER_ERROR` when none of its keys could be read at all (a miss would hide the
/// outage).
fn finish(
    ctx: &Context,
    progress: &[Progress],
    answered: &mut usize,
    until: usize,
    reasons: &[(usize, BackendError)],
    out: &mut Vec<u8>,
) {
    for (request, progress) in progress.iter().enumerate().take(until).skip(*answered) {
        if progress.failed {
            continue;
        }
        if progress.available || !progress.asked {
            out.extend_from_slice(reply::END);
        } else {
            fail(ctx, request, reasons, out);
        }
    }
    *answered = (*answered).max(until);
}

fn fail(ctx: &Context, request: usize, reasons: &[(usize, BackendError)], out: &mut Vec<u8>) {
    let reasons = reasons
        .iter()
        .filter(|(r, _)| *r == request)
        .map(|(_, e)| e.clone())
        .collect();
    answer_with::unavailable(ctx, &ProxyError::Unavailable { reasons }, out);
}

/// Whether a replica of `key` is being verified after a connection to it closed
/// ([`crate::health::Health::awaits_verification`]): a read with nothing else to ask waits for
/// it rather than failing.
fn awaits_verification(router: &Router, key: &[u8]) -> bool {
    router
        .replicas(key)
        .as_slice()
        .iter()
        .any(|&id| router.backend(id).health.awaits_verification())
}

/// Waits until no replica of `keys` is being verified, at most one request timeout in all: the
/// supervisor of a live server answers within milliseconds, and a dead one is marked down.
async fn await_verification<'k>(router: &Router, keys: impl Iterator<Item = &'k [u8]>) {
    let mut deadline = None;
    for key in keys {
        for &id in router.replicas(key).as_slice() {
            let health = &router.backend(id).health;
            let deadline = *deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + health.settings.request_timeout()
            });
            health.verified_by(deadline).await;
        }
    }
}

/// `mg` or `me` of `key` (`call` is the request as the client sent it): the first answer of a
/// healthy replica, in replica order. `touch`: the TTL an `mg` with `T` set, given to the other
/// replicas after a hit.
pub async fn meta_get(
    ctx: &Context,
    key: &[u8],
    call: Call,
    touch: Option<i32>,
) -> Result<Reply, ProxyError> {
    let counters = ctx.stats.counters();
    let router = ctx.router();
    let mut reasons = Vec::new();
    let mut order = router.read_order(key);
    if order.as_slice().is_empty() && awaits_verification(&router, key) {
        await_verification(&router, std::iter::once(key)).await;
        order = router.read_order(key);
    }
    for &id in order.as_slice() {
        let backend = router.backend(id);
        if backend.health.read_rank(key).is_none() {
            reasons.push(BackendError::Down {
                addr: backend.addr.clone(),
            });
            continue;
        }
        match backend.call(call.clone()).await {
            Ok(reply) => {
                let hit = matches!(
                    reply,
                    Reply::Meta {
                        code: MetaCode::Value | MetaCode::Header,
                        ..
                    }
                );
                if let (Some(exptime), true) = (touch, hit) {
                    // Every replica, those read_order left out too; hashed again only here.
                    let replicas = router.replicas(key);
                    let others = replicas.as_slice().iter().filter(|&&o| o != id);
                    let mut touches: FuturesUnordered<_> =
                        others.map(|&o| touch_one(ctx, o, key, exptime)).collect();
                    while touches.next().await.is_some() {}
                }
                return Ok(reply);
            }
            Err(e) => {
                Stats::add(&counters.get_failovers, 1);
                reasons.push(e);
            }
        }
    }
    Err(ProxyError::Unavailable { reasons })
}

/// Sets `key`'s TTL on one replica; a replica that fails misses the write.
async fn touch_one(ctx: &Context, id: u16, key: &[u8], exptime: i32) {
    let router = ctx.router();
    let backend = router.backend(id);
    let touched = backend.call(forward::touch(key, exptime)).await;
    if touched.as_ref().map_or(true, write_failed) {
        replicate::missed(ctx, backend, key).await;
    }
}

/// The next replica of `w` that is up, skipping (and noting) those that are down.
fn next_healthy(
    router: &Router,
    w: &mut Wanted<'_>,
    reasons: &mut Vec<(usize, BackendError)>,
) -> Option<u16> {
    let replicas = w.replicas.as_slice();
    while let Some(&id) = replicas.get(w.next) {
        let backend = router.backend(id);
        if backend.health.read_rank(w.key).is_some() {
            return Some(id);
        }
        let down = BackendError::Down {
            addr: backend.addr.clone(),
        };
        note(reasons, w.request, &down);
        w.next += 1;
    }
    None
}

/// gat/gats: touch each hit on the replicas that did not serve it.
async fn copy_ttl(ctx: &Context, wanted: &[Wanted<'_>], exptime: i32) {
    let mut touches: FuturesUnordered<_> = wanted
        .iter()
        .filter(|w| w.value.is_some())
        .flat_map(|w| {
            w.replicas
                .as_slice()
                .iter()
                .filter(move |&&id| Some(id) != w.served_by)
                .map(move |&id| (id, w.key))
        })
        .map(|(id, key)| touch_one(ctx, id, key, exptime))
        .collect();
    while touches.next().await.is_some() {}
}
