//! Item sizes, in the two senses the store needs.
//!
//! - [`memcached_size`] is the size memcached 1.6 gives an item (header, key, value, CRLF, CAS).
//!   It is compared with `item_size_max`, so that exactly the values memcached accepts are accepted.
//! - [`accounted_size`] is what an item really costs here: its bytes in the log, its share of the
//!   shard's index and ghost, and the allocation of a value kept out of the log. It is what
//!   `bytes` reports and what the memory limit is checked against.

use crate::log::{item_len, SHARED_MIN};

/// `sizeof(item)` of memcached 1.6 on a 64-bit platform: the header every item carries.
const MEMCACHED_HEADER: usize = 48;

/// One index bucket is a `u32` slot plus a control byte; hashbrown keeps its load between 7/16 and
/// 7/8 as it doubles, so an item holds 5.7 to 11.4 bytes of index, about 8 on average.
const INDEX_BYTES: usize = 8;

/// The ghost queue keeps a 2-byte fingerprint slot for one to two slots per item.
const GHOST_BYTES: usize = 3;

/// The bytes every item costs besides its bytes in the log.
pub(crate) const ITEM_OVERHEAD: usize = INDEX_BYTES + GHOST_BYTES;

/// The size memcached 1.6 computes for an item (`item_make_header` plus CAS): the header, the key
/// and its NUL, the value and its CRLF, 4 bytes of flags when they are not zero, 8 of CAS.
pub fn memcached_size(key_len: usize, value_len: usize, flags: u32, cas: bool) -> usize {
    let suffix = if flags == 0 { 0 } else { 4 };
    let cas = if cas { 8 } else { 0 };
    MEMCACHED_HEADER + key_len + 1 + value_len + 2 + suffix + cas
}

/// What an allocation of `n` bytes takes from the heap: glibc's malloc puts an 8-byte header before
/// each chunk, rounds chunks up to 16 bytes and makes none smaller than 32. Allocators with finer
/// size classes (jemalloc, mimalloc) use at most this much.
pub(crate) const fn alloc_size(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 {
        32
    } else {
        chunk
    }
}

/// What a value kept out of the log costs besides the item: its allocation and its slot in the
/// side table.
pub(crate) fn large_size(value_len: usize) -> usize {
    if value_len >= SHARED_MIN {
        alloc_size(value_len) + std::mem::size_of::<Option<bytes::Bytes>>()
    } else {
        0
    }
}

/// The bytes an item with these key and value lengths and client flags is accounted for, with
/// or without an expiry time field.
pub(crate) fn item_size(key_len: usize, value_len: usize, flags: u32, exptime_field: bool) -> u64 {
    (item_len(key_len, value_len, flags, exptime_field) + ITEM_OVERHEAD + large_size(value_len))
        as u64
}

/// The bytes an item with this key and value length (client flags 0, no expiry time) is
/// accounted for: its bytes in the log, its index and ghost share, and the allocation of a
/// value kept out of the log. Non-zero flags add 4, an expiry time 4.
pub fn accounted_size(key_len: usize, value_len: usize) -> u64 {
    item_size(key_len, value_len, 0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcached_size_matches_the_limits_of_memcached_1_6_18() {
        // Measured on memcached 1.6.18 with -I 1m: the largest value accepted for a 1-byte key is
        // 1048516 bytes with flags 0 and CAS on, 1048512 with flags 1, 1048524 with -C.
        let max = 1024 * 1024;
        assert_eq!(memcached_size(1, 1_048_516, 0, true), max);
        assert_eq!(memcached_size(1, 1_048_512, 1, true), max);
        assert_eq!(memcached_size(1, 1_048_524, 0, false), max);
        assert_eq!(memcached_size(10, 1_048_507, 0, true), max);
    }

    #[test]
    fn alloc_size_follows_glibc_chunks() {
        assert_eq!(alloc_size(0), 0);
        assert_eq!(alloc_size(1), 32);
        assert_eq!(alloc_size(24), 32);
        assert_eq!(alloc_size(25), 48);
        assert_eq!(alloc_size(110), 128);
        assert_eq!(alloc_size(120), 128);
        assert_eq!(alloc_size(121), 144);
    }

    #[test]
    fn an_item_of_the_benchmark_costs_148_bytes() {
        // 20-byte keys and 100-byte values (scripts/bench-server.sh): memcached takes 192 bytes
        // of slab per item plus its hash table; the per-item budget depends on this staying low.
        assert_eq!(accounted_size(20, 100), 148);
    }
}
