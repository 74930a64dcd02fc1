//! What the items really take from the allocator, against what `stats().bytes` says.
//!
//! The measure is the process's resident memory (Linux: /proc/self/statm) before and after
//! storing the items; this file holds a single test so that no other test shares the process.

#![cfg(target_os = "linux")]

use keepcached_cache::{accounted_size, Cache, Config, StoreMode, StoreResult};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages in statm");
    pages * 4096
}

#[test]
fn accounted_bytes_match_resident_memory() {
    let n: u64 = 200_000;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key{i:07}").into_bytes()).collect();
    let value = [b'v'; 100];
    let cache = Cache::new(Config {
        max_bytes: 1 << 30,
        ..Config::default()
    });
    let before = resident_bytes();
    for key in &keys {
        assert_eq!(
            cache.store(StoreMode::Set, key, 0, 0, &value, 1),
            StoreResult::Stored
        );
    }
    let grown = resident_bytes() - before;
    let accounted = cache.stats().bytes;
    assert_eq!(accounted, n * accounted_size(10, 100));
    let ratio = grown as f64 / accounted as f64;
    eprintln!(
        "{n} items: resident +{grown} B ({} B/item), accounted {accounted} B ({} B/item), ratio {ratio:.3}",
        grown / n,
        accounted / n
    );
    assert!((0.8..=1.1).contains(&ratio), "ratio {ratio:.3}");
}
