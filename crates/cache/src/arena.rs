//! Where a shard's items live: a slot arena of compact entries named by `u32` indices.
//!
//! The index, the eviction queues and the free list all refer to items by slot number, so an item
//! costs one 48-byte entry plus one heap allocation holding its key and value, and no pointers.
//!
//! The key and value share one exact-size allocation that the entry owns alone (a 16-byte boxed
//! slice): no reference count and no second pointer per item. Values of [`SHARED_MIN`] bytes or
//! more are kept refcounted instead (a boxed `Bytes`, in the same 16 bytes: the enum uses the
//! boxed slice's non-null pointer as its tag), so that a reply sends a large value without
//! copying it and a slow reader pins that value, not a copy per request. Smaller values are
//! copied into replies anyway, which costs less than a reference.
//! Slots come in fixed-size chunks: growing never moves existing entries nor copies them, and the
//! unused tail of the arena is under one chunk. Freed slots are reused before the arena grows.

use std::ops::{Index, IndexMut};

use bytes::{Bytes, BytesMut};

use crate::Time;

/// "No slot": the end of a list.
pub(crate) const NIL: u32 = u32::MAX;

const CHUNK_BITS: u32 = 10;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;

const OCCUPIED: u8 = 1;
const FETCHED: u8 = 1 << 1;
const IN_MAIN: u8 = 1 << 2;
const FREQ_SHIFT: u8 = 3;
const FREQ_MASK: u8 = 0b11 << FREQ_SHIFT;
/// The meta protocol's per-item state (memcached's `ITEM_STALE`, `ITEM_TOKEN_SENT` and
/// `ITEM_KEY_BINARY`), in the byte's last three bits so the entry does not grow.
const STALE: u8 = 1 << 5;
const TOKEN_SENT: u8 = 1 << 6;
const BINARY_KEY: u8 = 1 << 7;
/// The frequency counter saturates here (two bits, as in S3-FIFO).
pub(crate) const FREQ_MAX: u8 = 3;

/// Values at least this long are stored refcounted ([`Data::Shared`]): the server's splice
/// threshold, from which on it sends values by reference; it copies shorter ones into replies,
/// so a reference count for them would only cost an allocation per store.
pub(crate) const SHARED_MIN: usize = 8 * 1024;

/// An item's key followed by its value.
#[derive(Debug)]
pub(crate) enum Data {
    /// Owned by the entry alone, in one allocation of exactly the key and value.
    Owned(Box<[u8]>),
    /// Refcounted, for values of [`SHARED_MIN`] bytes or more: a reader holding the value keeps
    /// it alive, not the slot.
    Shared(Box<Bytes>),
}

impl Data {
    /// Takes over `data`, built from an exact-size `Vec` (no copy: the allocation is unique).
    pub(crate) fn new(data: Bytes, key_len: usize) -> Data {
        if data.len() - key_len >= SHARED_MIN {
            Data::Shared(Box::new(data))
        } else {
            Data::Owned(Vec::from(data).into_boxed_slice())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Data::Owned(data) => data,
            Data::Shared(data) => data,
        }
    }
}

/// One item, or a free slot when not occupied (then `next` links the free list).
#[derive(Debug)]
pub(crate) struct Entry {
    /// The key followed by the value.
    data: Data,
    /// The shard-unique sequence of the last store; doubles as the CAS value.
    pub(crate) cas: u64,
    pub(crate) exptime: Time,
    pub(crate) flags: u32,
    /// The last access (store, read, touch), in rel seconds.
    pub(crate) last_access: Time,
    /// Neighbours in the eviction queue (towards the head, towards the tail).
    pub(crate) prev: u32,
    pub(crate) next: u32,
    key_len: u8,
    /// Occupied, fetched, in the main queue, the 2-bit use frequency, stale, token sent, and
    /// key sent in base64: one byte for all the per-item flags.
    bits: u8,
}

impl Entry {
    pub(crate) fn new(
        data: Data,
        key_len: u8,
        flags: u32,
        exptime: Time,
        cas: u64,
        now: Time,
    ) -> Entry {
        Entry {
            data,
            cas,
            exptime,
            flags,
            last_access: now,
            prev: NIL,
            next: NIL,
            key_len,
            bits: OCCUPIED,
        }
    }

    fn vacant(next: u32) -> Entry {
        Entry {
            data: Data::Owned(Box::default()),
            cas: 0,
            exptime: 0,
            flags: 0,
            last_access: 0,
            prev: NIL,
            next,
            key_len: 0,
            bits: 0,
        }
    }

    pub(crate) fn occupied(&self) -> bool {
        self.bits & OCCUPIED != 0
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.data.bytes()[..usize::from(self.key_len)]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.data.bytes()[usize::from(self.key_len)..]
    }

    /// The value as a refcounted handle: the stored bytes themselves for a value of
    /// [`SHARED_MIN`] bytes or more, else a copy.
    pub(crate) fn shared_value(&self) -> Bytes {
        let key_len = usize::from(self.key_len);
        match &self.data {
            Data::Shared(data) => data.slice(key_len..),
            Data::Owned(data) => Bytes::copy_from_slice(&data[key_len..]),
        }
    }

    /// Changes the value in place, or in a copy while a reader still holds the stored bytes
    /// ([`Entry::shared_value`]), which must keep seeing what it took.
    pub(crate) fn rewrite_value(&mut self, f: impl FnOnce(&mut [u8])) {
        let key_len = usize::from(self.key_len);
        match &mut self.data {
            Data::Owned(data) => f(&mut data[key_len..]),
            Data::Shared(shared) => {
                let mut data = std::mem::take(&mut **shared)
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                f(&mut data[key_len..]);
                **shared = data.freeze();
            }
        }
    }

    /// Puts a new key+value allocation in place and returns the old one. The key must not change.
    pub(crate) fn replace_data(&mut self, data: Bytes) -> Data {
        debug_assert_eq!(&data[..usize::from(self.key_len)], self.key());
        let data = Data::new(data, usize::from(self.key_len));
        std::mem::replace(&mut self.data, data)
    }

    pub(crate) fn key_len(&self) -> usize {
        usize::from(self.key_len)
    }

    pub(crate) fn fetched(&self) -> bool {
        self.bits & FETCHED != 0
    }

    pub(crate) fn set_fetched(&mut self, fetched: bool) {
        self.set_bit(FETCHED, fetched);
    }

    pub(crate) fn in_main(&self) -> bool {
        self.bits & IN_MAIN != 0
    }

    pub(crate) fn set_in_main(&mut self, main: bool) {
        self.set_bit(IN_MAIN, main);
    }

    pub(crate) fn freq(&self) -> u8 {
        (self.bits & FREQ_MASK) >> FREQ_SHIFT
    }

    pub(crate) fn set_freq(&mut self, freq: u8) {
        self.bits = (self.bits & !FREQ_MASK) | (freq.min(FREQ_MAX) << FREQ_SHIFT);
    }

    fn set_bit(&mut self, bit: u8, on: bool) {
        if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
    }

    pub(crate) fn stale(&self) -> bool {
        self.bits & STALE != 0
    }

    pub(crate) fn set_stale(&mut self, stale: bool) {
        self.set_bit(STALE, stale);
    }

    pub(crate) fn token_sent(&self) -> bool {
        self.bits & TOKEN_SENT != 0
    }

    pub(crate) fn set_token_sent(&mut self, sent: bool) {
        self.set_bit(TOKEN_SENT, sent);
    }

    pub(crate) fn binary_key(&self) -> bool {
        self.bits & BINARY_KEY != 0
    }

    pub(crate) fn set_binary_key(&mut self, binary: bool) {
        self.set_bit(BINARY_KEY, binary);
    }

    /// Makes the entry hold a new item in place of the old one: unfetched, just accessed, and
    /// without the old item's meta state (memcached allocates a new item, whose flags start
    /// clear).
    pub(crate) fn renew(&mut self, now: Time) {
        self.bits &= !(FETCHED | STALE | TOKEN_SENT | BINARY_KEY);
        self.last_access = now;
    }

    /// Records a change to the item (memcached's `do_item_update`): a use for the eviction
    /// policy, and a new access time.
    pub(crate) fn bump(&mut self, now: Time) {
        self.set_freq(self.freq() + 1);
        self.last_access = now;
    }

    /// Records a read (memcached's `do_item_bump`): a use for the eviction policy, and the item
    /// is fetched from now on. As in memcached's segmented LRU, the first read of an item only
    /// marks it fetched; its access time moves from the second read on, so `mg l` and `me`
    /// report what memcached reports.
    pub(crate) fn fetch(&mut self, now: Time) {
        self.set_freq(self.freq() + 1);
        if self.fetched() {
            self.last_access = now;
        }
        self.set_fetched(true);
    }
}

/// The slots of one shard.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    chunks: Vec<Box<[Entry]>>,
    /// Slots handed out so far; slots at and above this have never been used.
    high_water: u32,
    /// Head of the list of freed slots, linked through `Entry::next`.
    free: u32,
}

impl Arena {
    pub(crate) fn new() -> Arena {
        Arena {
            chunks: Vec::new(),
            high_water: 0,
            free: NIL,
        }
    }

    /// Stores an entry in a free slot and returns the slot, or `None` when all `u32` slots are taken.
    pub(crate) fn insert(&mut self, entry: Entry) -> Option<u32> {
        debug_assert!(entry.occupied());
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self[idx].next;
            idx
        } else {
            // NIL is never a slot number.
            if self.high_water >= NIL - 1 {
                return None;
            }
            let idx = self.high_water;
            if idx as usize >= self.chunks.len() * CHUNK_LEN {
                self.chunks
                    .push((0..CHUNK_LEN).map(|_| Entry::vacant(NIL)).collect());
            }
            self.high_water += 1;
            idx
        };
        self[idx] = entry;
        Some(idx)
    }

    /// Frees a slot and returns its key+value allocation.
    pub(crate) fn remove(&mut self, idx: u32) -> Data {
        debug_assert!(self[idx].occupied());
        let vacant = Entry::vacant(self.free);
        let old = std::mem::replace(&mut self[idx], vacant);
        self.free = idx;
        old.data
    }

    /// Slot numbers below this may be occupied.
    pub(crate) fn high_water(&self) -> u32 {
        self.high_water
    }

    /// The occupied entry at `idx`, if any (`idx` may be any number, for walks).
    pub(crate) fn get(&self, idx: u32) -> Option<&Entry> {
        self.chunks
            .get((idx >> CHUNK_BITS) as usize)
            .map(|chunk| &chunk[idx as usize & (CHUNK_LEN - 1)])
            .filter(|e| e.occupied())
    }
}

impl Index<u32> for Arena {
    type Output = Entry;

    fn index(&self, idx: u32) -> &Entry {
        &self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK_LEN - 1)]
    }
}

impl IndexMut<u32> for Arena {
    fn index_mut(&mut self, idx: u32) -> &mut Entry {
        &mut self.chunks[(idx >> CHUNK_BITS) as usize][idx as usize & (CHUNK_LEN - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], value: &[u8]) -> Entry {
        let data: Vec<u8> = key.iter().chain(value).copied().collect();
        Entry::new(
            Data::new(data.into(), key.len()),
            key.len() as u8,
            7,
            9,
            1,
            3,
        )
    }

    #[test]
    fn entry_splits_key_and_value() {
        let e = entry(b"key", b"value");
        assert_eq!(e.key(), b"key");
        assert_eq!(e.value(), b"value");
        assert_eq!((e.flags, e.exptime, e.cas, e.last_access), (7, 9, 1, 3));
        assert!(!e.fetched() && !e.in_main() && e.freq() == 0);
    }

    #[test]
    fn a_shared_value_keeps_what_it_took() {
        for len in [5, SHARED_MIN] {
            let mut e = entry(b"key", &vec![b'1'; len]);
            assert_eq!(matches!(e.data, Data::Shared(_)), len >= SHARED_MIN);
            let unique = e.value().as_ptr();
            e.rewrite_value(|v| v[0] = b'9');
            assert_eq!(e.value()[..2], *b"91");
            assert_eq!(e.value().as_ptr(), unique, "no reader: changed in place");
            let taken = e.shared_value();
            assert_eq!(
                taken.as_ptr() == unique,
                len >= SHARED_MIN,
                "large: no copy"
            );
            e.rewrite_value(|v| v[0] = b'7');
            assert_eq!(
                taken[..2],
                *b"91",
                "the reader's value is not changed under it"
            );
            assert_eq!(e.value()[..2], *b"71");
            assert_eq!(e.value().len(), len);
            assert_eq!(e.key(), b"key");
        }
    }

    #[test]
    fn frequency_saturates_and_bits_are_independent() {
        let mut e = entry(b"k", b"");
        e.set_fetched(true);
        e.set_in_main(true);
        for _ in 0..10 {
            e.bump(5);
        }
        assert_eq!(e.freq(), FREQ_MAX);
        assert!(e.fetched() && e.in_main() && e.occupied());
        e.set_freq(0);
        e.set_in_main(false);
        assert!(e.fetched() && !e.in_main() && e.freq() == 0 && e.occupied());
        assert_eq!(e.last_access, 5);
    }

    #[test]
    fn meta_bits_share_the_byte_without_disturbing_the_rest() {
        let mut e = entry(b"k", b"");
        e.set_in_main(true);
        e.set_freq(FREQ_MAX);
        e.set_stale(true);
        e.set_token_sent(true);
        e.set_binary_key(true);
        assert!(e.stale() && e.token_sent() && e.binary_key());
        assert!(e.in_main() && e.freq() == FREQ_MAX && e.occupied() && !e.fetched());
        e.set_fetched(true);
        e.renew(8);
        assert!(!e.stale() && !e.token_sent() && !e.binary_key() && !e.fetched());
        assert!(e.in_main() && e.freq() == FREQ_MAX && e.occupied());
        assert_eq!(e.last_access, 8);
    }

    #[test]
    fn the_first_read_marks_fetched_and_later_reads_move_the_access_time() {
        let mut e = entry(b"k", b"");
        e.fetch(5);
        assert!(e.fetched());
        assert_eq!((e.last_access, e.freq()), (3, 1));
        e.fetch(6);
        assert_eq!((e.last_access, e.freq()), (6, 2));
        e.bump(7);
        assert_eq!(e.last_access, 7);
    }

    #[test]
    fn slots_are_reused_before_the_arena_grows() {
        let mut arena = Arena::new();
        let a = arena.insert(entry(b"a", b"1")).unwrap();
        let b = arena.insert(entry(b"b", b"2")).unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(arena.remove(a).bytes(), b"a1");
        assert!(arena.get(a).is_none());
        let c = arena.insert(entry(b"c", b"3")).unwrap();
        assert_eq!(c, a);
        assert_eq!(arena[c].key(), b"c");
        assert_eq!(arena.high_water(), 2);
    }

    #[test]
    fn grows_across_chunks() {
        let mut arena = Arena::new();
        let n = CHUNK_LEN as u32 * 2 + 5;
        for i in 0..n {
            assert_eq!(arena.insert(entry(&i.to_le_bytes(), b"")), Some(i));
        }
        for i in 0..n {
            assert_eq!(arena[i].key(), i.to_le_bytes());
        }
        assert!(arena.get(n).is_none());
        assert!(arena.get(u32::MAX - 1).is_none());
    }
}
