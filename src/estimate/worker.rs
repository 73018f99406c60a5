//! The estimator: one background thread that runs estimation jobs from a queue bounded in jobs and in bytes.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// The name of the estimator's thread (as `top -H` and panic messages show it).
pub const THREAD_NAME: &str = "gpt-api-estimate";

/// Work for the estimator's thread: typically count the tokens, then hand the record on.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// The handle to the estimator's thread; clones share it. The thread stops once [`Estimator::close`] is
/// called or the last clone is dropped, after running what is queued.
///
/// Submitting never waits: a full or closed estimator hands the job back, and the caller falls back to a rough
/// count. The queue is a mutex and a condition variable: the lock is held only to push or pop (never while a
/// job runs), and jobs come only from the few answers without usage, so submitters hardly contend on it.
#[derive(Clone)]
pub struct Estimator {
    inner: Arc<Handle>,
}

/// What an estimator has done since it started, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EstimatorCounts {
    /// Jobs run to their end.
    pub done: u64,
    /// Jobs handed back by `submit`: full in jobs or bytes, or closed.
    pub refused: u64,
    /// Jobs that panicked (the thread goes on with the next).
    pub panicked: u64,
    /// Jobs accepted but not run: still queued when `close`'s deadline passed.
    pub dropped: u64,
}

/// Owned by the clones; the thread holds only `shared`, so dropping the last clone can stop it.
struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or the estimator closes.
    work: Condvar,
    /// Signalled when the thread has finished.
    finished: Condvar,
    max_jobs: usize,
    max_bytes: usize,
    done: AtomicU64,
    refused: AtomicU64,
    panicked: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(usize, Job)>,
    /// Jobs queued or running, and the bytes they declared.
    jobs: usize,
    bytes: usize,
    closed: bool,
    /// The thread has ended (or never started).
    finished: bool,
}

impl Estimator {
    /// Starts the thread, which first builds both encoders (~0.2 s once per process) so that the first job is
    /// not slow, with a queue of at most `max_jobs` jobs and `max_bytes` declared bytes (queued or running).
    /// If the thread cannot be started, the error is logged and every job is refused.
    pub fn start(max_jobs: usize, max_bytes: usize) -> Estimator {
        Estimator::start_with(max_jobs, max_bytes, super::warm)
    }

    /// [`Estimator::start`] with `first` run on the thread before any job (the tests skip the warm-up).
    pub(super) fn start_with(max_jobs: usize, max_bytes: usize, first: fn()) -> Estimator {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            max_jobs,
            max_bytes,
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let worker = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(&worker, first));
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(e) => {
                log::error!("cannot start the token estimator's thread ({e}); usage will be guessed from bytes");
                let mut state = shared.lock();
                state.closed = true;
                state.finished = true;
                None
            }
        };
        Estimator {
            inner: Arc::new(Handle {
                shared,
                thread: Mutex::new(thread),
            }),
        }
    }

    /// Queues `job`, which holds about `bytes` (request body, kept text), without waiting. Hands the job back
    /// when the queue is full in jobs or in bytes (a job larger than the byte bound never fits), or closed.
    pub fn submit(&self, bytes: usize, job: Job) -> Result<(), Job> {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        let fits = state.jobs < shared.max_jobs
            && state
                .bytes
                .checked_add(bytes)
                .is_some_and(|b| b <= shared.max_bytes);
        if state.closed || !fits {
            drop(state);
            shared.refused.fetch_add(1, Relaxed);
            return Err(job);
        }
        state.queue.push_back((bytes, job));
        state.jobs += 1;
        state.bytes += bytes;
        drop(state);
        shared.work.notify_one();
        Ok(())
    }

    /// Stops accepting jobs, lets the thread run what is queued, and waits for it to end, at most `deadline`.
    /// Returns how many queued jobs were dropped unrun because the deadline passed (a job running then is
    /// left to finish on its own). Later calls return 0.
    pub fn close(&self, deadline: Duration) -> usize {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        state.closed = true;
        shared.work.notify_all();
        let (mut state, _) = shared
            .finished
            .wait_timeout_while(state, deadline, |s| !s.finished)
            .unwrap_or_else(PoisonError::into_inner);
        let unrun: Vec<(usize, Job)> = state.queue.drain(..).collect();
        state.jobs -= unrun.len();
        state.bytes -= unrun.iter().map(|(bytes, _)| bytes).sum::<usize>();
        let finished = state.finished;
        drop(state);
        // Dropped outside the lock: a job's captures may do anything when dropped.
        let dropped = unrun.len();
        drop(unrun);
        shared.dropped.fetch_add(dropped as u64, Relaxed);
        if finished {
            let thread = self
                .inner
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(thread) = thread {
                // The thread has returned: joining does not wait, and its jobs' panics were caught.
                let _ = thread.join();
            }
        }
        dropped
    }

    /// Jobs queued or running, and the bytes they declared.
    pub fn queued(&self) -> (usize, usize) {
        let state = self.inner.shared.lock();
        (state.jobs, state.bytes)
    }

    pub fn counts(&self) -> EstimatorCounts {
        let shared = &self.inner.shared;
        EstimatorCounts {
            done: shared.done.load(Relaxed),
            refused: shared.refused.load(Relaxed),
            panicked: shared.panicked.load(Relaxed),
            dropped: shared.dropped.load(Relaxed),
        }
    }
}

impl fmt::Debug for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (jobs, bytes) = self.queued();
        f.debug_struct("Estimator")
            .field("jobs", &jobs)
            .field("bytes", &bytes)
            .finish()
    }
}

impl Drop for Handle {
    /// The last clone is gone: the thread runs what is queued and ends (nobody waits for it).
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    /// The state; a panic never happens while it is locked, but a poisoned lock is used as it is anyway.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job, waiting for one; `None` once closed and empty.
    fn next(&self) -> Option<(usize, Job)> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The thread: `first`, then jobs in the order they were queued until closed and empty.
fn run(shared: &Shared, first: fn()) {
    if catch_unwind(first).is_err() {
        log::error!("the token estimator's warm-up panicked");
    }
    while let Some((bytes, job)) = shared.next() {
        match catch_unwind(AssertUnwindSafe(job)) {
            Ok(()) => shared.done.fetch_add(1, Relaxed),
            Err(_) => {
                log::error!("a token estimation job panicked; its record may be missing");
                shared.panicked.fetch_add(1, Relaxed)
            }
        };
        let mut state = shared.lock();
        state.jobs -= 1;
        state.bytes -= bytes;
    }
    shared.lock().finished = true;
    shared.finished.notify_all();
}
