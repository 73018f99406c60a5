//! The usage writer's pace on a shared core: it offers the core to other threads after every [`STEP`] of work.
//!
//! A batch is a few milliseconds of CPU on the writer's thread (rendering 512 records, their SQLite inserts, the
//! rollup, the commit). Where the writer shares a core with a proxy worker (a one-core machine or container, a
//! gateway pinned to one core), a request that arrives during a batch waits until the scheduler ends the writer's
//! slice: with Linux's EEVDF and its run-to-parity, about a slice (0.75-3 ms), which is what recording added to
//! the p99 at one connection (#21). [`step`], called between the pieces of a batch, yields the thread
//! (`sched_yield`) once [`STEP`] has passed since it last did: a runnable request thread then gets the core
//! after at most about one step, and the writer goes on as soon as it is idle again. With nothing else runnable
//! a yield returns at once (a fraction of a microsecond), so the batch costs what it did. It only lowers the
//! writer's precedence for a moment, never its share: a saturated core still gives the writer its fair part, so
//! records are not starved into being dropped (which a lower priority such as `SCHED_IDLE` would risk).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Work between two offers of the core; what a request sharing the core may wait behind the writer.
pub const STEP: Duration = Duration::from_micros(50);

thread_local! {
    /// When this thread last yielded (or first stepped).
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How many times this thread yielded in [`step`] (for tests and benchmarks).
    static YIELDS: Cell<u64> = const { Cell::new(0) };
}

/// Between two pieces of the writer's work: yields the thread when [`STEP`] has passed since its last yield.
/// The first call after an idle time (the writer asleep between batches) yields too: one extra yield per batch.
pub fn step() {
    let now = Instant::now();
    LAST.with(|last| match last.get() {
        Some(then) if now.duration_since(then) < STEP => {}
        _ => {
            std::thread::yield_now();
            YIELDS.with(|y| y.set(y.get() + 1));
            // After the yield, not before: the time others ran is not the writer's work.
            last.set(Some(Instant::now()));
        }
    });
}

/// How many times this thread has yielded in [`step`].
pub fn yields() -> u64 {
    YIELDS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy for `d`, not stepping.
    fn spin(d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn steps_yield_once_per_step_of_work_not_at_every_call() {
        // On a fresh thread: the counters are per thread.
        std::thread::spawn(|| {
            step();
            assert_eq!(yields(), 1, "the first step yields");
            // Each piece of work of a step's length ends in a yield.
            for _ in 0..5 {
                let before = yields();
                spin(STEP);
                step();
                assert_eq!(yields(), before + 1);
            }
            // Calls closer together than a step yield at most once a step, however many there are (on a loaded
            // machine this thread may be held back between calls, so fewer calls are not checked).
            let before = yields();
            let start = Instant::now();
            for _ in 0..100_000 {
                step();
            }
            let took = start.elapsed();
            let yielded = yields() - before;
            let most = u64::try_from(took.as_micros() / STEP.as_micros()).unwrap() + 1;
            assert!(yielded <= most, "{yielded} yields in {took:?}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_first_step_after_an_idle_time_yields_then_the_clock_starts_again() {
        std::thread::spawn(|| {
            step();
            let before = yields();
            std::thread::sleep(STEP * 4);
            step();
            assert_eq!(yields() - before, 1);
            // The next call comes well within a step (unless the machine holds this thread back that long).
            step();
            assert!(yields() - before <= 2);
        })
        .join()
        .unwrap();
    }
}
