//! Random operation sequences against a plain `HashMap` model, with memory to spare: the cache
//! must answer every operation as the model does.

use std::collections::HashMap;

use proptest::prelude::*;

use crate::*;

#[derive(Debug, Clone)]
struct Item {
    value: Vec<u8>,
    flags: u32,
    exptime: Time,
    /// The CAS the cache gave, when a read saw it; a store resets it.
    cas: Option<u64>,
}

#[derive(Debug, Default)]
struct Model {
    items: HashMap<Vec<u8>, Item>,
    flush_at: Option<Time>,
}

impl Model {
    fn advance(&mut self, now: Time) {
        if self.flush_at.is_some_and(|at| now >= at) {
            self.items.clear();
            self.flush_at = None;
        }
    }

    fn live(&mut self, key: &[u8], now: Time) -> Option<&mut Item> {
        self.advance(now);
        if self
            .items
            .get(key)
            .is_some_and(|i| i.exptime != 0 && i.exptime <= now)
        {
            self.items.remove(key);
        }
        self.items.get_mut(key)
    }
}

/// The counter rules for the values the generator makes: spaces, digits, then nothing or a space.
fn model_counter(value: &[u8]) -> Option<u64> {
    let start = value.iter().take_while(|&&b| b == b' ').count();
    let digits = value[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let rest = &value[start + digits..];
    if digits == 0 || rest.first().is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(&value[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        mode: u8,
        key: u8,
        value: Vec<u8>,
        flags: u32,
        ttl: Time,
    },
    Cas {
        key: u8,
        value: Vec<u8>,
        current: bool,
    },
    Get {
        key: u8,
    },
    Touch {
        key: u8,
        ttl: Time,
        with_get: bool,
    },
    Delete {
        key: u8,
    },
    Delta {
        key: u8,
        incr: bool,
        delta: u64,
    },
    Flush {
        delay: Time,
    },
    Advance {
        secs: Time,
    },
    Crawl,
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9]{1,3}",
        "[0-9 ]{0,5}",
        "[a-c ]{0,6}",
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
    ]
    .prop_map(String::into_bytes)
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    let ttl = prop_oneof![3 => Just(0), 2 => 1u32..6];
    prop_oneof![
        6 => (0u8..5, key.clone(), value(), 0u32..3, ttl.clone())
            .prop_map(|(mode, key, value, flags, ttl)| Op::Store { mode, key, value, flags, ttl }),
        2 => (key.clone(), value(), any::<bool>())
            .prop_map(|(key, value, current)| Op::Cas { key, value, current }),
        4 => key.clone().prop_map(|key| Op::Get { key }),
        2 => (key.clone(), ttl, any::<bool>())
            .prop_map(|(key, ttl, with_get)| Op::Touch { key, ttl, with_get }),
        2 => key.clone().prop_map(|key| Op::Delete { key }),
        3 => (key, any::<bool>(), prop_oneof![0u64..3, Just(u64::MAX), Just(1 << 63)])
            .prop_map(|(key, incr, delta)| Op::Delta { key, incr, delta }),
        1 => (0u32..4).prop_map(|delay| Op::Flush { delay }),
        2 => (0u32..3).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Crawl),
    ]
}

fn run(ops: Vec<Op>, cas: bool) {
    let cache = Cache::new(Config {
        max_bytes: 1 << 30,
        item_size_max: 1 << 20,
        evict: true,
        cas,
        shards: 4,
    });
    let mut model = Model::default();
    let mut now: Time = 1;
    let exptime = |ttl: Time, now: Time| if ttl == 0 { 0 } else { now + ttl };
    for op in ops {
        match op {
            Op::Store {
                mode,
                key,
                value,
                flags,
                ttl,
            } => {
                let k = vec![b'a' + key];
                let mode = [
                    StoreMode::Set,
                    StoreMode::Add,
                    StoreMode::Replace,
                    StoreMode::Append,
                    StoreMode::Prepend,
                ][mode as usize];
                let exptime = exptime(ttl, now);
                let got = cache.store(mode, &k, flags, exptime, &value, now);
                let exists = model.live(&k, now).is_some();
                let want = match (mode, exists) {
                    (StoreMode::Add, true)
                    | (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, false) => {
                        StoreResult::NotStored
                    }
                    (StoreMode::Append | StoreMode::Prepend, true) => {
                        let item = model.items.get_mut(&k).unwrap();
                        if mode == StoreMode::Append {
                            item.value.extend_from_slice(&value);
                        } else {
                            item.value.splice(0..0, value.iter().copied());
                        }
                        item.cas = None;
                        StoreResult::Stored
                    }
                    _ => {
                        model.items.insert(
                            k,
                            Item {
                                value,
                                flags,
                                exptime,
                                cas: None,
                            },
                        );
                        StoreResult::Stored
                    }
                };
                assert_eq!(got, want);
            }
            Op::Cas {
                key,
                value,
                current,
            } => {
                let k = vec![b'a' + key];
                let seen = cache.get(&k, now, |i| i.cas).hit();
                let want = match model.live(&k, now) {
                    None => StoreResult::NotFound,
                    Some(item) => {
                        let seen = seen.expect("cache and model agree the item is live");
                        assert_eq!(
                            seen,
                            *item.cas.get_or_insert(seen),
                            "CAS changed without a store"
                        );
                        if current && cas {
                            *item = Item {
                                value: value.clone(),
                                flags: 1,
                                exptime: 0,
                                cas: None,
                            };
                            StoreResult::Stored
                        } else {
                            StoreResult::Exists
                        }
                    }
                };
                let token = seen.map_or(7, |c| if current { c } else { c.wrapping_add(1) });
                assert_eq!(
                    cache.store(StoreMode::Cas(token), &k, 1, 0, &value, now),
                    want
                );
            }
            Op::Get { key } => {
                let k = vec![b'a' + key];
                let got = cache
                    .get(&k, now, |i| (i.value.to_vec(), i.flags, i.exptime, i.cas))
                    .hit();
                let want = model.live(&k, now).cloned();
                assert_eq!(
                    got.as_ref().map(|g| (&g.0, g.1, g.2)),
                    want.as_ref().map(|w| (&w.value, w.flags, w.exptime))
                );
                if let (Some(got), Some(item)) = (got, model.items.get_mut(&k)) {
                    assert_eq!(got.3 != 0, cas);
                    assert_eq!(
                        got.3,
                        *item.cas.get_or_insert(got.3),
                        "CAS changed without a store"
                    );
                }
            }
            Op::Touch { key, ttl, with_get } => {
                let k = vec![b'a' + key];
                let exptime = exptime(ttl, now);
                let got = if with_get {
                    cache
                        .get_and_touch(&k, exptime, now, |i| i.value.to_vec())
                        .hit()
                        .is_some()
                } else {
                    cache.touch(&k, exptime, now)
                };
                let want = model
                    .live(&k, now)
                    .map(|item| item.exptime = exptime)
                    .is_some();
                assert_eq!(got, want);
            }
            Op::Delete { key } => {
                let k = vec![b'a' + key];
                let want = model.live(&k, now).is_some();
                model.items.remove(&k);
                assert_eq!(cache.delete(&k, now), want);
            }
            Op::Delta { key, incr, delta } => {
                let k = vec![b'a' + key];
                let got = cache.incr_decr(&k, incr, delta, now);
                let want = match model.live(&k, now) {
                    None => DeltaResult::NotFound,
                    Some(item) => match model_counter(&item.value) {
                        None => DeltaResult::NonNumeric,
                        Some(n) => {
                            let n = if incr {
                                n.wrapping_add(delta)
                            } else {
                                n.saturating_sub(delta)
                            };
                            let mut digits = n.to_string().into_bytes();
                            if digits.len() < item.value.len() {
                                digits.resize(item.value.len(), b' ');
                            }
                            item.value = digits;
                            item.cas = None;
                            DeltaResult::Value(n)
                        }
                    },
                };
                assert_eq!(got, want);
            }
            Op::Flush { delay } => {
                cache.flush_all(now + delay, now);
                model.advance(now);
                if delay == 0 {
                    model.items.clear();
                    model.flush_at = None;
                } else {
                    model.flush_at = Some(now + delay);
                }
            }
            Op::Advance { secs } => now += secs,
            Op::Crawl => {
                cache.crawl_expired(now, usize::MAX);
                let live = model.items.keys().cloned().collect::<Vec<_>>();
                let live = live.iter().filter(|k| model.live(k, now).is_some()).count();
                assert_eq!(cache.stats().curr_items, live as u64);
            }
        }
    }
    cache.check();
    for key in 0..6u8 {
        let k = vec![b'a' + key];
        let got = cache.get(&k, now, |i| i.value.to_vec()).hit();
        assert_eq!(got, model.live(&k, now).map(|i| i.value.clone()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cache_agrees_with_a_hashmap(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, true);
    }

    #[test]
    fn cache_without_cas_agrees_with_a_hashmap(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, false);
    }
}
