//! keepcached's item store: what memcached keeps in memory, with memcached's semantics.
//!
//! The cache server parses a request, calls one method of [`Cache`] and encodes the answer; this
//! crate does no I/O, starts no thread and reads no clock. Time comes in as `now`, memcached's
//! "rel time" (seconds since the server started), so tests move time by passing a larger number.
//!
//! Layout (see the module docs for each part):
//! - [`Cache`] splits keys over shards by hash, each behind its own lock (`shard`);
//! - a shard keeps items in a log of segments with compact headers (`log`), indexed by a hash
//!   table of locations;
//! - when memory is short it reuses dead space and evicts by S3-FIFO (`policy`);
//! - `size` says what an item costs, `numeric` how incr/decr read and write numbers.
//!
//! The text protocol's operations (`get`, `store`, `delete`, `incr_decr`, ...) sit on the ones the
//! meta and binary protocols use: [`Cache::read`] lends an item with its meta state (fetched,
//! last access, stale, win token, base64 key) and counts the read only afterwards;
//! [`Cache::store_item`], [`Cache::delete_if`], [`Cache::mark_stale`] and [`Cache::delta`] each
//! compare a CAS and act in one step under the shard lock, and those that change the item report
//! its new CAS.
//!
//! A restart (memcached's `-e`) goes through [`Cache::export`], which lends every live item
//! whole, and [`Cache::import`], which puts one back; the server owns the file in between.

mod log;
mod numeric;
mod policy;
mod shard;
mod size;
#[cfg(test)]
mod tests;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

pub use log::SHARED_MIN;
use log::{Item, BINARY_KEY, FETCHED, STALE};
use shard::{ItemBatch, MetaBatch, Shard, ShardConfig, Walk};
pub use size::{accounted_size, memcached_size};

/// memcached's "rel time": seconds since the server started. As an expiry time, 0 means never;
/// an item with `exptime != 0 && exptime <= now` is expired.
pub type Time = u32;

/// The longest key memcached accepts; longer keys are never stored.
pub const KEY_MAX_LENGTH: usize = 250;

/// What client flags and an expiry time add to [`accounted_size`], at most.
const OPTIONAL_FIELDS: u64 = 8;

/// The most shards a cache is split into.
const MAX_SHARDS: usize = 1024;

/// How many items `for_each_item` copies out of a shard per lock, and how many slots it looks at.
const META_BATCH: usize = 256;
const META_SCAN: u32 = 4096;

/// How much of its keys and values `export` copies out of a shard per lock: enough to make the
/// lock's cost small beside the copy, little enough that a client waits microseconds for it.
const EXPORT_BATCH_BYTES: usize = 256 * 1024;

/// How many slots `crawl_expired` visits per lock.
const CRAWL_BATCH: u32 = 1024;

/// A read as the text and binary protocols do it: a fetch, never creating.
const FETCH: ReadOptions = ReadOptions {
    bump: true,
    vivify: false,
};

/// How the store is set up (memcached's flags in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The memory limit for items, accounted as [`accounted_size`] says (`-m`).
    pub max_bytes: u64,
    /// The largest item, measured as [`memcached_size`] (`-I`).
    pub item_size_max: usize,
    /// Evict to make room; when false, a store that does not fit fails (`-M` turns it off).
    pub evict: bool,
    /// Give items CAS values; when false every CAS is 0 (`-C` turns it off).
    pub cas: bool,
    /// How many shards to split the cache into; fewer are used when a shard's share of
    /// `max_bytes` could not hold the largest item.
    pub shards: usize,
}

impl Default for Config {
    /// memcached's defaults: 64 MiB, 1 MiB items, eviction and CAS on.
    fn default() -> Config {
        Config {
            max_bytes: 64 * 1024 * 1024,
            item_size_max: 1024 * 1024,
            evict: true,
            cas: true,
            shards: 16,
        }
    }
}

/// An item as a read sees it, lent to the caller's closure under the shard lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemView<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// 0 when CAS is off.
    pub cas: u64,
    pub exptime: Time,
}

/// An item lent to the closure of [`Cache::read`] under the shard lock: what it is, the state
/// it had before this read, and the changes the meta protocol makes while it answers (applied
/// when the closure returns).
#[derive(Debug)]
pub struct ItemHandle<'a> {
    item: Item<'a>,
    shared: Option<&'a Bytes>,
    exptime: Time,
    token_sent: bool,
    cas_enabled: bool,
    created: bool,
}

impl ItemHandle<'_> {
    pub fn view(&self) -> ItemView<'_> {
        let e = &self.item;
        ItemView {
            key: e.key(),
            value: e.value(),
            flags: e.flags(),
            cas: if self.cas_enabled { e.cas() } else { 0 },
            exptime: self.exptime,
        }
    }

    /// The value as a refcounted handle, for a reply that sends it without copying it: the
    /// stored bytes themselves for values of 2 KiB or more, a copy of a smaller one. The item
    /// may be replaced or removed meanwhile, the handle keeps what it took.
    pub fn shared_value(&self) -> Bytes {
        match self.shared {
            Some(shared) => shared.clone(),
            None => Bytes::copy_from_slice(self.item.value()),
        }
    }

    /// Whether the item had been read before this read (`mg h`, `me`'s `fetch`).
    pub fn fetched(&self) -> bool {
        self.item.has(FETCHED)
    }

    /// The item's last access before this read (`mg l`, `me`'s `la`). As in memcached, a
    /// store sets it and reads move it only from an item's second read on.
    pub fn last_access(&self) -> Time {
        self.item.last_access()
    }

    /// Whether this read created the item ([`ReadOptions::vivify`]).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether the item was invalidated ([`Cache::mark_stale`], or a store with
    /// [`StoreRequest::invalidate`]) and not stored since.
    pub fn stale(&self) -> bool {
        self.item.has(STALE)
    }

    /// Whether some client has already been handed the item's win token (memcached's
    /// `ITEM_TOKEN_SENT`): the one client that should refresh it has been chosen.
    pub fn token_sent(&self) -> bool {
        self.token_sent
    }

    /// Records that this client was handed the win token; later readers see
    /// [`ItemHandle::token_sent`] until the item is stored again or marked stale.
    pub fn send_token(&mut self) {
        self.token_sent = true;
    }

    /// Whether the item was stored with its key in base64 ([`StoreRequest::binary_key`]), so
    /// replies should show the key in base64 too.
    pub fn binary_key(&self) -> bool {
        self.item.has(BINARY_KEY)
    }

    pub fn set_exptime(&mut self, exptime: Time) {
        self.exptime = exptime;
    }
}

/// Why the store removed an item without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A live item, evicted to make room.
    Evicted,
    /// A dead (expired or flushed) item, reclaimed by a store that needed or swept for room
    /// (memcached's `reclaimed`).
    Reclaimed,
    /// A dead item, reclaimed by the background crawler (memcached's `crawler_reclaimed`).
    Crawled,
}

/// An item the store removed on its own: evicted to make room, or reclaimed once dead, with
/// what memcached's `watch evictions` and per-class `stats items` tell of it. Lent to the
/// [`RemovalHook`] under the shard lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed<'a> {
    pub why: Removal,
    /// A dead item that expired (not flushed).
    pub expired: bool,
    pub key: &'a [u8],
    /// Read since it was stored.
    pub fetched: bool,
    /// 0 when it had no expiry time.
    pub exptime: Time,
    pub last_access: Time,
    pub value_len: usize,
    pub flags: u32,
    /// When it was removed.
    pub now: Time,
}

/// Called for every item the store removes on its own, under the shard lock: it must be quick
/// and must not call into the cache.
pub type RemovalHook = Arc<dyn Fn(&Removed<'_>) + Send + Sync>;

/// How [`Cache::read`] treats the item it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Count the read as a fetch once the closure has returned (memcached's bump): the item is
    /// fetched from then on, and its use counts for eviction. False for reads that must leave no
    /// trace (`mg u`, `me`).
    pub bump: bool,
    /// On a miss, create an empty item (flags 0, no expiry time) and lend it to the closure,
    /// which gives it its expiry time (`mg N`). An expired or flushed item is replaced.
    pub vivify: bool,
}

/// An item's metadata, for `lru_crawler metadump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta<'a> {
    pub key: &'a [u8],
    pub exptime: Time,
    pub last_access: Time,
    /// 0 when CAS is off.
    pub cas: u64,
    /// Read (or touched) since it was stored.
    pub fetched: bool,
    pub flags: u32,
    pub value_len: usize,
    /// The item's size as memcached reports it ([`memcached_size`]).
    pub size: usize,
}

/// Where a walk over every item ([`Cache::walk_items`]) goes on: a shard and a place in its
/// queues, which stays valid whatever the store does meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemCursor {
    shard: usize,
    walk: Walk,
}

/// An item with everything a restart keeps of it: what [`Cache::export`] lends and
/// [`Cache::import`] takes. Times are the cache's rel time, which starts over in the next
/// process, so whoever stores them elsewhere converts them to wall-clock time. The CAS is not
/// kept: an imported item gets a new one, as any store does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedItem<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// 0 when the item never expires.
    pub exptime: Time,
    pub last_access: Time,
    /// Read since it was stored (`mg h`).
    pub fetched: bool,
    /// Invalidated by the meta protocol and not stored since (`mg`'s `X` flag).
    pub stale: bool,
    /// The key was sent in base64 and replies show it so.
    pub binary_key: bool,
}

/// The answer of [`Cache::import`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportResult {
    Stored,
    /// Over `item_size_max` (or a key over [`KEY_MAX_LENGTH`]).
    TooLarge,
    /// The cache has no room left for it (its shard's share, with what the other shards could
    /// lend); nothing was evicted to make some.
    NoRoom,
}

/// The answer of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<R> {
    /// What the closure returned.
    Hit(R),
    /// No item with this key.
    Miss,
    /// The item had expired; it is gone now (memcached's `get_expired`).
    Expired,
    /// The item had been flushed; it is gone now (memcached's `get_flushed`).
    Flushed,
}

impl<R> Lookup<R> {
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }

    pub fn hit(self) -> Option<R> {
        match self {
            Lookup::Hit(r) => Some(r),
            Lookup::Miss | Lookup::Expired | Lookup::Flushed => None,
        }
    }
}

/// The storage commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    /// Only when no live item has the key.
    Add,
    /// Only when a live item has the key.
    Replace,
    /// Adds to the end of the existing value, keeping its flags and expiry time.
    Append,
    /// Adds to the start of the existing value, keeping its flags and expiry time.
    Prepend,
    /// Only when the live item's CAS is this one.
    Cas(u64),
}

/// A store with everything the meta and binary protocols ask of it ([`Cache::store_item`]).
/// [`StoreRequest::new`] gives a plain one, as the text protocol's commands are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreRequest<'a> {
    pub mode: StoreMode,
    pub key: &'a [u8],
    pub flags: u32,
    pub exptime: Time,
    pub value: &'a [u8],
    /// When not 0, a live item must have this CAS or the store answers `Exists`; the compare and
    /// the store happen under one lock. Set and Replace then act as [`StoreMode::Cas`]; Append
    /// and Prepend check it before joining, and ignore it when CAS is off (memcached's items
    /// then have no CAS to compare); Add never stores over a live item anyway.
    pub compare_cas: u64,
    /// With a CAS compare, a CAS below the item's (an older token) still stores: the new item
    /// keeps the old one's expiry time and win-token state and is marked stale (`ms I`).
    pub invalidate: bool,
    /// The client sent the key in base64 (meta `b`): the item remembers it, so that replies show
    /// the key in base64. Append and Prepend build a new item that does not keep it, as
    /// memcached 1.6.18's do.
    pub binary_key: bool,
}

impl<'a> StoreRequest<'a> {
    /// A store with no CAS compare, no invalidation and a plain key.
    pub fn new(
        mode: StoreMode,
        key: &'a [u8],
        flags: u32,
        exptime: Time,
        value: &'a [u8],
    ) -> StoreRequest<'a> {
        StoreRequest {
            mode,
            key,
            flags,
            exptime,
            value,
            compare_cas: 0,
            invalidate: false,
            binary_key: false,
        }
    }
}

/// The answer of [`Cache::store_item`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOutcome {
    pub result: StoreResult,
    /// The stored item's CAS, given out by the same step that stored it; 0 when nothing was
    /// stored or CAS is off.
    pub cas: u64,
}

/// The answer of a store, named after memcached's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    Stored,
    NotStored,
    /// cas: the item changed since the client read it.
    Exists,
    /// cas: no such item.
    NotFound,
    /// Over `item_size_max` (or a key over [`KEY_MAX_LENGTH`]).
    TooLarge,
    /// No room, and eviction is off or could not free enough.
    OutOfMemory,
}

/// The answer of incr/decr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaResult {
    /// The new value.
    Value(u64),
    NotFound,
    /// The stored value is not a decimal number memcached would accept.
    NonNumeric,
    OutOfMemory,
}

/// An incr/decr with what the meta and binary protocols add to it ([`Cache::delta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaRequest {
    /// Increment (wrapping at 2^64) or decrement (stopping at 0).
    pub incr: bool,
    pub delta: u64,
    /// When not 0, a live item must have this CAS or the answer is `Exists` (memcached ignores
    /// a CAS of 0 here, unlike in a delete).
    pub compare_cas: u64,
    /// On a miss, create the counter with this value and expiry time, in the same step (binary
    /// incr's initial value, meta `ma N J`).
    pub create: Option<(u64, Time)>,
}

/// The counter after an incr/decr, lent to the closure of [`Cache::delta`] under the shard lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    value: u64,
    cas: u64,
    exptime: Time,
    created: bool,
}

impl Counter {
    /// The new value.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// The item's new CAS (0 when CAS is off).
    pub fn cas(&self) -> u64 {
        self.cas
    }

    pub fn exptime(&self) -> Time {
        self.exptime
    }

    /// Whether the counter was created by [`DeltaRequest::create`].
    pub fn created(&self) -> bool {
        self.created
    }

    /// Gives the item a new expiry time once the closure returns (meta `ma T`, `ma N`). When
    /// the new number needed more digits than the old value had, memcached 1.6.18 has already
    /// put a new item in the old one's place and sets the time on the old one: the stored item
    /// keeps its expiry time (measured: `ma` with `T` from 9 to 10 leaves the TTL unchanged,
    /// though the reply's `t` shows the new one). The cache does the same.
    pub fn set_exptime(&mut self, exptime: Time) {
        self.exptime = exptime;
    }
}

/// The answer of [`Cache::delta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutcome<R> {
    /// What the closure returned.
    Done(R),
    NotFound,
    /// The stored value is not a decimal number memcached would accept.
    NonNumeric,
    /// The item's CAS is not [`DeltaRequest::compare_cas`].
    Exists,
    OutOfMemory,
}

/// The answer of [`Cache::delete_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    Deleted,
    NotFound,
    /// The item's CAS is not the one given.
    Exists,
}

/// The answer of [`Cache::mark_stale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleResult {
    /// The item is stale now, with this new CAS (0 when CAS is off).
    Marked {
        cas: u64,
    },
    NotFound,
    /// The item's CAS is not the one given.
    Exists,
}

/// Counters and gauges, summed over shards, named after memcached's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub curr_items: u64,
    /// Successful stores since the start or the last reset.
    pub total_items: u64,
    /// Accounted bytes of the items held ([`accounted_size`]).
    pub bytes: u64,
    pub limit_maxbytes: u64,
    /// Live items removed to make room.
    pub evictions: u64,
    /// Evicted items that had never been read.
    pub evicted_unfetched: u64,
    /// Expired items removed by eviction or the crawler that had never been read.
    pub expired_unfetched: u64,
    /// Expired or flushed items removed to make room.
    pub reclaimed: u64,
    /// Expired or flushed items removed by [`Cache::crawl_expired`].
    pub crawler_reclaimed: u64,
}

/// A shard on its own cache lines, so that locking one does not slow its neighbours.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The store, shared by all worker threads (it is `Send + Sync`; wrap it in an `Arc`).
#[derive(Debug)]
pub struct Cache {
    shards: Box<[Padded]>,
    hasher: foldhash::fast::RandomState,
    item_size_max: usize,
    cas: bool,
    evict: bool,
    max_bytes: AtomicU64,
    /// Held while the shards' shares of `max_bytes` change, so that they keep adding up to it.
    shares: Mutex<()>,
    /// Where the next crawl starts, so that small budgets still reach every shard.
    crawl_start: AtomicUsize,
    /// The shards' common store sequence, which numbers the CAS values.
    sequence: Arc<AtomicU64>,
}

/// A large value in its own refcounted buffer, copied before the shard is locked so that the
/// copy is not made under the lock; `None` for a value that goes into the log, and for append
/// and prepend, which join the old value.
fn large_value(request: &StoreRequest<'_>) -> Option<Bytes> {
    match request.mode {
        StoreMode::Append | StoreMode::Prepend => None,
        _ if request.value.len() >= SHARED_MIN => Some(Bytes::copy_from_slice(request.value)),
        _ => None,
    }
}

/// The share of the limit a shard takes at most: half of what its log's locations can name, so
/// that a limit raised later (`cache_memlimit`, or borrowing under `-M`) still fits.
const SHARD_BYTES_MAX: u64 = (log::MAX_SEGMENTS * log::SEGMENT_BYTES / 2) as u64;

/// The most a shard's limit can be raised to: 7/8 of what its log's locations can name. Its
/// segments are at least 96% full (an inline item is under 2.3 KiB), so its items, dead ones
/// included, never need more segments than there are numbers.
const SHARD_LIMIT_MAX: u64 = (log::MAX_SEGMENTS * log::SEGMENT_BYTES / 8 * 7) as u64;

/// As many shards as asked for, and enough that no shard's share of the limit is over
/// [`SHARD_BYTES_MAX`] (up to 1024 shards: 2 TiB); but each must be able to hold the largest
/// item.
fn shard_count(cfg: &Config) -> usize {
    let largest = accounted_size(KEY_MAX_LENGTH, cfg.item_size_max);
    let fit = usize::try_from(cfg.max_bytes / largest).unwrap_or(usize::MAX);
    let needed = usize::try_from(cfg.max_bytes.div_ceil(SHARD_BYTES_MAX)).unwrap_or(MAX_SHARDS);
    cfg.shards.max(needed).clamp(1, MAX_SHARDS).min(fit.max(1))
}

impl Cache {
    pub fn new(cfg: Config) -> Cache {
        let count = shard_count(&cfg);
        let sequence = Arc::new(AtomicU64::new(1));
        let hasher = foldhash::fast::RandomState::default();
        let shards = (0..count)
            .map(|_| {
                Padded(Mutex::new(Shard::new(ShardConfig {
                    limit: cfg.max_bytes / count as u64,
                    item_size_max: cfg.item_size_max,
                    evict: cfg.evict,
                    cas: cfg.cas,
                    sequence: sequence.clone(),
                    hasher,
                    on_remove: None,
                })))
            })
            .collect();
        Cache {
            shards,
            hasher,
            item_size_max: cfg.item_size_max,
            cas: cfg.cas,
            evict: cfg.evict,
            max_bytes: AtomicU64::new(cfg.max_bytes),
            shares: Mutex::new(()),
            crawl_start: AtomicUsize::new(0),
            sequence,
        }
    }

    /// The bound below which every CAS handed out so far lies; a save records it.
    pub fn cas_bound(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// Hands out no CAS below `bound` from now on. A cache loaded from a save raises its bound
    /// to the saving process's before the first item is imported, so that no CAS that process
    /// handed out is handed out again: a client holding one gets `EXISTS`, never a match with
    /// another version of the item.
    pub fn raise_cas_bound(&self, bound: u64) {
        self.sequence.fetch_max(bound, Ordering::Relaxed);
    }

    /// How many shards the cache uses.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, key: &[u8]) -> (u64, &Mutex<Shard>) {
        let (hash, idx) = self.locate(key);
        (hash, &self.shards[idx].0)
    }

    /// The key's hash and the number of its shard.
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // The shard comes from the top of the low 32 bits; hashbrown indexes buckets by the
        // lowest bits and tags them with the highest, which stay independent of the shard.
        let n = self.shards.len() as u64;
        let idx = (u64::from(hash as u32) * n) >> 32;
        (hash, idx as usize)
    }

    /// [`Cache::borrow_room`] for an item with this key and value: its size with both optional
    /// fields, whichever it has.
    fn borrow_room_for(&self, target: usize, key_len: usize, value_len: usize) -> bool {
        self.borrow_room(target, accounted_size(key_len, value_len) + OPTIONAL_FIELDS)
    }

    /// A shard that cannot fit `need` bytes takes the unused part of the other shards' shares,
    /// up to `need`; the shares still add up to the limit. Returns whether any was found.
    ///
    /// Without eviction (-M) a store does this, since the memory limit is then the cache's, not
    /// a shard's: memcached refuses a store only when all of its memory is taken, and a delete
    /// anywhere makes room for the next store (with eviction on, a full shard evicts instead).
    /// A load does it either way: the keys of a saved cache spread over the shards differently
    /// in the next process, so a full cache reloaded with the same limit would otherwise lose
    /// the items of the shards that got more than their share.
    fn borrow_room(&self, target: usize, need: u64) -> bool {
        // One rebalance at a time, and none while set_max_bytes resets the shares.
        let _shares = self.shares.lock();
        // No more than the target's log can hold.
        let room = SHARD_LIMIT_MAX.saturating_sub(self.shards[target].0.lock().limit());
        let need = need.min(room);
        let mut got = 0;
        for (i, shard) in self.shards.iter().enumerate() {
            if got >= need {
                break;
            }
            if i != target {
                got += shard.0.lock().lend(need - got);
            }
        }
        if got > 0 {
            self.shards[target].0.lock().extend_limit(got);
        }
        got > 0
    }

    /// Reads an item: `f` sees it under the shard lock, so it can copy the value straight out.
    pub fn get<R>(&self, key: &[u8], now: Time, f: impl FnOnce(ItemView<'_>) -> R) -> Lookup<R> {
        self.read(key, FETCH, now, |item| f(item.view()))
    }

    /// Reads an item and sets its expiry time (gat, gats).
    pub fn get_and_touch<R>(
        &self,
        key: &[u8],
        exptime: Time,
        now: Time,
        f: impl FnOnce(ItemView<'_>) -> R,
    ) -> Lookup<R> {
        self.read(key, FETCH, now, |item| {
            item.set_exptime(exptime);
            f(item.view())
        })
    }

    /// Reads an item for the meta protocol: `f` sees the item, and its state before this read,
    /// under the shard lock, and may change its expiry time and win-token state as it answers.
    /// The read counts as a fetch only after `f` returns (when `opts.bump`), so that `f` can
    /// report whether and when the item was read before.
    pub fn read<R>(
        &self,
        key: &[u8],
        opts: ReadOptions,
        now: Time,
        f: impl FnOnce(&mut ItemHandle<'_>) -> R,
    ) -> Lookup<R> {
        let (hash, shard) = self.shard(key);
        shard.lock().read(hash, key, opts, now, f)
    }

    /// set, add, replace, append, prepend, cas. A set that fails (too large, out of memory)
    /// removes the key's old item, as memcached does, so that a stale value is not served.
    pub fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        flags: u32,
        exptime: Time,
        value: &[u8],
        now: Time,
    ) -> StoreResult {
        self.store_item(StoreRequest::new(mode, key, flags, exptime, value), now)
            .result
    }

    /// A store that may compare a CAS, invalidate and remember a base64 key, and that returns
    /// the stored item's CAS: all in one step under the shard lock, so no other client's write
    /// can come between the compare, the store and the CAS the client is told.
    pub fn store_item(&self, request: StoreRequest<'_>, now: Time) -> StoreOutcome {
        let StoreRequest {
            mode, key, value, ..
        } = request;
        if key.len() > KEY_MAX_LENGTH
            || memcached_size(key.len(), value.len(), request.flags, self.cas) > self.item_size_max
        {
            if mode == StoreMode::Set {
                self.delete(key, now);
            }
            return StoreOutcome {
                result: StoreResult::TooLarge,
                cas: 0,
            };
        }
        let (hash, idx) = self.locate(key);
        let shard = &self.shards[idx].0;
        let outcome = shard
            .lock()
            .store(hash, &request, large_value(&request), now);
        if outcome.result != StoreResult::OutOfMemory
            || self.evict
            || !self.borrow_room_for(idx, key.len(), value.len())
        {
            return outcome;
        }
        shard
            .lock()
            .store(hash, &request, large_value(&request), now)
    }

    /// Removes a live item; false when there was none.
    pub fn delete(&self, key: &[u8], now: Time) -> bool {
        self.delete_if(key, None, now) == DeleteResult::Deleted
    }

    /// Removes a live item if its CAS is `cas` (any CAS when `None`), in one step.
    pub fn delete_if(&self, key: &[u8], cas: Option<u64>, now: Time) -> DeleteResult {
        let (hash, shard) = self.shard(key);
        shard.lock().delete_if(hash, key, cas, now)
    }

    /// Marks a live item stale instead of deleting it (`md I`), if its CAS is `cas` (any CAS
    /// when `None`): it gets a new CAS, the expiry time `exptime` when given, and loses its
    /// win-token state, so that the next reader wins the token to refresh it.
    pub fn mark_stale(
        &self,
        key: &[u8],
        cas: Option<u64>,
        exptime: Option<Time>,
        now: Time,
    ) -> StaleResult {
        let (hash, shard) = self.shard(key);
        shard.lock().mark_stale(hash, key, cas, exptime, now)
    }

    /// Sets a live item's expiry time; false when there was none.
    pub fn touch(&self, key: &[u8], exptime: Time, now: Time) -> bool {
        self.read(key, FETCH, now, |item| item.set_exptime(exptime))
            .is_hit()
    }

    /// incr (`incr == true`) or decr of a decimal value: incr wraps at 2^64, decr stops at 0.
    pub fn incr_decr(&self, key: &[u8], incr: bool, delta: u64, now: Time) -> DeltaResult {
        let request = DeltaRequest {
            incr,
            delta,
            compare_cas: 0,
            create: None,
        };
        match self.delta(key, request, now, |counter| counter.value()) {
            DeltaOutcome::Done(value) => DeltaResult::Value(value),
            DeltaOutcome::NotFound => DeltaResult::NotFound,
            DeltaOutcome::NonNumeric => DeltaResult::NonNumeric,
            DeltaOutcome::OutOfMemory => DeltaResult::OutOfMemory,
            DeltaOutcome::Exists => unreachable!("a delta without a CAS compare never conflicts"),
        }
    }

    /// incr/decr with a CAS compare and creation on a miss, in one step under the shard lock;
    /// `f` sees the new value, CAS and expiry time, and may set the expiry time.
    pub fn delta<R>(
        &self,
        key: &[u8],
        request: DeltaRequest,
        now: Time,
        f: impl FnOnce(&mut Counter) -> R,
    ) -> DeltaOutcome<R> {
        let (hash, idx) = self.locate(key);
        let shard = &self.shards[idx].0;
        // A shard calls the closure only for a delta it has done, never before answering
        // OutOfMemory, so the closure is still there for the retry after borrowing room.
        let mut f = Some(f);
        let mut once = |counter: &mut Counter| (f.take().expect("one delta is done"))(counter);
        let outcome = shard.lock().delta(hash, key, request, now, &mut once);
        if !matches!(outcome, DeltaOutcome::OutOfMemory)
            || self.evict
            || !self.borrow_room_for(idx, key.len(), numeric::MAX_DIGITS)
        {
            return outcome;
        }
        shard.lock().delta(hash, key, request, now, &mut once)
    }

    /// flush_all: every item stored before `at` is invalid once `now >= at`; `at <= now` flushes
    /// at once. Flushed items are freed lazily (on access, eviction or crawl).
    pub fn flush_all(&self, at: Time, now: Time) {
        for shard in self.shards.iter() {
            shard.0.lock().flush_all(at, now);
        }
    }

    /// Frees up to `budget` expired or flushed items and returns how many it freed (the
    /// background crawler, memcached's `crawler_reclaimed`). A shard in which no item can have
    /// expired (no expiry time has come since its last pass, no flush) costs nothing; in the
    /// others each call looks at up to a sixtieth of their items (at least [`CRAWL_BATCH`]),
    /// going on where the last call stopped, locking a shard for one batch at a time. Called
    /// every second, it frees an item within a second of its expiry in a cache of a few
    /// thousand items a shard, and within a minute in any.
    pub fn crawl_expired(&self, now: Time, budget: usize) -> usize {
        let n = self.shards.len();
        let start = self.crawl_start.fetch_add(1, Ordering::Relaxed) % n;
        let mut reclaimed = 0;
        for k in 0..n {
            let shard = &self.shards[(start + k) % n].0;
            let share = (shard.lock().slots() / 60).max(CRAWL_BATCH);
            let mut scanned = 0;
            while scanned < share && reclaimed < budget {
                let (freed, over) = shard.lock().crawl(now, budget - reclaimed, CRAWL_BATCH);
                reclaimed += freed;
                scanned += CRAWL_BATCH;
                if over {
                    break;
                }
            }
            if reclaimed >= budget {
                break;
            }
        }
        reclaimed
    }

    /// Calls `f` for every live item (`stats items`, `stats slabs`). Metadata is copied out in
    /// small batches, so no lock is held while `f` runs; items stored or removed during the
    /// walk may or may not be seen, and one the store moved meanwhile may be seen twice.
    pub fn for_each_item(&self, now: Time, mut f: impl FnMut(ItemMeta<'_>)) {
        let mut cursor = ItemCursor::default();
        while self.walk_items(now, &mut cursor, &mut f) {}
    }

    /// One step of the walk [`Cache::for_each_item`] makes: calls `f` for the live items of
    /// one small batch from `cursor` on and moves `cursor` past them. False once the walk is
    /// over. The cursor holds no lock and no memory, so a caller can stop between steps for as
    /// long as it likes (a `lru_crawler metadump` waits for its client to read) and go on.
    pub fn walk_items(
        &self,
        now: Time,
        cursor: &mut ItemCursor,
        mut f: impl FnMut(ItemMeta<'_>),
    ) -> bool {
        let Some(shard) = self.shards.get(cursor.shard) else {
            return false;
        };
        let mut batch = MetaBatch::default();
        let next = shard
            .0
            .lock()
            .collect_meta(now, cursor.walk, META_BATCH, META_SCAN, &mut batch);
        match next {
            Some(walk) => cursor.walk = walk,
            None => {
                cursor.shard += 1;
                cursor.walk = Walk::default();
            }
        }
        batch.items().for_each(&mut f);
        cursor.shard < self.shards.len()
    }

    /// Calls `f` with every live item, whole, until `f` fails (to save the cache). Items are
    /// copied out of a shard in batches of a few hundred kilobytes, so no lock is held while `f`
    /// runs and clients wait at most one batch's copy; items stored or removed during the walk
    /// may or may not be seen, and each one seen is as it was when its batch was copied. Every
    /// item there throughout is seen: once, or twice when the store moved it meanwhile (the
    /// later copy is the newer, and an import keeps the later).
    pub fn export<E>(
        &self,
        now: Time,
        mut f: impl FnMut(&SavedItem<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut batch = ItemBatch::default();
        for shard in self.shards.iter() {
            let mut from = Some(Walk::default());
            while let Some(pos) = from {
                batch.clear();
                from = shard.0.lock().collect_items(
                    now,
                    pos,
                    META_BATCH,
                    EXPORT_BATCH_BYTES,
                    META_SCAN,
                    &mut batch,
                );
                for item in batch.items() {
                    f(&item)?;
                }
            }
        }
        Ok(())
    }

    /// Puts back an item that [`Cache::export`] lent (to load a saved cache): as a set that
    /// keeps the item's access time and meta state and gets a new CAS. When the item's shard is
    /// full it borrows the other shards' unused room, with eviction on too (see
    /// [`Cache::borrow_room`]), so every item fits that fitted in the limit before; when the
    /// whole cache is full the item is refused rather than another evicted, so the items loaded
    /// first are the ones kept.
    pub fn import(&self, item: &SavedItem<'_>, now: Time) -> ImportResult {
        if item.key.len() > KEY_MAX_LENGTH
            || memcached_size(item.key.len(), item.value.len(), item.flags, self.cas)
                > self.item_size_max
        {
            return ImportResult::TooLarge;
        }
        let (hash, idx) = self.locate(item.key);
        let shard = &self.shards[idx].0;
        let result = shard.lock().import(hash, item, now);
        if result != ImportResult::NoRoom
            || !self.borrow_room_for(idx, item.key.len(), item.value.len())
        {
            return result;
        }
        shard.lock().import(hash, item, now)
    }

    /// Drops every item (a load that found the file corrupt starts over empty).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.0.lock().clear();
        }
    }

    /// Changes the memory limit (cache_memlimit). A smaller limit evicts at once when eviction
    /// is on; otherwise stores fail until deletes and expiry bring the items under it.
    pub fn set_max_bytes(&self, bytes: u64) {
        let _shares = self.shares.lock();
        // A shard's log can hold no more than SHARD_LIMIT_MAX, whatever the limit asked for.
        let n = self.shards.len() as u64;
        let per_shard = (bytes / n).min(SHARD_LIMIT_MAX);
        let bytes = bytes.min(SHARD_LIMIT_MAX * n);
        self.max_bytes.store(bytes, Ordering::Relaxed);
        for shard in self.shards.iter() {
            shard.0.lock().set_limit(per_shard);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            limit_maxbytes: self.max_bytes.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            shard.0.lock().add_stats(&mut stats);
        }
        stats
    }

    /// Calls `hook` for every item evicted or reclaimed from now on (for `watch evictions` and
    /// the per-class counts of `stats items`).
    pub fn set_removal_hook(&self, hook: RemovalHook) {
        for shard in self.shards.iter() {
            shard.0.lock().set_removal_hook(hook.clone());
        }
    }

    /// `stats reset`: clears the counters, not the gauges (items, bytes).
    pub fn reset_stats(&self) {
        for shard in self.shards.iter() {
            shard.0.lock().reset_stats();
        }
    }
}

#[cfg(test)]
impl Cache {
    /// Checks every shard's internal consistency.
    pub(crate) fn check(&self) {
        let mut limits = 0;
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            shard.check();
            limits += shard.limit();
        }
        let n = self.shards.len() as u64;
        assert_eq!(limits, self.max_bytes.load(Ordering::Relaxed) / n * n);
    }
}
