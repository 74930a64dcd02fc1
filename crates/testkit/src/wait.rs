//! Waiting without sleeping a guessed time: poll a condition, a child's exit, or collect what a
//! program writes to a pseudo-terminal, each with a deadline.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `condition` every 50 ms until it holds (true) or `within` passes (false).
pub fn poll_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `child`'s exit status, once it exited within `within`.
pub fn child_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Collects what arrives on a pseudo-terminal's master side, on a thread of its own, until
/// every slave is closed.
pub fn collect_terminal(master: OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let mut master = File::from(master);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the child and our copy of the slave are closed.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    bytes
}
