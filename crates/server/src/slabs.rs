//! memcached's slab classes, as a way of describing items by size.
//!
//! keepcached stores each item in an allocation of its own size and has no slab classes. But
//! operators' tools (memcached-tool, phpMemcachedAdmin, memcached_exporter) and the proxy's
//! warm-up read memcached's per-class views: `stats items`, `stats slabs`, the `cls=` of
//! `lru_crawler metadump` and its class filter. So the server computes the classes memcached
//! would have with the same `-f`, `-n` and `-I`, puts each item in the class memcached would
//! put it in (by its memcached-accounted size), and reports per class what it holds there.
//! docs/stats.md says which fields are real and which are memcached's equivalents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use keepcached_cache::{ItemCursor, ItemMeta, Removal, Removed};

/// memcached's size of its item header, to which `-n` is added for the first class.
const ITEM_HEADER: u32 = 48;
/// Chunk sizes are multiples of this.
const CHUNK_ALIGN: u32 = 8;
/// memcached's slab page: the memory a class grows by.
pub const PAGE_SIZE: u32 = 1024 * 1024;
/// The largest chunk (half a page); bigger items are chained chunks in memcached, reported in
/// the largest class.
const CHUNK_MAX: u32 = PAGE_SIZE / 2;
/// memcached's classes are numbered 1 to 63.
const MAX_CLASSES: usize = 63;

/// The chunk size of each class; class `id` is `sizes[id - 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlabClasses {
    sizes: Vec<u32>,
}

impl SlabClasses {
    /// The classes memcached 1.6 makes from `-f factor`, `-n min_size` and `-I item_size_max`.
    pub fn new(factor: f64, min_size: u32, item_size_max: usize) -> SlabClasses {
        let chunk_max = u32::try_from(item_size_max).map_or(CHUNK_MAX, |max| max.min(CHUNK_MAX));
        let mut sizes = Vec::new();
        let mut size = ITEM_HEADER.saturating_add(min_size);
        while sizes.len() < MAX_CLASSES - 1 && f64::from(size) < f64::from(chunk_max) / factor {
            size = size.next_multiple_of(CHUNK_ALIGN);
            sizes.push(size);
            // memcached multiplies in floating point and truncates to an integer.
            size = (f64::from(size) * factor) as u32;
        }
        sizes.push(chunk_max);
        SlabClasses { sizes }
    }

    /// The class of an item of `size` bytes (memcached's accounting): the first whose chunks
    /// hold it, or the largest.
    pub fn class_of(&self, size: usize) -> u8 {
        let index = self
            .sizes
            .partition_point(|&chunk| (chunk as usize) < size)
            .min(self.sizes.len() - 1);
        index as u8 + 1
    }

    /// How many classes there are: ids run from 1 to this.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    pub fn chunk_size(&self, class: u8) -> u32 {
        self.sizes[usize::from(class) - 1]
    }

    pub fn chunks_per_page(&self, class: u8) -> u32 {
        PAGE_SIZE / self.chunk_size(class)
    }
}

/// What a walk over the items found in one class.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClassUse {
    pub items: u64,
    /// Sum of the items' memcached-accounted sizes (memcached's `mem_requested`).
    pub bytes: u64,
    /// Server time of the least recent access among them.
    pub oldest_access: u32,
}

/// Items per class, from one walk over the store.
pub fn census(server: &crate::Server) -> BTreeMap<u8, ClassUse> {
    let mut census = Census::default();
    while !census.step(server, usize::MAX) {}
    census.found
}

/// A walk over the store counting items per class, made a few batches at a time: a connection
/// answering `stats items` or `stats slabs` lets the other connections of its worker run
/// between steps, so a cache of millions of items (about 0.1 s of walking per million) does not
/// stall them while a monitoring tool polls.
#[derive(Debug, Default)]
pub struct Census {
    cursor: ItemCursor,
    pub found: BTreeMap<u8, ClassUse>,
}

impl Census {
    /// Whether part of the walk is done.
    pub fn started(&self) -> bool {
        self.cursor != ItemCursor::default()
    }

    /// Walks up to `batches` of the store's batches, counting; true once the walk is over.
    pub fn step(&mut self, server: &crate::Server, batches: usize) -> bool {
        let classes = &server.slab_classes;
        let found = &mut self.found;
        walk_steps(server, &mut self.cursor, batches, |item| {
            let class = found.entry(classes.class_of(item.size)).or_default();
            class.oldest_access = match class.items {
                0 => item.last_access,
                _ => class.oldest_access.min(item.last_access),
            };
            class.items += 1;
            class.bytes += item.size as u64;
        })
    }

    /// Walks up to `batches` of the store's batches with `f` instead of counting (another
    /// walking `stats`, which keeps its own tally); true once the walk is over.
    pub fn walk(
        &mut self,
        server: &crate::Server,
        batches: usize,
        f: impl FnMut(ItemMeta<'_>),
    ) -> bool {
        walk_steps(server, &mut self.cursor, batches, f)
    }
}

/// Up to `batches` steps of the store's walk from `cursor`; true once the walk is over.
fn walk_steps(
    server: &crate::Server,
    cursor: &mut ItemCursor,
    batches: usize,
    mut f: impl FnMut(ItemMeta<'_>),
) -> bool {
    let now = server.clock.now();
    for _ in 0..batches {
        if !server.cache.walk_items(now, cursor, &mut f) {
            return true;
        }
    }
    false
}

/// Evictions and reclaims per class, for the event fields of `stats items` (memcached-tool's
/// `Evicted` and `Evict_Time` columns, exporters' per-slab counters): counted by the store's
/// removal hook, by the class memcached would have kept the item in.
#[derive(Debug)]
pub struct ClassEvents {
    classes: [ClassCounters; 64],
}

impl Default for ClassEvents {
    fn default() -> ClassEvents {
        ClassEvents {
            classes: std::array::from_fn(|_| ClassCounters::default()),
        }
    }
}

#[derive(Debug, Default)]
struct ClassCounters {
    evicted: AtomicU64,
    /// Of those, items that had an expiry time.
    evicted_nonzero: AtomicU64,
    /// Of those, items never read.
    evicted_unfetched: AtomicU64,
    /// Seconds since the last access of the last one evicted.
    evicted_time: AtomicU32,
    /// Dead items reclaimed by a store, and by the crawler.
    reclaimed: AtomicU64,
    crawler_reclaimed: AtomicU64,
    /// Reclaimed items that expired without ever being read.
    expired_unfetched: AtomicU64,
}

/// What [`ClassEvents::of`] reports for a class.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClassEventCounts {
    pub evicted: u64,
    pub evicted_nonzero: u64,
    pub evicted_unfetched: u64,
    pub evicted_time: u32,
    pub reclaimed: u64,
    pub crawler_reclaimed: u64,
    pub expired_unfetched: u64,
}

impl ClassEvents {
    pub fn count(&self, class: u8, e: &Removed<'_>) {
        let c = &self.classes[usize::from(class) % 64];
        let add = |counter: &AtomicU64, yes: bool| {
            counter.fetch_add(u64::from(yes), Ordering::Relaxed);
        };
        match e.why {
            Removal::Evicted => {
                add(&c.evicted, true);
                add(&c.evicted_nonzero, e.exptime != 0);
                add(&c.evicted_unfetched, !e.fetched);
                c.evicted_time
                    .store(e.now.saturating_sub(e.last_access), Ordering::Relaxed);
            }
            Removal::Reclaimed | Removal::Crawled => {
                let counter = if e.why == Removal::Crawled {
                    &c.crawler_reclaimed
                } else {
                    &c.reclaimed
                };
                add(counter, true);
                add(&c.expired_unfetched, e.expired && !e.fetched);
            }
        }
    }

    pub fn of(&self, class: u8) -> ClassEventCounts {
        let c = &self.classes[usize::from(class) % 64];
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClassEventCounts {
            evicted: get(&c.evicted),
            evicted_nonzero: get(&c.evicted_nonzero),
            evicted_unfetched: get(&c.evicted_unfetched),
            evicted_time: c.evicted_time.load(Ordering::Relaxed),
            reclaimed: get(&c.reclaimed),
            crawler_reclaimed: get(&c.crawler_reclaimed),
            expired_unfetched: get(&c.expired_unfetched),
        }
    }

    /// `stats reset`.
    pub fn reset(&self) {
        for c in &self.classes {
            for counter in [
                &c.evicted,
                &c.evicted_nonzero,
                &c.evicted_unfetched,
                &c.reclaimed,
                &c.crawler_reclaimed,
                &c.expired_unfetched,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
            c.evicted_time.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcached_default_classes() {
        // What `memcached -vv` 1.6.18 prints at start with default flags.
        let classes = SlabClasses::new(1.25, 48, 1024 * 1024);
        assert_eq!(classes.sizes.len(), 39);
        assert_eq!(&classes.sizes[..6], &[96, 120, 152, 192, 240, 304]);
        assert_eq!(classes.chunk_size(17), 3632);
        assert_eq!(classes.chunk_size(38), 394_840);
        assert_eq!(classes.chunk_size(39), 524_288);
        assert_eq!(classes.chunks_per_page(1), 10922);
        assert_eq!(classes.class_of(61), 1);
        assert_eq!(classes.class_of(96), 1);
        assert_eq!(classes.class_of(97), 2);
        assert_eq!(classes.class_of(3062), 17);
        assert_eq!(classes.class_of(600_062), 39);
    }

    #[test]
    fn memcached_classes_with_flags() {
        // `memcached -vv -f 2 -n 100`.
        let classes = SlabClasses::new(2.0, 100, 1024 * 1024);
        assert_eq!(
            classes.sizes,
            [152, 304, 608, 1216, 2432, 4864, 9728, 19456, 38912, 77824, 155_648, 524_288]
        );
        // `-f 1.01`: the size never grows past its alignment; memcached stops at 63 classes.
        let classes = SlabClasses::new(1.01, 48, 1024 * 1024);
        assert_eq!(classes.sizes.len(), 63);
        assert_eq!(classes.chunk_size(62), 96);
        assert_eq!(classes.chunk_size(63), 524_288);
    }
}
