//! Each server's supervisor: it finds out when the server answers, whether it is the same
//! process, what it may hold stale, and brings it back into service without a stale or a cold
//! read.
//!
//! A server that answers again (or for the first time) is judged before it is read:
//! - it restarted (`stats` shows another `pid` or start time), missed more keys than are kept,
//!   missed a `flush_all`, or another proxy recorded in the ledger that it missed writes: it
//!   may hold stale data anywhere, so it is flushed, then warmed (warmup.rs);
//! - it is empty while the other servers hold items: warmed;
//! - it missed some keys: each is repaired, copied from a replica that holds the key's latest
//!   value, or deleted on the server when no replica does (a miss is never stale);
//! - then it is `up`, and its ledger mark is cleared.
//!
//! Repair and warm-up hold the key's replica lock (replicate.rs) while they read the source and
//! write the server, so a client write to the same key through this proxy comes entirely before
//! or after the copy; the server takes every client write meanwhile. A server in service is
//! checked every `health_interval_ms`, so a restart is seen even when no client uses it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{write_failed, Backend, BackendError};
use crate::conn::connect;
use crate::forward;
use crate::health::{Order, ReadRank, State};
use crate::ledger;
use crate::replicate;
use crate::stats::Stats;
use crate::warmup;
use crate::Context;

/// Missed keys taken for repair at a time.
const REPAIR_BATCH: usize = 256;
/// How long a read of the ledger vouches for the servers to a new client.
const VOUCH_AGE: Duration = Duration::from_millis(100);
/// Two start times closer than this are the same process (uptime and time are whole seconds).
const START_SLACK: u64 = 2;

/// Who a server is and how full, from its `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: u64,
    /// Unix time it started (`time - uptime`).
    pub started: u64,
    pub curr_items: u64,
}

impl Identity {
    fn same_process(&self, other: &Identity) -> bool {
        self.pid == other.pid && self.started.abs_diff(other.started) <= START_SLACK
    }
}

/// Starts one supervisor per server, and the serving heartbeat, on the current runtime; they
/// stop when `shutdown` turns true.
pub fn start(ctx: &Arc<Context>, shutdown: &tokio::sync::watch::Receiver<bool>) {
    for id in 0..ctx.router().backends.len() {
        tokio::spawn(supervise(ctx.clone(), id));
    }
    tokio::spawn(serving(ctx.clone(), shutdown.clone()));
}

/// While this proxy serves clients: its heartbeat on the servers (see [`heartbeat_ttl`]).
pub async fn heartbeat(ctx: &Context) {
    if ctx.live().resync.ledger && ctx.serving() {
        ledger::heartbeat(ctx, heartbeat_ttl(ctx)).await;
    }
}

/// The slowest round of the [`serving`] loop: its sleep, then a heartbeat set and a look that
/// may each wait out a stalled server's connect and request timeouts.
fn slowest_round(ctx: &Context) -> Duration {
    let settings = &ctx.live().backend;
    settings.health_interval() + (settings.connect_timeout() + settings.request_timeout()) * 2
}

/// How long a serving heartbeat lasts, in seconds: two of the slowest rounds that refresh it,
/// and one second more for memcached's clock, which counts whole seconds (an item set for `n`
/// seconds may be gone after `n - 1`). Shorter, a server that stalls lets the heartbeat expire
/// on the others while this proxy serves, and a standby acts beside it: three health intervals
/// (2 s in the tests) did, with rounds of over a second while a server was stopped.
fn heartbeat_ttl(ctx: &Context) -> i32 {
    let ttl = (slowest_round(ctx) * 2).as_secs_f64().ceil() + 1.0;
    ttl.min(f64::from(i32::MAX)) as i32
}

/// Whether another proxy serves the clients, as far as this proxy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// No look has told: this proxy just started, or a server that takes writes did not answer
    /// the last look and no other showed a heartbeat (it may be on that server alone).
    Unknown,
    /// Another proxy's heartbeat was on a server.
    Serving,
    /// Every server that takes writes answered without another proxy's heartbeat, or no look
    /// told for one slowest round of the [`serving`] loop.
    Nobody,
}

/// The last look's finding, and when a look last told.
#[derive(Debug)]
pub struct OthersKnown {
    found: Others,
    told: Instant,
}

impl OthersKnown {
    /// At start: unknown until the first look tells; without the ledger there are no heartbeats
    /// to look for, and no other proxy this one could stand by for.
    pub fn new(ledger: bool) -> OthersKnown {
        OthersKnown {
            found: if ledger {
                Others::Unknown
            } else {
                Others::Nobody
            },
            told: Instant::now(),
        }
    }

    pub fn found(&self) -> Others {
        self.found
    }
}

/// Looks now whether another proxy serves the clients, and records what it found. A look
/// that saw no heartbeat while a server did not answer cannot tell; once no look told for one
/// slowest round of the [`serving`] loop (by then a stalled server is down, and no longer
/// read), it counts as nobody, with a warning: a lone proxy does not wait longer than that.
async fn look_serving(ctx: &Context) -> Others {
    let look = ledger::others_serving(ctx).await;
    let bound = slowest_round(ctx);
    let mut known = ctx.others.lock();
    let told = look.others || look.complete;
    if told {
        known.told = Instant::now();
    }
    let found = if look.others {
        Others::Serving
    } else if told || known.told.elapsed() >= bound {
        Others::Nobody
    } else {
        Others::Unknown
    };
    if found != known.found {
        known.found = found;
        match found {
            Others::Serving => tracing::info!(
                "another proxy serves the clients: this one is a standby and leaves flushes, \
                 warm-ups and repairs to it"
            ),
            Others::Nobody if told => tracing::info!(
                "no other proxy serves the clients: this one flushes, warms and repairs its servers"
            ),
            Others::Nobody => tracing::warn!(
                ?bound,
                "no look told whether another proxy serves the clients (a server did not \
                 answer): this one flushes, warms and repairs its servers"
            ),
            Others::Unknown => tracing::info!(
                "a server did not answer the look for another proxy serving the clients: this \
                 one leaves its servers as they are until a look tells"
            ),
        }
    }
    found
}

/// Whether this proxy may flush, warm or repair a server now: it serves clients, or a look
/// made now finds that no other proxy does. A standby (the other host holds the VIP) only reads
/// and judges its servers: the serving proxy repairs them under its own key locks, and two
/// proxies at it would race each other's writes and flush what the other warms. An older look
/// is not enough: a freshly started proxy has made none, and a heartbeat seen a round ago may
/// have been missed since.
async fn may_act(ctx: &Context) -> bool {
    if ctx.serving() || !ctx.live().resync.ledger {
        return true;
    }
    look_serving(ctx).await == Others::Nobody
}

/// Every health interval: while this proxy serves clients, its heartbeat on the servers; and
/// whether another proxy's is there (for `stats`; acting waits for a look of its own).
async fn serving(ctx: Arc<Context>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if !ctx.live().resync.ledger {
        return;
    }
    let interval = ctx.live().backend.health_interval();
    loop {
        heartbeat(&ctx).await;
        look_serving(&ctx).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Waits until every server has answered once or failed to (each within its connect and
/// request timeouts), so the first clients find the servers' state known.
pub async fn first_contact(ctx: &Context) {
    let settings = &ctx.live().backend;
    let limit = settings.connect_timeout() + settings.request_timeout() * 2;
    let _ = tokio::time::timeout(limit, async {
        while ctx.router().live().any(|b| b.state() == State::Connecting) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

pub async fn supervise(ctx: Arc<Context>, id: usize) {
    let backend = ctx.router().backends[id].clone();
    let health = &backend.health;
    let mut shutdown = health.shutdown.clone();
    let mut known: Option<Identity> = None;
    let mut checker = Checker::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let order = health.order.lock().take();
        let state = health.state();
        let returning = match state {
            State::Connecting | State::Down => true,
            State::Drained => matches!(order, Some(Order::Up | Order::Warm)),
            State::Up | State::Suspect | State::Warming => false,
        };
        if state == State::Drained && !returning {
            tokio::select! {
                () = health.wake.notified() => {}
                () = stopped(&mut shutdown) => return,
            }
            continue;
        }
        if returning {
            let Some(identity) = checker.until_answer(&ctx, &backend, state).await else {
                return;
            };
            health.reset_failures();
            judge(&ctx, &backend, &mut known, identity).await;
            // Straight to up when there is nothing to repair; under the standing lock, so a
            // miss recorded meanwhile is either seen here or makes it suspect after.
            let (clean, changed) = {
                let standing = health.standing.lock();
                let clean = standing.clean()
                    && order.is_none()
                    && !health.ledger_marked.load(Ordering::Acquire);
                let to = if clean { State::Up } else { State::Suspect };
                // From the state it was probed in only: an operator's drain meanwhile stands.
                (clean, health.change(&[state], to, "it answers"))
            };
            if !changed {
                continue;
            }
            health.back_up.notify_waiters();
            if !clean && (order.is_some() || may_act(&ctx).await) {
                restore(&ctx, id, order).await;
            }
            continue;
        }
        if state != State::Up || order.is_some() {
            let unverified = health.standing.lock().unverified;
            if unverified {
                // A connection closed: see who the server is now, before anything else.
                check(&ctx, &backend, &mut known, &mut checker).await;
            }
            if order.is_some() || may_act(&ctx).await {
                restore(&ctx, id, order).await;
            } else {
                settle(&backend);
            }
            if health.state() != State::Up && health.state().takes_writes() {
                // It could not be finished now (a failing server, a held one): wait for news,
                // and check the server meanwhile (a dead one is then marked down).
                tokio::select! {
                    () = health.wake.notified() => {}
                    () = tokio::time::sleep(health.settings.health_interval()) => {}
                    () = stopped(&mut shutdown) => return,
                }
                check(&ctx, &backend, &mut known, &mut checker).await;
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(health.settings.health_interval()) => {}
            () = health.wake.notified() => {}
            () = stopped(&mut shutdown) => return,
        }
        check(&ctx, &backend, &mut known, &mut checker).await;
    }
}

/// Reads the ledger before a new client is served, unless it was read very recently: a proxy
/// that was idle (the other host held the VIP) learns at once of every server another proxy
/// saw miss writes, instead of at its next health check.
pub async fn vouch(ctx: &Context) {
    if !ctx.live().resync.ledger {
        return;
    }
    let fresh = |at: &Option<Instant>| at.is_some_and(|t| t.elapsed() < VOUCH_AGE);
    if fresh(&ctx.vouched.lock()) {
        return;
    }
    let _serial = ctx.vouching.lock().await;
    if fresh(&ctx.vouched.lock()) {
        return;
    }
    let router = ctx.router();
    let mut looks: FuturesUnordered<_> = router
        .live()
        .filter(|b| b.is_up())
        .map(|b| async move { (b, ledger::look(ctx, b).await) })
        .collect();
    while let Some((backend, marks)) = looks.next().await {
        if marks.foreign {
            backend.health.set_foreign(true);
        }
    }
    *ctx.vouched.lock() = Some(Instant::now());
}

async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The periodic check of a server in service: it answers, it is the same process, and the
/// ledger agrees with what this proxy knows about it.
async fn check(
    ctx: &Context,
    backend: &Backend,
    known: &mut Option<Identity>,
    checker: &mut Checker,
) {
    let health = &backend.health;
    match checker.stats(backend).await {
        Ok(identity) => {
            health.answered();
            // Connections that failed with the server open again together (as at startup),
            // not one by one as requests need them.
            health.back_up.notify_waiters();
            judge(ctx, backend, known, identity).await;
        }
        Err(error) => health.failed(&error),
    }
}

/// Decides, from what a server says and what the ledger holds, what it may hold stale.
async fn judge(ctx: &Context, backend: &Backend, known: &mut Option<Identity>, now: Identity) {
    let health = &backend.health;
    let restarted = known.is_some_and(|k| !k.same_process(&now));
    if restarted {
        health
            .counters
            .local()
            .restarts
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(backend = %backend.addr, pid = now.pid, "it restarted");
        // The process that held the retired connections is gone, and what they carried with
        // it.
        health.lift_fences();
    }
    let first = known.is_none();
    *known = Some(now);
    let marks = ledger::look(ctx, backend).await;
    let router = ctx.router();
    let others_up = router
        .live()
        .any(|b| !std::ptr::eq(&**b, backend) && b.is_up());
    // Empty while another server holds items: worth warming (two empty servers at a fresh
    // start are not).
    // The proxies' own items (marks, the serving heartbeat) do not count.
    let mut others_hold_items = false;
    if (first || restarted) && now.curr_items <= ledger::marks_on(ctx, backend).await {
        for other in router.live() {
            if !std::ptr::eq(&**other, backend) && other.is_up() {
                let items = stats_once(other).await.map_or(0, |o| o.curr_items);
                others_hold_items |= items > ledger::marks_on(ctx, other).await;
            }
        }
    }
    let serving = ctx.serving();
    // Asked only about another proxy's mark, the one thing a standby leaves alone.
    let may_flush_marked = marks.foreign && may_act(ctx).await;
    let stale = {
        let mut standing = health.standing.lock();
        // Seen who it is: a restart is handled below.
        standing.unverified = false;
        if marks.foreign || marks.complete {
            standing.foreign = marks.foreign;
        }
        // A restarted memcached is empty, but a restartable one (`-e`) holds what it had when
        // it stopped: flushed and warmed when another pool can refill it. With one pool there is
        // nothing to refill it from; what it missed while down is in its missed keys.
        if restarted && others_up && router.pools.len() > 1 {
            standing.must_flush("it restarted (its pid or start time changed)");
        }
        // A standby proxy only keeps off a server another proxy marked: the proxy that serves
        // the clients repairs it (once no other proxy serves them, this one flushes it).
        if may_flush_marked && !standing.flushed_pending {
            standing.must_flush("another proxy recorded in the ledger that it missed writes");
        }
        if others_hold_items && ctx.live().resync.warmup && !standing.needs_flush() {
            standing.cold = true;
        }
        !standing.clean()
    };
    health.notify_verified();
    if health.ledger_marked.load(Ordering::Acquire) && !marks.ours && marks.complete && serving {
        // Its mark was removed (another proxy flushed the server, a flush_all, an eviction)
        // while this proxy still knows of misses: they must be known again.
        health.ledger_marked.store(false, Ordering::Release);
        ledger::mark(ctx, backend).await;
    }
    if stale && health.change(&[State::Up], State::Suspect, "it may hold stale data") {
        health.wake.notify_one();
    }
}

/// On a standby proxy: a server with nothing to repair is up again (another proxy's mark was
/// removed, its connection was only closed); one with something to repair waits until this
/// proxy serves clients or no other proxy does.
fn settle(backend: &Backend) {
    let health = &backend.health;
    let standing = health.standing.lock();
    if standing.clean() && !health.ledger_marked.load(Ordering::Acquire) {
        health.change(
            &[State::Suspect, State::Warming],
            State::Up,
            "it holds nothing stale",
        );
    }
}

/// While a server is down: its ledger mark is still on the other servers (a keeper restarted,
/// or was flushed by the operator, since it was made), else it is made again.
async fn keep_marked(ctx: &Context, backend: &Backend) {
    let health = &backend.health;
    if !health.ledger_marked.load(Ordering::Acquire) || !ctx.serving() {
        return;
    }
    let marks = ledger::look(ctx, backend).await;
    if marks.complete && !marks.ours {
        health.ledger_marked.store(false, Ordering::Release);
        ledger::mark(ctx, backend).await;
    }
}

/// Brings a server that takes writes back to `up`: flush, warm, repair, as its standing says.
/// Returns when it is up, or when that cannot be done now (it failed, or it is held).
async fn restore(ctx: &Arc<Context>, id: usize, order: Option<Order>) {
    let backend = ctx.router().backends[id].clone();
    let health = &backend.health;
    {
        let mut standing = health.standing.lock();
        match order {
            Some(Order::Warm) => {
                standing.held = false;
                standing.must_flush("the operator asked for a warm-up");
            }
            Some(Order::Up) => standing.held = false,
            None => {}
        }
        if standing.held {
            drop(standing);
            health.change(
                &[State::Up, State::Warming],
                State::Suspect,
                "the operator holds it out of reads",
            );
            return;
        }
    }
    let (flush_reason, draining) = {
        let standing = health.standing.lock();
        (standing.flush_reason, standing.draining())
    };
    if flush_reason.is_some() && draining > 0 {
        // A write on a retired connection could land after the flush and the warm-up, and a
        // key past missed_keys_limit is not kept to be repaired: flushed once it is closed.
        return;
    }
    if let Some(reason) = flush_reason {
        health.change(&[State::Up, State::Warming], State::Suspect, reason);
        tracing::info!(backend = %backend.addr, reason, "flushing it before it is read again");
        match backend.call(forward::flush_all(None)).await {
            Ok(reply) if !write_failed(&reply) => health.standing.lock().flushed(),
            Ok(reply) => {
                tracing::warn!(backend = %backend.addr, ?reply, "flush_all refused");
                return;
            }
            Err(error) => {
                tracing::warn!(backend = %backend.addr, %error, "flush_all failed");
                return;
            }
        }
    }
    let cold = health.standing.lock().cold;
    if cold {
        if ctx.live().resync.warmup && order != Some(Order::Up) {
            health.change(
                &[State::Up, State::Suspect],
                State::Warming,
                "warming it up",
            );
            if warmup::warm(ctx, id).await.is_err() {
                return;
            }
        }
        health.standing.lock().cold = false;
    }
    if !repair(ctx, id).await {
        return;
    }
    // The ledger lock orders this against a new miss's mark: the mark is cleared first, then
    // the server is up; a miss after that waits for the lock and marks it again.
    let serial = health.ledger_lock.lock().await;
    {
        let mut standing = health.standing.lock();
        if standing.flushed_pending {
            // Marks made before its flush are answered by it (and cleared just below).
            standing.foreign = false;
        }
        if !standing.clean() {
            return;
        }
    }
    let flushed = health.standing.lock().flushed_pending;
    ledger::clear(ctx, &backend, flushed).await;
    // Under the standing lock: a miss recorded after this sees `up` and makes it suspect.
    let mut standing = health.standing.lock();
    if standing.clean()
        && health.change(
            &[State::Suspect, State::Warming],
            State::Up,
            "it holds nothing stale",
        )
    {
        standing.flushed_pending = false;
    }
    drop(standing);
    drop(serial);
}

/// Repairs every key the server missed; false when the server failed meanwhile.
async fn repair(ctx: &Context, id: usize) -> bool {
    let backend = ctx.router().backends[id].clone();
    let health = &backend.health;
    let mut logged = false;
    loop {
        let batch = health.standing.lock().some_missed(REPAIR_BATCH);
        if batch.is_empty() {
            return true;
        }
        if !logged {
            let missed = health.standing.lock().missed_len();
            tracing::info!(backend = %backend.addr, missed, "repairing the keys it missed");
            health.change(&[State::Up], State::Suspect, "repairing missed keys");
            logged = true;
        }
        let mut failed = false;
        let mut repairs: FuturesUnordered<_> = FuturesUnordered::new();
        let mut keys = batch.into_iter();
        loop {
            while repairs.len() < ctx.live().resync.concurrency {
                let Some((key, seq)) = keys.next() else { break };
                repairs.push(async move {
                    let result = repair_key(ctx, id, &key).await;
                    (key, seq, result)
                });
            }
            let Some((key, seq, result)) = repairs.next().await else {
                break;
            };
            match result {
                Ok(()) => {
                    health.standing.lock().repaired(&key, seq);
                    Stats::add(&ctx.stats.counters().repaired_keys, 1);
                }
                Err(_) => failed = true,
            }
        }
        if failed || !health.state().takes_writes() {
            return false;
        }
    }
}

/// Gives the server `key`'s latest value, or deletes it there when no replica holds one.
async fn repair_key(ctx: &Context, id: usize, key: &Bytes) -> Result<(), BackendError> {
    let router = ctx.router();
    let target = &router.backends[id];
    let replicas = router.replicas(key);
    let _guard = ctx.locks.lock(key, &replicas).await;
    // A set or delete that reached it while this repair waited for the lock gave it the
    // latest: copying now could only undo that (with no source, by deleting the key).
    if !target.health.standing.lock().is_missed(key) {
        return Ok(());
    }
    let source = replicas
        .as_slice()
        .iter()
        .filter(|&&r| usize::from(r) != id)
        .map(|&r| router.backend(r))
        .find(|b| b.health.read_rank(key) == Some(ReadRank::Current));
    let flushes = ctx.flushes.load(Ordering::Acquire);
    let call = match source {
        Some(source) => replicate::read_back(source, key).await,
        None => None,
    };
    let call = call.unwrap_or_else(|| forward::delete(key));
    let result = copy_or_delete(ctx, target, key, call, flushes).await;
    if result.is_err() {
        // The copy may still be applied, after a client's later write of the key: missed
        // again (under the key's lock), so fenced by the connection it went out on.
        target.health.remember_missed(key);
    }
    result
}

/// Sends `call` (a copy of `key`'s latest item, or its delete) to `target`; deletes the key
/// there instead when the copy is older than a `flush_all` or was refused.
async fn copy_or_delete(
    ctx: &Context,
    target: &Backend,
    key: &[u8],
    call: crate::backend::Call,
    flushes: u64,
) -> Result<(), BackendError> {
    match target.call(call).await? {
        // A flush_all ran between the read and the copy: the copy is older than it.
        reply if !write_failed(&reply) && ctx.flushes.load(Ordering::Acquire) != flushes => {
            match target.call(forward::delete(key)).await? {
                reply if !write_failed(&reply) => Ok(()),
                reply => Err(BackendError::Protocol {
                    addr: target.addr.clone(),
                    detail: format!("{reply:?}"),
                }),
            }
        }
        reply if !write_failed(&reply) => Ok(()),
        // It could not store the copy (out of memory): without the key it is at least not
        // stale.
        _ => match target.call(forward::delete(key)).await? {
            reply if !write_failed(&reply) => Ok(()),
            reply => Err(BackendError::Protocol {
                addr: target.addr.clone(),
                detail: format!("{reply:?}"),
            }),
        },
    }
}

/// `stats` of `backend` on a connection of its own, for a one-off look.
pub async fn stats_once(backend: &Backend) -> Result<Identity, BackendError> {
    Checker::default().stats(backend).await
}

/// The supervisor's own connection for `version` and `stats`, apart from the clients' traffic.
#[derive(Debug, Default)]
struct Checker {
    stream: Option<TcpStream>,
}

impl Checker {
    /// Probes a server that is not in service until it answers (backing off), or `None` at
    /// shutdown.
    async fn until_answer(
        &mut self,
        ctx: &Context,
        backend: &Backend,
        state: State,
    ) -> Option<Identity> {
        let health = &backend.health;
        let mut shutdown = health.shutdown.clone();
        let mut delay = Duration::ZERO;
        let max = Duration::from_millis(health.settings.probe_max_interval_ms());
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut shutdown) => return None,
            }
            match self.stats(backend).await {
                Ok(identity) => return Some(identity),
                Err(error) => {
                    tracing::debug!(backend = %backend.addr, %error, "probe failed");
                    if state == State::Connecting {
                        health.failed(&error);
                    }
                    keep_marked(ctx, backend).await;
                    let first = Duration::from_millis(health.settings.probe_interval_ms());
                    delay = (delay * 2).clamp(first, max);
                }
            }
        }
    }

    /// `stats` on the checker's connection (opened when needed), within the request timeout.
    async fn stats(&mut self, backend: &Backend) -> Result<Identity, BackendError> {
        let settings = &backend.health.settings;
        let addr = &backend.addr;
        if self.stream.is_none() {
            self.stream = Some(connect(addr, settings).await?);
        }
        let stream = self.stream.as_mut().expect("just connected");
        let exchange = async {
            stream.write_all(b"stats\r\n").await?;
            read_stats(stream).await
        };
        let result = match tokio::time::timeout(settings.request_timeout(), exchange).await {
            Ok(Ok(Some(identity))) => return Ok(identity),
            Ok(Ok(None)) => Err(BackendError::Protocol {
                addr: addr.clone(),
                detail: "stats without pid, uptime and time".into(),
            }),
            Ok(Err(_)) => Err(BackendError::Closed { addr: addr.clone() }),
            Err(_) => Err(BackendError::Timeout {
                addr: addr.clone(),
                ms: settings.request_timeout_ms(),
            }),
        };
        self.stream = None;
        result
    }
}

/// Reads a `stats` reply up to `END` (bounded: a server that sends more is not one).
async fn read_stats(stream: &mut TcpStream) -> std::io::Result<Option<Identity>> {
    const MAX: usize = 64 * 1024;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf.ends_with(b"END\r\n") || buf.len() > MAX {
            break;
        }
    }
    Ok(parse_stats(&buf))
}

fn parse_stats(reply: &[u8]) -> Option<Identity> {
    let (mut pid, mut uptime, mut time, mut items) = (None, None, None, 0);
    for line in reply.split(|b| *b == b'\n') {
        let mut words = line.trim_ascii_end().split(|b| *b == b' ');
        if words.next() != Some(b"STAT") {
            continue;
        }
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let value = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        match name {
            b"pid" => pid = value,
            b"uptime" => uptime = value,
            b"time" => time = value,
            b"curr_items" => items = value.unwrap_or(0),
            _ => {}
        }
    }
    Some(Identity {
        pid: pid?,
        started: time?.saturating_sub(uptime?),
        curr_items: items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_stats() {
        let reply =
            b"STAT pid 42\r\nSTAT uptime 10\r\nSTAT time 1000\r\nSTAT curr_items 7\r\nEND\r\n";
        let identity = parse_stats(reply).unwrap();
        assert_eq!(
            identity,
            Identity {
                pid: 42,
                started: 990,
                curr_items: 7
            }
        );
        let later = Identity {
            started: 991,
            ..identity
        };
        assert!(identity.same_process(&later));
        let other = Identity {
            pid: 43,
            ..identity
        };
        assert!(!identity.same_process(&other));
        assert!(parse_stats(b"STAT uptime 1\r\nEND\r\n").is_none());
    }
}
