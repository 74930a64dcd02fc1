//! Which item leaves when a shard needs room: S3-FIFO (Yang et al., SOSP 2023).
//!
//! New items enter a small FIFO queue that holds about a tenth of the shard's bytes. When the
//! small queue is over its share, its oldest item leaves: to the main queue if it was used while
//! it waited, otherwise out of the cache, its key's fingerprint kept in a ghost table. A key that
//! comes back while its fingerprint is still there skips the small queue. The main queue is a
//! CLOCK: its oldest item goes back to the head while its 2-bit use counter is above zero, one
//! count per pass. So one-hit items leave quickly and an item read recently outlives a burst of
//! writes, where LRU would let the burst push it out.
//!
//! The queues are doubly linked through the entries' `prev`/`next` slot numbers (no allocation
//! per item); the ghost is a table of 16-bit fingerprints indexed by hash, with about one slot per
//! item, where a newer fingerprint overwrites an older one.
//!
//! The policy only orders items and picks victims; the shard removes them and keeps the stats.

use crate::arena::{Arena, Entry, NIL};
use crate::size::accounted_size;

/// The small queue's share of the shard's limit, in tenths as in the paper.
const SMALL_SHARE_DIVISOR: u64 = 10;

/// How many items from each queue's tail are searched for a dead one when eviction is off.
const DEAD_SEARCH_DEPTH: usize = 64;

/// How many items from a queue's tail are searched for a dead one before a live one is evicted
/// (memcached searches 5).
const DEAD_PEEK: usize = 5;

const GHOST_MIN_SLOTS: usize = 64;

fn entry_bytes(e: &Entry) -> u64 {
    accounted_size(e.key_len(), e.value().len())
}

/// One FIFO queue: the head is the newest item, the tail the oldest.
#[derive(Debug)]
struct List {
    head: u32,
    tail: u32,
    len: u32,
    bytes: u64,
}

impl List {
    const fn new() -> List {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
            bytes: 0,
        }
    }

    fn push_head(&mut self, arena: &mut Arena, idx: u32) {
        let old_head = self.head;
        let e = &mut arena[idx];
        e.prev = NIL;
        e.next = old_head;
        self.bytes += entry_bytes(e);
        if old_head == NIL {
            self.tail = idx;
        } else {
            arena[old_head].prev = idx;
        }
        self.head = idx;
        self.len += 1;
    }

    fn unlink(&mut self, arena: &mut Arena, idx: u32) {
        let e = &arena[idx];
        let (prev, next) = (e.prev, e.next);
        self.bytes -= entry_bytes(e);
        if prev == NIL {
            self.head = next;
        } else {
            arena[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            arena[next].prev = prev;
        }
        self.len -= 1;
    }

    /// The first of the `depth` oldest items, `protect` aside, that `is_dead`.
    fn scan_from_tail(
        &self,
        arena: &Arena,
        depth: usize,
        protect: u32,
        is_dead: impl Fn(&Entry) -> bool,
    ) -> Option<u32> {
        let mut idx = self.tail;
        for _ in 0..depth {
            if idx == NIL {
                return None;
            }
            let e = &arena[idx];
            if idx != protect && is_dead(e) {
                return Some(idx);
            }
            idx = e.prev;
        }
        None
    }

    /// Whether the queue has an item other than `protect` to offer.
    fn has_victim(&self, protect: u32) -> bool {
        self.len > 1 || (self.len == 1 && self.tail != protect)
    }
}

/// Remembers keys recently evicted from the small queue, by fingerprint.
#[derive(Debug)]
struct Ghost {
    slots: Vec<u16>,
}

impl Ghost {
    fn new() -> Ghost {
        Ghost {
            slots: vec![0; GHOST_MIN_SLOTS],
        }
    }

    // The slot comes from the high half of the hash and the fingerprint from its low 16 bits, so
    // they are independent of each other and of the bits that chose the shard.
    fn slot(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.slots.len() - 1)
    }

    fn fingerprint(hash: u64) -> u16 {
        (hash as u16).max(1)
    }

    fn insert(&mut self, hash: u64) {
        let slot = self.slot(hash);
        self.slots[slot] = Self::fingerprint(hash);
    }

    fn contains(&self, hash: u64) -> bool {
        self.slots[self.slot(hash)] == Self::fingerprint(hash)
    }

    /// Keeps at least one slot per item. Doubling copies every slot to both of its possible new
    /// places, so nothing remembered is lost.
    fn fit(&mut self, items: usize) {
        while self.slots.len() < items {
            self.slots.extend_from_within(..);
        }
    }
}

/// An item the policy has chosen to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) idx: u32,
    /// It left from the small queue, so its key goes to the ghost if it is evicted.
    pub(crate) from_small: bool,
}

/// The S3-FIFO state of one shard.
#[derive(Debug)]
pub(crate) struct S3Fifo {
    small: List,
    main: List,
    ghost: Ghost,
}

impl S3Fifo {
    pub(crate) fn new() -> S3Fifo {
        S3Fifo {
            small: List::new(),
            main: List::new(),
            ghost: Ghost::new(),
        }
    }

    /// Queues a new item: in the main queue if its key was evicted recently, else in the small one.
    pub(crate) fn admit(&mut self, arena: &mut Arena, idx: u32, hash: u64, items: usize) {
        self.ghost.fit(items);
        let main = self.ghost.contains(hash);
        arena[idx].set_in_main(main);
        self.list(main).push_head(arena, idx);
    }

    /// Takes an item out of its queue; call before it leaves the arena.
    pub(crate) fn remove(&mut self, arena: &mut Arena, idx: u32) {
        self.list(arena[idx].in_main()).unlink(arena, idx);
    }

    /// Keeps the queue's byte count right when an item's size changes in place.
    pub(crate) fn resized(&mut self, arena: &Arena, idx: u32, old_bytes: u64) {
        let e = &arena[idx];
        let list = self.list(e.in_main());
        list.bytes = list.bytes - old_bytes + entry_bytes(e);
    }

    /// Remembers the key of an item evicted from the small queue.
    pub(crate) fn evicted(&mut self, victim: Victim, hash: u64) {
        if victim.from_small {
            self.ghost.insert(hash);
        }
    }

    fn list(&mut self, main: bool) -> &mut List {
        if main {
            &mut self.main
        } else {
            &mut self.small
        }
    }

    /// The next item to remove to make room in a shard of `limit` bytes, never `protect`. A dead
    /// item (`is_dead`) at a tail is returned at once; items used since their last pass are moved
    /// on as S3-FIFO says. `None` when no item but `protect` is left.
    pub(crate) fn victim(
        &mut self,
        arena: &mut Arena,
        limit: u64,
        protect: u32,
        is_dead: impl Fn(&Entry) -> bool,
    ) -> Option<Victim> {
        let small_target = limit / SMALL_SHARE_DIVISOR;
        loop {
            let from_small = match (
                self.small.has_victim(protect),
                self.main.has_victim(protect),
            ) {
                (false, false) => return None,
                (true, false) => true,
                (false, true) => false,
                (true, true) => self.small.bytes > small_target,
            };
            let list = self.list(!from_small);
            let idx = list.tail;
            if idx == protect {
                list.unlink(arena, idx);
                list.push_head(arena, idx);
                continue;
            }
            let e = &mut arena[idx];
            if is_dead(e) {
                return Some(Victim { idx, from_small });
            }
            let freq = e.freq();
            if freq == 0 {
                // As memcached does at its LRU tail, prefer a dead item close by to a live one.
                let dead = self
                    .list(!from_small)
                    .scan_from_tail(arena, DEAD_PEEK, protect, &is_dead);
                return Some(Victim {
                    idx: dead.unwrap_or(idx),
                    from_small,
                });
            }
            if from_small {
                e.set_freq(0);
                e.set_in_main(true);
                self.small.unlink(arena, idx);
                self.main.push_head(arena, idx);
            } else {
                e.set_freq(freq - 1);
                self.main.unlink(arena, idx);
                self.main.push_head(arena, idx);
            }
        }
    }

    /// A dead item near the tail of either queue, for a shard that may not evict live items.
    pub(crate) fn dead_near_tail(
        &self,
        arena: &Arena,
        protect: u32,
        is_dead: impl Fn(&Entry) -> bool,
    ) -> Option<Victim> {
        [(&self.small, true), (&self.main, false)]
            .into_iter()
            .find_map(|(list, from_small)| {
                let idx = list.scan_from_tail(arena, DEAD_SEARCH_DEPTH, protect, &is_dead)?;
                Some(Victim { idx, from_small })
            })
    }
}

#[cfg(test)]
impl S3Fifo {
    /// Walks both queues, checks their links and counts, and returns (items, bytes).
    pub(crate) fn check(&self, arena: &Arena) -> (usize, u64) {
        let mut items = 0;
        let mut bytes = 0;
        for (list, main) in [(&self.small, false), (&self.main, true)] {
            let (mut idx, mut prev, mut len, mut sum) = (list.head, NIL, 0, 0);
            while idx != NIL {
                let e = &arena[idx];
                assert!(e.occupied() && e.in_main() == main && e.prev == prev);
                sum += entry_bytes(e);
                len += 1;
                prev = idx;
                idx = e.next;
            }
            assert_eq!((list.tail, list.len, list.bytes), (prev, len, sum));
            items += len as usize;
            bytes += sum;
        }
        (items, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Data;

    fn add(arena: &mut Arena, policy: &mut S3Fifo, n: u32, hash: u64) -> u32 {
        let data = Data::new(bytes::Bytes::copy_from_slice(&n.to_le_bytes()), 4);
        let idx = arena
            .insert(Entry::new(data, 4, 0, 0, u64::from(n), 0))
            .unwrap();
        policy.admit(arena, idx, hash, idx as usize + 1);
        idx
    }

    /// Removes victims until `count` are gone, returning their slots in order.
    fn evict(arena: &mut Arena, policy: &mut S3Fifo, limit: u64, count: usize) -> Vec<u32> {
        (0..count)
            .map(|_| {
                let v = policy.victim(arena, limit, NIL, |_| false).unwrap();
                policy.remove(arena, v.idx);
                policy.evicted(v, u64::from(v.idx) << 32 | 0xbeef);
                arena.remove(v.idx);
                v.idx
            })
            .collect()
    }

    fn walk(arena: &Arena, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut idx = list.head;
        while idx != NIL {
            out.push(idx);
            idx = arena[idx].next;
        }
        out
    }

    #[test]
    fn unused_items_leave_in_insertion_order() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        for n in 0..10 {
            add(&mut arena, &mut policy, n, u64::from(n));
        }
        assert_eq!(walk(&arena, &policy.small), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(evict(&mut arena, &mut policy, 0, 3), [0, 1, 2]);
    }

    #[test]
    fn a_used_small_item_moves_to_main_and_survives() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        for n in 0..10 {
            add(&mut arena, &mut policy, n, u64::from(n));
        }
        arena[1].bump(1);
        assert_eq!(evict(&mut arena, &mut policy, 0, 3), [0, 2, 3]);
        assert_eq!(walk(&arena, &policy.main), [1]);
        assert!(arena[1].in_main() && arena[1].freq() == 0);
    }

    #[test]
    fn main_is_a_clock_over_use_counts() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        for n in 0..4 {
            add(&mut arena, &mut policy, n, u64::from(n));
            arena[n].bump(0);
        }
        arena[0].bump(0);
        // With no room for a small queue, all four move to main (their counts reset), and the
        // oldest of main is the first victim; a use then buys it one more pass.
        let limit = 0;
        let v = policy.victim(&mut arena, limit, NIL, |_| false).unwrap();
        assert_eq!(
            v,
            Victim {
                idx: 0,
                from_small: false
            }
        );
        assert_eq!(walk(&arena, &policy.main), [3, 2, 1, 0]);
        arena[0].bump(0);
        let v = policy.victim(&mut arena, limit, NIL, |_| false).unwrap();
        assert_eq!(v.idx, 1);
        assert_eq!(walk(&arena, &policy.main), [0, 3, 2, 1]);
    }

    #[test]
    fn a_key_evicted_from_small_comes_back_into_main() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        let hash = 7 << 32 | 0x1234;
        let idx = add(&mut arena, &mut policy, 1, hash);
        let v = policy.victim(&mut arena, 0, NIL, |_| false).unwrap();
        assert_eq!(
            v,
            Victim {
                idx,
                from_small: true
            }
        );
        policy.remove(&mut arena, idx);
        policy.evicted(v, hash);
        arena.remove(idx);
        let again = add(&mut arena, &mut policy, 1, hash);
        assert!(arena[again].in_main());
        let other = add(&mut arena, &mut policy, 2, 8 << 32 | 0x1234);
        assert!(!arena[other].in_main());
    }

    #[test]
    fn dead_items_are_taken_first_and_protect_is_never_taken() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        for n in 0..5 {
            add(&mut arena, &mut policy, n, u64::from(n));
        }
        let dead = |e: &Entry| e.cas == 3;
        // The oldest item is live and unused, but a dead one is close behind it.
        assert_eq!(policy.victim(&mut arena, 0, NIL, dead).unwrap().idx, 3);
        assert_eq!(policy.victim(&mut arena, 0, 3, dead).unwrap().idx, 0);
        assert_eq!(policy.victim(&mut arena, 0, 0, |_| false).unwrap().idx, 1);
        assert_eq!(policy.dead_near_tail(&arena, NIL, dead).unwrap().idx, 3);
        assert_eq!(policy.dead_near_tail(&arena, 3, dead), None);

        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        let only = add(&mut arena, &mut policy, 0, 0);
        assert_eq!(policy.victim(&mut arena, 0, only, |_| false), None);
    }

    #[test]
    fn byte_counts_follow_moves_and_resizes() {
        let (mut arena, mut policy) = (Arena::new(), S3Fifo::new());
        let a = add(&mut arena, &mut policy, 0, 0);
        let b = add(&mut arena, &mut policy, 1, 1);
        let each = entry_bytes(&arena[a]);
        assert_eq!(policy.small.bytes, 2 * each);
        arena[a].bump(0);
        policy.victim(&mut arena, 0, b, |_| false);
        assert_eq!((policy.small.bytes, policy.main.bytes), (each, each));
        let old = entry_bytes(&arena[a]);
        let mut big = arena[a].key().to_vec();
        big.resize(1000, b'x');
        arena[a].replace_data(big.into());
        policy.resized(&arena, a, old);
        assert_eq!(policy.main.bytes, entry_bytes(&arena[a]));
        policy.remove(&mut arena, a);
        policy.remove(&mut arena, b);
        assert_eq!((policy.small.bytes, policy.main.bytes), (0, 0));
        assert_eq!((policy.small.len, policy.main.len), (0, 0));
    }

    #[test]
    fn ghost_growth_keeps_what_it_remembers() {
        let mut ghost = Ghost::new();
        let hashes: Vec<u64> = (0..40u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &h in &hashes {
            ghost.insert(h);
        }
        let before: Vec<bool> = hashes.iter().map(|&h| ghost.contains(h)).collect();
        ghost.fit(1000);
        assert!(ghost.slots.len() >= 1000);
        let after: Vec<bool> = hashes.iter().map(|&h| ghost.contains(h)).collect();
        assert_eq!(before, after);
    }
}
