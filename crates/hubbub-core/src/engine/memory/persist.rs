//! The memory engine's log: its channel streams kept in `data_dir/streams.log`, so that a
//! restart keeps every channel's epoch, offsets and kept publications.
//!
//! The log is append-only. A publication is appended *off* the fan-out path: under its
//! stream's lock the publish path only queues the record (a channel send, no I/O); a writer
//! thread of its own encodes whatever is queued, writes it in one `write`, and syncs the file
//! every `engine.flush_interval`, or at once when a publisher waits for durability
//! ([`Log::sync`], a namespace's `durable_publish`): every waiter of a batch shares its one
//! fsync (group commit). So a `kill -9` loses only what was still queued (the writer writes
//! as soon as it wakes), a power loss at most the last flush interval.
//!
//! The queue is bounded in bytes ([`QUEUE_BYTES`]): a publisher first takes its record's
//! bytes from a semaphore, asynchronously, and the writer gives them back once written. A
//! writer that falls behind (a slow disk) thus slows the publishers down without blocking
//! the runtime, and what waits in memory stays bounded.
//!
//! Each record is framed: its length and a CRC-32C of its bytes, then the bytes. Reading
//! stops at the first frame that is incomplete or whose checksum does not match (a write torn
//! by a crash): the log is cut there, with a warning.
//!
//! When the file grows beyond twice what the streams hold (and [`COMPACT_MIN_BYTES`]), a
//! compaction rewrites it from what is live, on a thread of its own: it writes a snapshot of
//! every stream into a temporary file while the writer goes on appending to the old one and
//! also keeps what it appends meanwhile (the *window*); then the writer appends the window to
//! the new file, syncs it and renames it over the old one. Replaying the window over the
//! snapshot is harmless where they overlap, because replay is idempotent (see
//! `MemoryBroker::apply`).

use hubbub_protocol::Publication;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The log's file name in `data_dir`.
pub const LOG_FILE: &str = "streams.log";
/// What the log starts with: a file that starts otherwise is not ours, and is not touched.
const MAGIC: &[u8; 16] = b"hubbub-streams1\n";
/// Bytes of queued records (estimated like the streams' bytes) the writer may be behind.
pub const QUEUE_BYTES: usize = 16 << 20;
/// Records written but not yet synced after which the writer syncs anyway, whatever the
/// flush interval: with the queue's bound, this bounds how many publications a crash can
/// lose, which [`CRASH_OFFSET_SKIP`] relies on.
const MAX_UNSYNCED_RECORDS: u64 = 1 << 18;
/// After an unclean stop each stream's next offset jumps by this much: publications that
/// were delivered but never reached the disk may have been seen by clients, and their
/// offsets must never be handed to other publications. At most `QUEUE_BYTES / 96` queued
/// plus [`MAX_UNSYNCED_RECORDS`] written records can be lost, well under this.
pub const CRASH_OFFSET_SKIP: u64 = 1 << 20;
/// The log is not compacted below this size, however little of it is live.
pub const COMPACT_MIN_BYTES: u64 = 8 << 20;
/// A compaction whose window (what was appended while the snapshot was written) grows over
/// this is given up (and tried again later): the window is kept in memory.
const MAX_WINDOW_BYTES: usize = 64 << 20;
/// A frame longer than this is corrupt (no record is near it).
const MAX_RECORD_BYTES: u32 = 256 << 20;
/// Most records the writer takes from the queue for one write.
const MAX_BATCH: usize = 4096;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a hubbub stream log (it does not start with the log's header); move it away")]
    NotALog { path: PathBuf },
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One entry of the log.
#[derive(Debug, Clone)]
pub enum Record {
    /// The engine's empty epoch is now this.
    EmptyEpoch(String),
    /// A stream as a compaction found it: its position and its last publication's time,
    /// without publications (its kept ones follow as `Publish` records).
    Stream { channel: String, epoch: String, top: u64, touched_ms: u64 },
    /// A publication appended to the channel's stream (its offset in `publication`), kept
    /// until `expires_ms`, in a stream that keeps at most `keep` publications.
    Publish {
        channel: String,
        epoch: String,
        at_ms: u64,
        expires_ms: u64,
        keep: u64,
        publication: Publication,
    },
    /// The channel's kept publications were removed (its position stays).
    Removed { channel: String },
    /// The channel's stream was dropped (evicted or forgotten).
    Dropped { channel: String },
    /// The writer stopped cleanly after this: nothing was lost.
    Clean,
}

const T_EMPTY_EPOCH: u8 = 1;
const T_STREAM: u8 = 2;
const T_PUBLISH: u8 = 3;
const T_REMOVED: u8 = 4;
const T_DROPPED: u8 = 5;
const T_CLEAN: u8 = 6;

/// Appends framed records to a buffer.
#[derive(Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    fn frame(&mut self, body: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        body(&mut self.buf);
        let len = (self.buf.len() - start - 8) as u32;
        let crc = CRC.checksum(&self.buf[start + 8..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn record(&mut self, record: &Record) {
        match record {
            Record::EmptyEpoch(epoch) => self.frame(|b| {
                b.push(T_EMPTY_EPOCH);
                put_str(b, epoch);
            }),
            Record::Stream { channel, epoch, top, touched_ms } => {
                self.stream(channel, epoch, *top, *touched_ms)
            }
            Record::Publish { channel, epoch, at_ms, expires_ms, keep, publication } => {
                self.publish(channel, epoch, *at_ms, *expires_ms, *keep, publication)
            }
            Record::Removed { channel } => self.frame(|b| {
                b.push(T_REMOVED);
                put_str(b, channel);
            }),
            Record::Dropped { channel } => self.frame(|b| {
                b.push(T_DROPPED);
                put_str(b, channel);
            }),
            Record::Clean => self.frame(|b| b.push(T_CLEAN)),
        }
    }

    pub fn stream(&mut self, channel: &str, epoch: &str, top: u64, touched_ms: u64) {
        self.frame(|b| {
            b.push(T_STREAM);
            put_str(b, channel);
            put_str(b, epoch);
            b.extend_from_slice(&top.to_le_bytes());
            b.extend_from_slice(&touched_ms.to_le_bytes());
        })
    }

    pub fn publish(
        &mut self,
        channel: &str,
        epoch: &str,
        at_ms: u64,
        expires_ms: u64,
        keep: u64,
        publication: &Publication,
    ) {
        self.frame(|b| {
            b.push(T_PUBLISH);
            put_str(b, channel);
            put_str(b, epoch);
            for n in [at_ms, expires_ms, keep] {
                b.extend_from_slice(&n.to_le_bytes());
            }
            // A publication's JSON cannot fail to encode (its data is JSON already).
            let _ = serde_json::to_writer(&mut *b, publication);
        })
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Reads the fields of one record's bytes; `None` when they do not make a record.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok().map(str::to_owned)
    }
}

fn decode(bytes: &[u8]) -> Option<Record> {
    let mut f = Fields(bytes);
    let record = match f.u8()? {
        T_EMPTY_EPOCH => Record::EmptyEpoch(f.string()?),
        T_STREAM => {
            Record::Stream { channel: f.string()?, epoch: f.string()?, top: f.u64()?, touched_ms: f.u64()? }
        }
        T_PUBLISH => {
            let (channel, epoch) = (f.string()?, f.string()?);
            let (at_ms, expires_ms, keep) = (f.u64()?, f.u64()?, f.u64()?);
            let publication = serde_json::from_slice(f.take(f.0.len())?).ok()?;
            Record::Publish { channel, epoch, at_ms, expires_ms, keep, publication }
        }
        T_REMOVED => Record::Removed { channel: f.string()? },
        T_DROPPED => Record::Dropped { channel: f.string()? },
        T_CLEAN => Record::Clean,
        _ => return None,
    };
    f.0.is_empty().then_some(record)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
    move |source| PersistError::Io { path: path.to_owned(), source }
}

/// Where a compaction writes the new log before it replaces the old one.
fn compacting_path(log: &Path) -> PathBuf {
    log.with_extension("log.compacting")
}

/// Syncs a folder, so that a file created or renamed in it stays after a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the log at `path` (creating it when missing), handing every intact record to
/// `apply` in order, and cuts a torn or corrupt tail. Returns the file open for appending
/// and its length.
pub fn load(path: &Path, mut apply: impl FnMut(Record)) -> Result<(File, u64), PersistError> {
    // A compaction cut short by a crash left its unfinished file: the log is still whole.
    let _ = std::fs::remove_file(compacting_path(path));
    let err = io_err(path);
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    if bytes.len() < MAGIC.len() {
        // New, or torn while its header was written: nothing in it yet.
        if !MAGIC.starts_with(&bytes) {
            return Err(PersistError::NotALog { path: path.to_owned() });
        }
        file.set_len(0).map_err(io_err(path))?;
        file.write_all(MAGIC).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(io_err(path))?;
        }
        return Ok((file, MAGIC.len() as u64));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(PersistError::NotALog { path: path.to_owned() });
    }
    let mut at = MAGIC.len();
    let mut records = 0u64;
    let intact = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break true;
        }
        if rest.len() < 8 {
            break false;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
        if len > MAX_RECORD_BYTES || rest.len() - 8 < len as usize {
            break false;
        }
        let body = &rest[8..8 + len as usize];
        if CRC.checksum(body) != crc {
            break false;
        }
        let Some(record) = decode(body) else { break false };
        apply(record);
        records += 1;
        at += 8 + len as usize;
    };
    if !intact {
        tracing::warn!(
            path = %path.display(),
            kept_records = records,
            cut_bytes = bytes.len() - at,
            "the stream log ends with a torn or corrupt record (a crash while writing?): cut there"
        );
        file.set_len(at as u64).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok((file, at as u64))
}

/// What the writer is asked to do, in queue order.
pub enum Op {
    /// Append a record; `permits` go back to the queue's budget once it is written.
    Append(Box<Record>, u32),
    /// Answer once everything queued before is synced.
    Sync(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Write everything queued before, mark the log clean, sync, answer and stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Encodes every live stream (its `Stream` record, then its kept publications) and the
/// empty epoch into the encoder, handing it to the second argument to be written whenever
/// it likes (outside any lock). Called on the compaction's own thread.
pub type Snapshot = Arc<dyn Fn(&mut Encoder, &mut dyn FnMut(&mut Encoder)) + Send + Sync>;

/// The publish path's end of the log.
pub struct Log {
    /// `None` only while dropped. After [`Log::close`] the writer is gone and sends fail.
    tx: Option<Sender<Op>>,
    budget: Arc<tokio::sync::Semaphore>,
    /// The writer could not write: durability cannot be promised any more.
    failed: Arc<AtomicBool>,
    /// Current length of the log file (for the stats and the tests).
    len: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct LogOptions {
    pub path: PathBuf,
    pub flush_interval: Duration,
    /// Estimated bytes of what the streams hold: the log is compacted when it is more than
    /// twice as large.
    pub live_bytes: Arc<AtomicUsize>,
    pub snapshot: Snapshot,
}

impl Log {
    /// Starts the writer thread on the open log `file` of length `len`.
    pub fn start(file: File, len: u64, options: LogOptions) -> Result<Log, PersistError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let budget = Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES));
        let failed = Arc::new(AtomicBool::new(false));
        let len_shared = Arc::new(AtomicU64::new(len));
        let writer = Writer {
            file,
            len,
            options,
            budget: budget.clone(),
            failed: failed.clone(),
            len_shared: len_shared.clone(),
            unsynced: 0,
            last_sync: Instant::now(),
            compaction: None,
        };
        let path = writer.options.path.clone();
        let thread = std::thread::Builder::new()
            .name("hubbub-streams-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&path))?;
        Ok(Log { tx: Some(tx), budget, failed, len: len_shared, thread: Some(thread) })
    }

    fn send(&self, op: Op) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok())
    }

    /// Takes room in the queue for a record of `bytes` estimated bytes, waiting while the
    /// writer is that far behind. The room is given back once the record is written.
    pub async fn reserve(&self, bytes: usize) -> u32 {
        let n = bytes.clamp(1, QUEUE_BYTES) as u32;
        match self.budget.acquire_many(n).await {
            Ok(permit) => {
                permit.forget();
                n
            }
            Err(_) => 0, // never closed
        }
    }

    /// Queues a record (never waits). `permits` come from [`Log::reserve`].
    pub fn append(&self, record: Record, permits: u32) {
        if !self.send(Op::Append(Box::new(record), permits)) {
            self.budget.add_permits(permits as usize);
        }
    }

    /// Waits until every record queued before is on disk (synced).
    pub async fn sync(&self) -> Result<(), String> {
        if self.failed.load(Ordering::Relaxed) {
            return Err("the stream log cannot be written".into());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.send(Op::Sync(tx)) {
            return Err("the stream log is closed".into());
        }
        rx.await.unwrap_or_else(|_| Err("the stream log writer stopped".into()))
    }

    /// Writes what is queued, marks the log clean and stops the writer. Later records are
    /// not written.
    pub async fn close(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.send(Op::Close(tx)) {
            let _ = rx.await;
        }
    }

    /// Bytes of the log file now.
    pub fn file_len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
}

impl Drop for Log {
    /// Dropped without [`Log::close`] (tests, the fuzz target): the writer still writes what
    /// was queued and marks the log clean (nothing can be queued any more).
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Compaction {
    window: Vec<u8>,
    given_up: bool,
    done: Receiver<io::Result<()>>,
    tmp: PathBuf,
}

struct Writer {
    file: File,
    len: u64,
    options: LogOptions,
    budget: Arc<tokio::sync::Semaphore>,
    failed: Arc<AtomicBool>,
    len_shared: Arc<AtomicU64>,
    /// Records written since the last sync.
    unsynced: u64,
    last_sync: Instant,
    compaction: Option<Compaction>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        let mut enc = Encoder::default();
        let mut waiters = Vec::new();
        loop {
            let wait = if self.unsynced > 0 {
                self.options.flush_interval.saturating_sub(self.last_sync.elapsed())
            } else if self.compaction.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish(&mut enc, waiters);
                    return;
                }
            };
            let mut permits = 0usize;
            let mut records = 0u64;
            let mut close = None;
            let mut next = first;
            let mut taken = 0;
            while let Some(op) = next.take() {
                match op {
                    Op::Append(record, p) => {
                        enc.record(&record);
                        permits += p as usize;
                        records += 1;
                    }
                    Op::Sync(tx) => waiters.push(tx),
                    Op::Close(tx) => {
                        close = Some(tx);
                        break;
                    }
                }
                taken += 1;
                if taken < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(&mut enc.buf, records);
            self.budget.add_permits(permits);
            self.poll_compaction();
            let due = self.unsynced > 0
                && (!waiters.is_empty()
                    || self.last_sync.elapsed() >= self.options.flush_interval
                    || self.unsynced >= MAX_UNSYNCED_RECORDS);
            if due {
                self.sync();
            }
            if !waiters.is_empty() && self.unsynced == 0 {
                let answer = if self.failed.load(Ordering::Relaxed) {
                    Err("the stream log cannot be written".to_owned())
                } else {
                    Ok(())
                };
                for w in waiters.drain(..) {
                    let _ = w.send(answer.clone());
                }
            }
            if let Some(tx) = close {
                self.finish(&mut enc, waiters);
                let _ = tx.send(());
                return;
            }
            self.maybe_compact();
        }
    }

    /// The last act: a running compaction is completed, the log is marked clean and synced.
    fn finish(&mut self, enc: &mut Encoder, waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>) {
        if let Some(c) = &self.compaction {
            // Its thread ends on its own; wait for it so that the switch happens (or not).
            let result = c.done.recv().unwrap_or_else(|_| Err(io::Error::other("compaction thread died")));
            self.complete_compaction(result);
        }
        enc.record(&Record::Clean);
        self.write(&mut enc.buf, 1);
        self.sync();
        for w in waiters {
            let _ = w.send(Ok(()));
        }
    }

    fn fail(&self, what: &str, e: &io::Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                path = %self.options.path.display(),
                error = %e,
                "cannot {what} the stream log: channel history is no longer kept on disk (durable publishes fail)"
            );
        }
    }

    fn write(&mut self, buf: &mut Vec<u8>, records: u64) {
        if buf.is_empty() {
            return;
        }
        if !self.failed.load(Ordering::Relaxed) {
            match self.file.write_all(buf) {
                Ok(()) => {
                    self.len += buf.len() as u64;
                    self.len_shared.store(self.len, Ordering::Relaxed);
                    self.unsynced += records;
                }
                Err(e) => self.fail("write", &e),
            }
            if let Some(c) = &mut self.compaction {
                c.window.extend_from_slice(buf);
                if c.window.len() > MAX_WINDOW_BYTES {
                    c.given_up = true;
                    c.window = Vec::new();
                }
            }
        }
        buf.clear();
    }

    fn sync(&mut self) {
        if !self.failed.load(Ordering::Relaxed) {
            if let Err(e) = self.file.sync_data() {
                self.fail("sync", &e);
            }
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
    }

    fn maybe_compact(&mut self) {
        if self.compaction.is_some() || self.failed.load(Ordering::Relaxed) {
            return;
        }
        let live = self.options.live_bytes.load(Ordering::Relaxed) as u64;
        if self.len <= COMPACT_MIN_BYTES.max(live.saturating_mul(2)) {
            return;
        }
        let tmp = compacting_path(&self.options.path);
        let (tx, done) = std::sync::mpsc::channel();
        let snapshot_path = tmp.clone();
        let snapshot = self.options.snapshot.clone();
        let spawned = std::thread::Builder::new().name("hubbub-streams-compact".into()).spawn(move || {
            let _ = tx.send(write_snapshot(&snapshot_path, &snapshot));
        });
        match spawned {
            Ok(_) => {
                tracing::info!(
                    path = %self.options.path.display(),
                    bytes = self.len,
                    live_estimate = live,
                    "compacting the stream log"
                );
                self.compaction = Some(Compaction { window: Vec::new(), given_up: false, done, tmp });
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the stream log's compaction"),
        }
    }

    fn poll_compaction(&mut self) {
        let Some(c) = &self.compaction else { return };
        match c.done.try_recv() {
            Ok(result) => self.complete_compaction(result),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.complete_compaction(Err(io::Error::other("compaction thread died")))
            }
        }
    }

    /// The snapshot is written (or failed): append the window, sync, switch files.
    fn complete_compaction(&mut self, result: io::Result<()>) {
        let Some(c) = self.compaction.take() else { return };
        let switched = result.and_then(|()| {
            if c.given_up || self.failed.load(Ordering::Relaxed) {
                return Err(io::Error::other("the log grew too fast meanwhile"));
            }
            let mut file = OpenOptions::new().read(true).append(true).open(&c.tmp)?;
            file.write_all(&c.window)?;
            file.sync_all()?;
            let len = file.metadata()?.len();
            std::fs::rename(&c.tmp, &self.options.path)?;
            if let Some(dir) = self.options.path.parent() {
                sync_dir(dir)?;
            }
            Ok((file, len))
        });
        match switched {
            Ok((file, len)) => {
                tracing::info!(before = self.len, after = len, "stream log compacted");
                self.file = file;
                self.len = len;
                self.len_shared.store(len, Ordering::Relaxed);
                self.unsynced = 0;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&c.tmp);
                tracing::warn!(error = %e, "stream log compaction given up; tried again later");
            }
        }
    }
}

/// Writes the header and the snapshot into a new file at `path`, synced.
fn write_snapshot(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    let mut result = Ok(());
    let mut enc = Encoder::default();
    let mut flush = |e: &mut Encoder| {
        if result.is_ok() {
            result = out.write_all(&e.buf);
        }
        e.buf.clear();
    };
    snapshot(&mut enc, &mut flush);
    flush(&mut enc);
    result?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}
