//! Stopping the demo on a signal: SIGINT, SIGTERM and SIGHUP are recorded, not acted on at
//! once, and every wait of the demo polls for them, so that the cleanup runs on the main
//! thread in one piece.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

/// The signal that asked the demo to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

/// A signal stopped the demo.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Signal::try_from(self.0) {
            Ok(s) => write!(f, "interrupted by {s}"),
            Err(_) => write!(f, "interrupted by signal {}", self.0),
        }
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT, SIGTERM and SIGHUP are taken by a thread that records the first of them (the
/// handlers are in place when this returns): each step polls for it and ends, and the
/// topology's cleanup then runs on the main thread, which a second signal does not cut short.
/// Handlers, unlike a blocked mask, are not inherited by the programs the demo starts.
pub fn watch_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal thread's runtime")?;
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ];
    // Registered here, before the thread starts, so that no signal meets the default action.
    let streams = runtime.block_on(async {
        kinds
            .into_iter()
            .map(|kind| Ok((kind.as_raw_value(), signal(kind)?)))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let streams = streams.context("handling SIGINT, SIGTERM and SIGHUP")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (number, mut stream) in streams {
                    tasks.spawn(async move {
                        while stream.recv().await.is_some() {
                            let _ = STOP.compare_exchange(
                                0,
                                number,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            );
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            })
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Whether a signal asked the demo to stop.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst) != 0
}

/// Err once a signal asked the demo to stop.
pub fn check_interrupt() -> anyhow::Result<()> {
    match STOP.load(Ordering::SeqCst) {
        0 => Ok(()),
        s => Err(Interrupted(s).into()),
    }
}

/// Sleeps `span` in short naps, ending early with Err on a signal.
pub fn pause(span: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + span;
    while Instant::now() < until {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    check_interrupt()
}

/// Polls `check` every 20 ms until it yields a value; fails after `limit` saying `what` never
/// happened.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupt()?;
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {} s", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
