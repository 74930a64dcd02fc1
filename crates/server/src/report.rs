//! The `stats` family and `lru_crawler`: the server describing itself.
//!
//! Field names and order follow memcached 1.6.18 so dashboards and clients read them
//! unchanged. Fields that describe memcached's slab allocator or threads we do not have are left
//! out rather than faked; everything printed is true of this server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use keepcached_protocol::reply::{self, stat};
use keepcached_protocol::{parse_i32, parse_u32_truncating, Keys};

use keepcached_cache::{ItemCursor, ItemMeta};

use crate::execute::{Session, PROTOCOL_VERSION};
use crate::slabs;
use crate::Server;

pub fn stats(session: &mut Session<'_>, args: Keys<'_>) {
    stats_words(session, args.iter());
}

/// `stats` for a group given as bytes (the key of a binary STAT request).
pub fn stats_command(session: &mut Session<'_>, group: &[u8]) {
    stats_words(
        session,
        group.split(|b| *b == b' ').filter(|w| !w.is_empty()),
    );
}

fn stats_words<'a>(session: &mut Session<'_>, mut words: impl Iterator<Item = &'a [u8]>) {
    match words.next() {
        None => general(session),
        Some(b"reset") => {
            session.server.stats.reset();
            session.server.cache.reset_stats();
            session.server.detail.clear();
            session.server.class_events.reset();
            session.out.extend_from_slice(reply::RESET);
        }
        Some(b"conns") => conns(session),
        Some(b"detail") => {
            let detail = &session.server.detail;
            match words.next() {
                Some(b"on") => {
                    detail.set_enabled(true);
                    session.out.extend_from_slice(reply::OK);
                }
                Some(b"off") => {
                    detail.set_enabled(false);
                    session.out.extend_from_slice(reply::OK);
                }
                Some(b"dump") => detail.dump(session.out),
                _ => session
                    .out
                    .extend_from_slice(b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
            }
        }
        Some(b"settings") => settings(session),
        Some(verb @ (b"items" | b"slabs" | b"sizes" | b"cachedump")) => {
            let words: Vec<&[u8]> = std::iter::once(verb).chain(words.take(2)).collect();
            let server = session.server;
            if let Some(refusal) = walk_refusal(server, &words) {
                session.out.extend_from_slice(refusal);
                return;
            }
            let mut walk = StatsWalk::default();
            while stats_walk(
                server,
                session.out,
                &words,
                &mut walk,
                usize::MAX,
                usize::MAX,
            ) == Progress::More
            {}
        }
        Some(_) => session.out.extend_from_slice(b"ERROR\r\n"),
    }
}

fn rusage() -> (String, String) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let fmt = |tv: nix::sys::time::TimeVal| format!("{}.{:06}", tv.tv_sec(), tv.tv_usec());
            (fmt(usage.user_time()), fmt(usage.system_time()))
        }
        Err(_) => ("0.000000".into(), "0.000000".into()),
    }
}

fn general(session: &mut Session<'_>) {
    let server = session.server;
    let now = server.clock.now();
    let counters = server.stats.snapshot();
    let cache = server.cache.stats();
    let out = &mut *session.out;
    let (user, system) = rusage();
    stat(out, "pid", std::process::id());
    // memcached reports uptime from a clock that starts 60 s after its relative zero.
    stat(out, "uptime", now.saturating_sub(60));
    stat(out, "time", server.clock.to_unix(now));
    stat(out, "version", PROTOCOL_VERSION);
    stat(out, "keepcached_version", env!("CARGO_PKG_VERSION"));
    stat(out, "pointer_size", usize::BITS);
    stat(out, "rusage_user", user);
    stat(out, "rusage_system", system);
    stat(out, "max_connections", server.settings.max_connections);
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    stat(
        out,
        "curr_connections",
        load(&server.stats.curr_connections),
    );
    stat(
        out,
        "total_connections",
        load(&server.stats.total_connections),
    );
    stat(
        out,
        "rejected_connections",
        load(&server.stats.rejected_connections),
    );
    // memcached's read buffers are 16 KiB pieces kept per thread; ours are what connections
    // hold beyond their first read chunk, drawn from the -o read_buf_mem_limit budget
    // (docs/stats.md). A multi-get refused for it counts as memcached's response_obj_oom.
    let budget = &server.input_budget;
    stat(out, "response_obj_oom", counters.response_obj_oom);
    stat(out, "read_buf_count", budget.holders());
    stat(out, "read_buf_bytes", budget.used());
    stat(
        out,
        "read_buf_bytes_free",
        budget.limit().saturating_sub(budget.used()),
    );
    stat(out, "read_buf_oom", counters.read_buf_oom);
    stat(out, "cmd_get", counters.cmd_get);
    stat(out, "cmd_set", counters.cmd_set);
    stat(out, "cmd_flush", counters.cmd_flush);
    stat(out, "cmd_touch", counters.cmd_touch);
    stat(out, "cmd_meta", counters.cmd_meta);
    stat(out, "get_hits", counters.get_hits);
    stat(out, "get_misses", counters.get_misses);
    stat(out, "get_expired", counters.get_expired);
    stat(out, "get_flushed", counters.get_flushed);
    stat(out, "delete_misses", counters.delete_misses);
    stat(out, "delete_hits", counters.delete_hits);
    stat(out, "incr_misses", counters.incr_misses);
    stat(out, "incr_hits", counters.incr_hits);
    stat(out, "decr_misses", counters.decr_misses);
    stat(out, "decr_hits", counters.decr_hits);
    stat(out, "cas_misses", counters.cas_misses);
    stat(out, "cas_hits", counters.cas_hits);
    stat(out, "cas_badval", counters.cas_badval);
    stat(out, "touch_hits", counters.touch_hits);
    stat(out, "touch_misses", counters.touch_misses);
    stat(out, "store_too_large", counters.store_too_large);
    stat(out, "store_no_memory", counters.store_no_memory);
    stat(out, "auth_cmds", counters.auth_cmds);
    stat(out, "auth_errors", counters.auth_errors);
    stat(out, "idle_kicks", counters.idle_kicks);
    stat(out, "bytes_read", counters.bytes_read);
    stat(out, "bytes_written", counters.bytes_written);
    stat(out, "limit_maxbytes", cache.limit_maxbytes);
    let accepting = load(&server.stats.listeners_disabled) == 0;
    stat(out, "accepting_conns", u8::from(accepting));
    stat(
        out,
        "listen_disabled_num",
        load(&server.stats.listen_disabled_num),
    );
    stat(
        out,
        "time_in_listen_disabled_us",
        load(&server.stats.listen_disabled_us),
    );
    stat(out, "threads", server.settings.threads);
    stat(out, "conn_yields", counters.conn_yields);
    let (watchers, sent, skipped) = server.watch.counts();
    stat(out, "log_watcher_skipped", skipped);
    stat(out, "log_watcher_sent", sent);
    stat(out, "log_watchers", watchers);
    stat(out, "bytes", cache.bytes);
    stat(out, "curr_items", cache.curr_items);
    stat(out, "total_items", cache.total_items);
    stat(out, "expired_unfetched", cache.expired_unfetched);
    stat(out, "evicted_unfetched", cache.evicted_unfetched);
    stat(out, "evictions", cache.evictions);
    stat(out, "reclaimed", cache.reclaimed);
    stat(out, "crawler_reclaimed", cache.crawler_reclaimed);
    out.extend_from_slice(reply::END);
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn settings(session: &mut Session<'_>) {
    let server = session.server;
    let s = &server.settings;
    let out = &mut *session.out;
    let cache = server.cache.stats();
    stat(out, "maxbytes", cache.limit_maxbytes);
    stat(out, "maxconns", s.max_connections);
    // memcached shows -1 for a port the kernel chose.
    let shown = |port: u16, ephemeral: bool| if ephemeral { -1 } else { i32::from(port) };
    stat(out, "tcpport", shown(s.port, s.tcp_ephemeral));
    stat(out, "udpport", shown(s.udp_port, s.udp_ephemeral));
    let inter = if s.listen.is_empty() {
        "NULL".to_string()
    } else {
        s.listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    stat(out, "inter", inter);
    stat(out, "verbosity", server.verbosity.load(Ordering::Relaxed));
    stat(out, "evictions", if s.evictions { "on" } else { "off" });
    let socket = s
        .unix_socket
        .as_ref()
        .map_or("NULL".to_string(), |p| p.display().to_string());
    stat(out, "domain_socket", socket);
    stat(out, "umask", format_args!("{:o}", s.unix_mask));
    stat(out, "shutdown_command", yes_no(s.shutdown_command));
    stat(
        out,
        "growth_factor",
        format_args!("{:.2}", s.slab_growth_factor),
    );
    stat(out, "chunk_size", s.slab_min_size);
    stat(out, "num_threads", s.threads);
    stat(out, "num_threads_per_udp", s.threads);
    stat(
        out,
        "stat_key_prefix",
        char::from(server.detail.delimiter()),
    );
    stat(out, "detail_enabled", yes_no(server.detail.enabled()));
    stat(out, "reqs_per_event", s.reqs_per_event);
    stat(out, "cas_enabled", yes_no(s.cas));
    stat(out, "tcp_backlog", s.backlog);
    stat(out, "binding_protocol", s.protocol.name());
    stat(out, "auth_enabled_sasl", yes_no(s.sasl_users.is_some()));
    match &s.ascii_auth {
        Some(file) => stat(out, "auth_enabled_ascii", file.path.display()),
        None => stat(out, "auth_enabled_ascii", "no"),
    }
    stat(out, "item_size_max", s.item_size_max);
    stat(out, "slab_reassign", "yes");
    stat(
        out,
        "slab_automove",
        server.slab_automove.load(Ordering::Relaxed),
    );
    stat(
        out,
        "lru_crawler",
        yes_no(server.crawler_on.load(Ordering::Relaxed)),
    );
    stat(out, "flush_enabled", yes_no(s.flush_enabled));
    stat(out, "dump_enabled", yes_no(s.dump_enabled));
    stat(
        out,
        "idle_timeout",
        s.idle_timeout.map_or(0, |d| d.as_secs()),
    );
    // The budget in effect, never 0: without the option it is -m (memcached's 0 is no limit).
    stat(out, "read_buf_mem_limit", server.input_budget.limit());
    stat(out, "track_sizes", yes_no(s.track_sizes));
    out.extend_from_slice(reply::END);
}

/// `stats conns`: every listening socket and connection, numbered in the order they opened
/// (memcached numbers them by file descriptor).
fn conns(session: &mut Session<'_>) {
    let server = session.server;
    let now = server.clock.now();
    let out = &mut *session.out;
    for (id, entry) in server.conns.snapshot() {
        stat(out, &format!("{id}:addr"), &entry.addr);
        if let Some(listen_addr) = &entry.listen_addr {
            stat(out, &format!("{id}:listen_addr"), listen_addr);
        }
        stat(out, &format!("{id}:state"), entry.state().name());
        stat(
            out,
            &format!("{id}:secs_since_last_cmd"),
            now.saturating_sub(entry.last_cmd()),
        );
    }
    out.extend_from_slice(reply::END);
}

/// Buckets of memcached's prefix table; `stats detail dump` walks them in order.
const PREFIX_BUCKETS: usize = 256;
/// memcached's cap on distinct prefixes: the table cannot grow without bound.
const MAX_PREFIXES: usize = 1 << 16;

#[derive(Debug, Default)]
struct PrefixStats {
    prefix: Vec<u8>,
    gets: u64,
    hits: u64,
    sets: u64,
    deletes: u64,
}

/// `stats detail`: gets, hits, sets and deletes per key prefix (a key's bytes before the `-D`
/// delimiter; keys without it are not counted). Text requests are counted as in memcached: every
/// key of get/gets/gat/gats, every store request whatever its outcome, every delete.
///
/// Prefixes sit in memcached's layout (256 buckets by murmur3 of the prefix, newest first in a
/// bucket), so `stats detail dump` lists them in the order memcached does. Counting takes a lock
/// per key, which is why it is off unless `-D` or `stats detail on` asks for it.
#[derive(Debug)]
pub struct Detail {
    delimiter: u8,
    enabled: AtomicBool,
    table: Mutex<DetailTable>,
}

#[derive(Debug, Default)]
struct DetailTable {
    buckets: Vec<Vec<PrefixStats>>,
    count: usize,
}

impl Detail {
    pub fn new(delimiter: u8, enabled: bool) -> Detail {
        Detail {
            delimiter,
            enabled: AtomicBool::new(enabled),
            table: Mutex::default(),
        }
    }

    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn record_get(&self, key: &[u8], hit: bool) {
        self.record(key, |p| {
            p.gets += 1;
            p.hits += u64::from(hit);
        });
    }

    pub fn record_set(&self, key: &[u8]) {
        self.record(key, |p| p.sets += 1);
    }

    pub fn record_delete(&self, key: &[u8]) {
        self.record(key, |p| p.deletes += 1);
    }

    /// `stats reset` forgets every prefix.
    pub fn clear(&self) {
        *self.lock() = DetailTable::default();
    }

    /// memcached's `stats detail dump`: one `PREFIX` line per prefix, then `END`.
    pub fn dump(&self, out: &mut Vec<u8>) {
        let table = self.lock();
        for p in table.buckets.iter().flatten() {
            out.extend_from_slice(b"PREFIX ");
            out.extend_from_slice(&p.prefix);
            let _ = write!(
                Bytes(out),
                " get {} hit {} set {} del {}\r\n",
                p.gets,
                p.hits,
                p.sets,
                p.deletes
            );
        }
        out.extend_from_slice(reply::END);
    }

    fn record(&self, key: &[u8], count: impl FnOnce(&mut PrefixStats)) {
        if !self.enabled() {
            return;
        }
        let Some(end) = key.iter().position(|b| *b == self.delimiter) else {
            return;
        };
        let prefix = &key[..end];
        let mut table = self.lock();
        if table.buckets.is_empty() {
            table.buckets.resize_with(PREFIX_BUCKETS, Vec::new);
        }
        let bucket = murmur3_32(prefix) as usize % PREFIX_BUCKETS;
        if let Some(p) = table.buckets[bucket]
            .iter_mut()
            .find(|p| p.prefix == prefix)
        {
            count(p);
            return;
        }
        if table.count >= MAX_PREFIXES {
            return;
        }
        table.count += 1;
        let mut p = PrefixStats {
            prefix: prefix.to_vec(),
            ..PrefixStats::default()
        };
        count(&mut p);
        table.buckets[bucket].insert(0, p);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DetailTable> {
        // Counters only: a panic elsewhere while holding the lock leaves nothing inconsistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `fmt::Write` into a byte buffer, for numbers next to raw key bytes.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// MurmurHash3 (x86, 32-bit, seed 0): memcached 1.6's default hash, which places prefixes in
/// its table.
fn murmur3_32(data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h: u32 = 0;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h = (h ^ mix(k))
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The words of a `stats` request that walks the store (`items`, `slabs`, `sizes` with
/// `-o track_sizes`, a well-formed `cachedump`): a connection makes the walk in steps
/// ([`stats_walk`]), letting its worker's other clients run between them. `None` for any other
/// `stats`, and for a refused one, answered at once.
pub fn store_walk<'a>(server: &Server, args: Keys<'a>) -> Option<Vec<&'a [u8]>> {
    let mut words = args.iter();
    let verb = words.next()?;
    if !matches!(verb, b"items" | b"slabs" | b"sizes" | b"cachedump") {
        return None;
    }
    let words: Vec<&[u8]> = std::iter::once(verb).chain(words.take(2)).collect();
    walk_refusal(server, &words).is_none().then_some(words)
}

/// The answer, without walking, to a walking `stats` that needs none: `stats sizes` without
/// `-o track_sizes`, a refused or malformed `cachedump`.
fn walk_refusal(server: &Server, words: &[&[u8]]) -> Option<&'static [u8]> {
    match words {
        [b"sizes", ..] if !server.settings.track_sizes => {
            Some(b"STAT sizes_status disabled\r\nEND\r\n")
        }
        [b"cachedump", ..] if !server.settings.dump_enabled => {
            Some(b"CLIENT_ERROR stats cachedump not allowed\r\n")
        }
        [b"cachedump", class, limit] => {
            match (parse_u32_truncating(class), parse_u32_truncating(limit)) {
                (Some(class), Some(_)) if class >= 64 => Some(b"CLIENT_ERROR Illegal slab id\r\n"),
                (Some(_), Some(_)) => None,
                _ => Some(b"CLIENT_ERROR bad command line format\r\n"),
            }
        }
        [b"cachedump", ..] => Some(b"CLIENT_ERROR bad command line\r\n"),
        _ => None,
    }
}

/// Store batches a step of [`stats_walk`] looks at when a connection makes it: about 4,000
/// items, well under a millisecond.
pub const WALK_STEP: usize = 16;

/// A walking `stats` under way ([`store_walk`]).
#[derive(Debug, Default)]
pub struct StatsWalk {
    census: slabs::Census,
    sizes: BTreeMap<usize, u64>,
    /// `cachedump`: items listed and bytes written so far.
    shown: usize,
    written: usize,
}

impl StatsWalk {
    /// Whether part of the walk is done.
    pub fn started(&self) -> bool {
        self.census.started()
    }
}

/// Walks up to `batches` of the store's batches for the `stats` request `words` (from
/// [`store_walk`]) and, once the walk is over, writes the answer; `cachedump` writes its lines
/// as it finds them, and ends its step early once `out` holds `high_water` bytes.
pub fn stats_walk(
    server: &Server,
    out: &mut Vec<u8>,
    words: &[&[u8]],
    walk: &mut StatsWalk,
    batches: usize,
    high_water: usize,
) -> Progress {
    let classes = &server.slab_classes;
    let done = match words {
        [b"items" | b"slabs", ..] => walk.census.step(server, batches),
        [b"sizes", ..] => {
            let sizes = &mut walk.sizes;
            walk.census.walk(server, batches, |item| {
                *sizes.entry(item.size.div_ceil(32) * 32).or_default() += 1;
            })
        }
        [b"cachedump", class, limit] => {
            let class = parse_u32_truncating(class).unwrap_or_default();
            let limit = match parse_u32_truncating(limit).unwrap_or_default() {
                0 => usize::MAX,
                n => n as usize,
            };
            let room = CACHEDUMP_MAX - reply::END.len();
            let mut over = false;
            for _ in 0..batches {
                let (shown, written) = (&mut walk.shown, &mut walk.written);
                over = walk.census.walk(server, 1, |item| {
                    if *shown == limit || u32::from(classes.class_of(item.size)) != class {
                        return;
                    }
                    // memcached prints the key as a C string: up to its first NUL byte.
                    let key = item.key.split(|b| *b == 0).next().unwrap_or_default();
                    let expiry = match item.exptime {
                        0 => 0,
                        exptime => server.clock.to_unix(exptime),
                    };
                    let start = out.len();
                    out.extend_from_slice(b"ITEM ");
                    out.extend_from_slice(key);
                    let _ = std::io::Write::write_fmt(
                        out,
                        format_args!(" [{} b; {expiry} s]\r\n", item.value_len),
                    );
                    let len = out.len() - start;
                    if *written + len > room {
                        // memcached stops at the first line that would not fit.
                        out.truncate(start);
                        *shown = limit;
                        return;
                    }
                    *written += len;
                    *shown += 1;
                });
                if over || walk.shown == limit || out.len() >= high_water {
                    break;
                }
            }
            over || walk.shown == limit
        }
        _ => true,
    };
    if !done {
        return Progress::More;
    }
    match words {
        [b"items", ..] => items(server, out, &walk.census.found),
        [b"slabs", ..] => slabs(server, out, &walk.census.found),
        [b"sizes", ..] => {
            for (size, count) in &walk.sizes {
                stat(out, &size.to_string(), count);
            }
            out.extend_from_slice(reply::END);
        }
        _ => out.extend_from_slice(reply::END),
    }
    Progress::Done
}

/// `stats items`: per memcached slab class (crate::slabs), the items held there, the seconds
/// since the least recent access among them, their size, and the class's evictions and
/// reclaims. memcached's LRU segment fields are left out: the store has no LRU segments.
fn items(server: &Server, out: &mut Vec<u8>, census: &BTreeMap<u8, slabs::ClassUse>) {
    let now = server.clock.now();
    for (&class, found) in census {
        stat(out, &format!("items:{class}:number"), found.items);
        stat(
            out,
            &format!("items:{class}:age"),
            now.saturating_sub(found.oldest_access),
        );
        stat(out, &format!("items:{class}:mem_requested"), found.bytes);
        // memcached's order; its fields for its LRU segments and slab pages are left out.
        let events = server.class_events.of(class);
        for (name, value) in [
            ("evicted", events.evicted),
            ("evicted_nonzero", events.evicted_nonzero),
            ("evicted_time", u64::from(events.evicted_time)),
            ("reclaimed", events.reclaimed),
            ("expired_unfetched", events.expired_unfetched),
            ("evicted_unfetched", events.evicted_unfetched),
            ("crawler_reclaimed", events.crawler_reclaimed),
        ] {
            stat(out, &format!("items:{class}:{name}"), value);
        }
    }
    out.extend_from_slice(reply::END);
}

/// `stats slabs`: per class that holds items, its chunk size and the pages and chunks memcached
/// would use for them (one chunk per item); `total_malloced` is what the items take here.
fn slabs(server: &Server, out: &mut Vec<u8>, census: &BTreeMap<u8, slabs::ClassUse>) {
    let classes = &server.slab_classes;
    for (&class, found) in census {
        let per_page = u64::from(classes.chunks_per_page(class));
        let pages = found.items.div_ceil(per_page);
        stat(
            out,
            &format!("{class}:chunk_size"),
            classes.chunk_size(class),
        );
        stat(out, &format!("{class}:chunks_per_page"), per_page);
        stat(out, &format!("{class}:total_pages"), pages);
        stat(out, &format!("{class}:total_chunks"), pages * per_page);
        stat(out, &format!("{class}:used_chunks"), found.items);
        stat(
            out,
            &format!("{class}:free_chunks"),
            pages * per_page - found.items,
        );
        stat(out, &format!("{class}:free_chunks_end"), 0);
    }
    stat(out, "active_slabs", census.len());
    stat(out, "total_malloced", server.cache.stats().bytes);
    out.extend_from_slice(reply::END);
}

/// The most a `stats cachedump` answers, as in memcached. `stats cachedump <class> <limit>`
/// lists `ITEM <key> [<value bytes> b; <expiry> s]` for up to `limit` items (0: no limit) of
/// one of memcached's slab classes, then `END`. memcached lists its class's cold LRU, which a
/// new item reaches after a while; keepcached lists the live items memcached would keep in
/// that class (crate::slabs), in the store's order. Older tools list keys with it
/// (memcached-tool's dump, client libraries' get-all-keys).
const CACHEDUMP_MAX: usize = 2 * 1024 * 1024;

/// `lru_crawler <args>`, but for a dump: `crawl` asks memcached's crawler to reclaim expired
/// items of some classes; ours reclaims all of them in the background anyway, so it is
/// acknowledged once its arguments pass memcached's checks, as are the subcommands that tune
/// memcached's crawler thread. A connection writes `metadump` itself, in parts ([`metadump`]);
/// one that reaches here is one `-X` or `-o no_lru_crawler` refuses.
pub fn lru_crawler(session: &mut Session<'_>, args: Keys<'_>) {
    let mut words = args.iter();
    let (verb, arg, extra) = (words.next(), words.next(), words.next());
    let crawler = &session.server.crawler_on;
    let on = crawler.load(Ordering::Relaxed);
    let reply: &[u8] = match (verb, arg, extra) {
        (Some(b"metadump" | b"crawl"), Some(_), None) if !on => {
            b"CLIENT_ERROR lru crawler disabled\r\n"
        }
        (Some(b"metadump"), Some(_), None) => b"ERROR metadump not allowed\r\n",
        (Some(b"crawl"), Some(b"hash"), None) => b"ERROR an unknown error happened\r\n",
        (Some(b"crawl"), Some(arg), None) => match classes(arg) {
            Ok(_) => reply::OK,
            Err(refusal) => refusal,
        },
        (Some(b"tocrawl"), Some(arg), None) => match parse_u32_truncating(arg) {
            Some(_) => reply::OK,
            None => b"CLIENT_ERROR bad command line format\r\n",
        },
        (Some(b"sleep"), Some(arg), None) => match parse_u32_truncating(arg) {
            Some(0..=1_000_000) => reply::OK,
            Some(_) => b"CLIENT_ERROR sleep must be one second or less\r\n",
            None => b"CLIENT_ERROR bad command line format\r\n",
        },
        // As memcached: starting a running crawler fails, stopping a stopped one does not.
        (Some(b"enable"), None, None) => match crawler.swap(true, Ordering::Relaxed) {
            false => reply::OK,
            true => b"ERROR failed to start lru crawler thread\r\n",
        },
        (Some(b"disable"), None, None) => {
            crawler.store(false, Ordering::Relaxed);
            reply::OK
        }
        _ => b"ERROR\r\n",
    };
    session.out.extend_from_slice(reply);
}

/// `slabs reassign <src> <dst>` and `slabs automove <level>`: memcached moves pages of memory
/// between its slab classes. keepcached's memory is not divided into classes, so there is never
/// a page to move: a reassign is checked as memcached checks it (`SAME`, `BADCLASS` for a class
/// out of range, a malformed number) and otherwise answered `NOSPARE`; an automove level is
/// kept and shown in `stats settings`, and changes nothing.
pub fn slabs_command(session: &mut Session<'_>, args: Keys<'_>) {
    let mut words = args.iter();
    let (verb, first, second, extra) = (words.next(), words.next(), words.next(), words.next());
    let classes = i32::try_from(session.server.slab_classes.count()).unwrap_or(i32::MAX);
    let reply: &[u8] = match (verb, first, second, extra) {
        (Some(b"reassign"), Some(src), Some(dst), None) => {
            match (parse_i32(src), parse_i32(dst)) {
                (Some(src), Some(dst)) if src == dst => b"SAME src and dst class are identical\r\n",
                // memcached's src -1 picks any class with a page to spare: there is none.
                (Some(src), Some(dst))
                    if !(1..=classes).contains(&src) || !(0..=classes).contains(&dst) =>
                {
                    b"BADCLASS invalid src or dst class id\r\n"
                }
                (Some(_), Some(_)) => b"NOSPARE source class has no spare pages\r\n",
                _ => b"CLIENT_ERROR bad command line format\r\n",
            }
        }
        (Some(b"automove"), Some(b"ratio"), ratio, _) => {
            match ratio.and_then(|r| std::str::from_utf8(r).ok()?.parse::<f64>().ok()) {
                Some(_) => reply::OK,
                None => b"ERROR\r\n",
            }
        }
        (Some(b"automove"), Some(level), _, _) => match parse_u32_truncating(level) {
            Some(level @ 0..=2) => {
                session.server.slab_automove.store(level, Ordering::Relaxed);
                reply::OK
            }
            Some(_) => b"ERROR\r\n",
            None => b"CLIENT_ERROR bad command line format\r\n",
        },
        _ => b"ERROR\r\n",
    };
    session.out.extend_from_slice(reply);
}

/// Whether `lru_crawler <args>` is a metadump the connection writes ([`metadump`]): one that
/// `-X` and `-o no_lru_crawler` allow. memcached refuses it behind other pipelined requests.
pub fn is_metadump(server: &Server, args: Keys<'_>) -> bool {
    let mut words = args.iter();
    server.settings.dump_enabled
        && server.crawler_on.load(Ordering::Relaxed)
        && words.next() == Some(b"metadump")
        && words.next().is_some()
        && words.next().is_none()
}

/// Which items a crawl covers.
#[derive(Debug, Clone, Copy)]
enum Selection {
    /// `hash`: every item, in memcached's hash table order.
    Hash,
    /// `all` or a list: the items of these classes (index = class id).
    Classes([bool; 64]),
}

impl Selection {
    fn has(&self, class: u8) -> bool {
        match self {
            Selection::Hash => true,
            Selection::Classes(chosen) => chosen[usize::from(class)],
        }
    }
}

/// Reads a crawl's class list as memcached does, or gives memcached's refusal. An empty list
/// (`,`) starts nothing.
fn classes(arg: &[u8]) -> Result<Selection, &'static [u8]> {
    match arg {
        b"hash" => return Ok(Selection::Hash),
        b"all" => return Ok(Selection::Classes([true; 64])),
        _ => {}
    }
    let mut chosen = [false; 64];
    let mut any = false;
    for id in arg.split(|b| *b == b',').filter(|id| !id.is_empty()) {
        match parse_u32_truncating(id) {
            Some(id @ 1..=63) => chosen[id as usize] = true,
            _ => return Err(b"BADCLASS invalid class id\r\n"),
        }
        any = true;
    }
    if any {
        Ok(Selection::Classes(chosen))
    } else {
        Err(b"NOTSTARTED no items to crawl\r\n")
    }
}

/// memcached's hash table starts with 2^16 buckets and doubles whenever it holds more than
/// 1.5 items per bucket.
const HASHPOWER_INIT: u32 = 16;

/// `metadump hash` lists items in memcached's hash-table order only up to this many: where
/// memcached's table first grows (1.5 items per bucket of 2^16), after which its order depends
/// on when it grew. Larger caches are listed in the store's order, in parts, as `all` is.
const HASH_ORDER_MAX: u64 = 3 << (HASHPOWER_INIT - 1);

/// A `lru_crawler metadump` under way. The connection writes it in parts of about its reply
/// high-water mark, each once the client has read the last (memcached's crawler writes to the
/// socket as it walks), so a dump of millions of items holds one part at a time, not the whole
/// dump: 85 MB for 1,000,000 items, from every client that asked and does not read.
#[derive(Debug, Default)]
pub struct Dump<'a> {
    /// What the dump lists, once its argument has been read.
    selection: Option<Selection>,
    cursor: ItemCursor,
    /// `metadump hash` of a small cache: every line, sorted, and how many are written. Only
    /// one such dump is made at a time (the permit), as memcached runs one crawl at a time.
    sorted: Option<(Vec<String>, usize, HashDumpPermit<'a>)>,
}

impl Dump<'_> {
    /// Whether part of the dump is written.
    pub fn started(&self) -> bool {
        self.selection.is_some()
    }
}

/// The server's one `metadump hash` in memcached's order, released when its dump ends or its
/// connection closes.
#[derive(Debug)]
struct HashDumpPermit<'a>(&'a AtomicBool);

impl Drop for HashDumpPermit<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether a dump has more to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

/// Writes the next part of `lru_crawler metadump <classes>` ([`is_metadump`]) to `out`, until
/// it holds `high_water` bytes or a step of the walk is made; `Done` once the whole dump, its
/// `END` or its refusal is written.
/// The dump lists live items in memcached's format, which is how the proxy enumerates a healthy
/// replica to re-fill a repaired one.
///
/// Classes are memcached's slab classes (crate::slabs): `all`, or a comma-separated list of
/// ids from 1 to 63, selects items by the class memcached would keep them in; `hash` lists
/// every item in the order of memcached's hash table (up to [`HASH_ORDER_MAX`] items).
pub fn metadump<'a>(
    server: &'a Server,
    out: &mut Vec<u8>,
    args: Keys<'_>,
    dump: &mut Dump<'a>,
    high_water: usize,
) -> Progress {
    let selection = match dump.selection {
        Some(selection) => selection,
        None => {
            let arg = args.iter().nth(1).unwrap_or_default();
            match start_dump(server, arg, dump) {
                Ok(selection) => *dump.selection.insert(selection),
                Err(refusal) => {
                    out.extend_from_slice(refusal);
                    return Progress::Done;
                }
            }
        }
    };
    let now = server.clock.now();
    let classes = &server.slab_classes;
    if let Some((lines, written, _)) = &mut dump.sorted {
        while out.len() < high_water {
            let Some(line) = lines.get(*written) else {
                dump.sorted = None;
                out.extend_from_slice(reply::END);
                return Progress::Done;
            };
            out.extend_from_slice(line.as_bytes());
            *written += 1;
        }
        return Progress::More;
    }
    // A part ends at `high_water` bytes, or after [`WALK_STEP`] batches of a walk that finds
    // few items of its classes, so that the worker's other clients are not held up either way.
    for _ in 0..WALK_STEP {
        let more = server.cache.walk_items(now, &mut dump.cursor, |item| {
            let class = classes.class_of(item.size);
            if selection.has(class) {
                out.extend_from_slice(dump_line(server, &item, class).as_bytes());
            }
        });
        if !more {
            out.extend_from_slice(reply::END);
            return Progress::Done;
        }
        if out.len() >= high_water {
            break;
        }
    }
    Progress::More
}

/// Reads a dump's argument: what it lists, or its refusal. A `hash` dump of a small cache is
/// made whole here, sorted in memcached's order, to be written in parts.
fn start_dump<'a>(
    server: &'a Server,
    arg: &[u8],
    dump: &mut Dump<'a>,
) -> Result<Selection, &'static [u8]> {
    let selection = classes(arg)?;
    if !matches!(selection, Selection::Hash) {
        return Ok(selection);
    }
    if server.cache.stats().curr_items > HASH_ORDER_MAX {
        // Past memcached's first table growth its order cannot be had: every item, in parts.
        return Ok(Selection::Classes([true; 64]));
    }
    if server.hash_dump.swap(true, Ordering::Acquire) {
        return Err(b"BUSY currently processing crawler request\r\n");
    }
    let permit = HashDumpPermit(&server.hash_dump);
    let classes = &server.slab_classes;
    // memcached walks its buckets in order, each from its newest item.
    let mut lines = Vec::new();
    server.cache.for_each_item(server.clock.now(), |item| {
        lines.push((
            murmur3_32(item.key),
            std::cmp::Reverse(item.cas),
            dump_line(server, &item, classes.class_of(item.size)),
        ));
    });
    let mut power = HASHPOWER_INIT;
    while lines.len() as u64 > (3u64 << power) / 2 {
        power += 1;
    }
    let mask = (1u32 << power.min(31)) - 1;
    lines.sort_by_key(|(bucket, cas, _)| (bucket & mask, *cas));
    let lines = lines.into_iter().map(|(_, _, line)| line).collect();
    dump.sorted = Some((lines, 0, permit));
    Ok(selection)
}

/// One item's line of a metadump.
fn dump_line(server: &Server, item: &ItemMeta<'_>, class: u8) -> String {
    let mut line = String::from("key=");
    uri_encode(&mut line, item.key);
    let exp = if item.exptime == 0 {
        -1
    } else {
        server.clock.to_unix(item.exptime)
    };
    let _ = writeln!(
        line,
        " exp={exp} la={} cas={} fetch={} cls={class} size={}",
        server.clock.to_unix(item.last_access),
        item.cas,
        yes_no(item.fetched),
        item.size
    );
    line
}

/// Percent-encodes a key as memcached's metadump does, so keys with spaces or control bytes
/// survive the line format.
pub(crate) fn uri_encode(out: &mut String, key: &[u8]) {
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_values() {
        // Published test vectors of MurmurHash3_x86_32 with seed 0.
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"test"), 0xba6b_d213);
        assert_eq!(murmur3_32(b"Hello, world!"), 0xc036_3e43);
        assert_eq!(murmur3_32(b"abc"), 0xb3dd_93fa);
    }

    #[test]
    fn prefixes_dump_in_memcached_order() {
        let detail = Detail::new(b'/', true);
        for key in [&b"p/1"[..], b"/x", b"a/b:c", b"q/", b"nodelimiter"] {
            detail.record_set(key);
        }
        detail.record_get(b"p/1", true);
        detail.record_get(b"p/9", false);
        detail.record_delete(b"p/1");
        let mut out = Vec::new();
        detail.dump(&mut out);
        // The order memcached 1.6.18 printed for these prefixes.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PREFIX  get 0 hit 0 set 1 del 0\r\nPREFIX p get 2 hit 1 set 1 del 1\r\n\
             PREFIX a get 0 hit 0 set 1 del 0\r\nPREFIX q get 0 hit 0 set 1 del 0\r\nEND\r\n"
        );
        detail.set_enabled(false);
        detail.record_get(b"p/1", true);
        detail.clear();
        let mut out = Vec::new();
        detail.dump(&mut out);
        assert_eq!(out, b"END\r\n");
    }
}
