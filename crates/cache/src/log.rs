//! Where a shard's items live: an append-only log of 64 KiB segments, each item a compact
//! header followed by its key and value, named by a `u32` location (segment and offset).
//!
//! memcached gives every item a 48-byte header plus slab rounding; the entry-per-item arena this
//! replaces spent 48 bytes of entry, queue links and a malloc chunk header on each. Here an item
//! costs its header ([`HEADER`] bytes, 4 more when its client flags are not zero), its key and
//! its value, with nothing between items and no per-item allocation: eviction order comes from
//! the position in the log (see `policy`), so there are no queue links, and the index holds a
//! 4-byte location per item. Segmented storage with small headers is Segcache's idea (Yang et
//! al., NSDI '21); the layout and the policy on top are this crate's.
//!
//! An item is never changed in size where it lies: a store appends a new copy and kills the old
//! one (its bytes stay, marked dead, until the policy frees their segment). Fields that change
//! in place (CAS, last access, the state bits, a number that incr rewrites to the same length)
//! are fixed-size; an expiry time is only there when it is not 0, so giving one to an item that
//! had none makes a new copy.
//!
//! Values of [`SHARED_MIN`] bytes or more are kept out of the log as refcounted [`Bytes`] in a
//! side table, the item holding the table slot: a reply can send such a value without copying
//! it and a slow reader pins that value, not a segment; replacing one frees it at once instead
//! of leaving kilobytes for compaction to move; and segments stay small next to `-I`.
//!
//! Layout of an item (little-endian, unaligned): key length (1 byte), state bits (2), inline
//! value length (2), last access (4), CAS (8), expiry time (4, only with [`HAS_EXPTIME`]),
//! client flags (4, only with [`HAS_FLAGS`]), the key, then the value or, with [`LARGE`], its
//! 4-byte side-table slot. The expiry time is there when it is not 0, and always without
//! eviction (`-M`, see `Shard::exptime_bit`).

use bytes::{Bytes, BytesMut};

use crate::Time;

/// An item's place: segment number in the high 16 bits, byte offset in the low 16.
pub(crate) type Loc = u32;

/// No location: never a real one, as no item fits in the last byte of a segment.
pub(crate) const NIL: Loc = u32::MAX;

pub(crate) const SEGMENT_BYTES: usize = 1 << OFFSET_BITS;
const OFFSET_BITS: u32 = 16;

/// Segment numbers that locations can name: 4 GiB of items per shard.
pub(crate) const MAX_SEGMENTS: usize = (1 << (32 - OFFSET_BITS)) - 1;

/// Values at least this long are stored refcounted out of the log. Below it a value is copied
/// into the log (and again whenever compaction moves it), which costs less than an allocation
/// of its own; from about 2 KiB on the copies cost more, and the allocation's share of the
/// item's size is under 3%.
pub const SHARED_MIN: usize = 2 * 1024;

const KEY_LEN_AT: usize = 0;
const BITS_AT: usize = 1;
const VALUE_LEN_AT: usize = 3;
const LAST_ACCESS_AT: usize = 5;
const CAS_AT: usize = 9;
/// The fixed part of an item's header; the expiry time, then the flags, follow when present.
pub(crate) const HEADER: usize = 17;
const EXPTIME_LEN: usize = 4;
const FLAGS_LEN: usize = 4;
const SLOT_LEN: usize = 4;

pub(crate) const FETCHED: u16 = 1;
pub(crate) const STALE: u16 = 1 << 1;
pub(crate) const TOKEN_SENT: u16 = 1 << 2;
pub(crate) const BINARY_KEY: u16 = 1 << 3;
const FREQ_SHIFT: u16 = 4;
const FREQ_MASK: u16 = 0b11 << FREQ_SHIFT;
/// Removed: its bytes wait for their segment to be freed.
const DEAD: u16 = 1 << 6;
/// The value is in the side table.
const LARGE: u16 = 1 << 7;
/// Client flags follow the fixed header (and the expiry time).
const HAS_FLAGS: u16 = 1 << 8;
/// An expiry time follows the fixed header. A new item given this bit carries the field even
/// when its expiry time is 0.
pub(crate) const HAS_EXPTIME: u16 = 1 << 9;
/// The use frequency saturates here (two bits, as in S3-FIFO).
pub(crate) const FREQ_MAX: u8 = 3;

/// State bits with another use frequency.
pub(crate) fn with_freq(bits: u16, freq: u8) -> u16 {
    (bits & !FREQ_MASK) | (u16::from(freq.min(FREQ_MAX)) << FREQ_SHIFT)
}

/// The bytes an item takes in the log.
pub(crate) const fn item_len(
    key_len: usize,
    value_len: usize,
    flags: u32,
    exptime_field: bool,
) -> usize {
    let flags = if flags == 0 { 0 } else { FLAGS_LEN };
    let exptime = if exptime_field { EXPTIME_LEN } else { 0 };
    let value = if value_len >= SHARED_MIN {
        SLOT_LEN
    } else {
        value_len
    };
    HEADER + exptime + flags + key_len + value
}

/// Where the optional fields of an item with these bits end: the key starts there.
fn key_at(bits: u16) -> usize {
    let exptime = if bits & HAS_EXPTIME != 0 {
        EXPTIME_LEN
    } else {
        0
    };
    let flags = if bits & HAS_FLAGS != 0 { FLAGS_LEN } else { 0 };
    HEADER + exptime + flags
}

fn loc(segment: u32, offset: usize) -> Loc {
    segment << OFFSET_BITS | offset as u32
}

pub(crate) fn segment_of(loc: Loc) -> u32 {
    loc >> OFFSET_BITS
}

fn offset_of(loc: Loc) -> usize {
    (loc & ((1 << OFFSET_BITS) - 1)) as usize
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The length of the item whose header starts `b`.
fn len_at(b: &[u8]) -> usize {
    let bits = u16_at(b, BITS_AT);
    let value = if bits & LARGE != 0 {
        SLOT_LEN
    } else {
        usize::from(u16_at(b, VALUE_LEN_AT))
    };
    key_at(bits) + usize::from(b[KEY_LEN_AT]) + value
}

/// A new item's fields, for [`Log::append`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewItem<'a> {
    pub(crate) key: &'a [u8],
    /// The value, in up to two parts (append and prepend join the old value with the new).
    pub(crate) value: [&'a [u8]; 2],
    /// The value already in one refcounted buffer (any length), when the caller has one.
    pub(crate) shared: Option<&'a Bytes>,
    pub(crate) flags: u32,
    pub(crate) exptime: Time,
    pub(crate) cas: u64,
    pub(crate) last_access: Time,
    pub(crate) bits: u16,
}

impl NewItem<'_> {
    pub(crate) fn value_len(&self) -> usize {
        match self.shared {
            Some(shared) => shared.len(),
            None => self.value[0].len() + self.value[1].len(),
        }
    }

    /// Whether the item carries an expiry time field: when it has one, or was given the bit.
    pub(crate) fn exptime_field(&self) -> bool {
        self.exptime != 0 || self.bits & HAS_EXPTIME != 0
    }

    pub(crate) fn len(&self) -> usize {
        item_len(
            self.key.len(),
            self.value_len(),
            self.flags,
            self.exptime_field(),
        )
    }
}

/// An item as it lies in the log, read-only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    b: &'a [u8],
    value: &'a [u8],
}

impl<'a> Item<'a> {
    pub(crate) fn key(&self) -> &'a [u8] {
        let start = key_at(self.bits());
        &self.b[start..start + usize::from(self.b[KEY_LEN_AT])]
    }

    pub(crate) fn value(&self) -> &'a [u8] {
        self.value
    }

    pub(crate) fn len(&self) -> usize {
        self.b.len()
    }

    pub(crate) fn bits(&self) -> u16 {
        u16_at(self.b, BITS_AT)
    }

    pub(crate) fn has(&self, bit: u16) -> bool {
        self.bits() & bit != 0
    }

    pub(crate) fn dead(&self) -> bool {
        self.has(DEAD)
    }

    pub(crate) fn large(&self) -> bool {
        self.has(LARGE)
    }

    pub(crate) fn freq(&self) -> u8 {
        ((self.bits() & FREQ_MASK) >> FREQ_SHIFT) as u8
    }

    pub(crate) fn flags(&self) -> u32 {
        if self.has(HAS_FLAGS) {
            u32_at(self.b, key_at(self.bits()) - FLAGS_LEN)
        } else {
            0
        }
    }

    pub(crate) fn cas(&self) -> u64 {
        u64_at(self.b, CAS_AT)
    }

    pub(crate) fn exptime(&self) -> Time {
        if self.has(HAS_EXPTIME) {
            u32_at(self.b, HEADER)
        } else {
            0
        }
    }

    pub(crate) fn last_access(&self) -> Time {
        u32_at(self.b, LAST_ACCESS_AT)
    }

    /// The state bits a copy of this item keeps: all but death and where the value lives.
    pub(crate) fn copied_bits(&self) -> u16 {
        self.bits() & (FETCHED | STALE | TOKEN_SENT | BINARY_KEY | FREQ_MASK)
    }
}

/// The fixed-size fields of an item that change where it lies.
#[derive(Debug)]
pub(crate) struct ItemMut<'a> {
    b: &'a mut [u8],
}

impl ItemMut<'_> {
    pub(crate) fn item(&self) -> Item<'_> {
        Item {
            b: self.b,
            value: &[],
        }
    }

    pub(crate) fn set_bit(&mut self, bit: u16, on: bool) {
        let bits = u16_at(self.b, BITS_AT);
        let bits = if on { bits | bit } else { bits & !bit };
        self.b[BITS_AT..BITS_AT + 2].copy_from_slice(&bits.to_le_bytes());
    }

    pub(crate) fn set_freq(&mut self, freq: u8) {
        let bits = with_freq(u16_at(self.b, BITS_AT), freq);
        self.b[BITS_AT..BITS_AT + 2].copy_from_slice(&bits.to_le_bytes());
    }

    pub(crate) fn set_cas(&mut self, cas: u64) {
        self.b[CAS_AT..CAS_AT + 8].copy_from_slice(&cas.to_le_bytes());
    }

    /// Sets the expiry time where the item lies; false when it has no room for one (it was
    /// stored without), and a copy must be made instead.
    #[must_use]
    pub(crate) fn set_exptime(&mut self, exptime: Time) -> bool {
        if self.item().has(HAS_EXPTIME) {
            self.b[HEADER..HEADER + EXPTIME_LEN].copy_from_slice(&exptime.to_le_bytes());
            true
        } else {
            exptime == 0
        }
    }

    pub(crate) fn set_last_access(&mut self, at: Time) {
        self.b[LAST_ACCESS_AT..LAST_ACCESS_AT + 4].copy_from_slice(&at.to_le_bytes());
    }

    /// Records a change to the item (memcached's `do_item_update`): a use for the eviction
    /// policy, and a new access time.
    pub(crate) fn bump(&mut self, now: Time) {
        let freq = self.item().freq();
        self.set_freq(freq + 1);
        self.set_last_access(now);
    }

    /// Records a read (memcached's `do_item_bump`): a use for the eviction policy, and the item
    /// is fetched from now on. As in memcached's segmented LRU, the first read of an item only
    /// marks it fetched; its access time moves from the second read on, so `mg l` and `me`
    /// report what memcached reports.
    pub(crate) fn fetch(&mut self, now: Time) {
        let item = self.item();
        let (freq, fetched) = (item.freq(), item.has(FETCHED));
        self.set_freq(freq + 1);
        if fetched {
            self.set_last_access(now);
        }
        self.set_bit(FETCHED, true);
    }

    /// The inline value, for incr and decr to rewrite at the same length.
    fn value_mut(&mut self) -> &mut [u8] {
        let item = self.item();
        let start = key_at(item.bits()) + usize::from(item.b[KEY_LEN_AT]);
        &mut self.b[start..]
    }
}

#[derive(Debug)]
struct Segment {
    data: Vec<u8>,
    /// When the segment was opened, in the log's count of segments opened: it tells a segment
    /// apart from an earlier one under the same number, and orders each queue's segments.
    generation: u64,
    /// Bytes of dead items.
    garbage: usize,
    /// In the main queue (else the small one).
    main: bool,
}

/// A shard's segments and its side table of large values.
#[derive(Debug, Default)]
pub(crate) struct Log {
    segments: Vec<Option<Segment>>,
    free_ids: Vec<u32>,
    large: Vec<Option<Bytes>>,
    free_large: Vec<u32>,
    generations: u64,
    /// Buffers of freed segments, kept for the next ones: a full cache frees and opens segments
    /// all the time, and malloc, with an arena per thread, would otherwise let freed buffers
    /// pile up in one thread's arena while another's grows.
    spare: Vec<Vec<u8>>,
}

/// How many freed segment buffers a log keeps.
const SPARE_SEGMENTS: usize = 2;

impl Log {
    pub(crate) fn new() -> Log {
        Log::default()
    }

    /// A new, empty segment for the main or small queue; `None` when every segment number is
    /// taken.
    pub(crate) fn open(&mut self, main: bool) -> Option<u32> {
        self.generations += 1;
        let segment = Segment {
            data: self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(SEGMENT_BYTES)),
            generation: self.generations,
            garbage: 0,
            main,
        };
        if let Some(id) = self.free_ids.pop() {
            self.segments[id as usize] = Some(segment);
            return Some(id);
        }
        if self.segments.len() >= MAX_SEGMENTS {
            return None;
        }
        self.segments.push(Some(segment));
        Some(self.segments.len() as u32 - 1)
    }

    /// Gives a segment's memory back. Its items must be dead or moved, their large values freed.
    pub(crate) fn free(&mut self, id: u32) {
        let segment = self.segments[id as usize]
            .take()
            .expect("a freed segment was in use");
        if self.spare.len() < SPARE_SEGMENTS {
            let mut data = segment.data;
            data.clear();
            self.spare.push(data);
        }
        self.free_ids.push(id);
    }

    fn segment(&self, id: u32) -> &Segment {
        self.segments[id as usize]
            .as_ref()
            .expect("a location names a live segment")
    }

    fn segment_mut(&mut self, id: u32) -> &mut Segment {
        self.segments[id as usize]
            .as_mut()
            .expect("a location names a live segment")
    }

    /// How many bytes are written in a segment.
    pub(crate) fn written(&self, id: u32) -> usize {
        self.segment(id).data.len()
    }

    /// Whether `len` more bytes fit in the segment.
    pub(crate) fn fits(&self, id: u32, len: usize) -> bool {
        self.written(id) + len <= SEGMENT_BYTES
    }

    /// Writes an item at the end of a segment, which must have room for it.
    pub(crate) fn append(&mut self, id: u32, item: &NewItem<'_>) -> Loc {
        let value_len = item.value_len();
        let large = (value_len >= SHARED_MIN).then(|| {
            let bytes = match item.shared {
                Some(shared) => shared.clone(),
                None => {
                    let mut joined = BytesMut::with_capacity(value_len);
                    joined.extend_from_slice(item.value[0]);
                    joined.extend_from_slice(item.value[1]);
                    joined.freeze()
                }
            };
            self.put_large(bytes)
        });
        let mut bits = item.bits & !(DEAD | LARGE | HAS_FLAGS | HAS_EXPTIME);
        if large.is_some() {
            bits |= LARGE;
        }
        if item.flags != 0 {
            bits |= HAS_FLAGS;
        }
        if item.exptime_field() {
            bits |= HAS_EXPTIME;
        }
        let inline_len = if large.is_some() { 0 } else { value_len as u16 };
        let data = &mut self.segment_mut(id).data;
        let at = data.len();
        debug_assert!(at + item.len() <= SEGMENT_BYTES);
        data.push(item.key.len() as u8);
        data.extend_from_slice(&bits.to_le_bytes());
        data.extend_from_slice(&inline_len.to_le_bytes());
        data.extend_from_slice(&item.last_access.to_le_bytes());
        data.extend_from_slice(&item.cas.to_le_bytes());
        if item.exptime_field() {
            data.extend_from_slice(&item.exptime.to_le_bytes());
        }
        if item.flags != 0 {
            data.extend_from_slice(&item.flags.to_le_bytes());
        }
        data.extend_from_slice(item.key);
        match (large, item.shared) {
            (Some(slot), _) => data.extend_from_slice(&slot.to_le_bytes()),
            (None, Some(shared)) => data.extend_from_slice(shared),
            (None, None) => {
                data.extend_from_slice(item.value[0]);
                data.extend_from_slice(item.value[1]);
            }
        }
        loc(id, at)
    }

    fn put_large(&mut self, bytes: Bytes) -> u32 {
        match self.free_large.pop() {
            Some(slot) => {
                self.large[slot as usize] = Some(bytes);
                slot
            }
            None => {
                self.large.push(Some(bytes));
                self.large.len() as u32 - 1
            }
        }
    }

    fn raw(&self, at: Loc) -> &[u8] {
        let data = &self.segment(segment_of(at)).data[offset_of(at)..];
        &data[..len_at(data)]
    }

    fn large_slot(b: &[u8]) -> u32 {
        u32_at(b, b.len() - SLOT_LEN)
    }

    pub(crate) fn get(&self, at: Loc) -> Item<'_> {
        let b = self.raw(at);
        let bits = u16_at(b, BITS_AT);
        let value = if bits & DEAD != 0 {
            // A dead item's large value is gone; nothing reads a dead item's value.
            &[]
        } else if bits & LARGE != 0 {
            &self.large[Self::large_slot(b) as usize]
                .as_ref()
                .expect("a large item's slot is taken")[..]
        } else {
            let value_len = usize::from(u16_at(b, VALUE_LEN_AT));
            &b[b.len() - value_len..]
        };
        Item { b, value }
    }

    pub(crate) fn get_mut(&mut self, at: Loc) -> ItemMut<'_> {
        let start = offset_of(at);
        let data = &mut self.segment_mut(segment_of(at)).data[start..];
        let len = len_at(data);
        ItemMut {
            b: &mut data[..len],
        }
    }

    /// The large value of an item, refcounted: a reader holding it keeps it alive.
    pub(crate) fn shared(&self, at: Loc) -> Option<&Bytes> {
        let b = self.raw(at);
        if u16_at(b, BITS_AT) & LARGE == 0 {
            return None;
        }
        self.large[Self::large_slot(b) as usize].as_ref()
    }

    /// Marks an item dead and frees its large value, if any. Returns its length in the log.
    pub(crate) fn kill(&mut self, at: Loc) -> usize {
        let mut item = self.get_mut(at);
        item.set_bit(DEAD, true);
        let (len, large) = (
            item.b.len(),
            item.item().large().then(|| Self::large_slot(item.b)),
        );
        if let Some(slot) = large {
            self.large[slot as usize] = None;
            self.free_large.push(slot);
        }
        self.segment_mut(segment_of(at)).garbage += len;
        len
    }

    /// Rewrites an item's value at the same length (incr and decr), in a copy while a reader
    /// still holds a large value, which must keep seeing what it took.
    pub(crate) fn rewrite_value(&mut self, at: Loc, f: impl FnOnce(&mut [u8])) {
        let b = self.raw(at);
        if u16_at(b, BITS_AT) & LARGE != 0 {
            let slot = Self::large_slot(b) as usize;
            let slot = &mut self.large[slot];
            let shared = slot.take().expect("a large item's slot is taken");
            let mut data = shared
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            f(&mut data);
            *slot = Some(data.freeze());
        } else {
            let mut item = self.get_mut(at);
            f(item.value_mut());
        }
    }

    /// The item after `at` in its segment, if any.
    pub(crate) fn next_in_segment(&self, at: Loc) -> Option<Loc> {
        let (id, offset) = (segment_of(at), offset_of(at) + self.raw(at).len());
        (offset < self.written(id)).then(|| loc(id, offset))
    }

    /// The item at `offset` in a segment, if that is not past its end.
    pub(crate) fn at(&self, id: u32, offset: usize) -> Option<Loc> {
        (offset < self.written(id)).then(|| loc(id, offset))
    }

    /// Dead bytes that a queue's cursor has passed no longer count as the segment's garbage.
    pub(crate) fn passed(&mut self, id: u32, len: usize) {
        self.segment_mut(id).garbage -= len;
    }

    /// Dead bytes in a segment, not yet passed by its queue's cursor.
    pub(crate) fn garbage(&self, id: u32) -> usize {
        self.segment(id).garbage
    }

    /// How many segments are open.
    pub(crate) fn in_use(&self) -> usize {
        self.segments.len() - self.free_ids.len()
    }

    /// Whether a segment is in the main queue (else in the small one).
    pub(crate) fn in_main(&self, id: u32) -> bool {
        self.segment(id).main
    }

    /// Whether segment `id` is still the one a walk or list saw (same number, same generation).
    pub(crate) fn is(&self, id: u32, generation: u64) -> bool {
        matches!(self.segments.get(id as usize), Some(Some(s)) if s.generation == generation)
    }

    pub(crate) fn generation(&self, id: u32) -> u64 {
        self.segment(id).generation
    }

    /// Segments with dead bytes, for a shard that may not evict and looks for room.
    pub(crate) fn with_garbage(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.garbage > 0))
            .map(|(id, _)| id as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(key: &'a [u8], value: &'a [u8], flags: u32, exptime: Time) -> NewItem<'a> {
        NewItem {
            key,
            value: [value, &[]],
            shared: None,
            flags,
            exptime,
            cas: 77,
            last_access: 5,
            bits: FETCHED | BINARY_KEY,
        }
    }

    #[test]
    fn an_item_reads_back_as_written_with_or_without_its_optional_fields() {
        let mut log = Log::new();
        let id = log.open(false).unwrap();
        for (flags, exptime) in [(0, 0), (9, 0), (0, 30), (9, 30)] {
            let new = item(b"key", b"value", flags, exptime);
            let at = log.append(id, &new);
            let e = log.get(at);
            assert_eq!((e.key(), e.value()), (&b"key"[..], &b"value"[..]));
            assert_eq!(
                (e.flags(), e.exptime(), e.cas(), e.last_access()),
                (flags, exptime, 77, 5)
            );
            assert!(e.has(FETCHED) && e.has(BINARY_KEY) && !e.dead() && !e.large());
            assert_eq!(e.len(), new.len());
            assert_eq!(e.len(), item_len(3, 5, flags, exptime != 0));
        }
        let first = log.at(id, 0).unwrap();
        assert_eq!(log.get(first).len(), HEADER + 3 + 5, "no optional fields");
        let mut e = log.get_mut(first);
        assert!(e.set_exptime(0), "0 needs no room");
        assert!(!e.set_exptime(10), "no room for an expiry time");
    }

    #[test]
    fn a_large_value_lives_out_of_the_log_and_a_reader_keeps_what_it_took() {
        let mut log = Log::new();
        let id = log.open(true).unwrap();
        let value = vec![b'1'; SHARED_MIN];
        let at = log.append(id, &item(b"k", &value, 0, 0));
        assert_eq!(log.written(id), item_len(1, SHARED_MIN, 0, false));
        assert!(log.get(at).large());
        let taken = log.shared(at).unwrap().clone();
        assert_eq!(taken.as_ptr(), log.get(at).value().as_ptr(), "no copy");
        log.rewrite_value(at, |v| v[0] = b'9');
        assert_eq!(taken[0], b'1', "the reader's value is not changed under it");
        assert_eq!(log.get(at).value()[..2], *b"91");
        drop(taken);
        let unique = log.get(at).value().as_ptr();
        log.rewrite_value(at, |v| v[0] = b'7');
        assert_eq!(
            log.get(at).value().as_ptr(),
            unique,
            "no reader: changed in place"
        );
        assert_eq!(log.kill(at), item_len(1, SHARED_MIN, 0, false));
        assert!(log.get(at).dead() && log.get(at).value().is_empty());
        assert_eq!(log.garbage(id), item_len(1, SHARED_MIN, 0, false));
    }
}
