//! The crash-safe spool: every record a queue accepts is first appended to a file under `<usage.dir>/spool/`,
//! so that a record the writer has not committed yet survives `kill -9` (the page cache outlives the process;
//! no fsync). A gateway that starts imports what dead processes left there.
//!
//! - Files: `<owner>.lock`, held (flock) by the living process `<owner>` (`<pid>-<start nanos>`), and its
//!   segments `<owner>.<n>.seg`, each a sequence of frames (`frame.rs`). A spool whose lock can be taken
//!   belongs to a dead process. During a graceful upgrade two processes spool side by side.
//! - Requests append through a few shards, each with its own open segment, picked by thread: no global lock.
//!   A shard appends and queues its record under its own lock, so the writer receives each segment's records
//!   in file order.
//! - Each queued record holds its segment ([`Spooled`]); a segment that is full (or finished) and no longer held
//!   by any record, all of its records committed, is deleted.
//! - Exactly once: the writer's sink commits, with the rows, the end offset of the last frame of each segment
//!   in that batch (`usage::sink`; the SQLite files: `spool_progress`, per month). An import skips the frames
//!   the sink has, so a crash between a commit and a deletion imports nothing twice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::pace;
use super::record::CapturedRecord;
use super::throttle::Throttle;

pub mod frame;

/// A segment this long takes no more frames: the next append opens a new one, and this one is deleted once its
/// records are committed. Bounds what an import after a crash reads again.
const SEGMENT_BYTES: u64 = 8 << 20;
/// How much of a deleted segment is freed at a time (`shrink`).
const SHRINK_STEP: u64 = 1 << 20;
/// Shards: threads pick one by their own number, so each worker thread has its own as a rule.
const SHARDS: usize = 16;
/// After a segment could not be opened, records are not spooled for this long (no open per request).
const RETRY_OPEN: Duration = Duration::from_secs(5);
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// A segment file, shared by the shard appending to it and every queued record it holds.
#[derive(Debug)]
pub struct Segment {
    /// The file name, which is also its key in `spool_progress`.
    name: String,
    path: PathBuf,
    owner: String,
    /// No frame will be added (full, finished, or an import read it to the end).
    complete: AtomicBool,
}

impl Segment {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A segment that can go: complete, and held by no queued record. Only the registry holds it, and nobody takes a
/// new reference to a complete segment (appends go to open ones, imports are done with it), so once true this
/// stays true.
fn unheld(segment: &Arc<Segment>) -> bool {
    segment.complete.load(Relaxed) && Arc::strong_count(segment) == 1
}

/// Freeing a segment's pages is kernel work on the writer's thread (an 8 MiB segment's `unlink` took 1.9 ms),
/// which a request sharing its core would wait behind: the file is cut down [`SHRINK_STEP`] at a time, with a
/// pace step (`usage::pace`) between, before it is deleted. Its records are all committed, and an import reads a
/// file cut short as one whose last frame is torn, so a crash meanwhile loses nothing. Errors are left to the
/// deletion that follows.
fn shrink(path: &Path) {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(mut len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    while len > 0 {
        len = len.saturating_sub(SHRINK_STEP);
        if file.set_len(len).is_err() {
            return;
        }
        pace::step();
    }
}

/// Where a record is in the spool: its segment, and the offset just past its frame.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub segment: Arc<Segment>,
    pub end: u64,
}

/// The spool of one process, under one usage directory. Nothing touches the disk until the first append.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    owner: String,
    shards: Box<[Mutex<Shard>]>,
    registry: Mutex<Registry>,
    next_segment: AtomicU64,
    errors: Throttle,
}

#[derive(Debug, Default)]
struct Shard {
    open: Option<Open>,
    /// The frame being encoded; kept for the next one.
    buf: Vec<u8>,
    /// No new segment before this, after a failure.
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Open {
    segment: Arc<Segment>,
    file: File,
    len: u64,
}

/// The segments this process knows, its own and those of dead processes it imports, and the locks it holds.
#[derive(Debug, Default)]
struct Registry {
    segments: Vec<Arc<Segment>>,
    own_lock: Option<File>,
    orphans: Vec<Orphaned>,
}

/// A dead process whose spool this one imports.
#[derive(Debug)]
struct Orphaned {
    owner: String,
    _lock: File,
    /// An import stopped before the end: some segment files stay for a later import.
    abandoned: bool,
}

/// A segment of a dead process to import.
pub struct Orphan {
    pub segment: Arc<Segment>,
    pub frames: frame::Frames,
}

impl Spool {
    /// The spool of this process under `usage_dir`.
    pub fn new(usage_dir: &Path) -> Spool {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Spool {
            dir: usage_dir.join("spool"),
            owner: format!("{}-{nanos}", std::process::id()),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            registry: Mutex::default(),
            next_segment: AtomicU64::new(0),
            errors: Throttle::new(ERROR_LOG_EVERY),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The calling thread's shard, locked: append, then queue the record, before letting go.
    pub fn shard(&self) -> Appender<'_> {
        thread_local! {
            static NUMBER: usize = NEXT_THREAD.fetch_add(1, Relaxed);
        }
        static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
        let index = NUMBER.with(|n| *n) % self.shards.len();
        let shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Appender { spool: self, shard }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a new segment of this process (and its lock file, the first time).
    fn open_segment(&self) -> io::Result<Open> {
        let mut registry = self.registry();
        if registry.own_lock.is_none() {
            fs::create_dir_all(&self.dir)?;
            let lock = open_lock(&self.dir.join(format!("{}.lock", self.owner)))?;
            lock.try_lock().map_err(io::Error::from)?;
            registry.own_lock = Some(lock);
        }
        let n = self.next_segment.fetch_add(1, Relaxed);
        let name = format!("{}.{n}.seg", self.owner);
        let path = self.dir.join(&name);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        let segment = Arc::new(Segment {
            name,
            path,
            owner: self.owner.clone(),
            complete: AtomicBool::new(false),
        });
        registry.segments.push(Arc::clone(&segment));
        Ok(Open {
            segment,
            file,
            len: 0,
        })
    }

    /// Deletes every complete segment that no queued record holds any more (each of its records committed,
    /// or skipped by an import), and the lock files of dead processes whose spool is gone; returns the names
    /// of the deleted segments.
    pub fn collect(&self) -> Vec<String> {
        // Emptied first, in steps, outside the registry's lock: see `shrink`.
        let done: Vec<PathBuf> = self
            .registry()
            .segments
            .iter()
            .filter(|s| unheld(s))
            .map(|s| s.path.clone())
            .collect();
        for path in &done {
            shrink(path);
        }
        let mut registry = self.registry();
        let mut deleted = Vec::new();
        registry.segments.retain(|segment| {
            if !unheld(segment) {
                return true;
            }
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    log::warn!("cannot delete {}: {e}", segment.path.display());
                    return true;
                }
            }
            deleted.push(segment.name.clone());
            false
        });
        let Registry {
            segments, orphans, ..
        } = &mut *registry;
        orphans.retain(|o| {
            if segments.iter().any(|s| s.owner == o.owner) {
                return true;
            }
            if !o.abandoned {
                let _ = fs::remove_file(self.dir.join(format!("{}.lock", o.owner)));
            }
            false
        });
        deleted
    }

    /// The end of a clean shutdown, every record committed: closes the open segments, deletes them, and
    /// deletes this process's lock file once none of its segments is left.
    pub fn finish(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = shard.open.take() {
                open.segment.complete.store(true, Relaxed);
            }
        }
        self.collect();
        let mut registry = self.registry();
        if registry.segments.iter().all(|s| s.owner != self.owner) {
            if registry.own_lock.take().is_some() {
                let _ = fs::remove_file(self.dir.join(format!("{}.lock", self.owner)));
            }
            // Empty now, unless another process spools here too.
            let _ = fs::remove_dir(&self.dir);
        }
    }

    /// The segments of dead processes, to import in order; their owners' locks are held from now on. A
    /// spool being imported already, or whose process lives (a graceful upgrade), is left alone.
    pub fn orphans(&self) -> Vec<Orphan> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                log::error!("cannot read the usage spool {}: {e}", self.dir.display());
                return Vec::new();
            }
        };
        // Owner -> its segments by number.
        let mut owners: BTreeMap<String, BTreeMap<u64, PathBuf>> = BTreeMap::new();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(owner) = name.strip_suffix(".lock") {
                owners.entry(owner.to_owned()).or_default();
            } else if let Some((owner, n)) = name
                .strip_suffix(".seg")
                .and_then(|s| s.rsplit_once('.'))
                .and_then(|(owner, n)| Some((owner, n.parse::<u64>().ok()?)))
            {
                let segments = owners.entry(owner.to_owned()).or_default();
                segments.insert(n, entry.path());
            }
        }
        let mut found = Vec::new();
        let mut registry = self.registry();
        for (owner, segments) in owners {
            if owner == self.owner || registry.orphans.iter().any(|o| o.owner == owner) {
                continue;
            }
            let lock_path = self.dir.join(format!("{owner}.lock"));
            let lock = match open_lock(&lock_path) {
                Ok(lock) => lock,
                Err(e) => {
                    log::error!("cannot open {}: {e}", lock_path.display());
                    continue;
                }
            };
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    log::error!("cannot lock {}: {e}", lock_path.display());
                    continue;
                }
            }
            if segments.is_empty() {
                let _ = fs::remove_file(&lock_path);
                continue;
            }
            for (_, path) in segments {
                let frames = match frame::Frames::open(&path) {
                    Ok(frames) => frames,
                    Err(e) => {
                        log::error!("cannot read {}: {e}", path.display());
                        continue;
                    }
                };
                let segment = Arc::new(Segment {
                    name: path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned(),
                    path,
                    owner: owner.clone(),
                    complete: AtomicBool::new(false),
                });
                registry.segments.push(Arc::clone(&segment));
                found.push(Orphan { segment, frames });
            }
            registry.orphans.push(Orphaned {
                owner,
                _lock: lock,
                abandoned: false,
            });
        }
        found
    }

    /// An import read `segment` to its end: it is deleted once its records are committed.
    pub fn imported(&self, segment: &Segment) {
        segment.complete.store(true, Relaxed);
    }

    /// An import stops before the end of these segments (the store fails, or the server stops): their files
    /// stay for a later import, and their owners' locks are let go once nothing of theirs is queued.
    pub fn abandon(&self, orphans: Vec<Orphan>) {
        let mut registry = self.registry();
        for orphan in orphans {
            let segment = orphan.segment;
            registry.segments.retain(|s| !Arc::ptr_eq(s, &segment));
            for o in registry.orphans.iter_mut() {
                if o.owner == segment.owner {
                    o.abandoned = true;
                }
            }
        }
    }
}

fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// A locked shard of the spool.
pub struct Appender<'a> {
    spool: &'a Spool,
    shard: MutexGuard<'a, Shard>,
}

impl Appender<'_> {
    /// Appends `record`'s frame to the shard's segment; None when it could not be spooled (it is then only
    /// queued). The response must already be made ([`CapturedRecord::settle`]).
    pub fn append(&mut self, record: &CapturedRecord) -> Option<Spooled> {
        let spool = self.spool;
        let shard = &mut *self.shard;
        if shard.open.is_none() {
            if shard.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match spool.open_segment() {
                Ok(open) => shard.open = Some(open),
                Err(e) => {
                    shard.retry_at = Some(Instant::now() + RETRY_OPEN);
                    if spool.errors.ready() {
                        log::error!(
                            "cannot open a usage spool file in {} (records are only kept in memory until \
                             written): {e}",
                            spool.dir.display()
                        );
                    }
                    return None;
                }
            }
        }
        let open = shard.open.as_mut()?;
        let blobs = frame::encode(record, &mut shard.buf)?;
        match frame::write(&mut open.file, &shard.buf, blobs) {
            Ok(n) => {
                open.len += n;
                let spooled = Spooled {
                    segment: Arc::clone(&open.segment),
                    end: open.len,
                };
                if open.len >= SEGMENT_BYTES {
                    open.segment.complete.store(true, Relaxed);
                    shard.open = None;
                }
                Some(spooled)
            }
            Err(e) => {
                if spool.errors.ready() {
                    log::error!(
                        "cannot append to the usage spool {}: {e}",
                        open.segment.path.display()
                    );
                }
                // A partial frame would hide the frames after it: cut it off, or start a new segment.
                if open.file.set_len(open.len).is_err() {
                    open.segment.complete.store(true, Relaxed);
                    shard.open = None;
                }
                None
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
