//! The estimator's thread: order, both bounds, panics, closing with and without time to finish.

use std::sync::mpsc::{channel, Receiver, Sender};

use super::*;

const WAIT: Duration = Duration::from_secs(30);

fn no_warm_up() {}

fn estimator(max_jobs: usize, max_bytes: usize) -> Estimator {
    Estimator::start_with(max_jobs, max_bytes, no_warm_up)
}

/// A job that says it started, then waits for `release` (or gives up after [`WAIT`]).
fn gate(started: Sender<()>, release: Receiver<()>) -> Job {
    Box::new(move || {
        let _ = started.send(());
        let _ = release.recv_timeout(WAIT);
    })
}

/// Submits a gate and waits until it runs: the thread is then busy until `release` is sent to.
fn block(estimator: &Estimator, bytes: usize) -> Sender<()> {
    let (started, is_started) = channel();
    let (release, released) = channel();
    assert!(estimator.submit(bytes, gate(started, released)).is_ok());
    is_started.recv_timeout(WAIT).expect("the gate job runs");
    release
}

fn push(log: &Arc<Mutex<Vec<usize>>>, i: usize) -> Job {
    let log = Arc::clone(log);
    Box::new(move || log.lock().unwrap().push(i))
}

#[test]
fn runs_jobs_in_order() {
    let e = estimator(1000, 1 << 20);
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..200 {
        assert!(e.submit(10, push(&log, i)).is_ok());
    }
    assert_eq!(e.close(WAIT), 0);
    assert_eq!(*log.lock().unwrap(), (0..200).collect::<Vec<_>>());
    assert_eq!(e.counts().done, 200);
    assert_eq!(e.queued(), (0, 0));
}

#[test]
fn refuses_when_full_in_jobs() {
    let e = estimator(3, 1 << 20);
    let release = block(&e, 1);
    let log = Arc::new(Mutex::new(Vec::new()));
    assert!(e.submit(1, push(&log, 1)).is_ok());
    assert!(e.submit(1, push(&log, 2)).is_ok());
    assert_eq!(e.queued(), (3, 3), "the running job counts until it ends");
    let refused = e.submit(1, push(&log, 3)).expect_err("full");
    refused(); // handed back whole: the caller can still run it (or fall back)
    assert_eq!(e.counts().refused, 1);
    release.send(()).unwrap();
    assert_eq!(e.close(WAIT), 0);
    assert_eq!(*log.lock().unwrap(), [3, 1, 2]);
}

#[test]
fn refuses_when_full_in_bytes() {
    let e = estimator(100, 100);
    assert!(e.submit(101, Box::new(|| {})).is_err(), "never fits");
    let release = block(&e, 60);
    assert!(e.submit(40, Box::new(|| {})).is_ok());
    assert!(e.submit(1, Box::new(|| {})).is_err());
    assert!(e.submit(0, Box::new(|| {})).is_ok());
    assert_eq!(e.queued(), (3, 100));
    assert!(
        e.submit(usize::MAX, Box::new(|| {})).is_err(),
        "no overflow"
    );
    release.send(()).unwrap();
    assert_eq!(e.close(WAIT), 0);
    assert_eq!(e.counts().refused, 3);
    assert_eq!(e.counts().done, 3);
}

#[test]
fn survives_a_panicking_job() {
    let e = estimator(10, 1000);
    let log = Arc::new(Mutex::new(Vec::new()));
    assert!(e.submit(1, Box::new(|| panic!("a job fails"))).is_ok());
    assert!(e.submit(1, push(&log, 1)).is_ok());
    assert_eq!(e.close(WAIT), 0);
    assert_eq!(*log.lock().unwrap(), [1]);
    let counts = e.counts();
    assert_eq!((counts.panicked, counts.done), (1, 1));
}

#[test]
fn close_runs_what_is_queued() {
    let e = estimator(usize::MAX, usize::MAX);
    let release = block(&e, 1);
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        assert!(e.submit(1, push(&log, i)).is_ok());
    }
    let closer = {
        let e = e.clone();
        std::thread::spawn(move || e.close(WAIT))
    };
    // Closed (refusing) while the gate still holds the queue, then let it run.
    while e.submit(0, Box::new(|| {})).is_ok() {
        std::thread::yield_now();
    }
    release.send(()).unwrap();
    assert_eq!(closer.join().unwrap(), 0);
    assert_eq!(log.lock().unwrap().len(), 10);
    assert_eq!(e.close(WAIT), 0, "a second close has nothing to do");
}

#[test]
fn close_with_a_deadline_drops_the_rest() {
    let e = estimator(100, 1000);
    let release = block(&e, 1);
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..5 {
        assert!(e.submit(7, push(&log, i)).is_ok());
    }
    assert_eq!(e.close(Duration::from_millis(20)), 5);
    assert_eq!(e.counts().dropped, 5);
    assert_eq!(e.queued(), (1, 1), "only the running gate is left");
    assert!(e.submit(1, Box::new(|| {})).is_err(), "closed");
    release.send(()).unwrap();
    assert_eq!(e.close(WAIT), 0);
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(e.queued(), (0, 0));
}

#[test]
fn dropping_the_last_clone_runs_what_is_queued() {
    let e = estimator(10, 1000);
    let release = block(&e, 1);
    let (done, is_done) = channel();
    let job: Job = Box::new(move || done.send(()).unwrap());
    assert!(e.submit(1, job).is_ok());
    drop(e);
    release.send(()).unwrap();
    is_done
        .recv_timeout(WAIT)
        .expect("the queued job still runs");
}

#[test]
fn warms_up_and_counts() {
    let e = Estimator::start(10, 1000);
    let (tx, rx) = channel();
    let job: Job = Box::new(move || {
        let thread = std::thread::current().name().map(str::to_owned);
        tx.send((
            thread,
            super::super::text_tokens("hello world", crate::tokens::Tokenizer::O200kBase),
        ))
        .unwrap();
    });
    assert!(e.submit(11, job).is_ok());
    let (thread, n) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((thread.as_deref(), n), (Some(THREAD_NAME), 2));
    assert_eq!(e.close(WAIT), 0);
}
