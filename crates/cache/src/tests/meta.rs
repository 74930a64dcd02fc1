//! The per-item state and the one-step compare-and-act operations the meta and binary protocols
//! need: reads that report the state before them, vivify, win tokens, stale items, base64 keys,
//! and stores, deletes and deltas that compare a CAS under the same lock that acts.

use std::sync::Arc;
use std::thread;

use crate::*;

const FETCH: ReadOptions = ReadOptions {
    bump: true,
    vivify: false,
};
const PEEK: ReadOptions = ReadOptions {
    bump: false,
    vivify: false,
};
const VIVIFY: ReadOptions = ReadOptions {
    bump: true,
    vivify: true,
};

fn cache() -> Cache {
    Cache::new(Config::default())
}

fn cache_without_cas() -> Cache {
    Cache::new(Config {
        cas: false,
        ..Config::default()
    })
}

/// (fetched, last access) before a read at `now`.
fn state(c: &Cache, key: &[u8], opts: ReadOptions, now: Time) -> Option<(bool, Time)> {
    c.read(key, opts, now, |item| (item.fetched(), item.last_access()))
        .hit()
}

/// (stale, token sent, binary key), without counting as a read.
fn meta_bits(c: &Cache, key: &[u8]) -> (bool, bool, bool) {
    c.read(key, PEEK, 1, |item| {
        (item.stale(), item.token_sent(), item.binary_key())
    })
    .hit()
    .expect("item present")
}

fn cas_of(c: &Cache, key: &[u8], now: Time) -> u64 {
    c.get(key, now, |item| item.cas)
        .hit()
        .expect("item present")
}

fn value_of(c: &Cache, key: &[u8], now: Time) -> Option<Vec<u8>> {
    c.read(key, PEEK, now, |item| item.view().value.to_vec())
        .hit()
}

fn store(c: &Cache, request: StoreRequest<'_>) -> StoreOutcome {
    c.store_item(request, 1)
}

fn set_request<'a>(key: &'a [u8], value: &'a [u8]) -> StoreRequest<'a> {
    StoreRequest::new(StoreMode::Set, key, 0, 0, value)
}

fn counter(incr: bool, delta: u64, compare_cas: u64) -> DeltaRequest {
    DeltaRequest {
        incr,
        delta,
        compare_cas,
        create: None,
    }
}

#[test]
fn a_read_sees_the_state_before_it() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    assert_eq!(state(&c, b"k", FETCH, 5), Some((false, 1)));
    // memcached moves the access time from the second read on.
    assert_eq!(state(&c, b"k", FETCH, 6), Some((true, 1)));
    assert_eq!(state(&c, b"k", FETCH, 7), Some((true, 6)));
    assert_eq!(state(&c, b"k", PEEK, 9), Some((true, 7)));
    assert_eq!(state(&c, b"k", PEEK, 9), Some((true, 7)));
    assert_eq!(state(&c, b"other", FETCH, 9), None);
}

#[test]
fn a_read_without_bump_leaves_no_trace() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    assert_eq!(state(&c, b"k", PEEK, 3), Some((false, 1)));
    assert_eq!(state(&c, b"k", PEEK, 4), Some((false, 1)));
    // text reads and touches are fetches.
    assert!(c.touch(b"k", 0, 4));
    assert_eq!(state(&c, b"k", PEEK, 5), Some((true, 1)));
}

#[test]
fn a_store_makes_a_new_unfetched_item() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    c.get(b"k", 2, |_| ());
    c.store(StoreMode::Append, b"k", 0, 0, b"w", 3);
    assert_eq!(state(&c, b"k", PEEK, 4), Some((false, 3)));
    c.get(b"k", 4, |_| ());
    // A refused add is a use of the item, as memcached's do_item_update: the time moves.
    c.store(StoreMode::Add, b"k", 0, 0, b"x", 5);
    assert_eq!(state(&c, b"k", PEEK, 6), Some((true, 5)));
}

#[test]
fn the_set_of_exptime_happens_in_the_order_the_closure_does_it() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 50, b"v", 1);
    let seen = c
        .read(b"k", FETCH, 2, |item| {
            let before = item.view().exptime;
            item.set_exptime(90);
            (before, item.view().exptime)
        })
        .hit();
    assert_eq!(seen, Some((50, 90)));
    assert_eq!(c.get(b"k", 3, |i| i.exptime).hit(), Some(90));
}

#[test]
fn vivify_creates_an_empty_item_on_a_miss() {
    let c = cache();
    let got = c.read(b"k", VIVIFY, 1, |item| {
        let v = item.view();
        let seen = (
            item.created(),
            v.value.len(),
            v.flags,
            v.exptime,
            item.fetched(),
        );
        item.set_exptime(30);
        seen
    });
    assert_eq!(got, Lookup::Hit((true, 0, 0, 0, false)));
    assert_eq!(c.get(b"k", 2, |i| i.exptime).hit(), Some(30));
    let s = c.stats();
    assert_eq!((s.curr_items, s.total_items), (1, 1));
    // A second vivifying read finds the item.
    assert_eq!(
        c.read(b"k", VIVIFY, 2, |item| item.created()).hit(),
        Some(false)
    );
    // An expired item is replaced.
    assert_eq!(
        c.read(b"k", VIVIFY, 30, |item| item.created()).hit(),
        Some(true)
    );
    assert_eq!(c.read(b"x", FETCH, 30, |_| ()), Lookup::Miss);
    c.check();
}

#[test]
fn vivify_that_cannot_fit_is_a_miss() {
    let c = Cache::new(Config {
        max_bytes: super::accounted_without_eviction(1, 1),
        item_size_max: 100,
        evict: false,
        cas: true,
        shards: 1,
    });
    assert_eq!(
        c.store(StoreMode::Set, b"a", 0, 0, b"1", 1),
        StoreResult::Stored
    );
    assert_eq!(c.read(b"b", VIVIFY, 1, |_| ()), Lookup::Miss);
    assert_eq!(c.read(b"b", VIVIFY, 1, |_| ()), Lookup::Miss);
}

#[test]
fn the_win_token_is_sent_once_until_the_item_is_stored_again() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
    c.read(b"k", FETCH, 1, |item| item.send_token());
    assert_eq!(meta_bits(&c, b"k"), (false, true, false));
    c.store(StoreMode::Set, b"k", 0, 0, b"w", 2);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
}

#[test]
fn mark_stale_keeps_the_item_with_a_new_cas_and_no_token() {
    let c = cache();
    assert_eq!(c.mark_stale(b"k", None, None, 1), StaleResult::NotFound);
    c.store(StoreMode::Set, b"k", 0, 100, b"v", 1);
    let old = cas_of(&c, b"k", 1);
    c.read(b"k", FETCH, 1, |item| item.send_token());
    assert_eq!(
        c.mark_stale(b"k", Some(old + 1), None, 1),
        StaleResult::Exists
    );
    assert_eq!(meta_bits(&c, b"k"), (false, true, false));
    let StaleResult::Marked { cas } = c.mark_stale(b"k", Some(old), Some(30), 2) else {
        panic!("not marked");
    };
    assert!(cas > old);
    assert_eq!(cas_of(&c, b"k", 2), cas);
    assert_eq!(meta_bits(&c, b"k"), (true, false, false));
    assert_eq!(value_of(&c, b"k", 2), Some(b"v".to_vec()));
    assert_eq!(c.get(b"k", 2, |i| i.exptime).hit(), Some(30));
    // Without a new time the old one stays; a later store clears the mark.
    assert!(matches!(
        c.mark_stale(b"k", None, None, 3),
        StaleResult::Marked { .. }
    ));
    assert_eq!(c.get(b"k", 3, |i| i.exptime).hit(), Some(30));
    c.store(StoreMode::Set, b"k", 0, 0, b"w", 4);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
}

#[test]
fn without_cas_mark_stale_and_delete_compare_with_zero() {
    let c = cache_without_cas();
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    assert_eq!(c.mark_stale(b"k", Some(5), None, 1), StaleResult::Exists);
    assert_eq!(
        c.mark_stale(b"k", Some(0), None, 1),
        StaleResult::Marked { cas: 0 }
    );
    assert_eq!(c.delete_if(b"k", Some(5), 1), DeleteResult::Exists);
    assert_eq!(c.delete_if(b"k", Some(0), 1), DeleteResult::Deleted);
}

#[test]
fn delete_if_compares_and_deletes_in_one_step() {
    let c = cache();
    assert_eq!(c.delete_if(b"k", None, 1), DeleteResult::NotFound);
    assert_eq!(c.delete_if(b"k", Some(1), 1), DeleteResult::NotFound);
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    let cas = cas_of(&c, b"k", 1);
    assert_eq!(c.delete_if(b"k", Some(cas + 1), 1), DeleteResult::Exists);
    assert_eq!(c.delete_if(b"k", Some(0), 1), DeleteResult::Exists);
    assert_eq!(value_of(&c, b"k", 1), Some(b"v".to_vec()));
    assert_eq!(c.delete_if(b"k", Some(cas), 1), DeleteResult::Deleted);
    assert_eq!(value_of(&c, b"k", 1), None);
    c.store(StoreMode::Set, b"k", 0, 0, b"v", 1);
    assert_eq!(c.delete_if(b"k", None, 1), DeleteResult::Deleted);
}

#[test]
fn store_item_returns_the_cas_it_stored() {
    let c = cache();
    let first = store(&c, set_request(b"k", b"v"));
    assert_eq!(first.result, StoreResult::Stored);
    assert_eq!(first.cas, cas_of(&c, b"k", 1));
    let appended = store(&c, StoreRequest::new(StoreMode::Append, b"k", 0, 0, b"w"));
    assert_eq!(appended.result, StoreResult::Stored);
    assert!(appended.cas > first.cas);
    assert_eq!(appended.cas, cas_of(&c, b"k", 1));
    let refused = store(&c, StoreRequest::new(StoreMode::Add, b"k", 0, 0, b"x"));
    assert_eq!((refused.result, refused.cas), (StoreResult::NotStored, 0));
    assert_eq!(
        cache_without_cas().store_item(set_request(b"k", b"v"), 1),
        StoreOutcome {
            result: StoreResult::Stored,
            cas: 0
        }
    );
}

#[test]
fn store_item_compares_a_cas_for_every_mode() {
    let c = cache();
    let with_cas = |mode, cas, value| StoreRequest {
        compare_cas: cas,
        ..StoreRequest::new(mode, b"k", 0, 0, value)
    };
    // Set and replace with a CAS are compare-and-swaps.
    assert_eq!(
        store(&c, with_cas(StoreMode::Set, 7, b"a")).result,
        StoreResult::NotFound
    );
    assert_eq!(
        store(&c, with_cas(StoreMode::Add, 7, b"a")).result,
        StoreResult::Stored
    );
    let cas = cas_of(&c, b"k", 1);
    for mode in [
        StoreMode::Set,
        StoreMode::Replace,
        StoreMode::Append,
        StoreMode::Prepend,
    ] {
        assert_eq!(
            store(&c, with_cas(mode, cas + 100, b"x")).result,
            StoreResult::Exists,
            "{mode:?}"
        );
    }
    assert_eq!(value_of(&c, b"k", 1), Some(b"a".to_vec()));
    let appended = store(&c, with_cas(StoreMode::Append, cas, b"b"));
    assert_eq!(appended.result, StoreResult::Stored);
    let prepended = store(&c, with_cas(StoreMode::Prepend, appended.cas, b"c"));
    assert_eq!(prepended.result, StoreResult::Stored);
    let replaced = store(&c, with_cas(StoreMode::Replace, prepended.cas, b"d"));
    assert_eq!(replaced.result, StoreResult::Stored);
    assert_eq!(value_of(&c, b"k", 1), Some(b"d".to_vec()));
    // Append without a CAS, or an append when CAS is off, does not compare.
    let plain = store(&c, with_cas(StoreMode::Append, 0, b"e"));
    assert_eq!(plain.result, StoreResult::Stored);
    let off = cache_without_cas();
    off.store(StoreMode::Set, b"k", 0, 0, b"a", 1);
    assert_eq!(
        off.store_item(with_cas(StoreMode::Append, 12345, b"b"), 1)
            .result,
        StoreResult::Stored
    );
    c.check();
}

#[test]
fn an_invalidating_cas_store_with_an_older_cas_stores_stale() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 100, b"a", 1);
    let old = cas_of(&c, b"k", 1);
    c.store(StoreMode::Set, b"k", 0, 200, b"b", 1);
    let current = cas_of(&c, b"k", 1);
    c.read(b"k", FETCH, 1, |item| item.send_token());
    let invalidating = |cas, value| StoreRequest {
        invalidate: true,
        ..StoreRequest::new(StoreMode::Cas(cas), b"k", 3, 30, value)
    };
    // A CAS above the item's, or 0, is refused as without I.
    assert_eq!(
        store(&c, invalidating(current + 1, b"x")).result,
        StoreResult::Exists
    );
    assert_eq!(store(&c, invalidating(0, b"x")).result, StoreResult::Exists);
    let stale = store(&c, invalidating(old, b"c"));
    assert_eq!(stale.result, StoreResult::Stored);
    assert!(stale.cas > current);
    // The value and flags are new; the expiry time and the token are the old item's.
    assert_eq!(
        c.get(b"k", 1, |i| (i.value.to_vec(), i.flags, i.exptime))
            .hit(),
        Some((b"c".to_vec(), 3, 200))
    );
    assert_eq!(meta_bits(&c, b"k"), (true, true, false));
    // The current CAS is an ordinary compare-and-swap: not stale.
    let fresh = store(&c, invalidating(stale.cas, b"d"));
    assert_eq!(fresh.result, StoreResult::Stored);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
    assert_eq!(c.get(b"k", 1, |i| i.exptime).hit(), Some(30));
    // Without invalidate an older CAS is refused.
    assert_eq!(
        c.store(StoreMode::Cas(old), b"k", 0, 0, b"e", 1),
        StoreResult::Exists
    );
    // Without CAS nothing is older.
    let off = cache_without_cas();
    off.store(StoreMode::Set, b"k", 0, 0, b"a", 1);
    assert_eq!(
        off.store_item(invalidating(1, b"b"), 1).result,
        StoreResult::Exists
    );
}

#[test]
fn the_base64_key_mark_stays_with_the_item_it_was_stored_with() {
    let c = cache();
    let binary = |mode, value| StoreRequest {
        binary_key: true,
        ..StoreRequest::new(mode, b"k", 0, 0, value)
    };
    store(&c, binary(StoreMode::Set, b"1"));
    assert_eq!(meta_bits(&c, b"k"), (false, false, true));
    // Reads, touches and in-place increments keep it.
    c.get(b"k", 1, |_| ());
    c.touch(b"k", 0, 1);
    c.incr_decr(b"k", true, 1, 1);
    assert!(c.mark_stale(b"k", None, None, 1) != StaleResult::NotFound);
    assert_eq!(meta_bits(&c, b"k"), (true, false, true));
    // memcached's new items do not: a growing increment, an append, a plain store.
    c.incr_decr(b"k", true, 10, 1);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
    store(&c, binary(StoreMode::Set, b"1"));
    store(&c, binary(StoreMode::Append, b"2"));
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
    store(&c, binary(StoreMode::Set, b"1"));
    c.store(StoreMode::Set, b"k", 0, 0, b"1", 1);
    assert_eq!(meta_bits(&c, b"k"), (false, false, false));
}

#[test]
fn delta_compares_the_cas_and_returns_the_new_one() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"5", 1);
    let cas = cas_of(&c, b"k", 1);
    fn seen(c: &mut Counter) -> (u64, u64, Time, bool) {
        (c.value(), c.cas(), c.exptime(), c.created())
    }
    assert_eq!(
        c.delta(b"k", counter(true, 1, cas + 1), 1, seen),
        DeltaOutcome::Exists
    );
    assert_eq!(value_of(&c, b"k", 1), Some(b"5".to_vec()));
    let DeltaOutcome::Done((6, new_cas, 0, false)) = c.delta(b"k", counter(true, 1, cas), 1, seen)
    else {
        panic!("not incremented");
    };
    assert!(new_cas > cas);
    assert_eq!(cas_of(&c, b"k", 1), new_cas);
    // A CAS of 0 does not compare, as memcached's do_add_delta.
    assert!(matches!(
        c.delta(b"k", counter(false, 2, 0), 1, seen),
        DeltaOutcome::Done((4, _, 0, false))
    ));
    assert_eq!(
        c.delta(b"missing", counter(true, 1, 0), 1, seen),
        DeltaOutcome::NotFound
    );
}

#[test]
fn delta_refuses_an_empty_value_before_comparing_the_cas() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"", 1);
    assert_eq!(
        c.delta(b"k", counter(true, 1, 12345), 1, |_| ()),
        DeltaOutcome::NonNumeric
    );
    c.store(StoreMode::Set, b"k", 0, 0, b"x", 1);
    assert_eq!(
        c.delta(b"k", counter(true, 1, 12345), 1, |_| ()),
        DeltaOutcome::Exists
    );
}

#[test]
fn delta_creates_a_missing_counter_in_the_same_step() {
    let c = cache();
    let create = DeltaRequest {
        create: Some((42, 50)),
        ..counter(true, 1, 999)
    };
    let DeltaOutcome::Done((42, cas, 50, true)) = c.delta(b"k", create, 1, |c| {
        (c.value(), c.cas(), c.exptime(), c.created())
    }) else {
        panic!("not created");
    };
    assert_eq!(
        c.get(b"k", 1, |i| (i.value.to_vec(), i.flags, i.cas, i.exptime))
            .hit(),
        Some((b"42".to_vec(), 0, cas, 50))
    );
    // The closure may still change the new item's time (meta ma N after T).
    c.delete(b"k", 1);
    c.delta(b"k", create, 1, |c| c.set_exptime(70));
    assert_eq!(c.get(b"k", 1, |i| i.exptime).hit(), Some(70));
    // A live counter is changed, not created.
    assert!(matches!(
        c.delta(
            b"k",
            DeltaRequest {
                compare_cas: 0,
                ..create
            },
            1,
            |c| (c.value(), c.created())
        ),
        DeltaOutcome::Done((43, false))
    ));
}

#[test]
fn delta_sets_the_time_only_on_an_item_it_did_not_replace() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"5", 1);
    c.delta(b"k", counter(true, 1, 0), 1, |c| c.set_exptime(40));
    assert_eq!(c.get(b"k", 1, |i| i.exptime).hit(), Some(40));
    // 6 + 4 = 10 needs a second digit: memcached's new item keeps the old time.
    let shown = c.delta(b"k", counter(true, 4, 0), 1, |c| {
        c.set_exptime(90);
        c.exptime()
    });
    assert_eq!(shown, DeltaOutcome::Done(90));
    assert_eq!(
        c.get(b"k", 1, |i| (i.value.to_vec(), i.exptime)).hit(),
        Some((b"10".to_vec(), 40))
    );
}

#[test]
fn a_growing_delta_makes_a_new_unfetched_item_and_an_in_place_one_keeps_state() {
    let c = cache();
    c.store(StoreMode::Set, b"k", 0, 0, b"10", 1);
    c.get(b"k", 2, |_| ());
    c.mark_stale(b"k", None, None, 2);
    c.incr_decr(b"k", false, 1, 3);
    assert_eq!(state(&c, b"k", PEEK, 4), Some((true, 3)));
    assert!(meta_bits(&c, b"k").0);
    c.incr_decr(b"k", true, 991, 5);
    assert_eq!(value_of(&c, b"k", 5), Some(b"1000".to_vec()));
    assert_eq!(state(&c, b"k", PEEK, 6), Some((false, 5)));
    assert!(!meta_bits(&c, b"k").0);
}

#[test]
fn compare_and_act_does_not_lose_updates_between_threads() {
    let c = Arc::new(cache());
    c.store(StoreMode::Set, b"n", 0, 0, b"0", 1);
    c.store(StoreMode::Set, b"s", 0, 0, b"", 1);
    let threads = 4;
    let rounds = 500;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                let mut done = 0;
                while done < rounds {
                    // Read, then act only if nobody wrote in between: retry otherwise.
                    let cas = cas_of(&c, b"n", 1);
                    if let DeltaOutcome::Done(()) = c.delta(b"n", counter(true, 1, cas), 1, |_| ())
                    {
                        let letter = [b'a' + t];
                        loop {
                            let append = StoreRequest {
                                compare_cas: cas_of(&c, b"s", 1),
                                ..StoreRequest::new(StoreMode::Append, b"s", 0, 0, &letter)
                            };
                            match c.store_item(append, 1).result {
                                StoreResult::Stored => break,
                                StoreResult::Exists => continue,
                                other => panic!("append answered {other:?}"),
                            }
                        }
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let total = threads as usize * rounds;
    assert_eq!(value_of(&c, b"n", 1), Some(total.to_string().into_bytes()));
    assert_eq!(value_of(&c, b"s", 1).map(|v| v.len()), Some(total));
    c.check();
}
