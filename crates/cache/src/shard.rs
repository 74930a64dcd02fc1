//! One shard of the cache: its items, its index, its share of the memory limit, its eviction
//! queues, its flush state and its counters. [`crate::Cache`] picks the shard by the key's hash and
//! calls it under the shard's lock; nothing here locks, reads a clock or does I/O.
//!
//! Items are named by arena slot; the index is a `HashTable<u32>` of slots, probed with the key's
//! hash and compared by key, so no hash is stored per item (it is recomputed from the key when the
//! table grows or an item is evicted).
//!
//! Every store takes a sequence number from the shard's counter, interleaved with the shard's
//! number so that it is unique in the whole cache; it is the item's CAS. It also dates the store,
//! which is what flush_all needs: a flush makes every item with a smaller number invalid. A
//! delayed flush is kept pending and turned into such a bound by the first operation that sees
//! its time come, so only the items stored before that second are lost.
//!
//! Dead items go before live ones: a shard keeps a lower bound of its items' expiry times and
//! the flush bound it last swept for. When a store needs room and that bound has passed (or a
//! flush came since), it first sweeps the whole arena once and frees every expired or flushed
//! item (memcached's `reclaimed`), then recomputes the bound from the survivors; only then does
//! the eviction policy pick a live victim. So no live item is evicted while a dead one holds
//! memory, and a dead item's space is reused before the shard's memory grows. A sweep costs one
//! pass over the shard's slots, at most once per second of the clock per shard (the new bound
//! is in the future), and never when no item has an expiry time.
//!
//! Memory: each item is accounted as [`accounted_size`] says, which matches what the allocator
//! really gives out (tests/memory.rs checks it). The arena, the index and the ghost do not shrink
//! when items go: their unused part, about 60 bytes per free slot below the shard's peak item
//! count, is reused by later items but not counted in the meantime.

use bytes::Bytes;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::arena::{Arena, Data, Entry, NIL};
use crate::numeric::{apply_delta, format_counter, parse_counter, MAX_DIGITS};
use crate::policy::{S3Fifo, Victim};
use crate::size::{accounted_size, memcached_size};
use crate::{
    CacheStats, Counter, DeleteResult, DeltaOutcome, DeltaRequest, ImportResult, ItemHandle,
    ItemMeta, Lookup, ReadOptions, SavedItem, StaleResult, StoreMode, StoreOutcome, StoreRequest,
    StoreResult, Time, KEY_MAX_LENGTH,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    Expired,
    Flushed,
}

fn death(e: &Entry, flush_below: u64, now: Time) -> Option<Death> {
    if e.cas < flush_below {
        Some(Death::Flushed)
    } else if e.exptime != 0 && e.exptime <= now {
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

fn entry_bytes(e: &Entry) -> u64 {
    accounted_size(e.key_len(), e.value().len())
}

fn concat(parts: [&[u8]; 3]) -> Bytes {
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        data.extend_from_slice(part);
    }
    Bytes::from(data)
}

enum Found {
    Live(u32),
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
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.rows.clear();
    }

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
    index: HashTable<u32>,
    arena: Arena,
    policy: S3Fifo,
    cfg: ShardConfig,
    /// Accounted bytes of the items held.
    used: u64,
    /// Items whose sequence is below this were flushed.
    flush_below: u64,
    /// When a delayed flush takes effect; 0 when none is pending.
    flush_at: Time,
    /// The latest time an operation brought, for work that is not given one.
    last_now: Time,
    crawl_pos: u32,
    /// No item expires before this (0: no item has an expiry time); may be lower than the truth.
    next_expiry: Time,
    /// The flush bound when the arena was last swept: a higher `flush_below` means items may
    /// have been flushed since.
    swept_flush: u64,
    counters: Counters,
}

impl Shard {
    pub(crate) fn new(cfg: ShardConfig) -> Shard {
        Shard {
            index: HashTable::new(),
            arena: Arena::new(),
            policy: S3Fifo::new(),
            cfg,
            used: 0,
            flush_below: 0,
            flush_at: 0,
            last_now: 0,
            crawl_pos: 0,
            next_expiry: 0,
            swept_flush: 0,
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

    /// An item's CAS as clients see it: 0 when CAS is off.
    fn client_cas(&self, idx: u32) -> u64 {
        if self.cfg.cas {
            self.arena[idx].cas
        } else {
            0
        }
    }

    /// Finds the item of `key`; an expired or flushed one is removed on the way.
    fn lookup(&mut self, hash: u64, key: &[u8], now: Time) -> Found {
        let arena = &self.arena;
        let Some(&idx) = self.index.find(hash, |&i| arena[i].key() == key) else {
            return Found::Missing;
        };
        match death(&self.arena[idx], self.flush_below, now) {
            None => Found::Live(idx),
            Some(d) => {
                self.unlink(idx, hash);
                Found::Dead(d)
            }
        }
    }

    /// Takes an item out of the index, its queue and the arena, and returns its data.
    fn unlink(&mut self, idx: u32, hash: u64) -> Data {
        self.index
            .find_entry(hash, |&i| i == idx)
            .expect("every occupied slot is indexed")
            .remove();
        self.policy.remove(&mut self.arena, idx);
        self.used -= entry_bytes(&self.arena[idx]);
        self.arena.remove(idx)
    }

    fn remove_victim(&mut self, victim: Victim, now: Time) {
        let e = &self.arena[victim.idx];
        let died = death(e, self.flush_below, now);
        let fetched = e.fetched();
        let hash = self.cfg.hasher.hash_one(e.key());
        self.unlink(victim.idx, hash);
        let c = &mut self.counters;
        match died {
            Some(d) => {
                c.reclaimed += 1;
                c.expired_unfetched += u64::from(d == Death::Expired && !fetched);
            }
            None => {
                c.evictions += 1;
                c.evicted_unfetched += u64::from(!fetched);
                self.policy.evicted(victim, hash);
            }
        }
    }

    /// Lowers the expiry bound for an item that now expires at `exptime`.
    fn note_expiry(&mut self, exptime: Time) {
        if exptime != 0 && (self.next_expiry == 0 || exptime < self.next_expiry) {
            self.next_expiry = exptime;
        }
    }

    /// Frees every expired or flushed item but `protect` when one may exist (see the module
    /// doc), counting them as `reclaimed`, and sets the expiry bound from the items left.
    fn reclaim_dead(&mut self, protect: u32, now: Time) {
        let expiring = self.next_expiry != 0 && self.next_expiry <= now;
        if !expiring && self.flush_below <= self.swept_flush {
            return;
        }
        let mut next_expiry = 0;
        for idx in 0..self.arena.high_water() {
            let Some(e) = self.arena.get(idx) else {
                continue;
            };
            let (died, fetched, exptime) =
                (death(e, self.flush_below, now), e.fetched(), e.exptime);
            match died {
                Some(died) if idx != protect => {
                    let hash = self.cfg.hasher.hash_one(self.arena[idx].key());
                    self.unlink(idx, hash);
                    self.counters.reclaimed += 1;
                    self.counters.expired_unfetched +=
                        u64::from(died == Death::Expired && !fetched);
                }
                _ if exptime != 0 && (next_expiry == 0 || exptime < next_expiry) => {
                    next_expiry = exptime;
                }
                _ => {}
            }
        }
        self.next_expiry = next_expiry;
        self.swept_flush = self.flush_below;
    }

    /// Frees memory until `need` more bytes fit, never removing `protect`: dead items first,
    /// then, with eviction on, live ones as the policy picks them. Returns whether the bytes fit.
    fn make_room(&mut self, need: u64, protect: u32, now: Time) -> bool {
        if need > self.cfg.limit {
            return false;
        }
        self.reclaim_dead(protect, now);
        while self.used + need > self.cfg.limit {
            let flush_below = self.flush_below;
            let is_dead = |e: &Entry| death(e, flush_below, now).is_some();
            let victim = if self.cfg.evict {
                self.policy
                    .victim(&mut self.arena, self.cfg.limit, protect, is_dead)
            } else {
                self.policy.dead_near_tail(&self.arena, protect, is_dead)
            };
            match victim {
                Some(v) => self.remove_victim(v, now),
                None => return false,
            }
        }
        true
    }

    /// Links a new item into the index, its queue and the byte count, making room first.
    /// `None` when it cannot fit.
    fn insert_new(
        &mut self,
        hash: u64,
        data: Bytes,
        key_len: usize,
        flags: u32,
        exptime: Time,
        now: Time,
    ) -> Option<u32> {
        let bytes = accounted_size(key_len, data.len() - key_len);
        if !self.make_room(bytes, NIL, now) {
            return None;
        }
        let cas = self.next_cas();
        self.note_expiry(exptime);
        let entry = Entry::new(
            Data::new(data, key_len),
            key_len as u8,
            flags,
            exptime,
            cas,
            now,
        );
        let idx = self.arena.insert(entry)?;
        let (arena, hasher) = (&self.arena, &self.cfg.hasher);
        self.index
            .insert_unique(hash, idx, |&i| hasher.hash_one(arena[i].key()));
        self.policy
            .admit(&mut self.arena, idx, hash, self.index.len());
        self.used += bytes;
        self.counters.total_items += 1;
        Some(idx)
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
        let (idx, created) = match found {
            Found::Live(idx) => (idx, false),
            _ if opts.vivify && key.len() <= KEY_MAX_LENGTH => {
                // memcached's vivified item: empty, flags 0, no expiry until the caller sets one.
                match self.insert_new(hash, concat([key, &[], &[]]), key.len(), 0, 0, now) {
                    Some(idx) => (idx, true),
                    None => return missed(found),
                }
            }
            _ => return missed(found),
        };
        let mut item = ItemHandle {
            entry: &mut self.arena[idx],
            cas_enabled: self.cfg.cas,
            created,
        };
        let r = f(&mut item);
        self.note_expiry(self.arena[idx].exptime);
        if opts.bump {
            self.arena[idx].fetch(now);
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
        let Found::Live(idx) = self.lookup(hash, key, now) else {
            return DeleteResult::NotFound;
        };
        if cas.is_some_and(|cas| cas != self.client_cas(idx)) {
            return DeleteResult::Exists;
        }
        self.unlink(idx, hash);
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
        let Found::Live(idx) = self.lookup(hash, key, now) else {
            return StaleResult::NotFound;
        };
        if cas.is_some_and(|cas| cas != self.client_cas(idx)) {
            return StaleResult::Exists;
        }
        let new_cas = self.next_cas();
        let e = &mut self.arena[idx];
        if let Some(exptime) = exptime {
            e.exptime = exptime;
        }
        e.cas = new_cas;
        e.set_stale(true);
        e.set_token_sent(false);
        self.note_expiry(exptime.unwrap_or(0));
        StaleResult::Marked {
            cas: self.client_cas(idx),
        }
    }

    /// Stores an item. `data` is the key followed by the value, built by the caller outside
    /// the lock (append and prepend build theirs here, from the old value). The returned
    /// allocation is one the caller should drop after unlocking.
    pub(crate) fn store(
        &mut self,
        hash: u64,
        request: &StoreRequest<'_>,
        data: Option<Bytes>,
        now: Time,
    ) -> (StoreOutcome, Option<Data>) {
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
            Found::Live(idx) => Some(idx),
            Found::Dead(_) | Found::Missing => None,
        };
        // Some(token sent) when an older CAS stores over the item as stale.
        let mut stale = None;
        let (data, flags, exptime) = match (mode, existing) {
            (StoreMode::Add, Some(idx)) => {
                // As memcached: a refused add still counts as a use of the item.
                self.arena[idx].bump(now);
                return (
                    fail(StoreResult::NotStored),
                    data.map(|d| Data::new(d, key.len())),
                );
            }
            (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                return (
                    fail(StoreResult::NotStored),
                    data.map(|d| Data::new(d, key.len())),
                )
            }
            (StoreMode::Cas(_), None) => {
                return (
                    fail(StoreResult::NotFound),
                    data.map(|d| Data::new(d, key.len())),
                )
            }
            (StoreMode::Cas(cas), Some(idx)) => {
                let old = &self.arena[idx];
                let matches = self.cfg.cas && cas == old.cas;
                let older = self.cfg.cas && invalidate && cas != 0 && cas < old.cas;
                if !matches && !older {
                    return (
                        fail(StoreResult::Exists),
                        data.map(|d| Data::new(d, key.len())),
                    );
                }
                let data = data.unwrap_or_else(|| concat([key, value, &[]]));
                if older {
                    // memcached keeps the old item's expiry time for a stale store.
                    stale = Some(old.token_sent());
                    (data, flags, old.exptime)
                } else {
                    (data, flags, exptime)
                }
            }
            (StoreMode::Append | StoreMode::Prepend, Some(idx)) => {
                let old = &self.arena[idx];
                if self.cfg.cas && compare_cas != 0 && compare_cas != old.cas {
                    return (
                        fail(StoreResult::Exists),
                        data.map(|d| Data::new(d, key.len())),
                    );
                }
                let len = old.value().len() + value.len();
                // memcached answers NOT_STORED when the joined item cannot be allocated.
                if memcached_size(key.len(), len, old.flags, self.cfg.cas) > self.cfg.item_size_max
                {
                    return (
                        fail(StoreResult::NotStored),
                        data.map(|d| Data::new(d, key.len())),
                    );
                }
                let joined = if mode == StoreMode::Append {
                    concat([key, old.value(), value])
                } else {
                    concat([key, value, old.value()])
                };
                (joined, old.flags, old.exptime)
            }
            (_, _) => match data {
                Some(data) => (data, flags, exptime),
                None => (concat([key, value, &[]]), flags, exptime),
            },
        };
        let joined = matches!(mode, StoreMode::Append | StoreMode::Prepend);
        let binary_key = binary_key && !joined;
        let Some(idx) = existing else {
            return match self.insert_new(hash, data, key.len(), flags, exptime, now) {
                Some(idx) => {
                    self.arena[idx].set_binary_key(binary_key);
                    (self.stored(idx), None)
                }
                None => (fail(StoreResult::OutOfMemory), None),
            };
        };
        let new_bytes = accounted_size(key.len(), data.len() - key.len());
        let old_bytes = entry_bytes(&self.arena[idx]);
        if new_bytes > self.cfg.limit
            || !self.make_room(new_bytes.saturating_sub(old_bytes), idx, now)
        {
            // A failed set must not leave the old value to be served (memcached does the same).
            let garbage = (mode == StoreMode::Set).then(|| self.unlink(idx, hash));
            return (fail(StoreResult::OutOfMemory), garbage);
        }
        let cas = self.next_cas();
        let e = &mut self.arena[idx];
        let old_data = e.replace_data(data);
        e.flags = flags;
        e.exptime = exptime;
        e.cas = cas;
        e.renew(now);
        e.set_binary_key(binary_key);
        if let Some(token_sent) = stale {
            e.set_stale(true);
            e.set_token_sent(token_sent);
        }
        self.note_expiry(exptime);
        self.policy.resized(&self.arena, idx, old_bytes);
        self.used = self.used - old_bytes + new_bytes;
        self.counters.total_items += 1;
        (self.stored(idx), Some(old_data))
    }

    fn stored(&self, idx: u32) -> StoreOutcome {
        StoreOutcome {
            result: StoreResult::Stored,
            cas: self.client_cas(idx),
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
        let Found::Live(idx) = self.lookup(hash, key, now) else {
            return match request.create {
                Some((initial, exptime)) if key.len() <= KEY_MAX_LENGTH => {
                    self.create_counter(hash, key, initial, exptime, now, f)
                }
                _ => DeltaOutcome::NotFound,
            };
        };
        // memcached refuses an empty value before it compares the CAS.
        if self.arena[idx].value().is_empty() {
            return DeltaOutcome::NonNumeric;
        }
        if request.compare_cas != 0 && request.compare_cas != self.client_cas(idx) {
            return DeltaOutcome::Exists;
        }
        let Some(counter) = parse_counter(self.arena[idx].value()) else {
            return DeltaOutcome::NonNumeric;
        };
        let result = apply_delta(counter, request.incr, request.delta);
        let mut buf = [0; MAX_DIGITS];
        let digits = format_counter(result, &mut buf);
        let old_len = self.arena[idx].value().len();
        let grown = digits.len() > old_len;
        if grown {
            let old_bytes = entry_bytes(&self.arena[idx]);
            let new_bytes = accounted_size(key.len(), digits.len());
            if !self.make_room(new_bytes.saturating_sub(old_bytes), idx, now) {
                return DeltaOutcome::OutOfMemory;
            }
            let cas = self.next_cas();
            let e = &mut self.arena[idx];
            e.replace_data(concat([key, digits, &[]]));
            e.cas = cas;
            e.bump(now);
            // memcached stores a new item: unfetched, and without the old one's meta state.
            e.renew(now);
            self.policy.resized(&self.arena, idx, old_bytes);
            self.used = self.used - old_bytes + new_bytes;
            self.counters.total_items += 1;
        } else {
            // memcached rewrites in place, padding with spaces to the old length.
            let cas = self.next_cas();
            let e = &mut self.arena[idx];
            e.rewrite_value(|value| {
                value[..digits.len()].copy_from_slice(digits);
                value[digits.len()..].fill(b' ');
            });
            e.cas = cas;
            e.bump(now);
        }
        let mut counter = Counter {
            value: result,
            cas: self.client_cas(idx),
            exptime: self.arena[idx].exptime,
            created: false,
        };
        let r = f(&mut counter);
        // See Counter::set_exptime: after growing, memcached's time change misses the item.
        if !grown {
            self.arena[idx].exptime = counter.exptime;
            self.note_expiry(counter.exptime);
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
        let data = concat([key, digits, &[]]);
        let Some(idx) = self.insert_new(hash, data, key.len(), 0, exptime, now) else {
            return DeltaOutcome::OutOfMemory;
        };
        let mut counter = Counter {
            value: initial,
            cas: self.client_cas(idx),
            exptime,
            created: true,
        };
        let r = f(&mut counter);
        self.arena[idx].exptime = counter.exptime;
        self.note_expiry(counter.exptime);
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

    /// Visits up to `max_scan` slots from where the last crawl stopped and frees the dead items
    /// among them, at most `max_reclaim`. Returns (items freed, slots visited).
    pub(crate) fn crawl(&mut self, now: Time, max_reclaim: usize, max_scan: u32) -> (usize, u32) {
        self.advance(now);
        let mut reclaimed = 0;
        let mut scanned = 0;
        while scanned < max_scan && reclaimed < max_reclaim {
            if self.crawl_pos >= self.arena.high_water() {
                self.crawl_pos = 0;
            }
            let idx = self.crawl_pos;
            self.crawl_pos += 1;
            scanned += 1;
            let Some(e) = self.arena.get(idx) else {
                continue;
            };
            let Some(died) = death(e, self.flush_below, now) else {
                continue;
            };
            let fetched = e.fetched();
            let hash = self.cfg.hasher.hash_one(e.key());
            self.unlink(idx, hash);
            reclaimed += 1;
            self.counters.crawler_reclaimed += 1;
            self.counters.expired_unfetched += u64::from(died == Death::Expired && !fetched);
        }
        (reclaimed, scanned)
    }

    /// Copies the metadata of up to `max_items` live items, looking at no more than `max_slots`
    /// slots from `from` on, into `out`. Returns the slot to continue from, or `None` when the
    /// walk is over.
    pub(crate) fn collect_meta(
        &mut self,
        now: Time,
        from: u32,
        max_items: usize,
        max_slots: u32,
        out: &mut MetaBatch,
    ) -> Option<u32> {
        self.advance(now);
        let end = self.arena.high_water();
        let stop = end.min(from.saturating_add(max_slots));
        let mut idx = from;
        while idx < stop && out.rows.len() < max_items {
            if let Some(e) = self.arena.get(idx) {
                if death(e, self.flush_below, now).is_none() {
                    out.keys.extend_from_slice(e.key());
                    out.rows.push(MetaRow {
                        key_end: out.keys.len(),
                        exptime: e.exptime,
                        last_access: e.last_access,
                        cas: if self.cfg.cas { e.cas } else { 0 },
                        fetched: e.fetched(),
                        flags: e.flags,
                        value_len: e.value().len(),
                        size: memcached_size(e.key_len(), e.value().len(), e.flags, self.cfg.cas),
                    });
                }
            }
            idx += 1;
        }
        (idx < end).then_some(idx)
    }

    /// Copies whole live items, from slot `from` on, into `out` until it holds `max_items` items
    /// or `max_bytes` bytes of keys and values, or `max_slots` slots have been looked at.
    /// Returns the slot to continue from, or `None` when the walk is over.
    pub(crate) fn collect_items(
        &mut self,
        now: Time,
        from: u32,
        max_items: usize,
        max_bytes: usize,
        max_slots: u32,
        out: &mut ItemBatch,
    ) -> Option<u32> {
        self.advance(now);
        let end = self.arena.high_water();
        let stop = end.min(from.saturating_add(max_slots));
        let mut idx = from;
        while idx < stop && out.rows.len() < max_items && out.data.len() < max_bytes {
            if let Some(e) = self.arena.get(idx) {
                if death(e, self.flush_below, now).is_none() {
                    out.data.extend_from_slice(e.key());
                    let key_end = out.data.len();
                    out.data.extend_from_slice(e.value());
                    out.rows.push(ItemRow {
                        key_end,
                        value_end: out.data.len(),
                        flags: e.flags,
                        exptime: e.exptime,
                        last_access: e.last_access,
                        fetched: e.fetched(),
                        stale: e.stale(),
                        binary_key: e.binary_key(),
                    });
                }
            }
            idx += 1;
        }
        (idx < end).then_some(idx)
    }

    /// Puts a saved item back (see [`crate::Cache::import`]): it replaces a live item of the same
    /// key, and is refused when the shard's share of the limit has no room left for it, because
    /// evicting would throw out items loaded a moment ago for this one.
    pub(crate) fn import(
        &mut self,
        hash: u64,
        item: &SavedItem<'_>,
        data: Bytes,
        now: Time,
    ) -> ImportResult {
        self.advance(now);
        if let Found::Live(idx) = self.lookup(hash, item.key, now) {
            self.unlink(idx, hash);
        }
        let bytes = accounted_size(item.key.len(), item.value.len());
        if self.used + bytes > self.cfg.limit {
            return ImportResult::NoRoom;
        }
        let key_len = item.key.len();
        let Some(idx) = self.insert_new(hash, data, key_len, item.flags, item.exptime, now) else {
            return ImportResult::NoRoom;
        };
        let e = &mut self.arena[idx];
        e.last_access = item.last_access;
        e.set_fetched(item.fetched);
        e.set_stale(item.stale);
        e.set_binary_key(item.binary_key);
        ImportResult::Stored
    }

    /// Drops every item and starts over empty, keeping the shard's configuration.
    pub(crate) fn clear(&mut self) {
        *self = Shard::new(self.cfg.clone());
    }

    pub(crate) fn slots(&self) -> u32 {
        self.arena.high_water()
    }

    /// Changes the shard's share of the memory limit, evicting at once down to a smaller one.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.cfg.limit = limit;
        let now = self.last_now;
        self.make_room(0, NIL, now);
    }

    /// Gives up to `at_most` bytes of the shard's unused share of the limit; returns how many.
    pub(crate) fn lend(&mut self, at_most: u64) -> u64 {
        let spare = self.cfg.limit.saturating_sub(self.used).min(at_most);
        self.cfg.limit -= spare;
        spare
    }

    /// Takes `bytes` more share of the limit, lent by other shards.
    pub(crate) fn extend_limit(&mut self, bytes: u64) {
        self.cfg.limit += bytes;
    }

    pub(crate) fn add_stats(&self, s: &mut CacheStats) {
        let c = &self.counters;
        s.curr_items += self.index.len() as u64;
        s.bytes += self.used;
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

#[cfg(test)]
impl Shard {
    pub(crate) fn limit(&self) -> u64 {
        self.cfg.limit
    }

    /// Checks that index, queues and byte count agree.
    pub(crate) fn check(&self) {
        let (items, bytes) = self.policy.check(&self.arena);
        assert_eq!(items, self.index.len());
        assert_eq!(bytes, self.used);
        for &idx in self.index.iter() {
            let e = self.arena.get(idx).expect("indexed slot is occupied");
            assert_eq!(
                self.index
                    .find(self.cfg.hasher.hash_one(e.key()), |&i| i == idx),
                Some(&idx)
            );
        }
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
