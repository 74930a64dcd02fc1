//! One shard of the cache: its items, its index, its share of the memory limit, its eviction
//! queues, its flush state and its counters. [`crate::Cache`] picks the shard by the key's hash and
//! calls it under the shard's lock; nothing here locks, reads a clock or does I/O.
//!
//! Items live in the shard's log (`log`) and are named by location; the index is a
//! `HashTable<u32>` of locations, probed with the key's hash and compared by key, so no hash is
//! stored per item (it is recomputed from the key when the table grows or an item moves).
//!
//! Every store takes a sequence number from the shard's counter, interleaved with the shard's
//! number so that it is unique in the whole cache; it is the item's CAS. It also dates the store,
//! which is what flush_all needs: a flush makes every item with a smaller number invalid. A
//! delayed flush is kept pending and turned into such a bound by the first operation that sees
//! its time come, so only the items stored before that second are lost.
//!
//! Dead items go before live ones: a shard keeps a lower bound of its items' expiry times and
//! the flush bound it last swept for. When a store needs room and that bound has passed (or a
//! flush came since), it first sweeps the whole log once and kills every expired or flushed
//! item (memcached's `reclaimed`), then recomputes the bound from the survivors. Such a sweep
//! costs one pass over the shard's items, at most once per second of the clock per shard (the
//! new bound is in the future), and never when no item has an expiry time. Below the limit a
//! store sweeps only 16 items, going on where the last one stopped, so that expired items'
//! space is reused without a store paying for a whole pass.
//!
//! A dead item's bytes (expired, deleted, replaced) stay in its segment until they are reused,
//! and count against the limit until then, so the limit bounds real memory. They are reused
//! when a queue's cursor passes them, at no cost, or sooner by compaction: the segment's live
//! items are moved to the head of its queue and it is freed. Every store that makes room first
//! compacts one segment that is at least half dead, if there is one, so a workload that
//! replaces its items keeps reusing their space instead of growing the log up to the limit.
//! And before the policy evicts a live item, every segment at least an eighth dead (or with
//! little left alive) is compacted: dead space is reused first unless it is spread thinner than
//! an eighth of a segment, and compaction moves at most 7 bytes per byte it frees.
//!
//! Memory: each item is accounted as [`accounted_size`] says, which matches what the allocator
//! really gives out (tests/memory.rs checks it). The index and the ghost do not shrink when
//! items go: their unused part is reused by later items but not counted in the meantime.

use bytes::Bytes;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::{
    segment_of, with_freq, Item, Loc, Log, NewItem, BINARY_KEY, FETCHED, HAS_EXPTIME, NIL, STALE,
    TOKEN_SENT,
};
use crate::numeric::{apply_delta, format_counter, parse_counter, MAX_DIGITS};
use crate::policy::{Ghost, Queue, SMALL_SHARE_DIVISOR};
use crate::size::{item_size, large_size, memcached_size, ITEM_OVERHEAD};
use crate::{
    CacheStats, Counter, DeleteResult, DeltaOutcome, DeltaRequest, ImportResult, ItemHandle,
    ItemMeta, Lookup, ReadOptions, Removal, RemovalHook, Removed, SavedItem, StaleResult,
    StoreMode, StoreOutcome, StoreRequest, StoreResult, Time, KEY_MAX_LENGTH,
};

/// What a shard needs to know of the cache's configuration.
#[derive(Debug, Clone)]
pub(crate) struct ShardConfig {
    pub(crate) limit: u64,
    pub(crate) item_size_max: usize,
    pub(crate) evict: bool,
    pub(crate) cas: bool,
    /// The cache-wide store sequence: every store takes the next number, which is both the
    /// item's CAS and its age for `flush_all`. One counter for the whole cache, like memcached's,
    /// so CAS values are small, dense and the same as memcached hands out for the same commands.
    pub(crate) sequence: Arc<AtomicU64>,
    pub(crate) hasher: RandomState,
    pub(crate) on_remove: Option<Hook>,
}

/// The eviction hook, in a type that can say what it is.
#[derive(Clone)]
pub(crate) struct Hook(RemovalHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    Expired,
    Flushed,
}

fn death(e: &Item<'_>, flush_below: u64, now: Time) -> Option<Death> {
    if e.cas() < flush_below {
        Some(Death::Flushed)
    } else if e.exptime() != 0 && e.exptime() <= now {
        Some(Death::Expired)
    } else {
        None
    }
}

/// The answer of a read that found no live item.
fn missed<R>(found: Found) -> Lookup<R> {
    match found {
        Found::Dead(Death::Expired) => Lookup::Expired,
        Found::Dead(Death::Flushed) => Lookup::Flushed,
        Found::Live(_) | Found::Missing => Lookup::Miss,
    }
}

/// Lowers an expiry bound (0: none) to `exptime` (0: never expires).
fn lower(bound: &mut Time, exptime: Time) {
    if exptime != 0 && (*bound == 0 || exptime < *bound) {
        *bound = exptime;
    }
}

/// A sweep for expired and flushed items, done a few items per store below the limit.
#[derive(Debug)]
struct Sweep {
    pos: Walk,
    /// The earliest expiry time of the items it kept, and of items stored since it began.
    next_expiry: Time,
    /// The flush bound when it began.
    flush_below: u64,
}

/// How many items a store below the limit looks at for dead ones, when some may exist: enough
/// to keep up with items expiring, little enough to cost a store next to nothing.
const SWEEP_STEP: u32 = 16;

/// What one step of a sweep may do, and whose work it counts as.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Items looked at.
    scan: u32,
    /// Items killed.
    reclaim: usize,
    /// The background crawler's (memcached's `crawler_reclaimed`) rather than a store's
    /// (`reclaimed`: a store reusing dead items' space).
    crawler: bool,
}

impl Budget {
    fn store(scan: u32) -> Budget {
        Budget {
            scan,
            reclaim: usize::MAX,
            crawler: false,
        }
    }
}

/// What a live item is accounted for: as it lies in the log (an expiry time set to 0 in place
/// keeps its field), its index and ghost share, and its large value.
fn item_bytes(e: &Item<'_>) -> u64 {
    (e.len() + ITEM_OVERHEAD + large_size(e.value().len())) as u64
}

/// A segment worth compacting: an eighth dead or more (at most 7 bytes moved per byte freed),
/// or so little alive that moving it is cheap.
fn compactable(written: usize, garbage: usize) -> bool {
    garbage > 0 && (8 * garbage >= written || written - garbage <= COMPACT_LIVE_MAX)
}

/// A segment with at most this many live bytes is compacted whatever its dead share.
const COMPACT_LIVE_MAX: usize = 4096;

/// A segment at least half dead: compacting it moves at most a byte per byte it frees, cheap
/// enough to do before the log grows at all.
fn half_dead(written: usize, garbage: usize) -> bool {
    garbage > 0 && 2 * garbage >= written
}

enum Found {
    Live(Loc),
    Dead(Death),
    Missing,
}

/// Counters that `stats reset` clears.
#[derive(Debug, Default)]
struct Counters {
    total_items: u64,
    evictions: u64,
    evicted_unfetched: u64,
    expired_unfetched: u64,
    reclaimed: u64,
    crawler_reclaimed: u64,
}

/// Metadata of items copied out of a shard, so the caller can use it after unlocking.
#[derive(Debug, Default)]
pub(crate) struct MetaBatch {
    keys: Vec<u8>,
    rows: Vec<MetaRow>,
}

#[derive(Debug)]
struct MetaRow {
    key_end: usize,
    exptime: Time,
    last_access: Time,
    cas: u64,
    fetched: bool,
    flags: u32,
    value_len: usize,
    size: usize,
}

impl MetaBatch {
    pub(crate) fn items(&self) -> impl Iterator<Item = ItemMeta<'_>> {
        let mut key_start = 0;
        self.rows.iter().map(move |row| {
            let key = &self.keys[key_start..row.key_end];
            key_start = row.key_end;
            ItemMeta {
                key,
                exptime: row.exptime,
                last_access: row.last_access,
                cas: row.cas,
                fetched: row.fetched,
                flags: row.flags,
                value_len: row.value_len,
                size: row.size,
            }
        })
    }
}

/// Whole items copied out of a shard for saving, so the caller can write them after unlocking.
#[derive(Debug, Default)]
pub(crate) struct ItemBatch {
    /// Each item's key followed by its value, one item after another.
    data: Vec<u8>,
    rows: Vec<ItemRow>,
}

#[derive(Debug)]
struct ItemRow {
    key_end: usize,
    value_end: usize,
    flags: u32,
    exptime: Time,
    last_access: Time,
    fetched: bool,
    stale: bool,
    binary_key: bool,
}

impl ItemBatch {
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.rows.clear();
    }

    pub(crate) fn items(&self) -> impl Iterator<Item = SavedItem<'_>> {
        let mut start = 0;
        self.rows.iter().map(move |row| {
            let item = SavedItem {
                key: &self.data[start..row.key_end],
                value: &self.data[row.key_end..row.value_end],
                flags: row.flags,
                exptime: row.exptime,
                last_access: row.last_access,
                fetched: row.fetched,
                stale: row.stale,
                binary_key: row.binary_key,
            };
            start = row.value_end;
            item
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shard {
    index: HashTable<Loc>,
    log: Log,
    small: Queue,
    main: Queue,
    ghost: Ghost,
    cfg: ShardConfig,
    /// Bytes counted against the limit: the log bytes the queues hold (dead ones included),
    /// and each live item's index and ghost share and large value.
    used: u64,
    /// Accounted bytes of the live items (`stats bytes`).
    live: u64,
    /// Log bytes of dead items not yet reused.
    garbage: u64,
    /// Items in the log, live or dead, for walks to size their work.
    logged: u32,
    /// Segments that became worth compacting, with their generation.
    sparse: Vec<(u32, u64)>,
    /// Segments that became half dead, with their generation.
    half_dead: Vec<(u32, u64)>,
    /// Where a moved item's key and value wait while it is copied within the log.
    scratch: Vec<u8>,
    /// Items whose sequence is below this were flushed.
    flush_below: u64,
    /// When a delayed flush takes effect; 0 when none is pending.
    flush_at: Time,
    /// The latest time an operation brought, for work that is not given one.
    last_now: Time,
    /// No item expires before this (0: no item has an expiry time); may be lower than the truth.
    next_expiry: Time,
    /// The flush bound when the log was last swept: a higher `flush_below` means items may
    /// have been flushed since.
    swept_flush: u64,
    /// The sweep under way, if any.
    sweep: Option<Sweep>,
    counters: Counters,
}

impl Shard {
    pub(crate) fn new(cfg: ShardConfig) -> Shard {
        Shard {
            index: HashTable::new(),
            log: Log::new(),
            small: Queue::default(),
            main: Queue::default(),
            ghost: Ghost::default(),
            cfg,
            used: 0,
            live: 0,
            garbage: 0,
            logged: 0,
            sparse: Vec::new(),
            half_dead: Vec::new(),
            scratch: Vec::new(),
            flush_below: 0,
            flush_at: 0,
            last_now: 0,
            next_expiry: 0,
            swept_flush: 0,
            sweep: None,
            counters: Counters::default(),
        }
    }

    fn next_cas(&mut self) -> u64 {
        self.cfg.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The bound below which every sequence handed out so far lies.
    fn seq_bound(&self) -> u64 {
        self.cfg.sequence.load(Ordering::Relaxed)
    }

    /// Brings the flush state up to `now`; every operation starts here.
    fn advance(&mut self, now: Time) {
        self.last_now = self.last_now.max(now);
        if self.flush_at != 0 && now >= self.flush_at {
            self.flush_below = self.seq_bound();
            self.flush_at = 0;
        }
    }

    /// A CAS as clients see it: 0 when CAS is off.
    fn client(&self, cas: u64) -> u64 {
        if self.cfg.cas {
            cas
        } else {
            0
        }
    }

    fn client_cas(&self, at: Loc) -> u64 {
        self.client(self.log.get(at).cas())
    }

    fn hash_at(&self, at: Loc) -> u64 {
        self.cfg.hasher.hash_one(self.log.get(at).key())
    }

    fn queue(&mut self, main: bool) -> &mut Queue {
        if main {
            &mut self.main
        } else {
            &mut self.small
        }
    }

    /// Finds the item of `key`; an expired or flushed one is removed on the way.
    fn lookup(&mut self, hash: u64, key: &[u8], now: Time) -> Found {
        let log = &self.log;
        let Some(&at) = self.index.find(hash, |&l| log.get(l).key() == key) else {
            return Found::Missing;
        };
        match death(&self.log.get(at), self.flush_below, now) {
            None => Found::Live(at),
            Some(d) => {
                self.unlink(at, hash);
                Found::Dead(d)
            }
        }
    }

    /// Without eviction (-M) every item carries an expiry time field, 0 or not: giving it an
    /// expiry time later (touch, gat) then changes it in place. A copy 4 bytes larger would
    /// need room that, with nothing to evict, the shard may not have.
    fn exptime_bit(&self, bits: u16) -> u16 {
        if self.cfg.evict {
            bits
        } else {
            bits | HAS_EXPTIME
        }
    }

    /// The bytes a new item with these fields is accounted for in this shard.
    fn sized(&self, key_len: usize, value_len: usize, flags: u32, exptime: Time) -> u64 {
        item_size(key_len, value_len, flags, exptime != 0 || !self.cfg.evict)
    }

    /// Writes an item at the head of a queue; `None` when no segment can be had. The caller has
    /// made room for it.
    fn append(&mut self, main: bool, item: &NewItem<'_>) -> Option<Loc> {
        let item = &NewItem {
            bits: self.exptime_bit(item.bits),
            ..*item
        };
        let len = item.len();
        let head = match self.queue(main).head() {
            Some(head) if self.log.fits(head, len) => head,
            _ => {
                let id = self.log.open(main)?;
                self.queue(main).push_segment(id);
                id
            }
        };
        let at = self.log.append(head, item);
        self.queue(main).bytes += len as u64;
        let accounted = item_size(
            item.key.len(),
            item.value_len(),
            item.flags,
            item.exptime_field(),
        );
        self.used += accounted;
        self.live += accounted;
        self.logged += 1;
        Some(at)
    }

    /// Kills an item that is out of the index: its log bytes become garbage, the rest of what
    /// it was accounted for is freed.
    fn kill(&mut self, at: Loc) {
        let e = self.log.get(at);
        let accounted = item_bytes(&e);
        let id = segment_of(at);
        let (written, before) = (self.log.written(id), self.log.garbage(id));
        let len = self.log.kill(at) as u64;
        self.live -= accounted;
        self.used -= accounted - len;
        self.garbage += len;
        let after = self.log.garbage(id);
        let generation = self.log.generation(id);
        if !compactable(written, before) && compactable(written, after) {
            self.sparse.push((id, generation));
            self.prune_candidates();
        }
        if !half_dead(written, before) && half_dead(written, after) {
            self.half_dead.push((id, generation));
            self.prune_candidates();
        }
    }

    /// Drops the entries of segments gone since from the lists of compaction candidates once
    /// they outnumber the open segments: below the limit nothing takes them off, and a segment
    /// opened under the same number again can be listed anew.
    fn prune_candidates(&mut self) {
        let bound = 2 * self.log.in_use() + 16;
        let log = &self.log;
        for list in [&mut self.sparse, &mut self.half_dead] {
            if list.len() > bound {
                list.retain(|&(id, generation)| log.is(id, generation));
            }
        }
    }

    /// Takes an item out of the index and kills it.
    fn unlink(&mut self, at: Loc, hash: u64) {
        self.index
            .find_entry(hash, |&l| l == at)
            .expect("every live item is indexed")
            .remove();
        self.kill(at);
    }

    /// Copies an item to the head of a queue with new state bits, points the index at the copy
    /// and kills the original. `None` (and nothing changed) when no segment can be had.
    fn relocate(&mut self, at: Loc, hash: u64, main: bool, bits: u16) -> Option<Loc> {
        let exptime = self.log.get(at).exptime();
        self.relocate_with(at, hash, main, bits, exptime)
    }

    /// [`Shard::relocate`] with a new expiry time.
    fn relocate_with(
        &mut self,
        at: Loc,
        hash: u64,
        main: bool,
        bits: u16,
        exptime: Time,
    ) -> Option<Loc> {
        let e = self.log.get(at);
        let shared = self.log.shared(at).cloned();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(e.key());
        let key_len = scratch.len();
        if shared.is_none() {
            scratch.extend_from_slice(e.value());
        }
        let new = NewItem {
            key: &scratch[..key_len],
            value: [&scratch[key_len..], &[]],
            shared: shared.as_ref(),
            flags: e.flags(),
            exptime,
            cas: e.cas(),
            last_access: e.last_access(),
            bits,
        };
        let to = self.append(main, &new);
        self.scratch = scratch;
        let to = to?;
        *self
            .index
            .find_mut(hash, |&l| l == at)
            .expect("a moved item is indexed") = to;
        self.kill(at);
        Some(to)
    }

    /// The item at a walk's position (dead or alive) and the position after it; `None` past the
    /// newest item.
    fn walk(&self, mut pos: Walk) -> Option<(Loc, Walk)> {
        loop {
            let queue = if pos.main { &self.main } else { &self.small };
            if let Some((id, generation)) = queue.segment_from(&self.log, pos.generation) {
                let offset = if generation == pos.generation {
                    pos.offset as usize
                } else {
                    0
                };
                if let Some(at) = self.log.at(id, offset) {
                    let len = self.log.get(at).len();
                    let next = Walk {
                        main: pos.main,
                        generation,
                        offset: (offset + len) as u32,
                    };
                    return Some((at, next));
                }
                pos.generation = generation + 1;
                pos.offset = 0;
            } else if pos.main {
                return None;
            } else {
                pos = Walk {
                    main: true,
                    ..Walk::default()
                };
            }
        }
    }

    /// Sets a live item's expiry time: where it lies, or in a copy when it was stored without
    /// one (`at` follows the copy).
    fn set_exptime(&mut self, at: &mut Loc, exptime: Time, now: Time) {
        self.note_expiry(exptime);
        if self.log.get_mut(*at).set_exptime(exptime) {
            return;
        }
        let e = self.log.get(*at);
        let (main, bits) = (self.log.in_main(segment_of(*at)), e.copied_bits());
        let hash = self.hash_at(*at);
        // Four bytes more: the copy may take the shard over its limit until it settles.
        if let Some(to) = self.relocate_with(*at, hash, main, bits, exptime) {
            *at = to;
            self.settle(at, now);
        }
    }

    /// Moves the cursor of a queue past its oldest item, which is dead.
    fn pass(&mut self, main: bool, at: Loc, len: usize) {
        self.queue(main).pass(len);
        self.log.passed(segment_of(at), len);
        self.logged -= 1;
        self.used -= len as u64;
        self.garbage -= len as u64;
    }

    /// Removes an item that the policy or a sweep found dead, counting it as reclaimed.
    fn reclaim(&mut self, at: Loc, hash: u64, died: Death, fetched: bool, now: Time) {
        self.tell(at, Removal::Reclaimed, died == Death::Expired, now);
        self.unlink(at, hash);
        self.counters.reclaimed += 1;
        self.counters.expired_unfetched += u64::from(died == Death::Expired && !fetched);
    }

    /// Lowers the expiry bound for an item that now expires at `exptime`.
    fn note_expiry(&mut self, exptime: Time) {
        lower(&mut self.next_expiry, exptime);
        // A sweep under way may have passed the item already.
        if let Some(sweep) = &mut self.sweep {
            lower(&mut sweep.next_expiry, exptime);
        }
    }

    /// Whether an expired or flushed item may be in the shard.
    fn dead_may_exist(&self, now: Time) -> bool {
        (self.next_expiry != 0 && self.next_expiry <= now) || self.flush_below > self.swept_flush
    }

    /// Kills every expired or flushed item but `protect` when one may exist (see the module
    /// doc), counting them as `reclaimed` (or, for the crawler, `crawler_reclaimed`), and sets
    /// the expiry bound from the items left: at most `budget` items looked at and `max_reclaim`
    /// killed, going on from where the last call stopped. A pass that reaches the newest item
    /// sets the bounds. Returns how many it killed and whether no dead item may be left.
    fn reclaim_dead(&mut self, protect: Option<Loc>, now: Time, budget: Budget) -> (usize, bool) {
        if !self.dead_may_exist(now) {
            return (0, true);
        }
        let sweep = self.sweep.get_or_insert(Sweep {
            pos: Walk::default(),
            next_expiry: 0,
            flush_below: self.flush_below,
        });
        let mut pos = sweep.pos;
        let mut killed = 0;
        for _ in 0..budget.scan {
            if killed == budget.reclaim {
                break;
            }
            let Some((at, next)) = self.walk(pos) else {
                let sweep = self.sweep.take().expect("a sweep is under way");
                self.next_expiry = sweep.next_expiry;
                self.swept_flush = sweep.flush_below;
                return (killed, true);
            };
            pos = next;
            let e = self.log.get(at);
            if e.dead() {
                continue;
            }
            let (died, fetched, exptime) = (
                death(&e, self.flush_below, now),
                e.has(FETCHED),
                e.exptime(),
            );
            match died {
                Some(died) if Some(at) != protect => {
                    let hash = self.hash_at(at);
                    let why = if budget.crawler {
                        Removal::Crawled
                    } else {
                        Removal::Reclaimed
                    };
                    self.tell(at, why, died == Death::Expired, now);
                    self.unlink(at, hash);
                    killed += 1;
                    self.counters.expired_unfetched +=
                        u64::from(died == Death::Expired && !fetched);
                    if budget.crawler {
                        self.counters.crawler_reclaimed += 1;
                    } else {
                        self.counters.reclaimed += 1;
                    }
                }
                _ => lower(
                    &mut self.sweep.as_mut().expect("under way").next_expiry,
                    exptime,
                ),
            }
        }
        self.sweep.as_mut().expect("a sweep is under way").pos = pos;
        (killed, false)
    }

    /// A segment to compact before evicting anything: one listed as worth it, or, when the
    /// shard may not evict, any with dead bytes.
    fn compaction_candidate(&mut self) -> Option<u32> {
        while let Some((id, generation)) = self.sparse.pop() {
            if self.log.is(id, generation)
                && compactable(self.log.written(id), self.log.garbage(id))
            {
                return Some(id);
            }
        }
        if self.cfg.evict {
            return None;
        }
        self.log.with_garbage().next()
    }

    /// Moves a segment's live items to the head of its queue and frees it. `protect` follows
    /// its item if that moves. False when no segment could be had for the copies.
    fn compact(&mut self, id: u32, protect: &mut Loc) -> bool {
        let main = self.log.in_main(id);
        if self.queue(main).head() == Some(id) {
            // Copies go to a new segment, never into the one being emptied.
            let Some(fresh) = self.log.open(main) else {
                return false;
            };
            self.queue(main).push_segment(fresh);
        }
        let start = if self.queue(main).is_front(id) {
            self.queue(main).cursor()
        } else {
            0
        };
        let mut next = self.log.at(id, start);
        let mut items = 0;
        while let Some(at) = next {
            next = self.log.next_in_segment(at);
            items += 1;
            let e = self.log.get(at);
            if e.dead() {
                continue;
            }
            let bits = e.copied_bits();
            let hash = self.hash_at(at);
            let Some(to) = self.relocate(at, hash, main, bits) else {
                return false;
            };
            if at == *protect {
                *protect = to;
            }
        }
        // Every item was moved: the segment goes with all of them dead.
        self.logged -= items;
        let queue = if main {
            &mut self.main
        } else {
            &mut self.small
        };
        let before = queue.bytes;
        queue.drop_segment(&mut self.log, id);
        let freed = before - queue.bytes;
        self.used -= freed;
        self.garbage -= freed;
        true
    }

    /// Compacts segments with dead bytes, the deadest first, until `room` more bytes fit or
    /// none is left. No more than that: each compaction copies a segment's live items under
    /// the shard's lock, which a client of the shard waits for.
    fn reuse_garbage(&mut self, room: u64) {
        if self.garbage == 0 || self.used.saturating_add(room) <= self.cfg.limit {
            return;
        }
        let mut dirty: Vec<u32> = self.log.with_garbage().collect();
        dirty.sort_unstable_by_key(|&id| std::cmp::Reverse(self.log.garbage(id)));
        for id in dirty {
            if self.used.saturating_add(room) <= self.cfg.limit
                || !self.compact(id, &mut NIL.clone())
            {
                break;
            }
        }
    }

    /// Frees memory until `need` more bytes fit, never removing `protect` (which follows its
    /// item if that moves): dead space first, then, with eviction on, live items as S3-FIFO
    /// picks them. Returns whether the bytes fit.
    fn make_room(&mut self, need: u64, protect: &mut Loc, now: Time) -> bool {
        if need > self.cfg.limit {
            return false;
        }
        // Below the limit a store sweeps a few items; one that needs room sweeps all of them
        // first, so no live item is evicted while an expired one holds memory.
        let full = self.used + need > self.cfg.limit;
        if full {
            // From the start: items behind a sweep under way may have expired since.
            self.sweep = None;
        }
        let scan = if full { u32::MAX } else { SWEEP_STEP };
        self.reclaim_dead(Some(*protect), now, Budget::store(scan));
        // Reuse the space of a half-dead segment before the log grows: one per store keeps up
        // with the garbage a store can make (a replaced or deleted item).
        while let Some((id, generation)) = self.half_dead.pop() {
            if self.log.is(id, generation) && half_dead(self.log.written(id), self.log.garbage(id))
            {
                self.compact(id, protect);
                break;
            }
        }
        // How many times in a row each queue's tail was `protect`: twice means the queue holds
        // nothing else (the first time moved it to the head), and the loop leaves it alone.
        let mut protect_hits = [0u8; 2];
        while self.used + need > self.cfg.limit {
            if let Some(id) = self.compaction_candidate() {
                if self.compact(id, protect) {
                    continue;
                }
            }
            let small_share = self.cfg.limit / SMALL_SHARE_DIVISOR;
            let small = self
                .small
                .tail(&mut self.log)
                .filter(|_| protect_hits[0] < 2);
            let main = self
                .main
                .tail(&mut self.log)
                .filter(|_| protect_hits[1] < 2);
            let (at, from_small) = match (small, main) {
                (None, None) => return false,
                (Some(at), None) => (at, true),
                (None, Some(at)) => (at, false),
                (Some(s), Some(_)) if self.small.bytes > small_share => (s, true),
                (Some(_), Some(m)) => (m, false),
            };
            let e = self.log.get(at);
            let len = e.len();
            if e.dead() {
                self.pass(!from_small, at, len);
                continue;
            }
            let live_others = self.index.len() - usize::from(*protect != NIL);
            if live_others == 0 && self.garbage == 0 {
                return false;
            }
            let (died, fetched, freq, bits) = (
                death(&e, self.flush_below, now),
                e.has(FETCHED),
                e.freq(),
                e.copied_bits(),
            );
            let hash = self.hash_at(at);
            let hits = &mut protect_hits[usize::from(!from_small)];
            *hits = if at == *protect { *hits + 1 } else { 0 };
            if *hits == 2 {
                continue;
            }
            if at == *protect {
                match self.relocate(at, hash, !from_small, bits) {
                    Some(to) => *protect = to,
                    None => return false,
                }
            } else if let Some(died) = died {
                self.reclaim(at, hash, died, fetched, now);
            } else if !self.cfg.evict {
                // Without eviction a live item is only moved on, and room comes from dead ones.
                if self.garbage == 0 || self.relocate(at, hash, !from_small, bits).is_none() {
                    return false;
                }
            } else if freq == 0 {
                self.evict(at, hash, now);
                if from_small {
                    self.ghost.insert(hash);
                }
            } else {
                // Used while it waited: from small into main, or one more pass around main.
                let bits = with_freq(bits, if from_small { 0 } else { freq - 1 });
                if self.relocate(at, hash, true, bits).is_none() {
                    self.evict(at, hash, now);
                }
            }
            self.pass(!from_small, at, len);
        }
        true
    }

    /// Removes a live item to make room, counting it and telling the removal hook.
    fn evict(&mut self, at: Loc, hash: u64, now: Time) {
        let fetched = self.log.get(at).has(FETCHED);
        self.tell(at, Removal::Evicted, false, now);
        self.unlink(at, hash);
        self.counters.evictions += 1;
        self.counters.evicted_unfetched += u64::from(!fetched);
    }

    /// Tells the removal hook, if any, of the item at `at` before it goes.
    fn tell(&self, at: Loc, why: Removal, expired: bool, now: Time) {
        if let Some(Hook(hook)) = &self.cfg.on_remove {
            let e = self.log.get(at);
            hook(&Removed {
                why,
                expired,
                key: e.key(),
                fetched: e.has(FETCHED),
                exptime: e.exptime(),
                last_access: e.last_access(),
                value_len: e.value().len(),
                flags: e.flags(),
                now,
            });
        }
    }

    pub(crate) fn set_removal_hook(&mut self, hook: RemovalHook) {
        self.cfg.on_remove = Some(Hook(hook));
    }

    /// Links a new item into the index and its queue, making room first. `None` when it cannot
    /// fit. The item gets the next CAS and `now` as its last access.
    fn insert_new(&mut self, hash: u64, item: NewItem<'_>, now: Time) -> Option<Loc> {
        // Whether the key was evicted recently, asked before making room evicts others (whose
        // fingerprints could take its ghost slot).
        let main = self.ghost.contains(hash);
        let bytes = self.sized(item.key.len(), item.value_len(), item.flags, item.exptime);
        if !self.make_room(bytes, &mut NIL.clone(), now) {
            return None;
        }
        let cas = self.next_cas();
        self.note_expiry(item.exptime);
        self.ghost.fit(self.index.len() + 1);
        let at = self.append(
            main,
            &NewItem {
                cas,
                last_access: now,
                ..item
            },
        )?;
        let (log, hasher) = (&self.log, &self.cfg.hasher);
        self.index
            .insert_unique(hash, at, |&l| hasher.hash_one(log.get(l).key()));
        self.counters.total_items += 1;
        Some(at)
    }

    /// Puts a new version of the item at `at` (same key) in its queue, points the index at it
    /// and kills the old one; the caller has made room. `None` when no segment can be had.
    fn replace(&mut self, hash: u64, at: Loc, item: &NewItem<'_>) -> Option<Loc> {
        let main = self.log.in_main(segment_of(at));
        let to = self.append(main, item)?;
        *self
            .index
            .find_mut(hash, |&l| l == at)
            .expect("a replaced item is indexed") = to;
        self.kill(at);
        self.note_expiry(item.exptime);
        self.counters.total_items += 1;
        Some(to)
    }

    /// Brings the shard back under its limit after a replacement left the old copy's bytes,
    /// keeping the new copy (`at` follows it if it moves).
    fn settle(&mut self, at: &mut Loc, now: Time) {
        if self.used > self.cfg.limit {
            self.make_room(0, at, now);
        }
    }

    pub(crate) fn read<R>(
        &mut self,
        hash: u64,
        key: &[u8],
        opts: ReadOptions,
        now: Time,
        f: impl FnOnce(&mut ItemHandle<'_>) -> R,
    ) -> Lookup<R> {
        self.advance(now);
        let found = self.lookup(hash, key, now);
        let (at, created) = match found {
            Found::Live(at) => (at, false),
            _ if opts.vivify && key.len() <= KEY_MAX_LENGTH => {
                // memcached's vivified item: empty, flags 0, no expiry until the caller sets one.
                let item = NewItem {
                    key,
                    value: [&[], &[]],
                    shared: None,
                    flags: 0,
                    exptime: 0,
                    cas: 0,
                    last_access: now,
                    bits: 0,
                };
                match self.insert_new(hash, item, now) {
                    Some(at) => (at, true),
                    None => return missed(found),
                }
            }
            _ => return missed(found),
        };
        let e = self.log.get(at);
        let old_exptime = e.exptime();
        let mut item = ItemHandle {
            item: e,
            // Only a large value has a handle to share; a small one needs no second look.
            shared: if e.large() { self.log.shared(at) } else { None },
            exptime: old_exptime,
            token_sent: e.has(TOKEN_SENT),
            cas_enabled: self.cfg.cas,
            created,
        };
        let r = f(&mut item);
        let (exptime, token_sent) = (item.exptime, item.token_sent);
        let mut e = self.log.get_mut(at);
        e.set_bit(TOKEN_SENT, token_sent);
        if opts.bump {
            e.fetch(now);
        }
        // A plain read leaves the expiry time alone: no third look at the item.
        if exptime != old_exptime {
            let mut at = at;
            self.set_exptime(&mut at, exptime, now);
        }
        Lookup::Hit(r)
    }

    pub(crate) fn delete_if(
        &mut self,
        hash: u64,
        key: &[u8],
        cas: Option<u64>,
        now: Time,
    ) -> DeleteResult {
        self.advance(now);
        let Found::Live(at) = self.lookup(hash, key, now) else {
            return DeleteResult::NotFound;
        };
        if cas.is_some_and(|cas| cas != self.client_cas(at)) {
            return DeleteResult::Exists;
        }
        self.unlink(at, hash);
        DeleteResult::Deleted
    }

    pub(crate) fn mark_stale(
        &mut self,
        hash: u64,
        key: &[u8],
        cas: Option<u64>,
        exptime: Option<Time>,
        now: Time,
    ) -> StaleResult {
        self.advance(now);
        let Found::Live(mut at) = self.lookup(hash, key, now) else {
            return StaleResult::NotFound;
        };
        if cas.is_some_and(|cas| cas != self.client_cas(at)) {
            return StaleResult::Exists;
        }
        let new_cas = self.next_cas();
        let mut e = self.log.get_mut(at);
        e.set_cas(new_cas);
        e.set_bit(STALE, true);
        e.set_bit(TOKEN_SENT, false);
        if let Some(exptime) = exptime {
            self.set_exptime(&mut at, exptime, now);
        }
        StaleResult::Marked {
            cas: self.client(new_cas),
        }
    }

    /// Stores an item. `shared` is the value already in a refcounted buffer, built by the
    /// caller outside the lock for a large value (not for append and prepend, which join the
    /// old value here).
    pub(crate) fn store(
        &mut self,
        hash: u64,
        request: &StoreRequest<'_>,
        shared: Option<Bytes>,
        now: Time,
    ) -> StoreOutcome {
        let &StoreRequest {
            key,
            flags,
            exptime,
            value,
            compare_cas,
            invalidate,
            binary_key,
            ..
        } = request;
        let fail = |result| StoreOutcome { result, cas: 0 };
        // memcached turns a set or replace that carries a CAS into a compare-and-swap.
        let mode = match request.mode {
            StoreMode::Set | StoreMode::Replace if compare_cas != 0 => StoreMode::Cas(compare_cas),
            mode => mode,
        };
        self.advance(now);
        let existing = match self.lookup(hash, key, now) {
            Found::Live(at) => Some(at),
            Found::Dead(_) | Found::Missing => None,
        };
        // Some(token sent) when an older CAS stores over the item as stale.
        let mut stale = None;
        // The joined value of an append or prepend, copied out of the log.
        let mut joined = std::mem::take(&mut self.scratch);
        joined.clear();
        let (flags, exptime) = match (mode, existing) {
            (StoreMode::Add, Some(at)) => {
                // As memcached: a refused add still counts as a use of the item.
                self.log.get_mut(at).bump(now);
                self.scratch = joined;
                return fail(StoreResult::NotStored);
            }
            (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                self.scratch = joined;
                return fail(StoreResult::NotStored);
            }
            (StoreMode::Cas(_), None) => {
                self.scratch = joined;
                return fail(StoreResult::NotFound);
            }
            (StoreMode::Cas(cas), Some(at)) => {
                let old = self.log.get(at);
                let matches = self.cfg.cas && cas == old.cas();
                let older = self.cfg.cas && invalidate && cas != 0 && cas < old.cas();
                if !matches && !older {
                    self.scratch = joined;
                    return fail(StoreResult::Exists);
                }
                if older {
                    // memcached keeps the old item's expiry time for a stale store.
                    stale = Some(old.has(TOKEN_SENT));
                    (flags, old.exptime())
                } else {
                    (flags, exptime)
                }
            }
            (StoreMode::Append | StoreMode::Prepend, Some(at)) => {
                let old = self.log.get(at);
                if self.cfg.cas && compare_cas != 0 && compare_cas != old.cas() {
                    self.scratch = joined;
                    return fail(StoreResult::Exists);
                }
                let len = old.value().len() + value.len();
                // memcached answers NOT_STORED when the joined item cannot be allocated.
                if memcached_size(key.len(), len, old.flags(), self.cfg.cas)
                    > self.cfg.item_size_max
                {
                    self.scratch = joined;
                    return fail(StoreResult::NotStored);
                }
                if mode == StoreMode::Append {
                    joined.extend_from_slice(old.value());
                    joined.extend_from_slice(value);
                } else {
                    joined.extend_from_slice(value);
                    joined.extend_from_slice(old.value());
                }
                (old.flags(), old.exptime())
            }
            (_, _) => (flags, exptime),
        };
        let outcome = self.put(
            hash,
            existing,
            Put {
                mode,
                key,
                value: if matches!(mode, StoreMode::Append | StoreMode::Prepend) {
                    &joined
                } else {
                    value
                },
                shared: shared.as_ref(),
                flags,
                exptime,
                binary_key: binary_key && !matches!(mode, StoreMode::Append | StoreMode::Prepend),
                stale,
            },
            now,
        );
        self.scratch = joined;
        outcome
    }

    /// The second half of a store: the item written, over `existing` if there is one.
    fn put(&mut self, hash: u64, existing: Option<Loc>, put: Put<'_>, now: Time) -> StoreOutcome {
        let fail = |result| StoreOutcome { result, cas: 0 };
        let mut bits = if put.binary_key { BINARY_KEY } else { 0 };
        if let Some(token_sent) = put.stale {
            bits |= STALE;
            if token_sent {
                bits |= TOKEN_SENT;
            }
        }
        let item = NewItem {
            key: put.key,
            value: [put.value, &[]],
            shared: put.shared,
            flags: put.flags,
            exptime: put.exptime,
            cas: 0,
            last_access: now,
            bits,
        };
        let Some(mut at) = existing else {
            return match self.insert_new(hash, item, now) {
                Some(at) => self.stored(at),
                None => fail(StoreResult::OutOfMemory),
            };
        };
        let new_bytes = self.sized(put.key.len(), item.value_len(), put.flags, put.exptime);
        let old_bytes = item_bytes(&self.log.get(at));
        if new_bytes > self.cfg.limit
            || !self.make_room(new_bytes.saturating_sub(old_bytes), &mut at, now)
        {
            // A failed set must not leave the old value to be served (memcached does the same).
            if put.mode == StoreMode::Set {
                self.unlink(at, hash);
            }
            return fail(StoreResult::OutOfMemory);
        }
        // The new item keeps the old one's use count, nothing else of its state (memcached
        // allocates a new item, whose flags start clear).
        let freq = self.log.get(at).freq();
        let item = NewItem {
            cas: self.next_cas(),
            bits: with_freq(bits, freq),
            ..item
        };
        let Some(mut to) = self.replace(hash, at, &item) else {
            if put.mode == StoreMode::Set {
                self.unlink(at, hash);
            }
            return fail(StoreResult::OutOfMemory);
        };
        self.settle(&mut to, now);
        self.stored(to)
    }

    fn stored(&self, at: Loc) -> StoreOutcome {
        StoreOutcome {
            result: StoreResult::Stored,
            cas: self.client_cas(at),
        }
    }

    pub(crate) fn delta<R>(
        &mut self,
        hash: u64,
        key: &[u8],
        request: DeltaRequest,
        now: Time,
        f: impl FnOnce(&mut Counter) -> R,
    ) -> DeltaOutcome<R> {
        self.advance(now);
        let Found::Live(mut at) = self.lookup(hash, key, now) else {
            return match request.create {
                Some((initial, exptime)) if key.len() <= KEY_MAX_LENGTH => {
                    self.create_counter(hash, key, initial, exptime, now, f)
                }
                _ => DeltaOutcome::NotFound,
            };
        };
        // memcached refuses an empty value before it compares the CAS.
        if self.log.get(at).value().is_empty() {
            return DeltaOutcome::NonNumeric;
        }
        if request.compare_cas != 0 && request.compare_cas != self.client_cas(at) {
            return DeltaOutcome::Exists;
        }
        let Some(counter) = parse_counter(self.log.get(at).value()) else {
            return DeltaOutcome::NonNumeric;
        };
        let result = apply_delta(counter, request.incr, request.delta);
        let mut buf = [0; MAX_DIGITS];
        let digits = format_counter(result, &mut buf);
        let old = self.log.get(at);
        let grown = digits.len() > old.value().len();
        if grown {
            let (flags, exptime, freq) = (old.flags(), old.exptime(), old.freq());
            let old_bytes = item_bytes(&old);
            let new_bytes = self.sized(key.len(), digits.len(), flags, exptime);
            if !self.make_room(new_bytes.saturating_sub(old_bytes), &mut at, now) {
                return DeltaOutcome::OutOfMemory;
            }
            // memcached stores a new item: unfetched, without the old one's meta state, and
            // counted as a use.
            let item = NewItem {
                key,
                value: [digits, &[]],
                shared: None,
                flags,
                exptime,
                cas: self.next_cas(),
                last_access: now,
                bits: with_freq(0, freq + 1),
            };
            match self.replace(hash, at, &item) {
                Some(to) => at = to,
                None => return DeltaOutcome::OutOfMemory,
            }
            self.settle(&mut at, now);
        } else {
            // memcached rewrites in place, padding with spaces to the old length.
            let cas = self.next_cas();
            self.log.rewrite_value(at, |value| {
                value[..digits.len()].copy_from_slice(digits);
                value[digits.len()..].fill(b' ');
            });
            let mut e = self.log.get_mut(at);
            e.set_cas(cas);
            e.bump(now);
        }
        let e = self.log.get(at);
        let mut counter = Counter {
            value: result,
            cas: self.client(e.cas()),
            exptime: e.exptime(),
            created: false,
        };
        let r = f(&mut counter);
        // See Counter::set_exptime: after growing, memcached's time change misses the item.
        if !grown {
            self.set_exptime(&mut at, counter.exptime, now);
        }
        DeltaOutcome::Done(r)
    }

    fn create_counter<R>(
        &mut self,
        hash: u64,
        key: &[u8],
        initial: u64,
        exptime: Time,
        now: Time,
        f: impl FnOnce(&mut Counter) -> R,
    ) -> DeltaOutcome<R> {
        let mut buf = [0; MAX_DIGITS];
        let digits = format_counter(initial, &mut buf);
        let item = NewItem {
            key,
            value: [digits, &[]],
            shared: None,
            flags: 0,
            exptime,
            cas: 0,
            last_access: now,
            bits: 0,
        };
        let Some(mut at) = self.insert_new(hash, item, now) else {
            return DeltaOutcome::OutOfMemory;
        };
        let mut counter = Counter {
            value: initial,
            cas: self.client_cas(at),
            exptime,
            created: true,
        };
        let r = f(&mut counter);
        self.set_exptime(&mut at, counter.exptime, now);
        DeltaOutcome::Done(r)
    }

    /// flush_all: immediately when `at <= now`, else once `now` reaches `at`. A later flush
    /// replaces a pending one, but never brings back what an earlier one flushed.
    pub(crate) fn flush_all(&mut self, at: Time, now: Time) {
        self.advance(now);
        if at <= now {
            self.flush_below = self.seq_bound();
            self.flush_at = 0;
        } else {
            self.flush_at = at;
        }
    }

    /// The background crawler's step: the sweep a store makes (see the module doc), at most
    /// `max_scan` items looked at and `max_reclaim` killed. Returns how many it killed and
    /// whether no dead item may be left in the shard: nothing to do until an item's expiry
    /// time comes or a flush, which the shard's bounds tell without looking at any item.
    pub(crate) fn crawl(&mut self, now: Time, max_reclaim: usize, max_scan: u32) -> (usize, bool) {
        self.advance(now);
        let budget = Budget {
            scan: max_scan,
            reclaim: max_reclaim,
            crawler: true,
        };
        self.reclaim_dead(None, now, budget)
    }

    /// Walks from `from` and calls `f` with each live item until `f` answers that it wants no
    /// more, or `max_scan` items have been looked at. Returns where to continue, or `None` when
    /// the walk is over.
    fn visit_live(
        &mut self,
        now: Time,
        from: Walk,
        max_scan: u32,
        mut f: impl FnMut(&Item<'_>, u64) -> bool,
    ) -> Option<Walk> {
        self.advance(now);
        let mut pos = from;
        for _ in 0..max_scan {
            let (at, next) = self.walk(pos)?;
            pos = next;
            let e = self.log.get(at);
            if e.dead() || death(&e, self.flush_below, now).is_some() {
                continue;
            }
            if !f(&e, self.client(e.cas())) {
                break;
            }
        }
        Some(pos)
    }

    /// Copies the metadata of up to `max_items` live items, looking at no more than `max_scan`
    /// items from `from` on, into `out`. Returns where to continue, or `None` when the walk is
    /// over.
    pub(crate) fn collect_meta(
        &mut self,
        now: Time,
        from: Walk,
        max_items: usize,
        max_scan: u32,
        out: &mut MetaBatch,
    ) -> Option<Walk> {
        let cas_on = self.cfg.cas;
        self.visit_live(now, from, max_scan, |e, cas| {
            out.keys.extend_from_slice(e.key());
            out.rows.push(MetaRow {
                key_end: out.keys.len(),
                exptime: e.exptime(),
                last_access: e.last_access(),
                cas,
                fetched: e.has(FETCHED),
                flags: e.flags(),
                value_len: e.value().len(),
                size: memcached_size(e.key().len(), e.value().len(), e.flags(), cas_on),
            });
            out.rows.len() < max_items
        })
    }

    /// Copies whole live items, from `from` on, into `out` until it holds `max_items` items or
    /// `max_bytes` bytes of keys and values, or `max_scan` items have been looked at. Returns
    /// where to continue, or `None` when the walk is over.
    pub(crate) fn collect_items(
        &mut self,
        now: Time,
        from: Walk,
        max_items: usize,
        max_bytes: usize,
        max_scan: u32,
        out: &mut ItemBatch,
    ) -> Option<Walk> {
        self.visit_live(now, from, max_scan, |e, _| {
            out.data.extend_from_slice(e.key());
            let key_end = out.data.len();
            out.data.extend_from_slice(e.value());
            out.rows.push(ItemRow {
                key_end,
                value_end: out.data.len(),
                flags: e.flags(),
                exptime: e.exptime(),
                last_access: e.last_access(),
                fetched: e.has(FETCHED),
                stale: e.has(STALE),
                binary_key: e.has(BINARY_KEY),
            });
            out.rows.len() < max_items && out.data.len() < max_bytes
        })
    }

    /// Puts a saved item back (see [`crate::Cache::import`]): it replaces a live item of the same
    /// key, and is refused when the shard's share of the limit has no room left for it, because
    /// evicting would throw out items loaded a moment ago for this one.
    pub(crate) fn import(&mut self, hash: u64, item: &SavedItem<'_>, now: Time) -> ImportResult {
        self.advance(now);
        let bytes = self.sized(item.key.len(), item.value.len(), item.flags, item.exptime);
        self.reuse_garbage(bytes);
        let old = match self.lookup(hash, item.key, now) {
            Found::Live(at) => Some(at),
            _ => None,
        };
        // The old item's space counts as free only once it is gone, and it is only removed
        // when the new one fits: a refused import leaves the cache as it was.
        let old_bytes = old.map_or(0, |at| item_bytes(&self.log.get(at)));
        if self.used - old_bytes + bytes > self.cfg.limit {
            return ImportResult::NoRoom;
        }
        if let Some(at) = old {
            self.unlink(at, hash);
            self.reuse_garbage(bytes);
        }
        let mut bits = 0;
        for (on, bit) in [
            (item.fetched, FETCHED),
            (item.stale, STALE),
            (item.binary_key, BINARY_KEY),
        ] {
            if on {
                bits |= bit;
            }
        }
        let new = NewItem {
            key: item.key,
            value: [item.value, &[]],
            shared: None,
            flags: item.flags,
            exptime: item.exptime,
            cas: 0,
            last_access: now,
            bits,
        };
        let Some(at) = self.insert_new(hash, new, now) else {
            return ImportResult::NoRoom;
        };
        self.log.get_mut(at).set_last_access(item.last_access);
        ImportResult::Stored
    }

    /// Drops every item and starts over empty, keeping the shard's configuration.
    pub(crate) fn clear(&mut self) {
        *self = Shard::new(self.cfg.clone());
    }

    /// How many items a walk over the log visits (dead ones included).
    pub(crate) fn slots(&self) -> u32 {
        self.logged
    }

    /// Changes the shard's share of the memory limit, evicting at once down to a smaller one.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.cfg.limit = limit;
        let now = self.last_now;
        self.make_room(0, &mut NIL.clone(), now);
    }

    /// Gives up to `at_most` bytes of the shard's unused share of the limit, dead space
    /// included (as much of it is compacted first as that takes); returns how many.
    pub(crate) fn lend(&mut self, at_most: u64) -> u64 {
        self.reuse_garbage(at_most);
        let spare = self.cfg.limit.saturating_sub(self.used).min(at_most);
        self.cfg.limit -= spare;
        spare
    }

    /// The shard's share of the memory limit.
    pub(crate) fn limit(&self) -> u64 {
        self.cfg.limit
    }

    /// Takes `bytes` more share of the limit, lent by other shards.
    pub(crate) fn extend_limit(&mut self, bytes: u64) {
        self.cfg.limit += bytes;
    }

    pub(crate) fn add_stats(&self, s: &mut CacheStats) {
        let c = &self.counters;
        s.curr_items += self.index.len() as u64;
        s.bytes += self.live;
        s.total_items += c.total_items;
        s.evictions += c.evictions;
        s.evicted_unfetched += c.evicted_unfetched;
        s.expired_unfetched += c.expired_unfetched;
        s.reclaimed += c.reclaimed;
        s.crawler_reclaimed += c.crawler_reclaimed;
    }

    pub(crate) fn reset_stats(&mut self) {
        self.counters = Counters::default();
    }
}

/// A position in a walk over every item of a shard, which stays valid while items come, go and
/// move. The walk goes through the small queue, then the main one, each from its oldest segment
/// to its newest; items only ever move to the newest end of a queue, or from the small queue to
/// the main one, so an item that is in the shard from the start of a walk to its end is seen
/// (once, or twice if it moved from behind the walk to ahead of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Walk {
    main: bool,
    /// The segment: the first one of the queue opened at or after this.
    generation: u64,
    /// Where in that segment, if it is still there.
    offset: u32,
}

/// A store's item, as `Shard::put` writes it.
struct Put<'a> {
    mode: StoreMode,
    key: &'a [u8],
    value: &'a [u8],
    shared: Option<&'a Bytes>,
    flags: u32,
    exptime: Time,
    binary_key: bool,
    /// Some(token sent) when stored as stale.
    stale: Option<bool>,
}

#[cfg(test)]
impl Shard {
    /// The bytes counted against the limit, dead ones included.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Checks that index, queues, log and byte counts agree.
    pub(crate) fn check(&self) {
        let (mut live_items, mut live, mut overhead, mut garbage, mut queued) = (0, 0, 0, 0, 0);
        for queue in [&self.small, &self.main] {
            for (n, id) in queue.segments().enumerate() {
                let start = if n == 0 { queue.cursor() } else { 0 };
                let mut next = self.log.at(id, start);
                while let Some(at) = next {
                    next = self.log.next_in_segment(at);
                    let e = self.log.get(at);
                    queued += e.len() as u64;
                    if e.dead() {
                        garbage += e.len() as u64;
                        continue;
                    }
                    let hash = self.cfg.hasher.hash_one(e.key());
                    assert_eq!(self.index.find(hash, |&l| l == at), Some(&at));
                    live_items += 1;
                    live += item_bytes(&e);
                    overhead += (ITEM_OVERHEAD + large_size(e.value().len())) as u64;
                }
            }
            assert_eq!(
                queue.bytes,
                queue
                    .segments()
                    .enumerate()
                    .map(|(n, id)| {
                        let start = if n == 0 { queue.cursor() } else { 0 };
                        (self.log.written(id) - start) as u64
                    })
                    .sum::<u64>()
            );
        }
        assert_eq!(live_items, self.index.len());
        assert_eq!(live, self.live);
        assert_eq!(garbage, self.garbage);
        assert_eq!(queued + overhead, self.used);
        if self.cfg.evict {
            assert!(
                self.used <= self.cfg.limit,
                "{} > {}",
                self.used,
                self.cfg.limit
            );
        }
    }
}
