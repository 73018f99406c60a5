//! WAL checkpoints of the monthly files on a thread and connections of their own, off the usage writer's path.
//!
//! With SQLite's automatic checkpoint, the commit that takes the log past 1000 pages (8 MiB here) copies the
//! log into the database and fsyncs both, on the writer's thread. Here the writer's connection has a WAL hook
//! instead (which replaces the automatic checkpoint): after each commit it tells this thread how many frames
//! the log holds, and past [`STEP`] frames the thread runs a PASSIVE checkpoint on its own connection, at the
//! lowest CPU priority, so that its copying yields to the proxy's threads on a shared core. A PASSIVE
//! checkpoint takes no write lock: the writer's commits go on, and the log restarts from its beginning at the
//! first commit after a checkpoint that caught up with it.
//!
//! When commits follow each other so closely that no checkpoint catches up (or readers hold the log back), the
//! log would grow without end. So past [`CEILING`] frames the writer itself, after its commit, stops the
//! thread's checkpoint (an interrupt: SQLite gives the checkpoint lock to one connection at a time and does not
//! wait for it) and runs a RESTART on its own connection, which copies the rest and makes its next commit
//! restart the log. Only the background writer waits then; the requests only queue their records.
//! `journal_size_limit` cuts the file back after such a restart; a file idle for [`IDLE`] has its log emptied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, InterruptHandle, OpenFlags};

/// Frames in the log (2 MiB of 8 KiB pages) from which the thread checkpoints it.
pub(super) const STEP: i64 = 256;
/// Frames in the log (8 MiB) past which the writer restarts it before its next commit.
pub(super) const CEILING: i64 = 1024;
/// Bytes the log file is cut back to when it restarts (`journal_size_limit`): above what the steps leave.
const SIZE_LIMIT: i64 = 4 << 20;
/// A file not written for this long has its log checkpointed and truncated.
const IDLE: Duration = Duration::from_secs(1);
/// How long the writer's RESTART waits for a lock: for another process's commit or for readers to leave the
/// log. It gives up after that.
const RESTART_WAIT: Duration = Duration::from_secs(1);
/// After a RESTART that gave up, the writer tries again no sooner than this: a reader that holds the log for
/// long costs the writer at most half of its time, and the log grows by what is written meanwhile.
const HELD_RETRY: Duration = Duration::from_secs(1);
/// How often the writer's RESTART tries a lock again.
const POLL: Duration = Duration::from_micros(100);
/// How long the writer waits for an interrupted checkpoint of the thread to end.
const HANDOVER: Duration = Duration::from_secs(2);
/// The checkpoint thread's nice value: the lowest priority.
const NICE: i32 = 19;

/// The checkpoint thread of one [`Store`](super::Store); started by the first file it is given, stopped
/// (after a last checkpoint of every file) by [`Checkpointer::stop`] or when dropped.
#[derive(Default)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The writer's last RESTART gave up: no other one before this.
    held_until: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: work, or stop.
    wake: Condvar,
    /// Wakes a writer waiting for the thread's checkpoint to end.
    idle: Condvar,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, File>,
    /// Files the writer closed: a last checkpoint, then forgotten.
    closed: Vec<PathBuf>,
    /// The thread's checkpoint under way, to interrupt it.
    running: Option<InterruptHandle>,
    /// The writer is restarting a log: the thread starts no checkpoint meanwhile.
    writer_restarts: bool,
    /// Restarts the writer ran, for the tests.
    restarts: u64,
    stop: bool,
}

/// A file as the writer's commits left it.
#[derive(Debug, Default, Clone, Copy)]
struct File {
    /// Frames in the log after the last commit.
    frames: i64,
    /// Committed to since the thread last looked.
    written: bool,
}

impl Checkpointer {
    /// Takes over the checkpoints of `path`, written through `connection`, starting the thread if needed. If
    /// the thread cannot start, the connection keeps SQLite's automatic checkpoint.
    pub(super) fn watch(
        &mut self,
        connection: &mut Connection,
        path: &Path,
    ) -> rusqlite::Result<()> {
        connection.pragma_update(None, "journal_size_limit", SIZE_LIMIT)?;
        if self.thread.is_none() {
            self.shared.lock().stop = false;
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("usage checkpoint".into())
                .spawn(move || run(&shared));
            match spawned {
                Ok(thread) => self.thread = Some(thread),
                Err(e) => {
                    log::warn!(
                        "usage checkpoints stay on the writer's thread: cannot start theirs: {e}"
                    );
                    return Ok(());
                }
            }
        }
        self.shared
            .lock()
            .files
            .insert(path.to_path_buf(), File::default());
        let shared = Arc::clone(&self.shared);
        let path = path.to_path_buf();
        // On the writer's thread, after each commit (its locks released): a map update, and a wake-up when
        // there is work.
        connection.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: i32| {
            let frames = i64::from(frames);
            if let Some(file) = shared.lock().files.get_mut(&path) {
                *file = File {
                    frames,
                    written: true,
                };
            }
            if frames >= STEP {
                shared.wake.notify_one();
            }
            Ok(())
        }))
    }

    /// After a commit to `path` through `connection`, on the writer's thread: if the log has passed
    /// [`CEILING`] frames, restarts it (see the module's description). Failures are logged, and tried again
    /// after [`HELD_RETRY`].
    pub(super) fn bound(&mut self, connection: &mut Connection, path: &Path) {
        if self.thread.is_none() || self.held_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        {
            let mut state = self.shared.lock();
            if state.files.get(path).is_none_or(|f| f.frames < CEILING) {
                return;
            }
            state.writer_restarts = true;
            // Interrupted again until it ends: an interrupt that comes before its statement starts is lost.
            let deadline = Instant::now() + HANDOVER;
            while let Some(running) = &state.running {
                running.interrupt();
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    log::debug!("usage checkpoint: the thread's checkpoint did not stop");
                    break;
                }
                state = self
                    .shared
                    .idle
                    .wait_timeout(state, left.min(Duration::from_millis(10)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let restarted = restart(connection);
        self.held_until = match restarted {
            Ok(true) => None,
            _ => Some(Instant::now() + HELD_RETRY),
        };
        let mut state = self.shared.lock();
        state.writer_restarts = false;
        state.restarts += 1;
        match restarted {
            Ok(true) => {
                if let Some(file) = state.files.get_mut(path) {
                    *file = File::default();
                }
            }
            Ok(false) => log::debug!(
                "usage checkpoint: the log of {} is held (readers?)",
                path.display()
            ),
            Err(e) => log::warn!("usage checkpoint of {}: {e}", path.display()),
        }
    }

    /// How many times the writer restarted a log itself.
    #[cfg(test)]
    pub(super) fn restarts(&self) -> u64 {
        self.shared.lock().restarts
    }

    /// The writer closed `path`: it gets a last checkpoint.
    pub(super) fn closed(&self, path: &Path) {
        let mut state = self.shared.lock();
        if state.files.remove(path).is_some() {
            state.closed.push(path.to_path_buf());
            drop(state);
            self.shared.wake.notify_one();
        }
    }

    /// Checkpoints and truncates every file's log, then ends the thread.
    pub(super) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            log::warn!("the usage checkpoint thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A RESTART checkpoint on the writer's connection, waiting at most [`RESTART_WAIT`] for locks; true if it
/// went through (the next commit restarts the log).
fn restart(connection: &mut Connection) -> rusqlite::Result<bool> {
    let wait: i64 = connection.pragma_query_value(None, "busy_timeout", |row| row.get(0))?;
    // SQLite's own busy handler sleeps 1 to 100 ms between tries, and a reader (or writer) that starts its
    // next transaction microseconds after ending the last holds its lock at nearly every try: the checkpoint
    // starves. Tries every [`POLL`] land in those gaps.
    let deadline = Instant::now() + RESTART_WAIT;
    connection.busy_handler(Some(move |_| {
        std::thread::sleep(POLL);
        Instant::now() < deadline
    }))?;
    let busy = connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    });
    connection.busy_timeout(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))?;
    Ok(busy? == 0)
}

/// The thread: waits for work, then checkpoints what needs it, until told to stop.
fn run(shared: &Shared) {
    lower_priority();
    let mut logs: BTreeMap<PathBuf, Log> = BTreeMap::new();
    loop {
        let (files, closed, stop) = next_turn(shared);
        let now = Instant::now();
        for path in closed {
            if let Some(mut log) = logs.remove(&path) {
                log.checkpoint(shared, &path, Mode::Truncate);
            }
        }
        for (path, file) in files {
            let log = logs.entry(path.clone()).or_insert_with(|| Log::new(now));
            if file.written {
                log.last_write = now;
                log.truncated = false;
            }
            if stop || (!log.truncated && now.duration_since(log.last_write) >= IDLE) {
                log.checkpoint(shared, &path, Mode::Passive);
                log.truncated = log.checkpoint(shared, &path, Mode::Truncate);
            } else if file.written && file.frames >= STEP {
                log.checkpoint(shared, &path, Mode::Passive);
            }
        }
        if stop {
            return;
        }
        // Forget files the writer no longer watches (closed ones were handled above).
        let state = shared.lock();
        logs.retain(|path, _| state.files.contains_key(path));
    }
}

/// Waits until a file needs a checkpoint, one was closed, or it is time to look for idle ones; returns the
/// files as the writer left them (marking them seen), the closed ones, and whether to stop.
fn next_turn(shared: &Shared) -> (Vec<(PathBuf, File)>, Vec<PathBuf>, bool) {
    let state = shared.lock();
    let (mut state, _) = shared
        .wake
        .wait_timeout_while(state, IDLE / 2, |s| {
            !s.stop
                && s.closed.is_empty()
                && !s.files.values().any(|f| f.written && f.frames >= STEP)
        })
        .unwrap_or_else(PoisonError::into_inner);
    let files = state
        .files
        .iter_mut()
        .map(|(path, file)| {
            let seen = *file;
            file.written = false;
            (path.clone(), seen)
        })
        .collect();
    (files, std::mem::take(&mut state.closed), state.stop)
}

/// Linux keeps a nice value per thread: the copying of the checkpoints then yields to the proxy's threads
/// where they share a core. Not fatal if refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        log::debug!("usage checkpoint thread keeps its priority: {e}");
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Passive,
    Truncate,
}

/// The thread's connection to one file and what it knows of it.
struct Log {
    connection: Option<Connection>,
    last_write: Instant,
    /// Emptied since the last write.
    truncated: bool,
}

impl Log {
    fn new(now: Instant) -> Log {
        Log {
            connection: None,
            last_write: now,
            truncated: false,
        }
    }

    /// Runs one checkpoint; true if it went through. Skipped while the writer restarts the log; a failure is
    /// logged and retried at the next turn with a fresh connection (the file may have been replaced).
    fn checkpoint(&mut self, shared: &Shared, path: &Path, mode: Mode) -> bool {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => match open(path) {
                Ok(connection) => connection,
                Err(e) => {
                    log::debug!("usage checkpoint: cannot open {}: {e}", path.display());
                    return false;
                }
            },
        };
        {
            let mut state = shared.lock();
            if state.writer_restarts {
                self.connection = Some(connection);
                return false;
            }
            state.running = Some(connection.get_interrupt_handle());
        }
        let sql = match mode {
            Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        let result = connection.query_row(sql, [], |row| row.get::<_, i64>(0));
        shared.lock().running = None;
        shared.idle.notify_all();
        match result {
            Ok(busy) => {
                self.connection = Some(connection);
                busy == 0
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => {
                self.connection = Some(connection);
                false
            }
            Err(e) => {
                log::warn!("usage checkpoint of {} ({mode:?}): {e}", path.display());
                false
            }
        }
    }
}

/// A connection of its own to a file the writer created; never creates one.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    // A TRUNCATE (of an idle or closed file) waits this long for the write lock and for readers, then gives up
    // for this turn. The writer's syncs.
    connection.execute_batch("PRAGMA busy_timeout=100; PRAGMA synchronous=NORMAL;")?;
    Ok(connection)
}
