//! Behaviour of the public API, operation by operation, with time moved by hand.

mod meta;
mod model;

use std::collections::HashSet;
use std::sync::Arc;

use crate::*;

const MB: usize = 1024 * 1024;

fn cache() -> Cache {
    Cache::new(Config::default())
}

/// A one-shard cache that holds exactly `items` items of `key_len`-byte keys and 100-byte values
/// without expiry times.
fn small_cache(items: u64, key_len: usize, evict: bool) -> Cache {
    let item = if evict {
        accounted_size(key_len, 100)
    } else {
        accounted_without_eviction(key_len, 100)
    };
    one_shard(items * item, evict)
}

/// An expiry time takes 4 bytes of an item.
const EXPTIME_BYTES: u64 = 4;

/// Without eviction (-M) every item carries its expiry time field, 0 or not.
fn accounted_without_eviction(key_len: usize, value_len: usize) -> u64 {
    accounted_size(key_len, value_len) + EXPTIME_BYTES
}

fn one_shard(max_bytes: u64, evict: bool) -> Cache {
    Cache::new(Config {
        max_bytes,
        item_size_max: 2048,
        evict,
        cas: true,
        shards: 1,
    })
}

/// A saved item as an import gets it: flags 0, no expiry time, accessed at second 1.
fn saved<'a>(key: &'a [u8], value: &'a [u8]) -> SavedItem<'a> {
    SavedItem {
        key,
        value,
        flags: 0,
        exptime: 0,
        last_access: 1,
        fetched: false,
        stale: false,
        binary_key: false,
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn set(c: &Cache, key: &[u8], value: &[u8], now: Time) -> StoreResult {
    c.store(StoreMode::Set, key, 0, 0, value, now)
}

fn get(c: &Cache, key: &[u8], now: Time) -> Option<Vec<u8>> {
    c.get(key, now, |item| item.value.to_vec()).hit()
}

/// (value, flags, cas, exptime)
fn gets(c: &Cache, key: &[u8], now: Time) -> Option<(Vec<u8>, u32, u64, Time)> {
    c.get(key, now, |i| (i.value.to_vec(), i.flags, i.cas, i.exptime))
        .hit()
}

fn cas_of(c: &Cache, key: &[u8], now: Time) -> u64 {
    gets(c, key, now).expect("item present").2
}

#[test]
fn cache_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Cache>();
}

#[test]
fn set_then_get_returns_value_flags_and_exptime() {
    let c = cache();
    assert_eq!(
        c.store(StoreMode::Set, b"k", 42, 100, b"v", 1),
        StoreResult::Stored
    );
    let (value, flags, cas, exptime) = gets(&c, b"k", 1).unwrap();
    assert_eq!((value, flags, exptime), (b"v".to_vec(), 42, 100));
    assert_ne!(cas, 0);
    assert_eq!(c.get(b"other", 1, |_| ()), Lookup::Miss);
    let view = c.get(b"k", 1, |i| (i.key.to_vec(), i.value.len())).hit();
    assert_eq!(view, Some((b"k".to_vec(), 1)));
    c.check();
}

#[test]
fn empty_values_and_binary_keys_are_stored() {
    let c = cache();
    assert_eq!(set(&c, b"\x00\xff", b"", 1), StoreResult::Stored);
    assert_eq!(get(&c, b"\x00\xff", 1), Some(Vec::new()));
}

#[test]
fn every_store_gets_a_unique_cas() {
    let c = cache();
    let mut seen = HashSet::new();
    for i in 0..5000 {
        assert_eq!(set(&c, &key(i), b"x", 1), StoreResult::Stored);
        assert!(seen.insert(cas_of(&c, &key(i), 1)));
    }
    for _ in 0..100 {
        assert_eq!(set(&c, b"same", b"x", 1), StoreResult::Stored);
        assert!(seen.insert(cas_of(&c, b"same", 1)));
    }
    assert!(!seen.contains(&0));
}

#[test]
fn add_stores_only_when_missing_or_dead() {
    let c = cache();
    assert_eq!(
        c.store(StoreMode::Add, b"k", 1, 0, b"a", 1),
        StoreResult::Stored
    );
    assert_eq!(
        c.store(StoreMode::Add, b"k", 2, 0, b"b", 1),
        StoreResult::NotStored
    );
    assert_eq!(
        gets(&c, b"k", 1).map(|g| (g.0, g.1)),
        Some((b"a".to_vec(), 1))
    );
    c.store(StoreMode::Set, b"e", 0, 5, b"old", 1);
    assert_eq!(
        c.store(StoreMode::Add, b"e", 0, 0, b"new", 5),
        StoreResult::Stored
    );
    assert_eq!(get(&c, b"e", 5), Some(b"new".to_vec()));
}

#[test]
fn replace_needs_a_live_item() {
    let c = cache();
    assert_eq!(
        c.store(StoreMode::Replace, b"k", 0, 0, b"a", 1),
        StoreResult::NotStored
    );
    assert_eq!(get(&c, b"k", 1), None);
    set(&c, b"k", b"a", 1);
    assert_eq!(
        c.store(StoreMode::Replace, b"k", 9, 0, b"bb", 1),
        StoreResult::Stored
    );
    assert_eq!(
        gets(&c, b"k", 1).map(|g| (g.0, g.1)),
        Some((b"bb".to_vec(), 9))
    );
    c.store(StoreMode::Set, b"e", 0, 3, b"a", 1);
    assert_eq!(
        c.store(StoreMode::Replace, b"e", 0, 0, b"b", 3),
        StoreResult::NotStored
    );
}

#[test]
fn append_and_prepend_keep_flags_and_exptime() {
    let c = cache();
    assert_eq!(
        c.store(StoreMode::Append, b"k", 0, 0, b"x", 1),
        StoreResult::NotStored
    );
    assert_eq!(
        c.store(StoreMode::Prepend, b"k", 0, 0, b"x", 1),
        StoreResult::NotStored
    );
    assert_eq!(get(&c, b"k", 1), None);
    c.store(StoreMode::Set, b"k", 7, 100, b"hello", 1);
    let cas = cas_of(&c, b"k", 1);
    assert_eq!(
        c.store(StoreMode::Append, b"k", 1, 5, b" world", 2),
        StoreResult::Stored
    );
    assert_eq!(
        c.store(StoreMode::Prepend, b"k", 1, 5, b">", 2),
        StoreResult::Stored
    );
    let (value, flags, new_cas, exptime) = gets(&c, b"k", 2).unwrap();
    assert_eq!(
        (value.as_slice(), flags, exptime),
        (&b">hello world"[..], 7, 100)
    );
    assert_ne!(new_cas, cas);
    c.check();
}

#[test]
fn append_over_the_item_size_is_not_stored_and_keeps_the_item() {
    let c = cache();
    let big = vec![b'x'; 1_048_000];
    set(&c, b"b", &big, 1);
    // The joined item is too large: memcached answers NOT_STORED.
    assert_eq!(
        c.store(StoreMode::Append, b"b", 0, 0, &[b'y'; 1000], 1),
        StoreResult::NotStored
    );
    // The appended data alone is too large: memcached answers SERVER_ERROR object too large.
    let huge = vec![b'y'; MB];
    assert_eq!(
        c.store(StoreMode::Append, b"b", 0, 0, &huge, 1),
        StoreResult::TooLarge
    );
    assert_eq!(get(&c, b"b", 1), Some(big));
}

#[test]
fn cas_compares_with_the_live_item() {
    let c = cache();
    assert_eq!(
        c.store(StoreMode::Cas(1), b"k", 0, 0, b"a", 1),
        StoreResult::NotFound
    );
    set(&c, b"k", b"a", 1);
    let cas = cas_of(&c, b"k", 1);
    assert_eq!(
        c.store(StoreMode::Cas(cas + 1), b"k", 0, 0, b"b", 1),
        StoreResult::Exists
    );
    assert_eq!(
        c.store(StoreMode::Cas(0), b"k", 0, 0, b"b", 1),
        StoreResult::Exists
    );
    assert_eq!(
        c.store(StoreMode::Cas(cas), b"k", 3, 0, b"c", 1),
        StoreResult::Stored
    );
    assert_eq!(
        gets(&c, b"k", 1).map(|g| (g.0, g.1)),
        Some((b"c".to_vec(), 3))
    );
    assert_eq!(
        c.store(StoreMode::Cas(cas), b"k", 0, 0, b"d", 1),
        StoreResult::Exists
    );
    c.store(StoreMode::Set, b"e", 0, 3, b"a", 1);
    let cas = cas_of(&c, b"e", 1);
    assert_eq!(
        c.store(StoreMode::Cas(cas), b"e", 0, 0, b"b", 3),
        StoreResult::NotFound
    );
}

#[test]
fn without_cas_every_cas_is_zero_and_cas_stores_fail() {
    let c = Cache::new(Config {
        cas: false,
        ..Config::default()
    });
    assert_eq!(
        c.store(StoreMode::Cas(0), b"k", 0, 0, b"a", 1),
        StoreResult::NotFound
    );
    set(&c, b"k", b"a", 1);
    assert_eq!(cas_of(&c, b"k", 1), 0);
    // memcached -C: the item's CAS is 0, and a cas command never matches.
    assert_eq!(
        c.store(StoreMode::Cas(0), b"k", 0, 0, b"b", 1),
        StoreResult::Exists
    );
    assert_eq!(
        c.store(StoreMode::Cas(5), b"k", 0, 0, b"b", 1),
        StoreResult::Exists
    );
    let mut metas = Vec::new();
    c.for_each_item(1, |m| metas.push(m.cas));
    assert_eq!(metas, [0]);
    // Without CAS, the CAS bytes are not counted in the item size either (memcached -C).
    let value = vec![b'x'; 1_048_524];
    assert_eq!(set(&c, b"k", &value, 1), StoreResult::Stored);
}

#[test]
fn too_large_is_measured_like_memcached_and_a_failed_set_drops_the_old_item() {
    let c = cache();
    let fits = vec![b'x'; 1_048_516];
    assert_eq!(set(&c, b"k", &fits, 1), StoreResult::Stored);
    assert_eq!(
        c.store(StoreMode::Set, b"k", 1, 0, &fits, 1),
        StoreResult::TooLarge
    );
    assert_eq!(get(&c, b"k", 1), None);

    set(&c, b"k", b"small", 1);
    let too_large = vec![b'x'; 1_048_517];
    for mode in [
        StoreMode::Add,
        StoreMode::Replace,
        StoreMode::Append,
        StoreMode::Cas(1),
    ] {
        assert_eq!(
            c.store(mode, b"k", 0, 0, &too_large, 1),
            StoreResult::TooLarge
        );
        assert_eq!(get(&c, b"k", 1), Some(b"small".to_vec()), "{mode:?}");
    }
    assert_eq!(set(&c, b"k", &too_large, 1), StoreResult::TooLarge);
    assert_eq!(get(&c, b"k", 1), None);
    c.check();
}

#[test]
fn keys_over_250_bytes_are_never_stored() {
    let c = cache();
    let long = vec![b'k'; KEY_MAX_LENGTH + 1];
    assert_eq!(set(&c, &long, b"v", 1), StoreResult::TooLarge);
    assert_eq!(get(&c, &long, 1), None);
    let max = vec![b'k'; KEY_MAX_LENGTH];
    assert_eq!(set(&c, &max, b"v", 1), StoreResult::Stored);
    assert_eq!(get(&c, &max, 1), Some(b"v".to_vec()));
}

#[test]
fn items_expire_at_their_exptime() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 10, b"v", 1);
    assert_eq!(get(&c, b"k", 9), Some(b"v".to_vec()));
    assert_eq!(c.get(b"k", 10, |_| ()), Lookup::Expired);
    assert_eq!(c.get(b"k", 10, |_| ()), Lookup::Miss);
    assert_eq!(c.stats().curr_items, 0);

    c.store(StoreMode::Set, b"never", 0, 0, b"v", 1);
    assert_eq!(get(&c, b"never", u32::MAX), Some(b"v".to_vec()));
}

/// memcached stores an item whose exptime has passed and finds it expired on the next read
/// (counted in get_expired), so clients and stats see the same here.
#[test]
fn a_store_already_expired_is_stored_but_never_seen() {
    let c = cache();
    set(&c, b"k", b"old", 5);
    assert_eq!(
        c.store(StoreMode::Set, b"k", 0, 5, b"new", 5),
        StoreResult::Stored
    );
    assert_eq!(c.get(b"k", 5, |_| ()), Lookup::Expired);
    assert_eq!(
        c.store(StoreMode::Add, b"k", 0, 1, b"new", 5),
        StoreResult::Stored
    );
    assert_eq!(c.get(b"k", 5, |_| ()), Lookup::Expired);
    assert_eq!(c.stats().curr_items, 0);
}

#[test]
fn touch_and_get_and_touch_move_the_expiry() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 10, b"v", 1);
    assert!(c.touch(b"k", 20, 5));
    assert!(!c.touch(b"missing", 20, 5));
    assert_eq!(get(&c, b"k", 15), Some(b"v".to_vec()));
    let hit = c.get_and_touch(b"k", 30, 16, |i| i.exptime);
    assert_eq!(hit, Lookup::Hit(30));
    assert_eq!(get(&c, b"k", 25), Some(b"v".to_vec()));
    assert!(c.touch(b"k", 0, 26));
    assert_eq!(get(&c, b"k", 1000), Some(b"v".to_vec()));
    assert!(c.touch(b"k", 5, 1000));
    assert_eq!(c.get(b"k", 1000, |_| ()), Lookup::Expired);
    assert_eq!(c.get_and_touch(b"k", 0, 1000, |_| ()), Lookup::Miss);
}

#[test]
fn delete_removes_live_items_only() {
    let c = cache();
    set(&c, b"k", b"v", 1);
    assert!(c.delete(b"k", 1));
    assert!(!c.delete(b"k", 1));
    assert_eq!(get(&c, b"k", 1), None);
    c.store(StoreMode::Set, b"e", 0, 3, b"v", 1);
    assert!(!c.delete(b"e", 3));
    assert_eq!(c.stats().curr_items, 0);
    c.check();
}

#[test]
fn flush_all_now_hides_older_items_but_not_later_ones() {
    let c = cache();
    set(&c, b"a", b"1", 5);
    c.flush_all(5, 5);
    assert_eq!(c.get(b"a", 5, |_| ()), Lookup::Flushed);
    assert_eq!(c.get(b"a", 5, |_| ()), Lookup::Miss);
    // Same second, after the flush: kept.
    set(&c, b"b", b"2", 5);
    assert_eq!(get(&c, b"b", 5), Some(b"2".to_vec()));
    assert_eq!(
        c.store(StoreMode::Add, b"a", 0, 0, b"3", 5),
        StoreResult::Stored
    );
}

#[test]
fn flush_all_with_a_delay_takes_effect_at_its_time() {
    let c = cache();
    set(&c, b"x", b"1", 10);
    c.flush_all(100, 10);
    set(&c, b"y", b"2", 50);
    assert_eq!(get(&c, b"x", 99), Some(b"1".to_vec()));
    assert_eq!(c.get(b"x", 100, |_| ()), Lookup::Flushed);
    assert_eq!(c.get(b"y", 100, |_| ()), Lookup::Flushed);
    set(&c, b"z", b"3", 100);
    assert_eq!(get(&c, b"z", 100), Some(b"3".to_vec()));
    assert_eq!(get(&c, b"z", 500), Some(b"3".to_vec()));
}

#[test]
fn a_later_flush_never_brings_flushed_items_back() {
    // memcached 1.6.18 serves "a" again after `flush_all` then `flush_all 100`; we do not.
    let c = cache();
    set(&c, b"a", b"1", 1);
    c.flush_all(1, 1);
    c.flush_all(100, 2);
    assert_eq!(c.get(b"a", 3, |_| ()), Lookup::Flushed);
}

#[test]
fn flush_all_now_cancels_a_pending_one() {
    let c = cache();
    c.flush_all(100, 10);
    c.flush_all(20, 20);
    set(&c, b"w", b"1", 30);
    assert_eq!(get(&c, b"w", 150), Some(b"1".to_vec()));
}

#[test]
fn flush_all_works_without_cas() {
    let c = Cache::new(Config {
        cas: false,
        ..Config::default()
    });
    set(&c, b"a", b"1", 5);
    c.flush_all(5, 5);
    // Read before the next store: a store may sweep the flushed item away first (a miss then).
    assert_eq!(c.get(b"a", 5, |_| ()), Lookup::Flushed);
    set(&c, b"b", b"2", 5);
    assert_eq!(get(&c, b"b", 5), Some(b"2".to_vec()));
}

#[test]
fn incr_decr_rewrite_in_place_with_padding_like_memcached() {
    let c = cache();
    c.store(StoreMode::Set, b"n", 5, 100, b"100", 1);
    let cas = cas_of(&c, b"n", 1);
    assert_eq!(c.incr_decr(b"n", false, 1, 1), DeltaResult::Value(99));
    let (value, flags, new_cas, exptime) = gets(&c, b"n", 1).unwrap();
    assert_eq!((value.as_slice(), flags, exptime), (&b"99 "[..], 5, 100));
    assert_ne!(new_cas, cas);
    assert_eq!(c.incr_decr(b"n", true, 1, 1), DeltaResult::Value(100));
    assert_eq!(get(&c, b"n", 1), Some(b"100".to_vec()));
    // 100 + (2^64 - 1) wraps to 99.
    assert_eq!(c.incr_decr(b"n", true, u64::MAX, 1), DeltaResult::Value(99));
    assert_eq!(get(&c, b"n", 1), Some(b"99 ".to_vec()));
    c.check();
}

#[test]
fn incr_wraps_and_decr_stops_at_zero() {
    let c = cache();
    set(&c, b"n", b"18446744073709551615", 1);
    assert_eq!(c.incr_decr(b"n", true, 2, 1), DeltaResult::Value(1));
    assert_eq!(get(&c, b"n", 1), Some(b"1                   ".to_vec()));
    set(&c, b"m", b"5", 1);
    assert_eq!(c.incr_decr(b"m", false, 10, 1), DeltaResult::Value(0));
    assert_eq!(get(&c, b"m", 1), Some(b"0".to_vec()));
}

#[test]
fn incr_past_the_old_length_makes_an_exact_new_value() {
    let c = cache();
    c.store(StoreMode::Set, b"n", 5, 100, b"99", 1);
    let before = c.stats();
    assert_eq!(c.incr_decr(b"n", true, 1, 1), DeltaResult::Value(100));
    let (value, flags, _, exptime) = gets(&c, b"n", 1).unwrap();
    assert_eq!((value.as_slice(), flags, exptime), (&b"100"[..], 5, 100));
    let after = c.stats();
    assert_eq!(after.total_items, before.total_items + 1);
    // Flags that are not zero take 4 bytes more, and so does the expiry time.
    assert_eq!(after.bytes, accounted_size(1, 3) + 4 + EXPTIME_BYTES);
    c.check();
}

#[test]
fn incr_decr_refuse_what_is_not_a_number() {
    let c = cache();
    assert_eq!(c.incr_decr(b"none", true, 1, 1), DeltaResult::NotFound);
    for value in [&b"abc"[..], b"", b"-5", b"12a", b"18446744073709551616"] {
        set(&c, b"n", value, 1);
        assert_eq!(c.incr_decr(b"n", true, 1, 1), DeltaResult::NonNumeric);
        assert_eq!(get(&c, b"n", 1), Some(value.to_vec()));
    }
    set(&c, b"n", b" 7 and more", 1);
    assert_eq!(c.incr_decr(b"n", true, 1, 1), DeltaResult::Value(8));
    assert_eq!(get(&c, b"n", 1), Some(b"8          ".to_vec()));
    c.store(StoreMode::Set, b"e", 0, 3, b"1", 1);
    assert_eq!(c.incr_decr(b"e", true, 1, 3), DeltaResult::NotFound);
}

#[test]
fn unused_items_are_evicted_oldest_first() {
    let c = small_cache(100, 5, true);
    assert_eq!(c.shard_count(), 1);
    for i in 0..100 {
        assert_eq!(set(&c, &key(i), &[b'v'; 100], 1), StoreResult::Stored);
    }
    assert_eq!(c.stats().evictions, 0);
    for i in 100..110 {
        assert_eq!(set(&c, &key(i), &[b'v'; 100], 1), StoreResult::Stored);
    }
    let gone: Vec<usize> = (0..110)
        .filter(|&i| get(&c, &key(i), 1).is_none())
        .collect();
    assert_eq!(gone, (0..10).collect::<Vec<_>>());
    let s = c.stats();
    assert_eq!(
        (s.evictions, s.evicted_unfetched, s.curr_items),
        (10, 10, 100)
    );
    c.check();
}

#[test]
fn a_key_that_comes_back_soon_after_its_eviction_outlives_one_time_keys() {
    let c = small_cache(100, 5, true);
    set(&c, b"again", &[b'v'; 100], 1);
    // One-time keys push it out of the small queue before anyone read it.
    for i in 0..100 {
        set(&c, &key(i), &[b'v'; 100], 1);
    }
    assert!(get(&c, b"again", 1).is_none());
    // Back soon: its fingerprint is still in the ghost, so it goes to the main queue, where a
    // new key stored at the same time does not.
    set(&c, b"again", &[b'v'; 100], 2);
    set(&c, b"fresh", &[b'v'; 100], 2);
    for i in 100..300 {
        set(&c, &key(i), &[b'v'; 100], 3);
    }
    assert!(
        get(&c, b"again", 3).is_some(),
        "the returning key was evicted"
    );
    assert!(
        get(&c, b"fresh", 3).is_none(),
        "a one-time key outlived the others"
    );
    c.check();
}

#[test]
fn recently_read_items_survive_a_burst_of_writes() {
    let c = small_cache(100, 5, true);
    for i in 0..100 {
        set(&c, &key(i), &[b'v'; 100], 1);
    }
    assert!(get(&c, &key(5), 2).is_some());
    assert!(get(&c, &key(50), 2).is_some());
    // An add that finds the item counts as a use too, as in memcached.
    assert_eq!(
        c.store(StoreMode::Add, &key(70), 0, 0, b"x", 2),
        StoreResult::NotStored
    );
    // Twice the capacity: LRU would have lost every old item.
    for i in 100..300 {
        set(&c, &key(i), &[b'v'; 100], 3);
    }
    for i in [5, 50, 70] {
        assert!(get(&c, &key(i), 4).is_some(), "{i} was evicted");
    }
    let survivors = (0..100).filter(|&i| get(&c, &key(i), 4).is_some()).count();
    assert_eq!(survivors, 3);
    let s = c.stats();
    assert_eq!(s.evictions, 200);
    assert_eq!(s.evicted_unfetched, 200);
    c.check();
}

#[test]
fn every_expired_item_is_reclaimed_before_a_live_one_is_evicted() {
    let c = one_shard(100 * accounted_size(5, 100) + 25 * EXPTIME_BYTES, true);
    for i in 0..100 {
        // The expired items are spread over the whole queue, not only near its tail.
        let exptime = if i % 4 == 3 { 10 } else { 0 };
        c.store(StoreMode::Set, &key(i), 0, exptime, &[b'v'; 100], 1);
    }
    for i in 100..125 {
        set(&c, &key(i), &[b'v'; 100], 20);
    }
    let s = c.stats();
    assert_eq!((s.reclaimed, s.evictions), (25, 0), "{s:?}");
    assert_eq!(s.reclaimed, s.expired_unfetched);
    assert!((0..125)
        .filter(|i| i % 4 != 3 || *i >= 100)
        .all(|i| get(&c, &key(i), 20).is_some()));
    // One store more: nothing dead is left, so now a live item goes.
    set(&c, &key(125), &[b'v'; 100], 20);
    assert_eq!((c.stats().reclaimed, c.stats().evictions), (25, 1));
    c.check();
}

#[test]
fn an_expired_item_frees_its_memory_at_the_next_store_even_below_the_limit() {
    let c = small_cache(100, 5, true);
    c.store(StoreMode::Set, &key(0), 0, 10, &[b'v'; 100], 1);
    set(&c, &key(1), &[b'v'; 100], 1);
    let bytes = c.stats().bytes;
    set(&c, &key(2), &[b'v'; 100], 11);
    let s = c.stats();
    assert_eq!(
        (s.curr_items, s.bytes, s.reclaimed),
        (2, bytes - EXPTIME_BYTES, 1)
    );
}

#[test]
fn replacing_items_reuses_their_space_instead_of_growing_the_log() {
    let c = one_shard(64 * MB as u64, true);
    // 100,000 replacements of ten keys: 13 MB of copies, all but ten of them dead.
    for round in 0..10_000 {
        for i in 0..10 {
            set(&c, &key(i), &[b'0' + (round % 10) as u8; 100], 1);
        }
    }
    let used = c.shards[0].0.lock().used();
    // The live items and a few segments' worth of dead ones, never the whole history.
    assert!(used < 4 * 64 * 1024, "{used} bytes counted for ten items");
    assert_eq!(c.stats().evictions, 0);
    c.check();
}

#[test]
fn below_the_limit_stores_sweep_expired_items_a_few_at_a_time() {
    let c = one_shard(64 * MB as u64, true);
    for i in 0..1000 {
        let exptime = if i % 2 == 0 { 10 } else { 0 };
        c.store(StoreMode::Set, &key(i), 0, exptime, &[b'v'; 100], 1);
    }
    // One store does not pay for a pass over a thousand items.
    set(&c, b"first", b"x", 20);
    let first = c.stats().reclaimed;
    assert!((1..=16).contains(&first), "{first} reclaimed by one store");
    // A pass's worth of stores reclaims them all.
    for i in 0..100 {
        set(&c, format!("later{i}").as_bytes(), b"x", 20);
    }
    assert_eq!(c.stats().reclaimed, 500);
    assert_eq!(c.stats().curr_items, 500 + 101);
    c.check();
}

#[test]
fn flushed_items_are_reclaimed_before_a_live_one_is_evicted() {
    let c = small_cache(100, 5, true);
    for i in 0..100 {
        set(&c, &key(i), &[b'v'; 100], 1);
    }
    c.flush_all(0, 2);
    for i in 100..200 {
        set(&c, &key(i), &[b'v'; 100], 2);
    }
    let s = c.stats();
    assert_eq!(
        (s.reclaimed, s.evictions, s.curr_items),
        (100, 0, 100),
        "{s:?}"
    );
    c.check();
}

#[test]
fn after_a_crawl_expired_memory_is_reused_without_evicting() {
    let c = one_shard(100 * accounted_size(5, 100) + 50 * EXPTIME_BYTES, true);
    for i in 0..100 {
        let exptime = if i % 2 == 0 { 10 } else { 0 };
        c.store(StoreMode::Set, &key(i), 0, exptime, &[b'v'; 100], 1);
    }
    assert_eq!(c.crawl_expired(20, usize::MAX), 50);
    for i in 100..150 {
        set(&c, &key(i), &[b'v'; 100], 20);
    }
    assert_eq!(c.stats().evictions, 0);
    assert!((0..100)
        .filter(|i| i % 2 == 1)
        .all(|i| get(&c, &key(i), 20).is_some()));
}

#[test]
fn without_eviction_a_full_cache_refuses_stores() {
    let c = small_cache(10, 5, false);
    for i in 0..10 {
        assert_eq!(set(&c, &key(i), &[b'v'; 100], 1), StoreResult::Stored);
    }
    assert_eq!(set(&c, &key(10), &[b'v'; 100], 1), StoreResult::OutOfMemory);
    // Same size in place: fits.
    assert_eq!(set(&c, &key(1), &[b'w'; 100], 1), StoreResult::Stored);
    // A replace that cannot fit keeps the old item; a set that cannot fit drops it.
    let big = [b'x'; 500];
    assert_eq!(
        c.store(StoreMode::Replace, &key(2), 0, 0, &big, 1),
        StoreResult::OutOfMemory
    );
    assert_eq!(get(&c, &key(2), 1), Some(vec![b'v'; 100]));
    assert_eq!(set(&c, &key(3), &big, 1), StoreResult::OutOfMemory);
    assert_eq!(get(&c, &key(3), 1), None);
    assert_eq!(set(&c, &key(10), &[b'v'; 100], 1), StoreResult::Stored);
    let s = c.stats();
    assert_eq!((s.evictions, s.curr_items), (0, 10));
    c.check();
}

#[test]
fn without_eviction_every_shard_fills_before_a_store_is_refused() {
    let item = accounted_without_eviction(5, 100);
    let c = Cache::new(Config {
        max_bytes: 400 * item,
        item_size_max: 2048,
        evict: false,
        cas: true,
        shards: 8,
    });
    assert_eq!(c.shard_count(), 8);
    let mut stored = 0;
    while set(&c, &key(stored), &[b'v'; 100], 1) == StoreResult::Stored {
        stored += 1;
    }
    // Keys spread unevenly over the shards: a refusal at the first full shard would come
    // tens of items early.
    assert_eq!(stored, 400);
    c.check();
    // A delete anywhere makes room for any key, whichever shard it falls in.
    for i in 0..20 {
        assert!(c.delete(&key(i), 1));
        assert_eq!(
            set(&c, format!("new{i}").as_bytes(), &[b'v'; 100], 1),
            StoreResult::Stored,
            "after delete {i}"
        );
        c.check();
    }
    assert_eq!(c.stats().evictions, 0);
}

#[test]
fn without_eviction_a_growing_counter_borrows_room_from_another_shard() {
    let c = Cache::new(Config {
        max_bytes: 64 * 1024,
        item_size_max: 2048,
        evict: false,
        cas: true,
        shards: 8,
    });
    // "counter9" fits a 24-byte allocation, the 20 digits of u64::MAX need 40 bytes.
    assert_eq!(set(&c, b"counter", b"9", 1), StoreResult::Stored);
    // The counter's shard has no room left to grow it; the next shard has that room.
    let home = c.locate(b"counter").1;
    let spare = c.shards[home].0.lock().lend(u64::MAX);
    c.shards[(home + 1) % 8].0.lock().extend_limit(spare);
    assert_eq!(
        c.incr_decr(b"counter", true, u64::MAX - 9, 1),
        DeltaResult::Value(u64::MAX)
    );
    assert_eq!(
        get(&c, b"counter", 1),
        Some(u64::MAX.to_string().into_bytes())
    );
    c.check();
}

#[test]
fn without_eviction_expired_items_still_make_room() {
    // Ten items with an expiry time, which takes 4 bytes more each.
    let c = one_shard(10 * (accounted_size(5, 100) + EXPTIME_BYTES), false);
    for i in 0..10 {
        c.store(StoreMode::Set, &key(i), 0, 5, &[b'v'; 100], 1);
    }
    assert_eq!(set(&c, &key(10), &[b'v'; 100], 4), StoreResult::OutOfMemory);
    assert_eq!(set(&c, &key(10), &[b'v'; 100], 5), StoreResult::Stored);
    // The store sweeps the shard: every expired item goes, not only the one it needed.
    assert_eq!((c.stats().reclaimed, c.stats().curr_items), (10, 1));
}

#[test]
fn incr_without_room_to_grow_is_out_of_memory() {
    let b = b"bbbbbbbbbb";
    let c = Cache::new(Config {
        max_bytes: accounted_without_eviction(1, 3) + accounted_without_eviction(b.len(), 9),
        item_size_max: 100,
        evict: false,
        cas: true,
        shards: 1,
    });
    assert_eq!(set(&c, b"a", b"99", 1), StoreResult::Stored);
    assert_eq!(set(&c, b, b"999999999", 1), StoreResult::Stored);
    // One byte is left: enough for "100", and the old copy's space is reused.
    assert_eq!(c.incr_decr(b"a", true, 1, 1), DeltaResult::Value(100));
    c.check();
    // 19 digits need 10 bytes more: no room.
    assert_eq!(
        c.incr_decr(b, true, u64::MAX / 2, 1),
        DeltaResult::OutOfMemory
    );
    assert_eq!(get(&c, b, 1), Some(b"999999999".to_vec()));
}

#[test]
fn memory_never_exceeds_the_limit() {
    let max_bytes = 256 * 1024;
    let c = Cache::new(Config {
        max_bytes,
        item_size_max: 16 * 1024,
        evict: true,
        cas: true,
        shards: 4,
    });
    assert_eq!(c.shard_count(), 4);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let key = format!("key{}", next() % 3000).into_bytes();
        let len = (next() % 12_000) as usize;
        let value = vec![b'v'; if i % 3 == 0 { len } else { len % 300 }];
        let r = c.store(StoreMode::Set, &key, 0, 0, &value, 1);
        assert!(
            matches!(r, StoreResult::Stored | StoreResult::TooLarge),
            "{r:?}"
        );
        if i % 5 == 0 {
            get(&c, &key, 1);
        }
        assert!(c.stats().bytes <= max_bytes);
    }
    assert!(c.stats().evictions > 1000);
    c.check();
}

#[test]
fn the_largest_item_always_fits_a_shard() {
    let c = Cache::new(Config {
        max_bytes: 2 * MB as u64,
        ..Config::default()
    });
    assert_eq!(c.shard_count(), 1);
    let value = vec![b'x'; 1_048_516];
    assert_eq!(set(&c, b"k", &value, 1), StoreResult::Stored);
    assert_eq!(set(&c, b"l", &value, 1), StoreResult::Stored);
    assert_eq!(get(&c, b"l", 1).map(|v| v.len()), Some(value.len()));
    assert_eq!(Cache::new(Config::default()).shard_count(), 16);
    let tiny = Cache::new(Config {
        max_bytes: 1000,
        ..Config::default()
    });
    assert_eq!(tiny.shard_count(), 1);
    assert_eq!(set(&tiny, b"k", &[0; 2000], 1), StoreResult::OutOfMemory);
    // A shard's log names at most 4 GiB: a large limit is split so that none takes over half.
    let large = Cache::new(Config {
        max_bytes: 100 << 30,
        ..Config::default()
    });
    assert!(large.shard_count() > 16);
    assert!((100 << 30) / large.shard_count() as u64 <= SHARD_BYTES_MAX);
    assert!(SHARD_BYTES_MAX <= (log::MAX_SEGMENTS * log::SEGMENT_BYTES / 2) as u64);
}

#[test]
fn stats_count_stores_and_reset_keeps_gauges() {
    let c = cache();
    set(&c, b"a", b"1", 1);
    set(&c, b"b", b"22", 1);
    set(&c, b"a", b"333", 1);
    let s = c.stats();
    assert_eq!((s.curr_items, s.total_items), (2, 3));
    assert_eq!(s.bytes, accounted_size(1, 3) + accounted_size(1, 2));
    assert_eq!(s.limit_maxbytes, 64 * MB as u64);
    c.delete(b"b", 1);
    c.reset_stats();
    let s = c.stats();
    assert_eq!(
        (s.curr_items, s.total_items, s.bytes),
        (1, 0, accounted_size(1, 3))
    );
}

#[test]
fn crawler_frees_expired_and_flushed_items_within_its_budget() {
    let c = cache();
    for i in 0..300 {
        let exptime = if i < 100 { 10 } else { 0 };
        c.store(StoreMode::Set, &key(i), 0, exptime, b"v", 1);
    }
    assert_eq!(c.crawl_expired(5, 1000), 0);
    assert_eq!(c.crawl_expired(11, 10), 10);
    assert_eq!(c.crawl_expired(11, 1000), 90);
    let s = c.stats();
    assert_eq!(
        (s.curr_items, s.crawler_reclaimed, s.expired_unfetched),
        (200, 100, 100)
    );
    c.flush_all(12, 12);
    assert_eq!(c.crawl_expired(12, usize::MAX), 200);
    let s = c.stats();
    assert_eq!((s.curr_items, s.bytes, s.expired_unfetched), (0, 0, 100));
    c.check();
}

#[test]
fn the_crawler_frees_a_big_shards_expired_items_a_sixtieth_at_a_time() {
    let c = one_shard(64 << 20, true);
    for i in 0..200_000 {
        c.store(StoreMode::Set, &key(i), 0, 10, b"v", 1);
    }
    let first = c.crawl_expired(11, usize::MAX);
    assert!(first > 0 && first < 20_000, "one call freed {first}");
    let (mut freed, mut calls) = (first, 1);
    while freed < 200_000 {
        freed += c.crawl_expired(11, usize::MAX);
        calls += 1;
        assert!(calls <= 61, "{freed} freed in {calls} calls");
    }
    assert_eq!(c.crawl_expired(11, usize::MAX), 0);
    assert_eq!(c.stats().curr_items, 0);
    c.check();
}

#[test]
fn for_each_item_walks_live_items_with_their_metadata() {
    let c = cache();
    for i in 0..1000 {
        c.store(
            StoreMode::Set,
            &key(i),
            i as u32,
            if i < 10 { 5 } else { 0 },
            b"abc",
            1,
        );
    }
    // The first read marks the item fetched; the second moves its access time (memcached).
    get(&c, &key(500), 3);
    get(&c, &key(500), 4);
    let mut seen = Vec::new();
    c.for_each_item(6, |m| {
        seen.push((
            m.key.to_vec(),
            m.flags,
            m.fetched,
            m.last_access,
            m.cas,
            m.value_len,
            m.size,
        ))
    });
    assert_eq!(seen.len(), 990);
    seen.sort();
    let (k, flags, fetched, la, cas, value_len, size) = &seen[490];
    assert_eq!(
        (k.as_slice(), *flags, *fetched, *la),
        (&key(500)[..], 500, true, 4)
    );
    assert_eq!((*value_len, *size), (3, memcached_size(5, 3, 500, true)));
    assert_ne!(*cas, 0);
    assert!(seen.iter().filter(|s| s.2).count() == 1);
}

#[test]
fn a_walk_in_steps_sees_every_item_that_stays_while_others_come_and_go() {
    let c = cache();
    for i in 0..5000 {
        set(&c, &key(i), b"abc", 1);
    }
    let mut cursor = ItemCursor::default();
    let mut seen = HashSet::new();
    let mut steps = 0;
    let mut more = true;
    while more {
        more = c.walk_items(2, &mut cursor, |m| {
            seen.insert(m.key.to_vec());
        });
        // Between steps: new items, replaced ones (which move in the log) and deleted ones.
        steps += 1;
        set(&c, &key(10_000 + steps), b"new", 2);
        set(&c, &key(steps % 2500), b"replaced", 2);
        c.delete(&key(2500 + steps), 2);
    }
    assert!(steps > 10, "walked in {steps} steps: not in parts");
    assert!(
        !c.walk_items(2, &mut cursor, |_| {}),
        "an ended walk stays ended"
    );
    let stayed = (steps + 1..2500).map(|i| key(2500 + i));
    let missed: Vec<_> = stayed.filter(|k| !seen.contains(k)).collect();
    assert!(
        missed.is_empty(),
        "{} items that stayed were not seen",
        missed.len()
    );
    c.check();
}

#[test]
fn lowering_the_limit_evicts_at_once() {
    let c = cache();
    for i in 0..10_000 {
        set(&c, &key(i), &[b'v'; 100], 1);
    }
    let before = c.stats().bytes;
    c.set_max_bytes(before / 2);
    let s = c.stats();
    assert_eq!(s.limit_maxbytes, before / 2);
    assert!(s.bytes <= before / 2);
    assert!(s.evictions >= 4000);
    c.check();
}

#[test]
fn accounted_bytes_per_item_are_within_a_tenth_of_memcached() {
    // memcached 1.6 stores a 10-byte key and a 100-byte value in a 169-byte item (48 header,
    // key + NUL, value + CRLF, 8 CAS), kept in a 192-byte slab chunk, plus ~8 bytes of hash
    // table: about 200 bytes.
    let c = cache();
    let n = 100_000;
    for i in 0..n {
        let key = format!("key{i:07}").into_bytes();
        assert_eq!(key.len(), 10);
        assert_eq!(set(&c, &key, &[b'v'; 100], 1), StoreResult::Stored);
    }
    let s = c.stats();
    assert_eq!(s.curr_items, n);
    assert_eq!(s.bytes, n * accounted_size(10, 100));
    let per_item = s.bytes / n;
    assert!(per_item <= 220, "{per_item} bytes per item");
    // Header, key, value, index and ghost.
    assert_eq!(per_item, 17 + 10 + 100 + 8 + 3);
}

#[test]
fn concurrent_use_keeps_every_shard_consistent() {
    let max_bytes = 512 * 1024;
    let c = Arc::new(Cache::new(Config {
        max_bytes,
        item_size_max: 4096,
        evict: true,
        cas: true,
        shards: 8,
    }));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let mut x = t + 1;
                for i in 0..20_000u32 {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let key = format!("k{}", (x >> 33) % 5000).into_bytes();
                    let now = i / 1000;
                    match (x >> 20) % 6 {
                        0 | 1 => {
                            c.store(
                                StoreMode::Set,
                                &key,
                                0,
                                now + 3,
                                &vec![b'1'; (x >> 40) as usize % 900],
                                now,
                            );
                        }
                        2 => {
                            c.get(&key, now, |v| v.value.len());
                        }
                        3 => {
                            c.incr_decr(&key, true, 1, now);
                        }
                        4 => {
                            c.delete(&key, now);
                        }
                        _ => {
                            c.crawl_expired(now, 10);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(c.stats().bytes <= max_bytes);
    c.check();
}

/// An exported item, copied: key, value, flags, exptime, last access, fetched, stale, binary key.
type Exported = (Vec<u8>, Vec<u8>, u32, Time, Time, bool, bool, bool);

/// Every live item export lends, copied, sorted by key.
fn exported(c: &Cache, now: Time) -> Vec<Exported> {
    let mut items = Vec::new();
    c.export(now, |i| {
        items.push((
            i.key.to_vec(),
            i.value.to_vec(),
            i.flags,
            i.exptime,
            i.last_access,
            i.fetched,
            i.stale,
            i.binary_key,
        ));
        Ok::<(), ()>(())
    })
    .unwrap();
    items.sort();
    items
}

#[test]
fn export_sees_every_item_that_stays_while_stores_move_and_evict_others() {
    // Several batches of items (an export copies a few hundred at a time).
    let n = 2000;
    let c = small_cache(n as u64, 5, true);
    for i in 0..n {
        set(&c, &key(i), &[b'v'; 100], 1);
        if i % 2 == 0 {
            // Read items move (small to main, and around main) instead of being evicted.
            get(&c, &key(i), 1);
        }
    }
    let present = |c: &Cache| -> HashSet<Vec<u8>> {
        (0..n).map(key).filter(|k| get(c, k, 1).is_some()).collect()
    };
    let before = present(&c);
    let mut seen = HashSet::new();
    let mut fresh = 10 * n;
    let result: Result<(), ()> = c.export(1, |item| {
        seen.insert(item.key.to_vec());
        // New keys come in faster than the walk goes: the store evicts and moves items the
        // walk has not reached yet.
        for _ in 0..3 {
            set(&c, &key(fresh), &[b'v'; 100], 1);
            fresh += 1;
        }
        Ok(())
    });
    assert_eq!(result, Ok(()));
    let stayed: Vec<_> = before.intersection(&present(&c)).cloned().collect();
    assert!(stayed.len() >= 100, "only {} items stayed", stayed.len());
    assert!(c.stats().evictions >= 1000);
    let missed: Vec<_> = stayed.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missed.is_empty(),
        "not exported: {} of {}",
        missed.len(),
        stayed.len()
    );
    c.check();
}

#[test]
fn a_refused_import_leaves_the_old_item() {
    let c = small_cache(10, 5, true);
    let value = [b'v'; 100];
    for i in 0..10 {
        assert_eq!(c.import(&saved(&key(i), &value), 2), ImportResult::Stored);
    }
    assert_eq!(
        c.import(&saved(&key(0), &[b'b'; 1500]), 2),
        ImportResult::NoRoom
    );
    assert_eq!(get(&c, &key(0), 2).unwrap(), value, "the old item stays");
    c.check();
}

#[test]
fn a_limit_raised_past_what_the_shards_can_hold_is_capped() {
    let c = cache();
    c.set_max_bytes(1 << 50);
    let n = c.shard_count() as u64;
    assert_eq!(c.stats().limit_maxbytes, SHARD_LIMIT_MAX * n);
    assert!(SHARD_LIMIT_MAX < (log::MAX_SEGMENTS * log::SEGMENT_BYTES) as u64);
    c.check();
}

#[test]
fn export_then_import_gives_back_every_live_item_with_its_state() {
    let c = cache();
    for i in 0..3000 {
        let value = vec![b'a' + (i % 26) as u8; i % 700];
        c.store(
            StoreMode::Set,
            &key(i),
            i as u32,
            (i % 3) as Time * 100,
            &value,
            10,
        );
    }
    c.store(StoreMode::Set, b"gone", 0, 20, b"x", 10);
    c.get(&key(1), 11, |_| ());
    c.mark_stale(&key(2), None, None, 12);
    c.store_item(
        StoreRequest {
            binary_key: true,
            ..StoreRequest::new(StoreMode::Set, b"b64", 0, 0, b"v")
        },
        13,
    );
    let saved = exported(&c, 30);
    assert_eq!(saved.len(), 3001, "the expired item is not exported");
    let copy = cache();
    c.export(30, |item| match copy.import(item, 30) {
        ImportResult::Stored => Ok(()),
        other => Err(other),
    })
    .unwrap();
    assert_eq!(exported(&copy, 30), saved);
    let k1 = saved.iter().find(|i| i.0 == key(1)).unwrap();
    assert!(
        k1.5 && k1.4 == 10,
        "fetched, and a first read keeps the access time"
    );
    assert!(saved.iter().find(|i| i.0 == key(2)).unwrap().6, "stale");
    assert!(
        saved.iter().find(|i| i.0 == b"b64").unwrap().7,
        "binary key"
    );
    assert_eq!(copy.stats().curr_items, 3001);
    copy.check();
}

#[test]
fn export_stops_at_the_first_error() {
    let c = cache();
    for i in 0..100 {
        set(&c, &key(i), b"v", 1);
    }
    let mut seen = 0;
    let result = c.export(1, |_| {
        seen += 1;
        if seen == 10 {
            Err("full disk")
        } else {
            Ok(())
        }
    });
    assert_eq!((result, seen), (Err("full disk"), 10));
}

#[test]
fn import_refuses_instead_of_evicting_and_replaces_a_live_item() {
    let c = small_cache(10, 5, true);
    let value = [b'v'; 100];
    let keys: Vec<Vec<u8>> = (0..12).map(key).collect();
    let results: Vec<ImportResult> = keys
        .iter()
        .map(|k| c.import(&saved(k, &value), 2))
        .collect();
    assert!(results[..10].iter().all(|r| *r == ImportResult::Stored));
    assert!(results[10..].iter().all(|r| *r == ImportResult::NoRoom));
    assert_eq!(c.stats().evictions, 0);
    assert_eq!(get(&c, &key(0), 2).unwrap(), value, "the first items stay");
    assert_eq!(c.import(&saved(&key(0), b"new"), 2), ImportResult::Stored);
    assert_eq!(get(&c, &key(0), 2).unwrap(), b"new");
    let huge = vec![0; 4096];
    assert_eq!(c.import(&saved(b"big", &huge), 2), ImportResult::TooLarge);
    c.check();
}

#[test]
fn a_full_cache_imported_with_the_same_limit_keeps_every_item() {
    // Keys spread over the shards by a random seed, so in the fresh cache some shards get more
    // items than their share holds; they borrow the others' unused room, eviction on or not.
    let item_bytes = accounted_size(5, 100);
    let cfg = Config {
        max_bytes: 8 * 50 * item_bytes,
        item_size_max: 2048,
        evict: true,
        cas: true,
        shards: 8,
    };
    let c = Cache::new(cfg.clone());
    assert_eq!(c.shard_count(), 8);
    for i in 0..2000 {
        assert_eq!(set(&c, &key(i), &[b'v'; 100], 1), StoreResult::Stored);
    }
    assert!(c.stats().evictions > 0);
    let saved = exported(&c, 2);
    assert_eq!(saved.len(), 400, "every shard is full");
    let copy = Cache::new(cfg);
    c.export(2, |item| match copy.import(item, 2) {
        ImportResult::Stored => Ok(()),
        other => Err(other),
    })
    .unwrap();
    assert_eq!(exported(&copy, 2), saved);
    let stats = copy.stats();
    assert_eq!((stats.curr_items, stats.evictions), (400, 0));
    assert!(stats.bytes <= stats.limit_maxbytes);
    copy.check();
}

#[test]
fn clear_drops_every_item() {
    let c = cache();
    for i in 0..500 {
        set(&c, &key(i), b"value", 1);
    }
    c.clear();
    assert_eq!(c.stats().curr_items, 0);
    assert_eq!(c.stats().bytes, 0);
    assert!(get(&c, &key(3), 1).is_none());
    assert_eq!(set(&c, &key(3), b"again", 2), StoreResult::Stored);
    c.check();
}

#[test]
fn without_eviction_giving_items_an_expiry_time_needs_no_room() {
    // Items stored without an expiry time fill the shard, then each is given one (touch, as
    // gat and `mg T` do). A copy 4 bytes larger per item took the shard over its limit with
    // nothing to evict (the review found 210,865 of 204,800 bytes).
    let c = small_cache(100, 5, false);
    let mut stored = 0;
    while set(&c, &key(stored), &[b'v'; 100], 1) == StoreResult::Stored {
        stored += 1;
    }
    for i in 0..stored {
        assert!(c.touch(&key(i), 1000, 1), "touch {i}");
    }
    let (used, limit) = {
        let shard = c.shards[0].0.lock();
        (shard.used(), shard.limit())
    };
    assert!(used <= limit, "{used} bytes used of a {limit}-byte limit");
    assert_eq!(stored, 100);
    for i in 0..stored {
        assert_eq!(get(&c, &key(i), 999), Some(vec![b'v'; 100]), "key {i}");
        assert_eq!(get(&c, &key(i), 1000), None, "key {i} expired");
    }
    c.check();
}

#[test]
fn without_eviction_lending_a_little_room_compacts_only_what_it_needs() {
    let c = one_shard(1024 * 1024, false);
    let mut stored = 0;
    while set(&c, &key(stored), &[b'v'; 100], 1) == StoreResult::Stored {
        stored += 1;
    }
    // Every other item deleted: every segment is half dead.
    for i in (0..stored).step_by(2) {
        assert!(c.delete(&key(i), 1));
    }
    let live = c.stats().bytes;
    let mut shard = c.shards[0].0.lock();
    let before = shard.used();
    let dead = before - live;
    assert!(
        dead > 4 * 64 * 1024,
        "{dead} dead bytes: several segments' worth"
    );
    // A shard asked for a few hundred bytes more than it has free compacts one segment or
    // two, not all of them under its lock (every one before: `used` fell to the live bytes).
    let ask = shard.limit() - before + 500;
    assert_eq!(shard.lend(ask), ask);
    // Given back, as borrowing would give it to another shard: the shares add up again.
    shard.extend_limit(ask);
    let compacted = before - shard.used();
    assert!(
        compacted > 0 && compacted < dead / 4,
        "compacted {compacted} of {dead} dead bytes"
    );
    drop(shard);
    for i in (1..stored).step_by(2) {
        assert_eq!(get(&c, &key(i), 1), Some(vec![b'v'; 100]), "key {i}");
    }
    c.check();
}
