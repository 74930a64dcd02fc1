//! Per-thread shards of a value that many threads update and few read.

use std::sync::atomic::{AtomicUsize, Ordering};

/// More shards than any sensible thread count; threads beyond it share.
const SHARDS: usize = 16;

/// A value padded to its own cache lines (128 bytes: adjacent-line prefetch pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// `SHARDS` copies of `T`. A thread always gets the same one ([`Sharded::local`]); readers sum
/// over [`Sharded::iter`]. Bumping a shared atomic from every worker on every request makes
/// the cores trade the cache line back and forth; a thread's own shard stays in its cache.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The calling thread's shard.
    pub fn local(&self) -> &T {
        &self.shards[shard_index()].0
    }

    /// Every shard, for sums and resets.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

/// The calling thread's shard number, handed out round-robin as threads first ask.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn threads_count_into_their_own_shards_and_the_sum_is_whole() {
        let counter = Sharded::<AtomicU64>::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let sum: u64 = counter.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(sum, 4000);
        let used = counter
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) > 0)
            .count();
        assert!(used >= 2, "four threads landed in {used} shard(s)");
    }
}
