//! The client that writes through the VIP across the failover, and the check of what it wrote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client::Conn;
use super::{topology, vip};

/// Reads every key in `acked` (key -> the sequence number of its last acknowledged value
/// `v<seq>`): (stale, lost). A value newer than the acknowledged one is neither: a write whose
/// reply was lost may have been applied.
pub fn verify(conn: &mut Conn, acked: &HashMap<String, u64>) -> anyhow::Result<(u64, u64)> {
    let (mut stale, mut lost) = (0, 0);
    for (key, &seq) in acked {
        match conn.get(key)? {
            None => lost += 1,
            Some(value) => {
                let got: u64 = value
                    .strip_prefix('v')
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("{key} holds {value:?}, which no client wrote"))?;
                stale += u64::from(got < seq);
            }
        }
    }
    Ok((stale, lost))
}

/// A client on `web` writing `failover:<n % 100> = v<n>` through the VIP, one write at a time
/// on one connection, reconnecting after a failure.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    /// Taken by [`Writer::stop`]; a writer dropped without it (a failed step) just stops.
    thread: Option<std::thread::JoinHandle<anyhow::Result<WriterReport>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A client operation that failed: when, after how many acknowledged writes, and why.
#[derive(Debug)]
pub struct Failure {
    pub at: Instant,
    pub acked_before: u64,
    pub why: String,
}

#[derive(Debug)]
pub struct WriterReport {
    /// key -> sequence number of its last acknowledged value.
    pub acked: HashMap<String, u64>,
    pub ok: u64,
    /// Operations that failed; the first few are kept ([`SHOWN`]) and the last, not every one
    /// (a refused connection fails a hundred times a second while nobody holds the VIP).
    pub failed: u64,
    pub first_failures: Vec<Failure>,
    pub last_failure: Option<Failure>,
    pub longest_pause: Duration,
}

/// Failures kept to be shown.
pub const SHOWN: usize = 5;

impl Writer {
    pub fn start(web_ns: String) -> anyhow::Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::Builder::new()
                .name("web-writer".into())
                .spawn(move || write_until(&web_ns, &stop, &acked))?
        };
        Ok(Writer {
            stop,
            acked,
            thread: Some(thread),
        })
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> anyhow::Result<WriterReport> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(report)) => report,
            _ => bail!("the client thread panicked"),
        }
    }
}

impl WriterReport {
    fn fail(&mut self, why: String) {
        let failure = Failure {
            at: Instant::now(),
            acked_before: self.ok,
            why,
        };
        self.failed += 1;
        if self.first_failures.len() < SHOWN {
            self.first_failures.push(failure);
        } else {
            self.last_failure = Some(failure);
        }
    }

    /// The latest failure, if any.
    pub fn latest_failure(&self) -> Option<&Failure> {
        self.last_failure.as_ref().or(self.first_failures.last())
    }
}

fn write_until(
    web_ns: &str,
    stop: &AtomicBool,
    acked_count: &AtomicU64,
) -> anyhow::Result<WriterReport> {
    // This thread stays in web's namespace for its life.
    let _inside = topology::enter_namespace(web_ns)?;
    let mut report = WriterReport {
        acked: HashMap::new(),
        ok: 0,
        failed: 0,
        first_failures: Vec::new(),
        last_failure: None,
        longest_pause: Duration::ZERO,
    };
    let timeout = Duration::from_millis(500);
    let mut conn: Option<Conn> = None;
    let mut last_ok = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match Conn::connect_within(vip(), timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    report.fail(format!("{e:#}"));
                    // A refused connection fails at once; do not spin on it.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        seq += 1;
        let key = format!("failover:{}", seq % 100);
        match c.set(&key, &format!("v{seq}")) {
            Ok(true) => {
                let now = Instant::now();
                report.longest_pause = report.longest_pause.max(now - last_ok);
                last_ok = now;
                report.acked.insert(key, seq);
                report.ok += 1;
                acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                report.fail(format!("set {key}: not stored"));
                conn = None;
            }
            Err(e) => {
                report.fail(format!("set {key}: {e:#}"));
                conn = None;
            }
        }
    }
    Ok(report)
}
