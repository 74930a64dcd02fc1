//! Rate limiting of the warnings about discarded adverts.
//!
//! A peer with the wrong password sends one advert a second forever, and an
//! attacker can send thousands: each (peer, reason) pair is logged the first
//! time it is seen, then at most once per [`SUMMARY_EVERY`] with the number
//! of adverts discarded in between. Every discarded advert is still counted
//! in the status output. Pure (the caller passes the time), so the limiting
//! is tested here; the daemon does the logging.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The shortest time between two warnings about the same peer and reason.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Pairs remembered at most: spoofed sources cannot grow the table. Past
/// this, new peers share one entry under the unspecified address, which the
/// log line calls "other peers".
pub const MAX_PAIRS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Entry {
    logged_at: Duration,
    since: u64,
}

/// Remembers which (peer, reason) pairs were logged when.
#[derive(Debug, Default)]
pub struct RejectLog {
    entries: HashMap<(IpAddr, &'static str), Entry>,
}

/// What to write for one discarded advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write a warning; `suppressed` adverts of this pair were discarded
    /// without one since the last warning. `peer` is unspecified when the
    /// table is full and the advert is accounted with other peers.
    Log { peer: IpAddr, suppressed: u64 },
    /// Counted, not logged.
    Quiet,
}

impl RejectLog {
    /// Records one advert from `peer` discarded for `reason` at `now`.
    pub fn note(&mut self, now: Duration, peer: IpAddr, reason: &'static str) -> Verdict {
        let mut key = (peer, reason);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_PAIRS {
            // Pairs quiet for a whole period have nothing left to summarise.
            self.entries
                .retain(|_, e| e.since > 0 || now.saturating_sub(e.logged_at) < SUMMARY_EVERY);
            if self.entries.len() >= MAX_PAIRS {
                key = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), reason);
            }
        }
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        logged_at: now,
                        since: 0,
                    },
                );
                Verdict::Log {
                    peer: key.0,
                    suppressed: 0,
                }
            }
            Some(e) if now.saturating_sub(e.logged_at) >= SUMMARY_EVERY => {
                let suppressed = e.since;
                *e = Entry {
                    logged_at: now,
                    since: 0,
                };
                Verdict::Log {
                    peer: key.0,
                    suppressed,
                }
            }
            Some(e) => {
                e.since += 1;
                Verdict::Quiet
            }
        }
    }

    /// Pairs remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    const AUTH: &str = "auth";

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_advert_then_one_summary_per_period() {
        let mut log = RejectLog::default();
        let first = Verdict::Log {
            peer: PEER,
            suppressed: 0,
        };
        assert_eq!(log.note(s(0), PEER, AUTH), first);
        for t in 1..60 {
            assert_eq!(log.note(s(t), PEER, AUTH), Verdict::Quiet);
        }
        assert_eq!(
            log.note(s(60), PEER, AUTH),
            Verdict::Log {
                peer: PEER,
                suppressed: 59
            }
        );
        assert_eq!(log.note(s(61), PEER, AUTH), Verdict::Quiet);
        // Another reason, or another peer, is news of its own.
        assert_eq!(log.note(s(61), PEER, "ttl"), first);
        let other = IpAddr::from([198, 18, 0, 4]);
        assert!(matches!(
            log.note(s(61), other, AUTH),
            Verdict::Log { suppressed: 0, .. }
        ));
    }

    #[test]
    fn spoofed_sources_share_one_entry_past_the_bound() {
        let mut log = RejectLog::default();
        let mut logged = 0;
        for n in 0..10_000u32 {
            let peer = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n));
            if let Verdict::Log { .. } = log.note(s(1), peer, AUTH) {
                logged += 1;
            }
            log.note(s(1), peer, AUTH);
        }
        assert!(log.len() <= MAX_PAIRS + 1, "{}", log.len());
        // One line per remembered pair, and one for the rest.
        assert_eq!(logged, MAX_PAIRS + 1);
        // A period later, quiet pairs make room again.
        let late = IpAddr::from([203, 0, 113, 1]);
        let mut fresh = RejectLog::default();
        for n in 0..MAX_PAIRS as u32 {
            fresh.note(s(0), IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n)), AUTH);
        }
        assert_eq!(
            fresh.note(s(60), late, AUTH),
            Verdict::Log {
                peer: late,
                suppressed: 0
            }
        );
    }
}
