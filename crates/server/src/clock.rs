//! memcached's notion of time.
//!
//! The store keeps times as `u32` seconds relative to the process start ("rel time"), like
//! memcached, so that an item's times cost 4 bytes each. memcached backdates its start by 62
//! seconds so that relative time never reads 0 (0 means "never expires"); we do the same, which
//! also makes `uptime` and the absolute times in `lru_crawler metadump` agree with memcached.
//! Time is read from the monotonic clock, so a wall-clock jump does not expire the cache.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use keepcached_cache::Time;

/// memcached's `REALTIME_MAXDELTA`: an exptime up to 30 days is relative, beyond it absolute.
const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;
/// memcached starts its relative clock this many seconds in the past.
const START_OFFSET: u32 = 62;

#[derive(Debug)]
pub struct Clock {
    /// Unix time that relative time 0 stands for.
    process_started: i64,
    started: Instant,
    /// Seconds added by [`Clock::advance`], so tests can move time without sleeping.
    skew: AtomicU32,
}

impl Clock {
    pub fn start() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Clock {
            process_started: unix - i64::from(START_OFFSET),
            started: Instant::now(),
            skew: AtomicU32::new(0),
        }
    }

    /// Current relative time (memcached's `current_time`).
    pub fn now(&self) -> Time {
        let elapsed = self
            .started
            .elapsed()
            .as_secs()
            .min(u64::from(u32::MAX / 2)) as u32;
        START_OFFSET + elapsed + self.skew.load(Ordering::Relaxed)
    }

    /// Moves the clock forward; expiry and delayed flushes see the new time at once.
    pub fn advance(&self, seconds: u32) {
        self.skew.fetch_add(seconds, Ordering::Relaxed);
    }

    /// Unix time of relative time 0.
    pub fn process_started(&self) -> i64 {
        self.process_started
    }

    /// Unix time for a relative time.
    pub fn to_unix(&self, rel: Time) -> i64 {
        self.process_started + i64::from(rel)
    }

    /// Converts a client's exptime to relative time by memcached's rules: 0 never expires, up
    /// to 30 days is relative to now, above that an absolute unix time, and a negative value is
    /// already expired.
    pub fn exptime(&self, exptime: i32) -> Time {
        if exptime == 0 {
            return 0;
        }
        let exptime = if exptime < 0 {
            REALTIME_MAXDELTA + 1
        } else {
            i64::from(exptime)
        };
        if exptime > REALTIME_MAXDELTA {
            if exptime <= self.process_started {
                1
            } else {
                (exptime - self.process_started).min(i64::from(u32::MAX)) as Time
            }
        } else {
            (exptime + i64::from(self.now())).min(i64::from(u32::MAX)) as Time
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_rules() {
        let clock = Clock::start();
        let now = clock.now();
        assert_eq!(clock.exptime(0), 0);
        assert_eq!(clock.exptime(10), now + 10);
        assert_eq!(clock.exptime(30 * 24 * 3600), now + 30 * 24 * 3600);
        // Negative and absolute times in the past are already expired.
        assert_eq!(clock.exptime(-1), 1);
        assert_eq!(clock.exptime(30 * 24 * 3600 + 1), 1);
        let in_an_hour = clock.process_started() + i64::from(now) + 3600;
        assert_eq!(clock.exptime(in_an_hour as i32), now + 3600);
    }

    #[test]
    fn advance_moves_now() {
        let clock = Clock::start();
        let before = clock.now();
        clock.advance(100);
        assert!(clock.now() >= before + 100);
    }
}
