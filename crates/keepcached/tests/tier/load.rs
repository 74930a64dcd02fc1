//! The stale-read load through a proxy: `WRITERS` clients, each owning `KEYS_EACH` keys, set and
//! delete them and record every acknowledged write; `CHECKERS` clients read the keys meanwhile and
//! count stale reads and lost writes. Values are written as `v<version>-<padding>`, each writer's
//! versions only growing, so a read tells which write it saw. A client whose connection fails
//! stops (counted in `Counts::failed`): its last write stays unsettled.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::Client;

pub const WRITERS: usize = 48;
pub const CHECKERS: usize = 2;
pub const KEYS_EACH: usize = 8;

/// What the clients were told of a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ack {
    /// The version of the last acknowledged write.
    pub version: u64,
    /// Whether that write was a delete.
    pub deleted: bool,
    /// Whether a later write is unsettled: sent and not yet acknowledged, or failed; either
    /// may have been applied.
    pub unsettled: bool,
}

/// A value's version.
pub fn version(value: &str) -> u64 {
    value[1..value.find('-').unwrap()].parse().unwrap()
}

/// A read is stale when it returns a value older than the last acknowledged write, or the value
/// of a key acknowledged deleted. A newer value is from a write not yet acknowledged: fine.
pub fn stale(read: &Option<String>, ack: Ack) -> bool {
    read.as_deref()
        .is_some_and(|v| version(v) < ack.version || (ack.deleted && version(v) <= ack.version))
}

#[derive(Default, Debug)]
pub struct Counts {
    pub reads: AtomicU64,
    pub stale: AtomicU64,
    /// Misses after an acknowledged set, with nothing unsettled.
    pub lost: AtomicU64,
    /// Reads answered with an error line (no replica could be read): an outage the client is
    /// told of, not a miss.
    pub read_errors: AtomicU64,
    pub writes: AtomicU64,
    /// Clients stopped by a failed connection.
    pub failed: AtomicU64,
}

/// As the tests print it: `writes=.. reads=.. stale_reads=.. lost_writes=..`.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |count: &AtomicU64| count.load(Ordering::Relaxed);
        write!(
            f,
            "writes={} reads={} stale_reads={} lost_writes={} read_errors={}",
            n(&self.writes),
            n(&self.reads),
            n(&self.stale),
            n(&self.lost),
            n(&self.read_errors)
        )
    }
}

pub struct Load {
    acked: Arc<Mutex<HashMap<String, Ack>>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Connects the clients to `proxy` and starts them.
    pub async fn start(proxy: &str) -> Load {
        let (acked, counts, stop) = (
            Arc::new(Mutex::new(HashMap::<String, Ack>::new())),
            Arc::new(Counts::default()),
            Arc::new(AtomicBool::new(false)),
        );
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = Client::reach(proxy).await;
            let (acked, counts, stop) = (acked.clone(), counts.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut version = 0u64;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{w}:{}", i % KEYS_EACH);
                    i += 1;
                    version += 1;
                    let deleted = i.is_multiple_of(7);
                    if let Some(ack) = acked.lock().unwrap().get_mut(&key) {
                        ack.unsettled = true;
                    }
                    let reply = if deleted {
                        client.call(&format!("delete {key}\r\n")).await
                    } else {
                        client.set(&key, &format!("v{version}-xxxxxxxx")).await
                    };
                    let Ok(reply) = reply else {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    if ["STORED\r\n", "DELETED\r\n", "NOT_FOUND\r\n"].contains(&reply.as_str()) {
                        let ack = Ack {
                            version,
                            deleted,
                            unsettled: false,
                        };
                        acked.lock().unwrap().insert(key, ack);
                        counts.writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for c in 0..CHECKERS {
            let mut client = Client::reach(proxy).await;
            let (acked, counts, stop) = (acked.clone(), counts.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}:{}", i % WRITERS, (i / WRITERS) % KEYS_EACH);
                    i += 1;
                    let before = acked.lock().unwrap().get(&key).copied();
                    let Ok(read) = client.get_or_error(&key).await else {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    let settled = before.is_some_and(|b| !b.unsettled)
                        && acked.lock().unwrap().get(&key).copied() == before;
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                    let Ok(value) = read else {
                        counts.read_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some(ack) = before else {
                        continue;
                    };
                    if stale(&value, ack) {
                        counts.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    if value.is_none() && !ack.deleted && settled {
                        counts.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Load {
            acked,
            counts,
            stop,
            tasks,
        }
    }

    fn writes(&self) -> u64 {
        self.counts.writes.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes were acknowledged from now on, at most `within`; `logs` says
    /// what to show if the load stalls.
    pub async fn await_writes(&self, more: u64, within: Duration, logs: impl Fn() -> String) {
        let wanted = self.writes() + more;
        let deadline = Instant::now() + within;
        while self.writes() < wanted {
            assert!(
                Instant::now() < deadline,
                "load stalled at {} writes\n{}",
                self.writes(),
                logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; returns what was acknowledged, and the counts.
    pub async fn stop(self) -> (HashMap<String, Ack>, Arc<Counts>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.counts)
    }
}
