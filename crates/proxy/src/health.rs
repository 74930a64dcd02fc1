//! A server's standing with the proxy: its state, its failures, and what it may hold stale.
//!
//! States (shown by `stats backends`, every change logged at info with its reason):
//!
//! | state | read | written | meaning |
//! |---|---|---|---|
//! | `connecting` | no | no | never answered this proxy yet |
//! | `up` | yes | yes | holds everything written through this proxy |
//! | `suspect` | keys it did not miss | yes | answering, but it missed some writes (or may hold stale data as a whole: then not read at all) until repaired |
//! | `warming` | last, after every other replica | yes | flushed and being filled from a healthy replica; holds nothing stale |
//! | `down` | no | no (recorded as missed) | failed; probed in the background |
//! | `drained` | no | no (recorded as missed) | taken out by the operator |
//!
//! Failures are counted per stall, not per request: a connection that times out fails every
//! request pipelined on it, and all of that is one failure, as is every other failure within
//! one request timeout of it. `failure_limit` (default 2) failures with no answer in between
//! mark the server down, so a server must be silent for more than a whole request timeout (or
//! refuse connections twice) before it is taken out; one slow reply never is.
//!
//! A write whose outcome is unknown (its connection timed out or fell out of step with the
//! requests, after the request may have been sent) may still be applied by the server later:
//! TCP orders bytes within a connection, not across connections, so a later write of the key on
//! another connection could be overtaken by it. Such a connection is not reset but retired
//! (conn.rs): the proxy ends its side after what it wrote and reads until the server closes it,
//! which the server does only once it has processed or dropped everything sent on it. Until
//! then the keys missed with it are *fenced*: a later write does not clear their miss (it waits
//! for the fence instead, see replicate.rs) and the supervisor does not repair them.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keepcached_runtime::Sharded;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::backend::{BackendError, Counters};
use crate::config::BackendConfig;

/// How long marks are not tried after no other server took one.
const LEDGER_BACKOFF_MS: u64 = 1_000;

/// A server's state; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting = 0,
    Up = 1,
    Suspect = 2,
    Warming = 3,
    Down = 4,
    Drained = 5,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Connecting,
            1 => State::Up,
            2 => State::Suspect,
            3 => State::Warming,
            4 => State::Down,
            _ => State::Drained,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Up => "up",
            State::Suspect => "suspect",
            State::Warming => "warming",
            State::Down => "down",
            State::Drained => "drained",
        }
    }

    /// Whether client writes go to the server (the others record them as missed).
    pub fn takes_writes(self) -> bool {
        matches!(self, State::Up | State::Suspect | State::Warming)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How good a replica is for reading a key: lower is better, `None` is not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadRank {
    /// Holds the key's latest value, if any.
    Current = 0,
    /// Warming: holds nothing stale, but may miss what the others hold.
    Cold = 1,
}

/// A key's latest miss.
#[derive(Debug, Clone, Copy)]
struct Miss {
    /// Its sequence number (a repair removes a key only if it was not missed again meanwhile).
    seq: u64,
    /// The newest retired connection when it was missed (0: none was draining): the key is
    /// fenced while that one or an older one is draining.
    fence: u64,
}

/// What a server may hold stale, kept until it is repaired.
#[derive(Debug, Default)]
pub struct Standing {
    /// Keys whose last write the server may not have taken.
    missed: hashbrown::HashMap<Bytes, Miss, foldhash::fast::RandomState>,
    seq: u64,
    /// Retired connections (by number) the server has not closed yet: a write sent on one may
    /// still be applied.
    draining: BTreeSet<u64>,
    /// The number of the last connection retired.
    retired: u64,
    /// Why the server may hold stale data anywhere (it missed more keys than are kept, missed
    /// a `flush_all`, restarted, or another proxy recorded misses for it), when it does: it is
    /// flushed before it is read again.
    pub flush_reason: Option<&'static str>,
    /// The server holds nothing stale but may lack much (it was flushed or restarted empty):
    /// fill it from a healthy replica before it counts as up.
    pub cold: bool,
    /// The operator holds it out of reads until told otherwise.
    pub held: bool,
    /// It was flushed and is not up yet: every ledger mark about it (any proxy's) is answered
    /// by that flush, and is cleared when it is up.
    pub flushed_pending: bool,
    /// A connection to it closed unexpectedly: it may have restarted (empty, or with an older
    /// `-e` file), so it is neither read nor trusted with a conditional write until its
    /// supervisor has seen who it is.
    pub unverified: bool,
    /// Another proxy's ledger mark is on it (as of the last look): this proxy does not read it.
    pub foreign: bool,
}

impl Standing {
    pub fn needs_flush(&self) -> bool {
        self.flush_reason.is_some()
    }

    pub fn missed_len(&self) -> usize {
        self.missed.len()
    }

    /// Retired connections the server has not closed yet.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// Whether a miss made while connection `fence` was the newest retired one could still be
    /// overtaken by a write sent on a retired connection.
    fn fence_up(&self, fence: u64) -> bool {
        self.draining.first().is_some_and(|&oldest| oldest <= fence)
    }

    /// Whether an earlier write of `key` whose outcome is unknown may still be applied: a
    /// write of it now could be overtaken by that one.
    pub fn fenced(&self, key: &[u8]) -> bool {
        self.missed
            .get(key)
            .is_some_and(|miss| self.fence_up(miss.fence))
    }

    /// Up to `max` missed keys with their sequence numbers, to repair: those not fenced (a
    /// copy of a fenced key could be overtaken by the write it repairs).
    pub fn some_missed(&self, max: usize) -> Vec<(Bytes, u64)> {
        self.missed
            .iter()
            .filter(|(_, miss)| !self.fence_up(miss.fence))
            .take(max)
            .map(|(k, miss)| (k.clone(), miss.seq))
            .collect()
    }

    /// Whether the server may lack `key`'s last write.
    pub fn is_missed(&self, key: &[u8]) -> bool {
        self.missed.contains_key(key)
    }

    /// A write that replaces `key`'s whole item (a set or a delete) reached the server, under
    /// the key's lock: it holds the key's latest, whatever write of it it missed before. Left
    /// missed, the key would be repaired later from a replica that may be gone by then, and a
    /// repair with no source deletes it: the write just acknowledged would be lost. Unless the
    /// key is fenced: the write it missed may still be applied after this one (replicate.rs
    /// sends a write of a fenced key only once its fence is down, so this is rare).
    pub fn wrote(&mut self, key: &[u8]) {
        if !self.fenced(key) {
            self.missed.remove(key);
        }
    }

    /// Forgets `key` after its repair, unless it was missed again since `seq`.
    pub fn repaired(&mut self, key: &[u8], seq: u64) {
        if self.missed.get(key).is_some_and(|miss| miss.seq == seq) {
            self.missed.remove(key);
        }
    }

    /// After a flush the server holds nothing stale. Its missed keys are kept: they are copied
    /// again after the warm-up, which may not see every item (memcached's crawler skips an item
    /// that is locked as it passes).
    pub fn flushed(&mut self) {
        self.flushed_pending = true;
        self.flush_reason = None;
        self.cold = true;
    }

    /// Nothing to repair, flush or fill, and not held: it may be up.
    pub fn clean(&self) -> bool {
        self.missed.is_empty()
            && !self.needs_flush()
            && !self.cold
            && !self.held
            && !self.unverified
            && !self.foreign
    }

    pub fn must_flush(&mut self, reason: &'static str) {
        self.flush_reason.get_or_insert(reason);
    }
}

/// Warm-up progress, for `stats backends` and the log.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Which listing of the sources (a second one copies what the first could not list).
    pub pass: u32,
    /// Items listed by the first pass.
    pub done: u64,
    pub copied: u64,
    pub bytes: u64,
    /// The sources' item count when the warm-up started (an estimate: not all are this
    /// server's keys).
    pub total: u64,
    pub started: Option<Instant>,
}

impl Progress {
    pub fn percent(&self) -> u64 {
        (self.done * 100)
            .checked_div(self.total)
            .unwrap_or(0)
            .min(100)
    }

    /// Seconds left at the rate so far.
    pub fn eta_s(&self) -> u64 {
        let Some(started) = self.started else {
            return 0;
        };
        let elapsed = started.elapsed().as_secs_f64();
        if self.done == 0 || elapsed <= 0.0 {
            return 0;
        }
        let rate = self.done as f64 / elapsed;
        (self.total.saturating_sub(self.done) as f64 / rate) as u64
    }
}

/// An operator's order for a server, carried out by its supervisor (a drain takes effect at
/// once, in admin.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Flush it and fill it from a healthy replica now.
    Warm,
    /// Repair what it missed (flush it if that cannot be done key by key), skip the warm-up,
    /// and put it back in service.
    Up,
}

/// The part of a backend its connections, its supervisor and the request path share.
#[derive(Debug)]
pub struct Health {
    pub addr: Arc<str>,
    state: AtomicU8,
    /// When the state last changed.
    since: Mutex<Instant>,
    failures: AtomicU32,
    /// When the last counted failure happened (ms after `epoch`; 0: none yet).
    last_failure_ms: AtomicU64,
    epoch: Instant,
    pub counters: Sharded<Counters>,
    /// Latency of answered requests, for the metrics endpoint.
    pub latency: keepcached_metrics::Histogram,
    pub settings: Settings,
    /// Turns true when the proxy shuts down or a reload removes the server: its connections,
    /// supervisor and warm-up stop.
    pub shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    /// Signalled when the server answers again after being down: the connections that failed
    /// with it open again together, as at startup.
    pub back_up: Notify,
    /// Wakes the supervisor: a miss, a failure, a closed connection, an operator's order.
    pub wake: Notify,
    /// Signalled when the supervisor has seen who the server is after a connection closed, and
    /// at every change of state: reads waiting in [`Health::verified_by`] look again.
    verified: Notify,
    /// Signalled when a retired connection is finished with (or its fences are lifted): writes
    /// waiting in [`Health::unfenced_by`] and drains waiting in [`Health::lifted`] look again.
    fences: Notify,
    pub standing: Mutex<Standing>,
    missed_limit: usize,
    /// Another proxy can learn this server missed writes (ledger.rs): set once the mark is on
    /// the other servers, cleared when the server is repaired.
    pub ledger_marked: AtomicBool,
    /// Serializes writing and clearing the ledger's mark.
    pub ledger_lock: tokio::sync::Mutex<()>,
    pub progress: Mutex<Option<Progress>>,
    pub order: Mutex<Option<Order>>,
    /// No ledger mark is tried before this (ms after `epoch`): the last try found no keeper.
    ledger_retry_ms: AtomicU64,
    /// A server that goes down is held out of reads when it returns, until the operator says.
    hold_returning: bool,
}

/// A server's `[backend]` settings as the connections and the supervisor read them: each is read
/// where it is used, so a configuration reload (SIGHUP) applies a new timeout from the next
/// request on. The number of connections is fixed at startup.
#[derive(Debug)]
pub struct Settings {
    connect_timeout_ms: AtomicU64,
    request_timeout_ms: AtomicU64,
    failure_limit: AtomicU32,
    probe_interval_ms: AtomicU64,
    probe_max_interval_ms: AtomicU64,
    health_interval_ms: AtomicU64,
}

impl Settings {
    pub fn new(config: &BackendConfig) -> Settings {
        Settings {
            connect_timeout_ms: AtomicU64::new(config.connect_timeout_ms),
            request_timeout_ms: AtomicU64::new(config.request_timeout_ms),
            failure_limit: AtomicU32::new(config.failure_limit),
            probe_interval_ms: AtomicU64::new(config.probe_interval_ms),
            probe_max_interval_ms: AtomicU64::new(config.probe_max_interval_ms),
            health_interval_ms: AtomicU64::new(config.health_interval_ms),
        }
    }

    /// Takes the timeouts and limits of a reloaded configuration.
    pub fn update(&self, config: &BackendConfig) {
        let relaxed = Ordering::Relaxed;
        self.connect_timeout_ms
            .store(config.connect_timeout_ms, relaxed);
        self.request_timeout_ms
            .store(config.request_timeout_ms, relaxed);
        self.failure_limit.store(config.failure_limit, relaxed);
        self.probe_interval_ms
            .store(config.probe_interval_ms, relaxed);
        self.probe_max_interval_ms
            .store(config.probe_max_interval_ms, relaxed);
        self.health_interval_ms
            .store(config.health_interval_ms, relaxed);
    }

    pub fn connect_timeout_ms(&self) -> u64 {
        self.connect_timeout_ms.load(Ordering::Relaxed)
    }

    pub fn request_timeout_ms(&self) -> u64 {
        self.request_timeout_ms.load(Ordering::Relaxed)
    }

    pub fn failure_limit(&self) -> u32 {
        self.failure_limit.load(Ordering::Relaxed)
    }

    pub fn probe_interval_ms(&self) -> u64 {
        self.probe_interval_ms.load(Ordering::Relaxed)
    }

    pub fn probe_max_interval_ms(&self) -> u64 {
        self.probe_max_interval_ms.load(Ordering::Relaxed)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms())
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.load(Ordering::Relaxed))
    }
}

impl Health {
    pub fn new(
        addr: Arc<str>,
        settings: BackendConfig,
        missed_limit: usize,
        hold_returning: bool,
    ) -> Health {
        let (stop, shutdown) = watch::channel(false);
        Health {
            addr,
            state: AtomicU8::new(State::Connecting as u8),
            since: Mutex::new(Instant::now()),
            failures: AtomicU32::new(0),
            last_failure_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            counters: Sharded::default(),
            latency: Default::default(),
            settings: Settings::new(&settings),
            shutdown,
            stop,
            back_up: Notify::new(),
            verified: Notify::new(),
            fences: Notify::new(),
            wake: Notify::new(),
            standing: Mutex::new(Standing::default()),
            hold_returning,
            missed_limit,
            ledger_marked: AtomicBool::new(false),
            ledger_lock: tokio::sync::Mutex::new(()),
            progress: Mutex::new(None),
            order: Mutex::new(None),
            ledger_retry_ms: AtomicU64::new(0),
        }
    }

    /// Stops the server's connections, supervisor and warm-up (see [`Health::shutdown`]).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Seconds in the current state.
    pub fn state_age_s(&self) -> u64 {
        self.since.lock().elapsed().as_secs()
    }

    /// Moves to `to`, logging why; nothing when already there.
    pub fn set_state(&self, to: State, reason: &str) {
        let from = State::from_u8(self.state.swap(to as u8, Ordering::AcqRel));
        self.changed(from, to, reason);
    }

    /// Logs a change of state and restarts its clock.
    fn changed(&self, from: State, to: State, reason: &str) {
        if from != to {
            *self.since.lock() = Instant::now();
            tracing::info!(backend = %self.addr, %from, %to, reason, "backend state changed");
            self.verified.notify_waiters();
        }
    }

    /// Whether reads of the server wait rather than fail over: a connection to it closed a
    /// moment ago and its supervisor is seeing who it is (within milliseconds, unless it is
    /// failing), while it still takes writes. With no other replica to read, answering
    /// `SERVER_ERROR` for that moment would fail reads a live server can answer.
    pub fn awaits_verification(&self) -> bool {
        self.state().takes_writes() && self.standing.lock().unverified
    }

    /// The supervisor has seen who the server is (and cleared `unverified` with whatever else
    /// that showed, under one lock): wakes the reads waiting for it.
    pub fn notify_verified(&self) {
        self.verified.notify_waiters();
    }

    /// Waits until [`Health::awaits_verification`] is false, or until `deadline`.
    pub async fn verified_by(&self, deadline: tokio::time::Instant) {
        loop {
            let notified = self.verified.notified();
            tokio::pin!(notified);
            // Registered before the check, so a verification in between is not missed.
            notified.as_mut().enable();
            if !self.awaits_verification()
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return;
            }
        }
    }

    /// Moves from one of `from` to `to`; false (and nothing done) when in another state.
    pub fn change(&self, from: &[State], to: State, reason: &str) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !from.contains(&State::from_u8(current)) {
                return false;
            }
            match self.state.compare_exchange(
                current,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.changed(State::from_u8(current), to, reason);
        true
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether ledger marks are not tried for now (see [`Health::ledger_back_off`]).
    pub fn ledger_backoff(&self) -> bool {
        self.now_ms() < self.ledger_retry_ms.load(Ordering::Relaxed)
    }

    /// No other server took a ledger mark: the next second's misses do not try again.
    pub fn ledger_back_off(&self) {
        self.ledger_retry_ms
            .store(self.now_ms() + LEDGER_BACKOFF_MS, Ordering::Relaxed);
    }

    /// The server answered a request: its failures so far were not consecutive.
    pub fn answered(&self) {
        // Read first: an unconditional store would make every worker's every reply write this
        // shared cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts one failure of the server (a stalled or broken connection, a refused connect, a
    /// failed health check); enough with no answer in between mark it down.
    pub fn failed(&self, error: &BackendError) {
        let now = self.now_ms();
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        if last != 0 && now - last < self.settings.request_timeout_ms() {
            // The same stall seen by another connection (or by the health check).
            return;
        }
        self.last_failure_ms.store(now, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(backend = %self.addr, %error, failures, "backend failure");
        if failures < self.settings.failure_limit() {
            return;
        }
        let reason = format!("{failures} failures in a row, the last: {error}");
        // Held only if it was in service: one that has not answered since the proxy started
        // is not returning when it comes.
        let in_service = self.change(
            &[State::Up, State::Suspect, State::Warming],
            State::Down,
            &reason,
        );
        if in_service || self.change(&[State::Connecting], State::Down, &reason) {
            self.counters.local().downs.fetch_add(1, Ordering::Relaxed);
            if in_service && self.hold_returning {
                self.standing.lock().held = true;
            }
            self.wake.notify_one();
        }
    }

    /// Forgets past failures (the server answered a probe).
    pub fn reset_failures(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.last_failure_ms.store(0, Ordering::Relaxed);
    }

    /// A connection with requests of unknown outcome is retired (conn.rs), before their callers
    /// learn they failed: the misses they record are fenced by it. Returns its number, for
    /// [`Health::drained`].
    pub fn retire(&self) -> u64 {
        let mut standing = self.standing.lock();
        standing.retired += 1;
        let fence = standing.retired;
        standing.draining.insert(fence);
        fence
    }

    /// The server closed retired connection `fence`: it has processed or dropped everything
    /// sent on it, so the keys it fenced may be written and repaired again.
    pub fn drained(&self, fence: u64) {
        if self.standing.lock().draining.remove(&fence) {
            self.fences.notify_waiters();
            self.wake.notify_one();
        }
    }

    /// The server is another process now: the one that held the retired connections is gone,
    /// and with it whatever they carried.
    pub fn lift_fences(&self) {
        let lifted = std::mem::take(&mut self.standing.lock().draining);
        if !lifted.is_empty() {
            self.fences.notify_waiters();
            self.wake.notify_one();
        }
    }

    /// Waits until retired connection `fence` no longer holds keys fenced (its drain is not
    /// what ended it: the fences were lifted).
    pub async fn lifted(&self, fence: u64) {
        loop {
            let notified = self.fences.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between is not missed.
            notified.as_mut().enable();
            if !self.standing.lock().draining.contains(&fence) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `key` is not fenced, or until `deadline`; whether it is not.
    pub async fn unfenced_by(&self, key: &[u8], deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.fences.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.standing.lock().fenced(key) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.standing.lock().fenced(key);
            }
        }
    }

    /// Remembers that the last write of `key` may not have reached this server: it is not read
    /// for that key until repaired. Past the limit it is suspect as a whole. While a retired
    /// connection drains, the miss is fenced by the newest one (the write may have been on it).
    pub fn remember_missed(&self, key: &[u8]) {
        {
            let mut standing = self.standing.lock();
            standing.seq += 1;
            let miss = Miss {
                seq: standing.seq,
                fence: if standing.draining.is_empty() {
                    0
                } else {
                    standing.retired
                },
            };
            if let Some(m) = standing.missed.get_mut(key) {
                *m = miss;
            } else if standing.missed.len() >= self.missed_limit {
                // Past the bound the keys are not kept (memory stays bounded): it is flushed,
                // and the keys it holds are what the warm-up copies.
                standing.must_flush("it missed more writes than missed_keys_limit keeps");
            } else {
                standing.missed.insert(Bytes::copy_from_slice(key), miss);
            }
        }
        if self.change(&[State::Up], State::Suspect, "it missed a write") {
            self.wake.notify_one();
        }
    }

    /// A connection to the server closed unexpectedly: not read until its supervisor has seen
    /// whether it is the same process.
    pub fn unverified(&self) {
        self.standing.lock().unverified = true;
        self.change(&[State::Up], State::Suspect, "a connection to it closed");
        self.wake.notify_one();
    }

    /// Records whether another proxy's ledger mark is on the server.
    pub fn set_foreign(&self, foreign: bool) {
        self.standing.lock().foreign = foreign;
        if foreign
            && self.change(
                &[State::Up],
                State::Suspect,
                "another proxy recorded in the ledger that it missed writes",
            )
        {
            self.wake.notify_one();
        }
    }

    /// Remembers that the server may hold stale data anywhere (a missed `flush_all`).
    pub fn remember_missed_all(&self, reason: &'static str) {
        self.standing.lock().must_flush(reason);
        if self.change(&[State::Up], State::Suspect, reason) {
            self.wake.notify_one();
        }
    }

    /// How good this server is for reading `key` right now.
    pub fn read_rank(&self, key: &[u8]) -> Option<ReadRank> {
        let state = self.state();
        match state {
            State::Up => return Some(ReadRank::Current),
            State::Suspect | State::Warming => {}
            _ => return None,
        }
        let standing = self.standing.lock();
        if standing.held
            || standing.needs_flush()
            || standing.unverified
            || standing.foreign
            || standing.missed.contains_key(key)
        {
            return None;
        }
        Some(if standing.cold || state == State::Warming {
            ReadRank::Cold
        } else {
            ReadRank::Current
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(request_timeout_ms: u64, missed_limit: usize) -> Health {
        let settings = BackendConfig {
            request_timeout_ms,
            ..BackendConfig::default()
        };
        let health = Health::new(Arc::from("h:1"), settings, missed_limit, false);
        health.set_state(State::Up, "test");
        health
    }

    fn timeout() -> BackendError {
        BackendError::Timeout {
            addr: Arc::from("h:1"),
            ms: 1,
        }
    }

    #[test]
    fn failures_within_one_request_timeout_are_one_stall() {
        let health = health(60_000, 10);
        for _ in 0..10 {
            health.failed(&timeout());
        }
        assert_eq!(health.failures(), 1);
        assert_eq!(health.state(), State::Up);
        // With no window, the second failure in a row reaches the limit (2).
        let health = self::health(0, 10);
        health.failed(&timeout());
        assert_eq!(health.state(), State::Up);
        health.failed(&timeout());
        assert_eq!(health.state(), State::Down);
    }

    #[test]
    fn an_answer_between_failures_resets_them() {
        let health = health(0, 10);
        health.failed(&timeout());
        health.answered();
        health.failed(&timeout());
        assert_eq!(health.state(), State::Up);
    }

    #[test]
    fn a_missed_key_is_not_read_until_repaired_and_a_newer_miss_survives_a_repair() {
        let health = health(500, 10);
        health.remember_missed(b"a");
        assert_eq!(health.state(), State::Suspect);
        assert_eq!(health.read_rank(b"a"), None);
        assert_eq!(health.read_rank(b"b"), Some(ReadRank::Current));
        let batch = health.standing.lock().some_missed(10);
        let (key, seq) = batch[0].clone();
        // Missed again while its repair was under way: the repair does not clear it.
        health.remember_missed(b"a");
        health.standing.lock().repaired(&key, seq);
        assert_eq!(health.read_rank(b"a"), None);
        let seq = health.standing.lock().some_missed(10)[0].1;
        health.standing.lock().repaired(b"a", seq);
        assert_eq!(health.read_rank(b"a"), Some(ReadRank::Current));
        assert!(health.standing.lock().clean());
    }

    #[test]
    fn a_fenced_miss_outlives_a_later_write_until_its_connection_is_closed() {
        let health = health(500, 10);
        // W1 of `a` timed out on a connection the server may still apply it from.
        let first = health.retire();
        health.remember_missed(b"a");
        assert!(health.standing.lock().fenced(b"a"));
        // A later write acknowledged meanwhile (on another connection) could be overtaken by
        // W1: it does not clear the miss, and the key is not repaired yet either.
        health.standing.lock().wrote(b"a");
        assert_eq!(health.read_rank(b"a"), None);
        assert!(health.standing.lock().some_missed(10).is_empty());
        // A connection retired later holds no fence over a miss made before it.
        let second = health.retire();
        health.drained(first);
        assert!(!health.standing.lock().fenced(b"a"));
        assert_eq!(health.standing.lock().some_missed(10).len(), 1);
        // The server closed W1's connection: a write now gives it the key's latest (the
        // lost-write fix: no repair that could delete it is needed).
        health.standing.lock().wrote(b"a");
        assert_eq!(health.read_rank(b"a"), Some(ReadRank::Current));
        // A miss while the second drains is fenced by it, until a restart lifts every fence.
        health.remember_missed(b"b");
        assert!(health.standing.lock().fenced(b"b"));
        health.lift_fences();
        assert!(!health.standing.lock().fenced(b"b"));
        assert_eq!(health.standing.lock().draining(), 0);
        health.drained(second);
    }

    #[tokio::test]
    async fn a_write_waits_for_its_fence_within_a_deadline() {
        let health = Arc::new(health(500, 10));
        let fence = health.retire();
        health.remember_missed(b"a");
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(!health.unfenced_by(b"a", soon).await);
        let waiter = {
            let health = health.clone();
            tokio::spawn(async move {
                let later = tokio::time::Instant::now() + Duration::from_secs(60);
                health.unfenced_by(b"a", later).await
            })
        };
        health.drained(fence);
        assert!(waiter.await.unwrap());
        // A key that was not missed is never fenced.
        assert!(health.unfenced_by(b"b", soon).await);
    }

    #[test]
    fn past_the_limit_the_server_is_not_read_at_all() {
        let health = health(500, 2);
        for key in [&b"a"[..], b"b", b"c"] {
            health.remember_missed(key);
        }
        assert_eq!(health.standing.lock().missed_len(), 2);
        assert!(health.standing.lock().needs_flush());
        assert_eq!(health.read_rank(b"z"), None);
        health.standing.lock().flushed();
        // Flushed: nothing stale, but cold, so read only after the replicas that are not.
        assert_eq!(health.read_rank(b"z"), Some(ReadRank::Cold));
        assert_eq!(health.read_rank(b"a"), None);
    }

    #[test]
    fn a_held_or_down_server_is_not_read() {
        let health = health(500, 10);
        health.standing.lock().held = true;
        health.set_state(State::Suspect, "held");
        assert_eq!(health.read_rank(b"a"), None);
        for state in [State::Down, State::Drained, State::Connecting] {
            health.set_state(state, "test");
            assert_eq!(health.read_rank(b"a"), None);
            assert!(!state.takes_writes());
        }
    }
}
