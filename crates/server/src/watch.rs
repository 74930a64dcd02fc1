//! `watch`: memcached's live log stream of what the server does.
//!
//! A client that sends `watch [fetchers|mutations|evictions|connevents|...]` gets `OK`, and from
//! then on its connection only receives log lines, in memcached 1.6.18's format:
//!
//! ```text
//! ts=1796438289.705855 gid=5 type=item_get key=wa status=found clsid=1 cfd=25 size=2
//! ts=1796438289.705918 gid=12 type=item_store key=wa status=stored cmd=append ttl=0 clsid=1 cfd=25 size=2
//! ts=1796438289.705841 gid=2 type=conn_new rip=127.0.0.1 rport=56768 transport=tcp cfd=25
//! ts=1796438290.249073 gid=27 type=conn_close rip=127.0.0.1 rport=56768 transport=tcp reason=normal cfd=25
//! ts=1796438291.102934 gid=31 type=eviction key=evk0 fetch=no ttl=998 la=2 clsid=12 size=1000
//! ```
//!
//! Costs: with nobody watching, a request pays one relaxed load of [`Watchers::wants`]. With
//! watchers, an event is formatted once and appended to each interested watcher's buffer
//! (bounded, as memcached's `watcher_logbuf_size`); a watcher that does not read fast enough
//! loses lines, and the next line it gets is preceded by `skipped=N`, as in memcached. The
//! request path never waits for a watcher.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use keepcached_cache::{
    memcached_size, Lookup, ReadOptions, Removal, RemovalHook, Removed, StoreMode, StoreResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::execute::Session;
use crate::report::uri_encode;
use crate::slabs::{ClassEvents, SlabClasses};

/// Item reads (memcached's `fetchers`, the default).
pub const FETCHERS: u8 = 1;
/// Stores (`mutations`).
pub const MUTATIONS: u8 = 2;
/// Items evicted to make room (`evictions`).
pub const EVICTIONS: u8 = 4;
/// Connections opened and closed (`connevents`).
pub const CONNEVENTS: u8 = 8;
/// memcached's other streams (raw commands, its background threads' events, its proxy's
/// requests), accepted so that scripts asking for them keep working; nothing here logs to them.
const OTHER: u8 = 16;

/// memcached's `watcher_logbuf_size` default: what a watcher's unread lines may hold.
pub const BUF_LIMIT: usize = 256 * 1024;
/// memcached serves at most this many watchers at once.
const MAX_WATCHERS: usize = 20;
/// Room kept for a `skipped=N` line ahead of the next line, as memcached keeps it.
const SKIP_NOTE_ROOM: usize = 128;

pub const TOO_MANY: &[u8] = b"WATCHER_TOO_MANY log watcher limit reached\r\n";
pub const NOT_ALLOWED: &[u8] = b"CLIENT_ERROR watch commands not allowed\r\n";

/// Reads a `watch` request's arguments into stream flags: `None` for an unknown word (memcached
/// answers `ERROR`). No word means `fetchers`.
pub fn parse_flags<'a>(mut words: impl Iterator<Item = &'a [u8]>) -> Option<u8> {
    let mut flags = 0;
    for word in words.by_ref() {
        flags |= match word {
            b"fetchers" => FETCHERS,
            b"mutations" => MUTATIONS,
            b"evictions" => EVICTIONS,
            b"connevents" => CONNEVENTS,
            b"rawcmds" | b"sysevents" | b"proxyreqs" | b"proxyevents" | b"proxyuser" => OTHER,
            _ => return None,
        };
    }
    Some(if flags == 0 { FETCHERS } else { flags })
}

/// Every watcher, and the counters `stats` shows.
#[derive(Debug)]
pub struct Watchers {
    /// What each watcher's unread lines may hold (`-o watcher_logbuf_size`).
    buf_limit: usize,
    /// The streams at least one watcher wants: what the request path checks.
    wanted: AtomicU8,
    /// memcached's global id of log lines, which watchers can sort by.
    gid: AtomicU64,
    list: Mutex<Vec<Arc<Watcher>>>,
    sent: AtomicU64,
    skipped: AtomicU64,
}

/// One watching connection's pending lines.
#[derive(Debug)]
pub struct Watcher {
    flags: u8,
    buf_limit: usize,
    buf: Mutex<Pending>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    skipped: u64,
}

impl Watchers {
    pub fn new(buf_limit: usize) -> Watchers {
        Watchers {
            buf_limit,
            wanted: AtomicU8::new(0),
            gid: AtomicU64::new(0),
            list: Mutex::default(),
            sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether any watcher wants `stream`: one relaxed load, the whole cost of `watch` to a
    /// request while nobody watches.
    #[inline]
    pub fn wants(&self, stream: u8) -> bool {
        self.wanted.load(Ordering::Relaxed) & stream != 0
    }

    /// (`log_watchers`, `log_watcher_sent`, `log_watcher_skipped`) for `stats`.
    pub fn counts(&self) -> (usize, u64, u64) {
        (
            self.lock().len(),
            self.sent.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// Registers a watcher of `flags`; `None` at memcached's limit. The guard removes it.
    pub fn add(&self, flags: u8) -> Option<WatchGuard<'_>> {
        let watcher = Arc::new(Watcher {
            flags,
            buf_limit: self.buf_limit,
            buf: Mutex::default(),
            ready: Notify::new(),
        });
        let mut list = self.lock();
        if list.len() >= MAX_WATCHERS {
            return None;
        }
        list.push(watcher.clone());
        self.wanted.fetch_or(flags, Ordering::Relaxed);
        Some(WatchGuard {
            watchers: self,
            watcher,
        })
    }

    fn remove(&self, watcher: &Arc<Watcher>) {
        let mut list = self.lock();
        list.retain(|w| !Arc::ptr_eq(w, watcher));
        let wanted = list.iter().fold(0, |flags, w| flags | w.flags);
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// `type=item_get`: a key read. `found` carries the value's length and the item's class.
    pub fn item_get(&self, key: &[u8], status: GetStatus, cfd: u64) {
        let (status, clsid, size) = match status {
            GetStatus::Found { clsid, size } => ("found", clsid, size),
            GetStatus::NotFound => ("not_found", 0, 0),
            GetStatus::Flushed => ("flushed", 0, 0),
            GetStatus::Expired => ("expired", 0, 0),
        };
        self.emit(FETCHERS, |line| {
            line.push_str("type=item_get key=");
            uri_encode(line, key);
            let _ = write!(line, " status={status} clsid={clsid} cfd={cfd} size={size}");
        });
    }

    /// `type=item_store`: a store's outcome. `ttl` is the seconds left (0: no expiry).
    #[allow(clippy::too_many_arguments)]
    pub fn item_store(
        &self,
        key: &[u8],
        status: &str,
        cmd: &str,
        ttl: u32,
        clsid: u8,
        cfd: u64,
        size: usize,
    ) {
        self.emit(MUTATIONS, |line| {
            line.push_str("type=item_store key=");
            uri_encode(line, key);
            let _ = write!(
                line,
                " status={status} cmd={cmd} ttl={ttl} clsid={clsid} cfd={cfd} size={size}"
            );
        });
    }

    /// `type=eviction`: an item evicted to make room. `ttl` is the seconds it had left (-1: no
    /// expiry time), `la` the seconds since its last access, `size` its value's length.
    pub fn item_evicted(
        &self,
        key: &[u8],
        fetched: bool,
        ttl: i64,
        la: u32,
        clsid: u8,
        size: usize,
    ) {
        let fetch = if fetched { "yes" } else { "no" };
        self.emit(EVICTIONS, |line| {
            line.push_str("type=eviction key=");
            uri_encode(line, key);
            let _ = write!(
                line,
                " fetch={fetch} ttl={ttl} la={la} clsid={clsid} size={size}"
            );
        });
    }

    /// `type=conn_new` for a connection whose `stats conns` address is `addr`.
    pub fn conn_new(&self, addr: &str, cfd: u64) {
        let (rip, rport, transport) = endpoint(addr);
        self.emit(CONNEVENTS, |line| {
            let _ = write!(
                line,
                "type=conn_new rip={rip} rport={rport} transport={transport} cfd={cfd}"
            );
        });
    }

    /// `type=conn_close`, with memcached's reason: `normal`, `error`, `idle_timeout`.
    pub fn conn_close(&self, addr: &str, cfd: u64, reason: &str) {
        let (rip, rport, transport) = endpoint(addr);
        self.emit(CONNEVENTS, |line| {
            let _ = write!(
                line,
                "type=conn_close rip={rip} rport={rport} transport={transport} reason={reason} cfd={cfd}"
            );
        });
    }

    fn emit(&self, stream: u8, body: impl FnOnce(&mut String)) {
        let gid = self.gid.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // memcached prints the microseconds without leading zeros.
        let mut line = format!("ts={}.{} gid={gid} ", now.as_secs(), now.subsec_micros());
        body(&mut line);
        line.push('\n');
        for watcher in self.lock().iter().filter(|w| w.flags & stream != 0) {
            if watcher.push(line.as_bytes()) {
                self.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Watcher>>> {
        // Each change is one push or retain: a panic elsewhere leaves the list whole.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `item_get` found.
#[derive(Debug, Clone, Copy)]
pub enum GetStatus {
    Found { clsid: u8, size: usize },
    NotFound,
    Flushed,
    Expired,
}

impl Watcher {
    /// Appends a line, or counts it skipped when the buffer is full; false when skipped.
    fn push(&self, line: &[u8]) -> bool {
        let mut pending = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if pending.lines.len() + line.len() + SKIP_NOTE_ROOM > self.buf_limit {
            pending.skipped += 1;
            return false;
        }
        if pending.skipped > 0 {
            let note = format!("skipped={}\n", pending.skipped);
            pending.lines.extend_from_slice(note.as_bytes());
            pending.skipped = 0;
        }
        pending.lines.extend_from_slice(line);
        drop(pending);
        self.ready.notify_one();
        true
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.buf.lock().unwrap_or_else(|e| e.into_inner()).lines)
    }
}

/// A registered watcher, removed when dropped (also when its connection's task is aborted).
#[derive(Debug)]
pub struct WatchGuard<'a> {
    watchers: &'a Watchers,
    watcher: Arc<Watcher>,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.watchers.remove(&self.watcher);
    }
}

impl WatchGuard<'_> {
    /// Sends the log lines to `stream` until the client closes it or a write fails. What the
    /// client sends is read and ignored, as memcached ignores it.
    pub async fn stream<S>(&self, stream: &mut S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut discard = [0u8; 512];
        loop {
            let lines = self.watcher.take();
            if !lines.is_empty() {
                if stream.write_all(&lines).await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = self.watcher.ready.notified() => {}
                read = stream.read(&mut discard) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
        }
    }
}

/// memcached's name of a store mode, as `watch mutations` shows it.
pub fn mode_name(mode: StoreMode) -> &'static str {
    match mode {
        StoreMode::Set => "set",
        StoreMode::Add => "add",
        StoreMode::Replace => "replace",
        StoreMode::Append => "append",
        StoreMode::Prepend => "prepend",
        StoreMode::Cas(_) => "cas",
    }
}

/// The store's removal hook: counts each eviction and reclaim in its class (`stats items`),
/// and logs evictions for `watch evictions`, as memcached does when its LRU evicts. A few
/// relaxed atomic operations per removal while nobody watches.
pub fn removal_hook(
    watch: Arc<Watchers>,
    classes: SlabClasses,
    cas: bool,
    events: Arc<ClassEvents>,
) -> RemovalHook {
    Arc::new(move |e: &Removed<'_>| {
        let class = classes.class_of(memcached_size(e.key.len(), e.value_len, e.flags, cas));
        events.count(class, e);
        if e.why != Removal::Evicted || !watch.wants(EVICTIONS) {
            return;
        }
        let ttl = if e.exptime == 0 {
            -1
        } else {
            i64::from(e.exptime) - i64::from(e.now)
        };
        watch.item_evicted(
            e.key,
            e.fetched,
            ttl,
            e.now.saturating_sub(e.last_access),
            class,
            e.value_len,
        );
    })
}

/// The request path's side of `watch`: what a command logs, called only when
/// [`Watchers::wants`] says someone watches.
impl Session<'_> {
    /// For a command that looks its key up before changing it, as memcached does: when a
    /// watcher wants one of `streams`, looks the key up without a trace and logs the lookup
    /// (with `fetchers` watched); the value's length and flags when found.
    #[inline]
    pub fn watch_peek(&self, key: &[u8], streams: u8) -> Option<(usize, u32)> {
        let server = self.server;
        if !server.watch.wants(streams) {
            return None;
        }
        let quiet = ReadOptions {
            bump: false,
            vivify: false,
        };
        let lookup = server.cache.read(key, quiet, server.clock.now(), |item| {
            let view = item.view();
            (view.value.len(), view.flags)
        });
        let found = match lookup {
            Lookup::Hit(found) => Some(found),
            _ => None,
        };
        if server.watch.wants(FETCHERS) {
            self.watch_get(key, &lookup, found.unwrap_or_default());
        }
        found
    }

    /// Logs a key read for `watch fetchers`; `(len, flags)` are the value's on a hit.
    pub fn watch_get<R>(&self, key: &[u8], lookup: &Lookup<R>, (len, flags): (usize, u32)) {
        let server = self.server;
        let status = match lookup {
            Lookup::Hit(_) => GetStatus::Found {
                clsid: server.slab_classes.class_of(memcached_size(
                    key.len(),
                    len,
                    flags,
                    server.settings.cas,
                )),
                size: len,
            },
            Lookup::Miss => GetStatus::NotFound,
            Lookup::Flushed => GetStatus::Flushed,
            Lookup::Expired => GetStatus::Expired,
        };
        server.watch.item_get(key, status, self.conn_id);
    }

    /// Logs a store for `watch mutations`. memcached logs only stores that got as far as an
    /// item: not one too large or without memory.
    pub fn watch_store(
        &self,
        cmd: &str,
        key: &[u8],
        flags: u32,
        exptime: u32,
        len: usize,
        result: StoreResult,
    ) {
        let server = self.server;
        let status = match result {
            StoreResult::Stored => "stored",
            StoreResult::NotStored => "not_stored",
            StoreResult::Exists => "exists",
            StoreResult::NotFound => "not_found",
            StoreResult::TooLarge | StoreResult::OutOfMemory => return,
        };
        let ttl = match exptime {
            0 => 0,
            at => at.wrapping_sub(server.clock.now()),
        };
        let size = memcached_size(key.len(), len, flags, server.settings.cas);
        let clsid = server.slab_classes.class_of(size);
        server
            .watch
            .item_store(key, status, cmd, ttl, clsid, self.conn_id, len);
    }
}

/// `rip`, `rport` and `transport` of a `stats conns` address (`tcp:1.2.3.4:5`,
/// `tcp6:[::1]:5`, `unix:PATH`).
fn endpoint(addr: &str) -> (&str, &str, &str) {
    let Some((kind, rest)) = addr.split_once(':') else {
        return ("unix", "0", "local");
    };
    if kind == "unix" {
        return ("unix", "0", "local");
    }
    let transport = kind.trim_end_matches('6');
    match rest.rsplit_once(':') {
        Some((ip, port)) => (
            ip.trim_start_matches('[').trim_end_matches(']'),
            port,
            transport,
        ),
        None => (rest, "0", transport),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_memcached_reads_them() {
        let words = |s: &'static str| s.split(' ').filter(|w| !w.is_empty()).map(str::as_bytes);
        assert_eq!(parse_flags(words("")), Some(FETCHERS));
        assert_eq!(
            parse_flags(words("mutations  connevents")),
            Some(MUTATIONS | CONNEVENTS)
        );
        assert_eq!(parse_flags(words("rawcmds")), Some(OTHER));
        assert_eq!(parse_flags(words("deletions")), None);
    }

    #[test]
    fn a_full_watcher_skips_and_says_so() {
        let watchers = Watchers::new(BUF_LIMIT);
        assert!(!watchers.wants(FETCHERS));
        let guard = watchers.add(FETCHERS).unwrap();
        assert!(watchers.wants(FETCHERS) && !watchers.wants(MUTATIONS));
        let lines = BUF_LIMIT / 60 + 10;
        for _ in 0..lines {
            watchers.item_get(b"k", GetStatus::NotFound, 7);
        }
        let (_, sent, skipped) = watchers.counts();
        assert!(skipped > 0 && sent + skipped == lines as u64);
        let first = guard.watcher.take();
        assert!(first.len() <= BUF_LIMIT);
        watchers.item_get(b"a b", GetStatus::Found { clsid: 1, size: 2 }, 7);
        let next = String::from_utf8(guard.watcher.take()).unwrap();
        let (note, line) = next.split_once('\n').unwrap();
        assert_eq!(note, format!("skipped={skipped}"));
        assert!(line.ends_with(" type=item_get key=a%20b status=found clsid=1 cfd=7 size=2\n"));
        drop(guard);
        assert!(!watchers.wants(FETCHERS));
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("tcp:127.0.0.1:5678"), ("127.0.0.1", "5678", "tcp"));
        assert_eq!(endpoint("tcp6:[::1]:5"), ("::1", "5", "tcp"));
        assert_eq!(endpoint("unix:/tmp/s"), ("unix", "0", "local"));
    }
}
