//! Worker threads, each running its own single-threaded runtime: memcached's thread model.
//!
//! A connection lives on one worker from accept to close, so its socket, its task and every
//! wake-up stay on one thread with one epoll set. A work-stealing runtime instead parks idle
//! workers on a futex and hands readiness events across threads, which on a loaded server cost
//! more CPU than the requests themselves.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The number of the worker thread calling, `None` on any other thread. Code that keeps
/// per-worker resources (the proxy's backend connections) uses it to stay on its own thread.
pub fn worker_index() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Running worker threads. Dropping them without [`Workers::shutdown`] leaves the threads to
/// end on their own once the stop signal's sender is gone.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: Vec<oneshot::Sender<()>>,
    done: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count` threads (at least one) named `name-N`.
    pub fn start(count: usize, name: &str) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stop: Vec::with_capacity(count),
            done: Vec::with_capacity(count),
        };
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (done_tx, done_rx) = oneshot::channel();
            workers.handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(n)));
                    // A dropped sender ends the worker just as a sent stop does.
                    let _ = runtime.block_on(stop_rx);
                    // Dropping the runtime drops every task on it: the connections close.
                    drop(runtime);
                    let _ = done_tx.send(());
                })?;
            workers.stop.push(stop_tx);
            workers.done.push(done_rx);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker, round-robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[n].spawn(task);
    }

    /// Runs `task` on worker `n`.
    pub fn spawn_on<F>(&self, n: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles[n % self.handles.len()].spawn(task);
    }

    /// Stops every worker and waits until their tasks are dropped.
    pub async fn shutdown(self) {
        drop(self.stop);
        for done in self.done {
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_worker_and_end_with_it() {
        let workers = Workers::start(2, "test-worker").unwrap();
        assert_eq!(worker_index(), None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..4 {
            let tx = tx.clone();
            workers.spawn_on(n, async move {
                let _ = tx.send((n % 2, worker_index()));
            });
        }
        for _ in 0..4 {
            let (expected, ran_on) = rx.recv().await.unwrap();
            assert_eq!(ran_on, Some(expected));
        }
        // A task still running when the workers stop is dropped, not leaked.
        let (held_tx, held_rx) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _held = held_tx;
            std::future::pending::<()>().await;
        });
        workers.shutdown().await;
        assert!(held_rx.await.is_err(), "the pending task was dropped");
    }
}
