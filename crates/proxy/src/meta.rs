//! Meta commands through the proxy: `mg`, `ms`, `md`, `ma` and `me` routed by key, `mn` answered
//! here.
//!
//! A meta request goes to the backends as the client sent it (flags, opaque token, base64 key
//! and all), so a replica answers it exactly as it would answer the client, and its answer is
//! passed back byte for byte. The key is routed by its decoded bytes, so a key lands on the same
//! servers whether it was sent as text or in base64. A quiet request (`q`) goes out followed by
//! `mn` (see [`Expect::UntilNoop`](crate::backend::Expect::UntilNoop)): the server decides what
//! quiet mode leaves out, and the client gets exactly that, in the order it asked.
//!
//! - `mg`, `me`: reads, from the first replica that answers ([`read::meta_get`]); `mg` with `T`
//!   also sets the TTL on the other replicas, as gat does.
//! - `ms` in set mode without a CAS (`C`) or invalidation (`I`), and `md` without a CAS: to
//!   every replica, as set and delete ([`replicate::fanout`]).
//! - Every other `ms`, `ma`, and `md` with a CAS: on the first healthy replica, its outcome then
//!   copied to the others ([`replicate::execute_then_copy`]); a CAS is never sent to a replica
//!   whose CAS numbers differ.

use std::sync::Arc;

use bytes::Bytes;
use keepcached_protocol::meta::{MetaCommand, MetaKey, MetaReject, MetaRequest, SetMode};
use keepcached_protocol::reply;
use keepcached_protocol::response::MetaCode;

use crate::backend::Reply;
use crate::error::ProxyError;
use crate::forward;
use crate::read;
use crate::replicate::{self, Conditional, Item, Leaves, MetaOp};
use crate::reply::{self as outcome, Next};
use crate::stats::Stats;
use crate::Context;

/// Executes one parsed meta request (`frame` holds all its bytes) and appends its reply.
pub async fn execute(
    ctx: &Arc<Context>,
    frame: &Bytes,
    outcome: Result<MetaRequest<'_>, MetaReject<'_>>,
    out: &mut Vec<u8>,
) -> Next {
    let request = match outcome {
        Ok(request) => request,
        Err(reject) => return rejected(ctx, frame, reject, out).await,
    };
    let counters = ctx.stats.counters();
    let opts = &request.options;
    let key = key_bytes(frame, &request.key);
    let call = forward::meta(frame.clone(), opts.quiet);
    let result = match request.command {
        MetaCommand::Noop => {
            out.extend_from_slice(reply::MN);
            return Next::Continue;
        }
        MetaCommand::Get => {
            Stats::add(&counters.cmd_get, 1);
            let result = read::meta_get(ctx, &key, call, opts.ttl).await;
            let hit = matches!(
                result,
                Ok(Reply::Meta {
                    code: MetaCode::Value | MetaCode::Header,
                    ..
                })
            );
            Stats::add(
                if hit {
                    &counters.get_hits
                } else {
                    &counters.get_misses
                },
                1,
            );
            result
        }
        MetaCommand::Debug => read::meta_get(ctx, &key, call, None).await,
        MetaCommand::Set => {
            Stats::add(&counters.cmd_set, 1);
            if request.set_mode == SetMode::Set && opts.compare_cas.is_none() && !opts.invalidate {
                replicate::fanout(ctx, key, call, Leaves::Latest).await
            } else {
                // Add, replace and compare-and-set store the client's own value when they
                // succeed; append, prepend and `I` (which may store the item as stale) make
                // something only the executing replica knows.
                let value = matches!(
                    request.set_mode,
                    SetMode::Set | SetMode::Add | SetMode::Replace
                ) && !opts.invalidate;
                let op = MetaOp::Store {
                    add: request.set_mode == SetMode::Add,
                    value: value.then(|| Item {
                        flags: opts.client_flags,
                        exptime: opts.ttl.unwrap_or(0),
                        data: frame.slice_ref(request.data),
                    }),
                };
                replicate::execute_then_copy(ctx, key, Conditional::Meta { call, op }).await
            }
        }
        MetaCommand::Delete => {
            Stats::add(&counters.cmd_delete, 1);
            if opts.compare_cas.is_none() {
                // With `I` the item stays, marked stale: whatever the server held before.
                let leaves = if opts.invalidate {
                    Leaves::Change
                } else {
                    Leaves::Latest
                };
                replicate::fanout(ctx, key, call, leaves).await
            } else {
                let op = MetaOp::Delete;
                replicate::execute_then_copy(ctx, key, Conditional::Meta { call, op }).await
            }
        }
        MetaCommand::Arith => {
            Stats::add(
                if request.incr {
                    &counters.cmd_incr
                } else {
                    &counters.cmd_decr
                },
                1,
            );
            let op = MetaOp::Arith;
            replicate::execute_then_copy(ctx, key, Conditional::Meta { call, op }).await
        }
    };
    answer(ctx, result, out);
    Next::Continue
}

/// A meta request that did not parse: memcached's error line, and what memcached does besides
/// (discard the data block; drop the old item of an `ms` too large to store, on every replica,
/// so that no stale value survives the failed write).
async fn rejected(
    ctx: &Arc<Context>,
    frame: &Bytes,
    reject: MetaReject<'_>,
    out: &mut Vec<u8>,
) -> Next {
    if let Some(key) = reject.unlink {
        let key = key_bytes(frame, &key);
        let delete = forward::delete(&key);
        let _ = replicate::fanout(ctx, key, delete, Leaves::Latest).await;
    }
    reply::line(out, reject.error.as_str().as_bytes());
    if reject.swallow > 0 {
        Next::Swallow(reject.swallow)
    } else {
        Next::Continue
    }
}

/// The key as the store sees it: a slice of the frame, or a copy of the key decoded from base64
/// (which lives in the parsed request, not in the frame).
fn key_bytes(frame: &Bytes, key: &MetaKey<'_>) -> Bytes {
    if key.is_binary() {
        Bytes::copy_from_slice(key.as_bytes())
    } else {
        frame.slice_ref(key.as_bytes())
    }
}

/// Appends a replica's answer as it sent it; nothing where quiet mode left the answer out.
/// Failures are always answered, quiet or not, as memcached answers its errors.
fn answer(ctx: &Context, result: Result<Reply, ProxyError>, out: &mut Vec<u8>) {
    match result {
        Ok(Reply::Suppressed) => {}
        Ok(Reply::Meta { raw, .. }) => out.extend_from_slice(&raw),
        other => outcome::answer(ctx, other, false, out),
    }
}
