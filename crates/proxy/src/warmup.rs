//! Warm-up: fills a flushed or empty server from its healthy replicas before it counts as up.
//!
//! Each healthy server that shares keys with the target lists its items
//! (`lru_crawler metadump all`, which memcached 1.6 and keepcached's server both answer); the
//! keys that belong on the target are copied one by one, each under the key's replica lock:
//! the item is read from the source with its flags and remaining TTL (`mg <key> v f t`) and
//! stored on the target with `add`, so a value a client wrote meanwhile is never overwritten.
//! The copy is paced (`resync.warmup_items_per_sec`, `resync.warmup_bytes_per_sec`) so that the
//! clients' traffic keeps its share of both servers, and `stats backends` shows its progress.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backend::{write_failed, Backend, BackendError, Reply};
use crate::conn::connect;
use crate::forward;
use crate::health::{Progress, ReadRank, State};
use crate::ledger;
use crate::replicate;
use crate::stats::Stats;
use crate::Context;
use keepcached_protocol::response::{MetaCode, Status};

/// A metadump line longer than this is not one (keys are at most 250 bytes, encoded 750).
const MAX_LINE: usize = 4096;
/// Passes over a source at most: the second and later ones list it again for items an earlier
/// one skipped.
const PASSES: u32 = 6;
/// The wait before a second pass, doubled before each later one (0.1 + 0.2 + ... + 1.6 s at
/// most in all). memcached's LRU maintainer relinks the items the previous pass just read, in
/// the background, and its crawler passes over items being relinked: a listing started at once
/// after a pass was seen to list 53 of 329 items, so later passes give it time to settle.
const PASS_BACKOFF: Duration = Duration::from_millis(100);
/// Times a busy crawler (memcached answers `BUSY` while another dump runs) is asked again.
const BUSY_RETRIES: u32 = 50;

/// Why a warm-up stopped before the end.
#[derive(Debug)]
pub struct Stopped(String);

/// Why one source's listing ended early.
#[derive(Debug)]
enum Interrupted {
    /// A failure (the target's, or the connection's): the warm-up is tried again later.
    Failed(Stopped),
    /// The source cannot list its items (an old memcached, a crawler turned off): it is left
    /// out, and what only it could give stays cold (never stale).
    CannotList(String),
}

impl From<Stopped> for Interrupted {
    fn from(stopped: Stopped) -> Interrupted {
        Interrupted::Failed(stopped)
    }
}

/// Fills server `id` from every healthy server that shares keys with it: those of the pools
/// it is not in (a key has one server in each pool).
pub async fn warm(ctx: &Arc<Context>, id: usize) -> Result<(), Stopped> {
    let target = ctx.router().backends[id].clone();
    let (sources, repairing): (Vec<usize>, bool) = {
        let router = ctx.router();
        let own_pools: Vec<&crate::route::Pool> = router
            .pools
            .iter()
            .filter(|p| p.servers.contains(&id))
            .collect();
        let replicas: Vec<usize> = (0..router.backends.len())
            .filter(|&s| {
                s != id
                    && !router.backends[s].is_retired()
                    && router.pools.iter().any(|p| {
                        p.servers.contains(&s) && !own_pools.iter().any(|o| std::ptr::eq(*o, p))
                    })
            })
            .collect();
        let state = |s: usize| router.backends[s].state();
        (
            replicas
                .iter()
                .copied()
                .filter(|&s| state(s) == State::Up)
                .collect(),
            replicas.iter().any(|&s| state(s) == State::Suspect),
        )
    };
    if sources.is_empty() && repairing {
        // A replica that answers and is being repaired (it missed a write, one timeout under
        // load is enough) is a source again in a moment: served cold meanwhile, this server
        // would answer misses for keys the replica holds.
        return Err(Stopped(
            "its replicas are being repaired; warmed once one is up".to_string(),
        ));
    }
    if sources.is_empty() {
        tracing::warn!(backend = %target.addr, "no healthy replica to warm it from; it serves cold");
        return Ok(());
    }
    let mut total = 0;
    for &s in &sources {
        if let Ok(identity) = crate::resync::stats_once(&ctx.router().backends[s]).await {
            total += identity.curr_items;
        }
    }
    let started = Instant::now();
    *target.health.progress.lock() = Some(Progress {
        total,
        started: Some(started.into_std()),
        ..Progress::default()
    });
    tracing::info!(backend = %target.addr, sources = sources.len(), items = total, "warm-up started");
    let mut pace = Pace::new(ctx);
    for &source in &sources {
        let src = ctx.router().backends[source].clone();
        let mut seen = Seen::default();
        for pass in 1..=PASSES {
            if pass > 1 {
                tokio::time::sleep(PASS_BACKOFF * (1 << (pass - 2))).await;
            }
            if let Some(progress) = target.health.progress.lock().as_mut() {
                progress.pass = pass;
            }
            let held = crate::resync::stats_once(&src)
                .await
                .map_or(0, |identity| identity.curr_items);
            let copied_before = copied(&target);
            let listed = match copy_from(ctx, id, source, pass, &mut seen, &mut pace).await {
                Ok(listed) => listed,
                Err(Interrupted::Failed(stopped)) => {
                    tracing::warn!(backend = %target.addr, reason = %stopped.0, "warm-up stopped");
                    *target.health.progress.lock() = None;
                    return Err(stopped);
                }
                Err(Interrupted::CannotList(answer)) => {
                    tracing::warn!(
                        backend = %target.addr,
                        source = %src.addr,
                        answer,
                        "the source cannot list its items (lru_crawler metadump); not warming from it"
                    );
                    break;
                }
            };
            // Not the target's item count: memcached counts flushed items until it reclaims
            // them, so a flushed target can look full while it lacks keys. A count is no proof
            // under client writes (a key created meanwhile hides one the crawler skipped), so a
            // second listing always looks for skipped keys, and the passes end with one that
            // found none the target lacked.
            let recovered = pass > 1 && copied(&target) > copied_before;
            if pass > 1 && listed >= held && !recovered {
                break;
            }
            if pass == PASSES {
                tracing::info!(
                    backend = %target.addr,
                    source = %src.addr,
                    passes = pass,
                    listed,
                    items = held,
                    recovered,
                    "the source may still skip items; what it never listed stays cold"
                );
                break;
            }
            // memcached's crawler passes over an item it finds locked (being read or written
            // at that instant): another listing copies those, and only those (the keys the
            // target already holds are not read from the source again).
            if listed < held || recovered {
                tracing::info!(
                    backend = %target.addr,
                    source = %src.addr,
                    pass,
                    listed,
                    items = held,
                    recovered,
                    "the source may have skipped items (it listed fewer than it holds, or the last pass found skipped ones); listing again for what is missing"
                );
            }
        }
    }
    let progress = target.health.progress.lock().take().unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        backend = %target.addr,
        listed = progress.done,
        passes = progress.pass,
        copied = progress.copied,
        bytes = progress.bytes,
        seconds = format!("{secs:.2}"),
        "warm-up finished"
    );
    Ok(())
}

/// Items the warm-up of `target` has stored so far.
fn copied(target: &Backend) -> u64 {
    target
        .health
        .progress
        .lock()
        .as_ref()
        .map_or(0, |progress| progress.copied)
}

/// The keys (by hash) the passes over one source have listed, so a later pass copies only what
/// the earlier ones did not see. Bounded: past `SEEN_MAX` keys nothing more is recorded, and
/// later passes check every key they list on the target (one `mg` each) instead.
#[derive(Default)]
struct Seen {
    hashes: hashbrown::HashSet<u64, foldhash::fast::RandomState>,
    full: bool,
}

/// 8 bytes a key (plus the table's slack): at most about 100 MB per warm-up.
const SEEN_MAX: usize = 8 * 1024 * 1024;

impl Seen {
    /// Whether `key` is new to the passes (always true when too many were seen to remember).
    fn first_time(&mut self, key: &[u8], pass: u32) -> bool {
        use std::hash::BuildHasher;
        let hash = self.hashes.hasher().hash_one(key);
        if pass > 1 && !self.full && self.hashes.contains(&hash) {
            return false;
        }
        if self.hashes.len() < SEEN_MAX {
            self.hashes.insert(hash);
        } else {
            self.full = true;
        }
        true
    }
}

/// Paces the copy to the configured items and bytes per second.
struct Pace {
    started: Instant,
    items: u64,
    bytes: u64,
    items_per_sec: u64,
    bytes_per_sec: u64,
}

impl Pace {
    fn new(ctx: &Context) -> Pace {
        Pace {
            started: Instant::now(),
            items: 0,
            bytes: 0,
            items_per_sec: ctx.live().resync.warmup_items_per_sec,
            bytes_per_sec: ctx.live().resync.warmup_bytes_per_sec,
        }
    }

    /// Waits until the next item may be copied.
    async fn next(&mut self) {
        let mut due = self.started;
        if self.items_per_sec > 0 {
            due = due.max(self.started + rate_time(self.items, self.items_per_sec));
        }
        if self.bytes_per_sec > 0 {
            due = due.max(self.started + rate_time(self.bytes, self.bytes_per_sec));
        }
        tokio::time::sleep_until(due).await;
        self.items += 1;
    }
}

fn rate_time(amount: u64, per_sec: u64) -> Duration {
    Duration::from_secs_f64(amount as f64 / per_sec as f64)
}

/// Copies the keys of server `id` that `source` holds (after the first pass, only those the
/// target lacks); how many items the source listed.
async fn copy_from(
    ctx: &Arc<Context>,
    id: usize,
    source: usize,
    pass: u32,
    seen: &mut Seen,
    pace: &mut Pace,
) -> Result<u64, Interrupted> {
    let target = ctx.router().backends[id].clone();
    let src = ctx.router().backends[source].clone();
    let settings = &src.health.settings;
    let stop = |why: String| Interrupted::from(Stopped(format!("{}: {why}", src.addr)));
    let mut busy = 0;
    let mut reader = loop {
        let mut stream = connect(&src.addr, settings)
            .await
            .map_err(|e| stop(e.to_string()))?;
        stream
            .write_all(b"lru_crawler metadump all\r\n")
            .await
            .map_err(|e| stop(e.to_string()))?;
        let mut reader = BufReader::new(stream);
        let mut first = Vec::new();
        read_line(&mut reader, &mut first, settings.request_timeout() * 10)
            .await
            .map_err(stop)?;
        if first.starts_with(b"BUSY") {
            // Another dump runs (another server warming from this one): wait for it, and
            // past that, try the whole warm-up again later.
            if busy < BUSY_RETRIES {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Err(stop("its crawler stayed busy".into()));
        }
        if [&b"ERROR"[..], b"CLIENT_ERROR", b"SERVER_ERROR"]
            .iter()
            .any(|e| first.starts_with(e))
        {
            let answer = String::from_utf8_lossy(first.trim_ascii_end()).into_owned();
            return Err(Interrupted::CannotList(answer));
        }
        break (reader, first);
    };
    let (ref mut reader, first) = reader;
    let mut line = first;
    // Each copy is a task of its own: it holds its key's lock, and must finish while this
    // loop waits for the next line or for the pace.
    let mut copies = JoinSet::new();
    let concurrency = ctx.live().resync.concurrency;
    let mut listed = 0;
    loop {
        if line == b"END\r\n" {
            break;
        }
        listed += 1;
        let Some(key) = dumped_key(&line) else {
            return Err(stop(format!(
                "unexpected metadump line {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )));
        };
        if !ledger::is_own(&key) {
            let replicas = ctx.router().replicas(&key);
            let ids = replicas.as_slice();
            let mine = ids.contains(&(id as u16)) && ids.contains(&(source as u16));
            // A later pass skips what an earlier one listed (and copied, or left to the repair
            // of missed keys): it is only for what the crawler skipped before.
            if mine && seen.first_time(&key, pass) {
                pace.next().await;
                while copies.len() >= concurrency {
                    account(ctx, &target, copies.join_next().await, pace)?;
                }
                copies.spawn(copy_one(ctx.clone(), source, id, key, pass > 1));
            }
            if pass == 1 {
                if let Some(progress) = target.health.progress.lock().as_mut() {
                    progress.done += 1;
                }
            }
        }
        if !target.state().takes_writes() {
            return Err(Stopped(format!("{} failed", target.addr)).into());
        }
        line.clear();
        read_line(reader, &mut line, settings.request_timeout() * 10)
            .await
            .map_err(stop)?;
    }
    while let Some(done) = copies.join_next().await {
        account(ctx, &target, Some(done), pace)?;
    }
    Ok(listed)
}

/// Counts one finished copy; a copy the target failed stops the warm-up.
fn account(
    ctx: &Context,
    target: &Backend,
    done: Option<Result<Result<Copied, BackendError>, tokio::task::JoinError>>,
    pace: &mut Pace,
) -> Result<(), Stopped> {
    match done {
        Some(Err(error)) => Err(Stopped(format!("a copy task ended: {error}"))),
        Some(Ok(Ok(copied))) => {
            pace.bytes += copied.read;
            if copied.stored {
                Stats::add(&ctx.stats.counters().warmup_copies, 1);
                if let Some(progress) = target.health.progress.lock().as_mut() {
                    progress.copied += 1;
                    progress.bytes += copied.read;
                }
            }
            Ok(())
        }
        Some(Ok(Err(error))) => Err(Stopped(error.to_string())),
        None => Ok(()),
    }
}

/// What one key's copy did.
#[derive(Debug, Default)]
struct Copied {
    /// Value bytes read from the source.
    read: u64,
    /// The target stored it (it did not hold the key: a client did not write it meanwhile).
    stored: bool,
}

/// Copies `key` from server `source` to server `id` unless a client wrote it there meanwhile
/// (`only_missing`: unless the target holds it at all, checked before the source is read).
async fn copy_one(
    ctx: Arc<Context>,
    source: usize,
    id: usize,
    key: Bytes,
    only_missing: bool,
) -> Result<Copied, BackendError> {
    let router = ctx.router();
    let (src, target) = (&router.backends[source], &router.backends[id]);
    let replicas = router.replicas(&key);
    let _guard = ctx.locks.lock(&key, &replicas).await;
    // A source that missed the key's last write (or a flush_all) would copy an old item.
    if src.health.read_rank(&key) != Some(ReadRank::Current) {
        return Ok(Copied::default());
    }
    if only_missing {
        let held = target.call(forward::meta_exists(&key)).await?;
        if !matches!(
            held,
            Reply::Meta {
                code: MetaCode::Miss,
                ..
            }
        ) {
            return Ok(Copied::default());
        }
    }
    let flushes = ctx.flushes.load(Ordering::Acquire);
    let Some(item) = replicate::read_item(src, &key).await else {
        return Ok(Copied::default());
    };
    let read = item.data.len() as u64;
    // A copy that failed may still be applied, after a client's later delete of the key: the
    // key is missed (under its lock), so fenced by the connection the copy went out on.
    let unknown = |error: BackendError| {
        target.health.remember_missed(&key);
        error
    };
    let reply = target
        .call(forward::add(&key, item.flags, item.exptime, item.data))
        .await
        .map_err(unknown)?;
    if write_failed(&reply) {
        // Too large for the target's -I, or no room under -M: that key stays cold.
        tracing::debug!(backend = %target.addr, ?reply, "a warm-up copy was refused");
        return Ok(Copied::default());
    }
    if ctx.flushes.load(Ordering::Acquire) != flushes {
        // A flush_all ran between the read and the copy: the copy is older than it.
        target.call(forward::delete(&key)).await.map_err(unknown)?;
        return Ok(Copied::default());
    }
    let stored = matches!(
        reply,
        Reply::Status(Status::Stored)
            | Reply::Meta {
                code: MetaCode::Header,
                ..
            }
    );
    Ok(Copied { read, stored })
}

async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let read = async {
        loop {
            let buf = reader.fill_buf().await.map_err(|e| e.to_string())?;
            if buf.is_empty() {
                return Err("connection closed during metadump".to_string());
            }
            match buf.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    line.extend_from_slice(&buf[..=end]);
                    reader.consume(end + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    line.extend_from_slice(buf);
                    reader.consume(n);
                }
            }
            if line.len() > MAX_LINE {
                return Err("metadump line too long".to_string());
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "metadump stalled".to_string())?
}

/// The key of a metadump line (`key=<percent-encoded> exp=... ...`).
fn dumped_key(line: &[u8]) -> Option<Bytes> {
    let rest = line.strip_prefix(b"key=")?;
    let end = rest
        .iter()
        .position(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .unwrap_or(rest.len());
    let encoded = &rest[..end];
    let mut key = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = std::str::from_utf8(encoded.get(i + 1..i + 3)?).ok()?;
            key.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            key.push(encoded[i]);
            i += 1;
        }
    }
    (!key.is_empty()).then(|| Bytes::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_metadump_lines() {
        let line = b"key=a%20b%0D exp=-1 la=1 cas=2 fetch=no cls=1 size=60\r\n";
        assert_eq!(dumped_key(line).unwrap(), Bytes::from_static(b"a b\r"));
        assert_eq!(
            dumped_key(b"key=plain exp=-1\r\n").unwrap(),
            Bytes::from_static(b"plain")
        );
        assert!(dumped_key(b"END\r\n").is_none());
        assert!(dumped_key(b"key=%zz exp=1\r\n").is_none());
    }

    #[test]
    fn a_later_pass_takes_only_keys_no_earlier_pass_listed() {
        let mut seen = Seen::default();
        assert!(seen.first_time(b"a", 1));
        assert!(seen.first_time(b"b", 1));
        assert!(!seen.first_time(b"a", 2));
        assert!(seen.first_time(b"c", 2));
        assert!(!seen.first_time(b"c", 3));
    }

    #[test]
    fn pacing_spreads_items_over_time() {
        assert_eq!(rate_time(50, 100), Duration::from_millis(500));
        assert_eq!(rate_time(0, 100), Duration::ZERO);
    }
}
