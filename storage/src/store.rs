//! The database handle and the one local commit every command and inbound event goes through.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::{Transactional, Tree};
use tokio::sync::watch;
use uuid::Uuid;

use crate::durable::DurableFiles;
use crate::events::{event_key, MAX_AGGREGATE_ID_BYTES};
use crate::outbox::OutboxMessage;
use crate::{now_millis, StorageError};

const LOCK_FILE: &str = "commerce.lock";
const OUTBOX_SEQ: &[u8] = b"outbox_seq";
/// Present once a commit has landed: a database that recorded only reactions that changed
/// nothing is still not a new one once their inbox marks have aged out.
const EVER_COMMITTED: &[u8] = b"ever_committed";
/// Where builds before version-from-the-log kept each aggregate's version; only asked whether
/// it holds anything (see [`EVER_COMMITTED`]).
const LEGACY_HEADS: &str = "heads";

/// Tunables of one service database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache, in bytes. Six services share one machine, so keep it modest.
    pub cache_bytes: u64,
    /// Background flush interval of sled, in ms. Correctness never relies on it: commits are
    /// flushed explicitly before anything is acknowledged.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

/// One service's database. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) events: Tree,
    pub(crate) snapshots: Tree,
    /// Every outbox row by its sequence, sent or not (see [`crate::outbox`]).
    pub(crate) outbox_pending: Tree,
    /// Runs of sent rows: when, and where the broker stored each.
    pub(crate) outbox_acks: Tree,
    pub(crate) inbox: Tree,
    /// The inbox by age, one row per mark: `(recorded at, event id)` → nothing. Written by
    /// builds before [`Inner::inbox_batches`] (and by indexing a database older still); only
    /// read and emptied now.
    pub(crate) inbox_by_age: Tree,
    /// The inbox by age, one row per batch: `(recorded at, first event id)` → the ids a commit
    /// marked, 16 bytes each (at most [`crate::inbox::IDS_PER_ROW`]), so retention removes the
    /// old marks without reading the young ones, at one write per batch. A tree of its own, so
    /// a build from before, which reads only `inbox_by_age`, never misreads these rows.
    pub(crate) inbox_batches: Tree,
    /// Marks in `inbox`, kept as they are written and removed: sled's `len` reads the whole tree,
    /// and status is asked every few seconds.
    pub(crate) inbox_marks: AtomicU64,
    pub(crate) models: Tree,
    pub(crate) meta: Tree,
    /// A commit has landed here, ever ([`EVER_COMMITTED`]).
    pub(crate) ever_committed: AtomicBool,
    /// Highest outbox sequence committed. Sequences are assigned inside the transaction from one
    /// key, so their order is the commit order.
    committed_seq: AtomicU64,
    /// Transactions of [`Store::commit_all`] begun and done so far, and how many of the done
    /// ones the last completed flush covered: while begun and covered agree, none is in flight
    /// and a flush would make nothing durable that one wrote ([`Store::flushed_already`]).
    commits_begun: AtomicU64,
    commits_done: AtomicU64,
    flushed_commits: AtomicU64,
    /// Highest outbox sequence known to be on disk; the relay publishes nothing above it, so no
    /// event ever leaves a service whose state could still be lost by a crash.
    pub(crate) durable_seq: watch::Sender<u64>,
    /// Why a flush failed, once one has: from then on the store proves nothing and commits
    /// nothing until it is opened again ([`StorageError::Poisoned`]).
    poisoned: watch::Sender<Option<String>>,
    /// Held by a flush from its start to its outcome ([`Inner::flush_to_disk`]).
    flushing: std::sync::Mutex<()>,
    /// What makes a flush survive a power loss (sled's alone does not).
    durable_files: DurableFiles,
    /// Held for the life of the store: a second opener gets [`StorageError::Locked`].
    _lock: File,
    /// Set where instances share a partition: writes only while this one holds its lease.
    fence: std::sync::OnceLock<crate::Fence>,
}

/// An event to append to an aggregate's log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    /// The event as it is published (the CloudEvents JSON), so the log and the stream agree.
    pub payload: String,
}

/// Everything one command or one inbound event changes, written in ONE sled transaction:
/// new events (with an optimistic version check), their outbox rows, and the inbox mark of the
/// inbound event that caused them. All of it lands, or none of it does.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    append: Option<Append>,
    outbox: Vec<OutboxMessage>,
    caused_by: Option<Uuid>,
}

#[derive(Debug, Clone)]
struct Append {
    aggregate_id: String,
    expected_version: u64,
    events: Vec<NewEvent>,
}

impl Commit {
    /// A commit for a command from a client (nothing to deduplicate).
    pub fn new() -> Self {
        Self::default()
    }

    /// A commit for an inbound event: if `event_id` is already in the inbox, nothing is written
    /// and [`CommitOutcome::Duplicate`] is returned; otherwise the inbox mark is written with the rest.
    pub fn caused_by(event_id: Uuid) -> Self {
        Commit {
            caused_by: Some(event_id),
            ..Self::default()
        }
    }

    /// Append `events` to `aggregate_id`, which must be at `expected_version` (0: new aggregate).
    pub fn append(
        mut self,
        aggregate_id: impl Into<String>,
        expected_version: u64,
        events: Vec<NewEvent>,
    ) -> Self {
        self.append = Some(Append {
            aggregate_id: aggregate_id.into(),
            expected_version,
            events,
        });
        self
    }

    /// Queue a message for the relay to publish once this commit is flushed.
    pub fn publish(mut self, message: OutboxMessage) -> Self {
        self.outbox.push(message);
        self
    }
}

/// A commit's rows, encoded once, outside the transaction.
struct Encoded {
    events: Vec<(Vec<u8>, Vec<u8>)>,
    outbox: Vec<Vec<u8>>,
}

impl Encoded {
    fn new(commit: &Commit, recorded_at: u64) -> Result<Encoded, StorageError> {
        let events = match &commit.append {
            Some(a) => {
                if a.aggregate_id.is_empty() || a.aggregate_id.len() > MAX_AGGREGATE_ID_BYTES {
                    return Err(StorageError::InvalidAggregateId {
                        aggregate_id: a.aggregate_id.chars().take(64).collect(),
                    });
                }
                a.events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let version = a.expected_version + 1 + i as u64;
                        let bytes = crate::events::encode_event(
                            e.event_id,
                            recorded_at,
                            &e.event_type,
                            &e.payload,
                        )?;
                        Ok((event_key(&a.aggregate_id, version), bytes))
                    })
                    .collect::<Result<_, StorageError>>()?
            }
            None => Vec::new(),
        };
        let outbox = commit
            .outbox
            .iter()
            .map(crate::outbox::encode_message)
            .collect::<Result<_, _>>()?;
        Ok(Encoded { events, outbox })
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written; `version` is the aggregate's version after the append (0 when nothing was appended).
    Committed { version: u64 },
    /// The causing event was already applied; nothing was written.
    Duplicate,
}

/// How long to wait for sled's own lock: a store of this process that was just dropped may
/// still be closing (its flusher thread holds the file for a moment).
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open sled, waiting out a previous instance of this database that is still closing. (Another
/// process cannot hold it: [`LOCK_FILE`] is taken first.)
fn open_sled(path: &Path, config: &StoreConfig) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(config.flush_every_ms)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Proof that everything committed before [`Store::flush`] was called is on disk.
/// Only `flush` makes one; acknowledging a message takes one (see the bus consumer).
#[derive(Debug)]
#[must_use = "a flush proves durability so that messages can be acknowledged"]
pub struct Flushed {
    _private: (),
}

impl Store {
    /// Open (or create) the database at `path`. Refuses with a message naming the path when the
    /// directory is locked by another process or its contents are corrupt.
    pub fn open(path: impl AsRef<Path>, config: &StoreConfig) -> Result<Store, StorageError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(open_err)?;
        let lock = File::create(path.join(LOCK_FILE)).map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StorageError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let log = crate::durable::open_log(&path).map_err(open_err)?;
        if let Err(e) = DurableFiles::forget_cached(&path) {
            tracing::warn!(db = %path.display(), error = %e,
                "the OS may still cache pages of this database that are not on disk");
        }
        let db = open_sled(&path, config).map_err(|e| match e {
            sled::Error::Io(source) => StorageError::Open {
                path: path.clone(),
                source,
            },
            other => StorageError::Corrupt {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StorageError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })
        };
        // A crash may have left writes in the OS cache that were never fsynced; make them durable
        // before treating what is on disk as publishable.
        db.flush()?;
        let durable_files =
            DurableFiles::open(&path, log).map_err(|source| StorageError::Sync {
                path: path.clone(),
                source,
            })?;
        let meta = tree("meta")?;
        let last_seq = match meta.get(OUTBOX_SEQ)? {
            Some(v) => decode_u64(&v).ok_or_else(|| StorageError::Corrupt {
                path: path.clone(),
                reason: "outbox sequence is not 8 bytes".into(),
            })?,
            None => 0,
        };
        let ever_committed = meta.contains_key(EVER_COMMITTED)?
            || (db
                .tree_names()
                .iter()
                .any(|n| &n[..] == LEGACY_HEADS.as_bytes())
                && !tree(LEGACY_HEADS)?.is_empty());
        let inbox = tree("inbox")?;
        let inbox_marks = AtomicU64::new(inbox.len() as u64);
        let inner = Inner {
            events: tree("events")?,
            snapshots: tree("snapshots")?,
            outbox_pending: tree("outbox_pending")?,
            outbox_acks: tree("outbox_acks")?,
            inbox,
            inbox_by_age: tree("inbox_by_age")?,
            inbox_batches: tree("inbox_batches_by_age")?,
            inbox_marks,
            models: tree("models")?,
            meta,
            ever_committed: AtomicBool::new(ever_committed),
            committed_seq: AtomicU64::new(last_seq),
            commits_begun: AtomicU64::new(0),
            commits_done: AtomicU64::new(0),
            flushed_commits: AtomicU64::new(0),
            // Everything found on disk at open is durable.
            durable_seq: watch::Sender::new(last_seq),
            poisoned: watch::Sender::new(None),
            flushing: std::sync::Mutex::new(()),
            path,
            db,
            durable_files,
            _lock: lock,
            fence: std::sync::OnceLock::new(),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        store.index_inbox_by_age()?;
        store.carry_outbox_over()?;
        Ok(store)
    }

    /// The highest outbox sequence committed.
    pub(crate) fn committed_seq(&self) -> u64 {
        self.inner.committed_seq.load(Ordering::Acquire)
    }

    /// From now on, commit, flush and publish only while `fence` is open (set once: a second
    /// fence is ignored, so the first one keeps guarding).
    pub fn fence_with(&self, fence: crate::Fence) {
        let _ = self.inner.fence.set(fence);
    }

    /// Whether a write may go ahead now: always, unless the store is fenced and the fence is
    /// closed.
    pub fn check_fence(&self) -> Result<(), StorageError> {
        match self.inner.fence.get() {
            Some(fence) => fence.check().map(drop).map_err(StorageError::from),
            None => Ok(()),
        }
    }

    /// Whether the store is fenced: one of several instances, whose database a successor never
    /// reads (it rebuilds from the stream), so only what is published outlives its lease.
    pub fn is_fenced(&self) -> bool {
        self.inner.fence.get().is_some()
    }

    /// The highest outbox sequence committed so far: every commit made until now has its rows
    /// at or below it.
    pub fn committed_through(&self) -> u64 {
        self.committed_seq()
    }

    /// Where this database lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Write `commit` atomically. Not yet durable: call [`Store::flush`] once for the whole batch
    /// before acknowledging anything that depends on it.
    pub fn commit(&self, commit: &Commit) -> Result<CommitOutcome, StorageError> {
        // commit_all answers one outcome per commit, so there is exactly one here.
        let mut outcomes = self.commit_all(std::slice::from_ref(commit))?;
        outcomes.pop().unwrap_or(Ok(CommitOutcome::Duplicate))
    }

    /// Write several commits in ONE sled transaction (sled's cost is per transaction, so a
    /// consumer writes its whole fetched batch this way). Each commit is still all-or-nothing on
    /// its own and sees the ones before it: a conflicting commit is skipped and reported in its
    /// slot, the others land. The outer error is a storage failure: then nothing landed.
    pub fn commit_all(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Result<CommitOutcome, StorageError>>, StorageError> {
        self.check_fence()?;
        self.check_poisoned()?;
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let s = &*self.inner;
        let recorded_at = now_millis();
        // Validate and encode outside the transaction closure: sled may run it more than once.
        let mut invalid = Vec::new();
        let mut valid = Vec::with_capacity(commits.len());
        for (i, commit) in commits.iter().enumerate() {
            match Encoded::new(commit, recorded_at) {
                Ok(enc) => valid.push((commit, enc)),
                Err(e) => invalid.push((i, e)),
            }
        }
        let trees = (
            &s.events,
            &s.snapshots,
            &s.outbox_pending,
            &s.inbox,
            &s.inbox_batches,
            &s.meta,
        );
        s.commits_begun.fetch_add(1, Ordering::AcqRel);
        let transaction = trees.transaction(
            |(events_t, snapshots_t, pending_t, inbox_t, by_age_t, meta_t)| {
                let mut seq = meta_t
                    .get(OUTBOX_SEQ)?
                    .and_then(|v| decode_u64(&v))
                    .unwrap_or(0);
                let first_seq = seq;
                // The ids marked, indexed by age in one row for the whole batch.
                let mut marked: Vec<u8> = Vec::new();
                let mut outcomes = Vec::with_capacity(valid.len());
                for (commit, enc) in &valid {
                    // Checks first, writes after: a commit that fails a check writes nothing.
                    if let Some(id) = commit.caused_by {
                        let applied = inbox_t.get(id.as_bytes())?.is_some()
                            && !crate::failpoints::broken("broken.skip_inbox");
                        if applied {
                            outcomes.push(Ok(CommitOutcome::Duplicate));
                            continue;
                        }
                    }
                    let mut version = 0;
                    if let Some(a) = &commit.append {
                        let (id, expected) = (&a.aggregate_id, a.expected_version);
                        if !crate::events::is_head(events_t, snapshots_t, id, expected)? {
                            // Its actual version is read once the transaction is over.
                            outcomes.push(Err(StorageError::Conflict {
                                aggregate_id: id.clone(),
                                expected,
                                actual: expected,
                            }));
                            continue;
                        }
                        version = expected;
                        for (key, bytes) in &enc.events {
                            events_t.insert(key.as_slice(), bytes.as_slice())?;
                            version += 1;
                        }
                    }
                    for row in &enc.outbox {
                        seq += 1;
                        pending_t.insert(&seq.to_be_bytes(), row.as_slice())?;
                    }
                    if let Some(id) = commit.caused_by {
                        inbox_t.insert(id.as_bytes(), &recorded_at.to_be_bytes())?;
                        marked.extend_from_slice(id.as_bytes());
                    }
                    outcomes.push(Ok(CommitOutcome::Committed { version }));
                }
                if seq != first_seq {
                    meta_t.insert(OUTBOX_SEQ, &seq.to_be_bytes())?;
                }
                let landed = outcomes
                    .iter()
                    .any(|o| matches!(o, Ok(CommitOutcome::Committed { .. })));
                if landed && !s.ever_committed.load(Ordering::Acquire) {
                    meta_t.insert(EVER_COMMITTED, &[])?;
                }
                for ids in marked.chunks(crate::inbox::IDS_PER_ROW * 16) {
                    if let Some(first) = ids.get(..16).and_then(|id| Uuid::from_slice(id).ok()) {
                        by_age_t.insert(&crate::inbox::age_key(recorded_at, first), ids)?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StorageError>>((outcomes, seq, landed))
            },
        );
        // Counted whatever came of it: a flush is owed once anything may have been written.
        s.commits_done.fetch_add(1, Ordering::AcqRel);
        let (outcomes, last_seq, landed) = transaction?;
        if landed {
            s.ever_committed.store(true, Ordering::Release);
        }
        s.committed_seq.fetch_max(last_seq, Ordering::AcqRel);
        let marked = valid
            .iter()
            .zip(&outcomes)
            .filter(|((commit, _), outcome)| {
                commit.caused_by.is_some() && matches!(outcome, Ok(CommitOutcome::Committed { .. }))
            })
            .count();
        s.inbox_marks.fetch_add(marked as u64, Ordering::Relaxed);
        // A conflict's check saw the version before what later commits of the batch appended.
        let unseen: Vec<u64> = (0..outcomes.len())
            .map(|i| match &outcomes[i] {
                Err(StorageError::Conflict { aggregate_id, .. }) => valid
                    .iter()
                    .zip(&outcomes)
                    .skip(i + 1)
                    .filter(|(_, later)| matches!(later, Ok(CommitOutcome::Committed { .. })))
                    .filter_map(|((commit, _), _)| commit.append.as_ref())
                    .filter(|a| &a.aggregate_id == aggregate_id)
                    .map(|a| a.events.len() as u64)
                    .sum(),
                _ => 0,
            })
            .collect();
        let mut outcomes: Vec<_> = outcomes
            .into_iter()
            .zip(unseen)
            .map(|(outcome, unseen)| match outcome {
                Err(StorageError::Conflict {
                    aggregate_id,
                    expected,
                    ..
                }) => Some(match self.version(&aggregate_id) {
                    Ok(now) => Err(StorageError::Conflict {
                        aggregate_id,
                        expected,
                        actual: now.saturating_sub(unseen),
                    }),
                    Err(e) => Err(e),
                }),
                other => Some(other),
            })
            .collect();
        // Put the invalid commits' errors back in their slots.
        for (i, e) in invalid {
            outcomes.insert(i, Some(Err(e)));
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Make every commit made so far durable (one fsync for the whole batch: group commit), then
    /// release their outbox rows to the relay. Returns the proof needed to acknowledge.
    pub async fn flush(&self) -> Result<Flushed, StorageError> {
        let s = &*self.inner;
        // Read before flushing: everything up to here is covered by the flush below.
        let upto = s.committed_seq.load(Ordering::Acquire);
        let commits = s.commits_done.load(Ordering::Acquire);
        // sled's own `flush_async` deadlocks under concurrent use (sled issue #1308, open for
        // 0.34.x): every thread of the process ends up waiting on sled's global lock. A
        // blocking flush on tokio's blocking pool does the same work without it.
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.flush_to_disk()).await {
            Ok(flushed) => flushed?,
            // It panicked (its outcome unknown): as good as failed.
            Err(e) => {
                let failed = StorageError::Sync {
                    path: s.path.clone(),
                    source: std::io::Error::other(e),
                };
                s.poison(&failed);
                return Err(failed);
            }
        }
        s.flushed_commits.fetch_max(commits, Ordering::AcqRel);
        // The proof lets a batch be acknowledged: not once the lease has lapsed meanwhile.
        self.check_fence()?;
        Ok(self.released_up_to(upto))
    }

    /// The proof [`Store::flush`] gives, without touching the disk, when a completed flush
    /// already covers every [`Store::commit_all`] transaction and none is in flight: for a batch
    /// that recorded nothing (duplicates, whose inbox marks were flushed with their commits).
    /// `None`: flush. Writes by other paths (dead-letter marks, read-model rows) are not
    /// counted: whoever depends on those flushes.
    fn flushed_already(&self) -> Result<Option<Flushed>, StorageError> {
        let s = &*self.inner;
        self.check_poisoned()?;
        let upto = s.committed_seq.load(Ordering::Acquire);
        if s.commits_begun.load(Ordering::Acquire) != s.flushed_commits.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.check_fence()?;
        Ok(Some(self.released_up_to(upto)))
    }

    /// [`Store::flush`], unless a completed flush already covers every commit and none is in
    /// flight ([`Store::flushed_already`]): for a batch that committed nothing.
    pub async fn flush_if_owed(&self) -> Result<Flushed, StorageError> {
        match self.flushed_already()? {
            Some(flushed) => Ok(flushed),
            None => self.flush().await,
        }
    }

    /// [`Store::flush`] for synchronous callers (start-up, tests, the crash harness).
    pub fn flush_blocking(&self) -> Result<Flushed, StorageError> {
        let s = &*self.inner;
        let upto = s.committed_seq.load(Ordering::Acquire);
        let commits = s.commits_done.load(Ordering::Acquire);
        s.flush_to_disk()?;
        s.flushed_commits.fetch_max(commits, Ordering::AcqRel);
        self.check_fence()?;
        Ok(self.released_up_to(upto))
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        self.inner.check_poisoned()
    }

    /// Whether a flush has failed ([`StorageError::Poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.borrow().is_some()
    }

    /// Ready when a flush fails, with why (whoever runs the store stops then, so that a restart
    /// opens it again), or with `None` once the store is closed. It does not hold the store open.
    pub fn when_poisoned(&self) -> impl std::future::Future<Output = Option<String>> + 'static {
        let mut poisoned = self.inner.poisoned.subscribe();
        async move {
            let cause = poisoned.wait_for(Option::is_some).await.map(|c| c.clone());
            cause.ok().flatten()
        }
    }

    /// Outbox rows up to `upto` are on disk: let the relay have them (and wake it).
    fn released_up_to(&self, upto: u64) -> Flushed {
        self.inner.durable_seq.send_if_modified(|durable| {
            let advanced = upto > *durable;
            if advanced {
                *durable = upto;
            }
            advanced
        });
        Flushed { _private: () }
    }
}

impl Inner {
    /// sled's flush, then the `fdatasync` that makes it survive a power loss; one at a time.
    ///
    /// A failure poisons the store. Linux reports a failed writeback once to a file: the pages
    /// it could not write are dropped or marked clean, and the next `fdatasync` succeeds without
    /// them. So no later flush may prove the commits made before it, and only a reopen, which
    /// reads what is really on disk, starts over. Flushes take turns so that one beside a
    /// failing one cannot succeed before the poison is set.
    fn flush_to_disk(&self) -> Result<(), StorageError> {
        let _one_at_a_time = match self.flushing.lock() {
            Ok(turn) => turn,
            // A flush panicked while it held the turn: its outcome is unknown.
            Err(held) => {
                let panicked = StorageError::Sync {
                    path: self.path.clone(),
                    source: std::io::Error::other("a flush panicked"),
                };
                drop(held);
                if self.poisoned.borrow().is_none() {
                    self.poison(&panicked);
                }
                return self.check_poisoned();
            }
        };
        self.check_poisoned()?;
        let flushed = self.db.flush().map_err(StorageError::from).and_then(|_| {
            if crate::failpoints::disk_fails("store.flush_fails") {
                return Err(StorageError::Sync {
                    path: self.path.clone(),
                    source: std::io::Error::other("failpoint store.flush_fails"),
                });
            }
            self.sync()
        });
        if let Err(e) = &flushed {
            self.poison(e);
        }
        flushed
    }

    fn poison(&self, failed: &StorageError) {
        let cause = failed.to_string();
        tracing::error!(db = %self.path.display(), error = %cause,
            "a flush failed: this database takes no more writes until it is opened again");
        self.poisoned.send_if_modified(|poisoned| {
            let first = poisoned.is_none();
            if first {
                *poisoned = Some(cause);
            }
            first
        });
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &*self.poisoned.borrow() {
            Some(cause) => Err(StorageError::Poisoned {
                path: self.path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.durable_files
            .sync()
            .map_err(|source| StorageError::Sync {
                path: self.path.clone(),
                source,
            })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        (dir, store)
    }

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Tested".into(),
            payload: format!("{{\"n\":{n}}}"),
        }
    }

    fn message(subject: &str) -> OutboxMessage {
        OutboxMessage {
            event_id: Uuid::now_v7(),
            subject: subject.into(),
            payload: "{}".into(),
            headers: vec![],
        }
    }

    #[test]
    fn given_new_aggregate_when_appending_then_versions_count_from_one() {
        let (_dir, store) = open();
        let outcome = store
            .commit(&Commit::new().append("order-1", 0, vec![event(1), event(2)]))
            .unwrap();
        assert_eq!(outcome, CommitOutcome::Committed { version: 2 });
        let events = store.events_after("order-1", 0).unwrap();
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(store.version("order-1").unwrap(), 2);
        assert_eq!(store.events_after("order-1", 1).unwrap().len(), 1);
        // another aggregate whose id shares a prefix is not mixed in
        store
            .commit(&Commit::new().append("order-10", 0, vec![event(1)]))
            .unwrap();
        assert_eq!(store.events_after("order-1", 0).unwrap().len(), 2);
    }

    #[test]
    fn given_stale_version_when_appending_then_conflict_and_nothing_written() {
        let (_dir, store) = open();
        store
            .commit(&Commit::new().append("a", 0, vec![event(1)]))
            .unwrap();
        let stale = Commit::new()
            .append("a", 0, vec![event(2)])
            .publish(message("x.y.a"));
        let err = store.commit(&stale).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Conflict {
                    expected: 0,
                    actual: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.version("a").unwrap(), 1);
        assert_eq!(
            store.outbox_depth(),
            0,
            "a conflicting commit leaves no outbox row"
        );
    }

    #[test]
    fn a_conflict_in_a_batch_reports_the_version_its_check_saw() {
        let (_dir, store) = open();
        store
            .commit(&Commit::new().append("a", 0, vec![event(1), event(2), event(3)]))
            .unwrap();
        // An invalid commit before the conflict (set aside before the transaction), and a
        // later conflict that appends nothing.
        let batch = [
            Commit::new().append("", 0, vec![event(0)]),
            Commit::new().append("a", 9, vec![event(4)]),
            Commit::new().append("a", 3, vec![event(4), event(5)]),
            Commit::new().append("a", 3, vec![event(6)]),
        ];
        let outcomes = store.commit_all(&batch).unwrap();
        assert!(matches!(
            outcomes[0],
            Err(StorageError::InvalidAggregateId { .. })
        ));
        let actual = |i: usize| match &outcomes[i] {
            Err(StorageError::Conflict { actual, .. }) => *actual,
            other => panic!("{other:?}"),
        };
        assert_eq!(actual(1), 3, "before the later append");
        assert_eq!(actual(3), 5, "after it");
        assert_eq!(
            outcomes[2].as_ref().unwrap(),
            &CommitOutcome::Committed { version: 5 }
        );
    }

    #[test]
    fn concurrent_appends_at_the_same_version_commit_exactly_one() {
        let (_dir, store) = open();
        for round in 0..20u64 {
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        let store = store.clone();
                        scope.spawn(move || {
                            store.commit(
                                &Commit::new()
                                    .append("hot", round, vec![event(round)])
                                    .publish(message("x.y.hot")),
                            )
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won = results.iter().filter(|r| r.is_ok()).count();
            let conflicts = results
                .iter()
                .filter(|r| matches!(r, Err(StorageError::Conflict { .. })))
                .count();
            assert_eq!((won, conflicts), (1, 3), "round {round}: {results:?}");
        }
        assert_eq!(store.version("hot").unwrap(), 20);
        assert_eq!(store.events_after("hot", 0).unwrap().len(), 20);
        assert_eq!(
            store.outbox_depth(),
            20,
            "one outbox row per winning commit"
        );
    }

    #[test]
    fn a_batch_of_commits_lands_per_commit_and_later_ones_see_earlier_ones() {
        let (_dir, store) = open();
        let cause = Uuid::now_v7();
        let batch = [
            Commit::caused_by(cause)
                .append("a", 0, vec![event(1)])
                .publish(message("x.y.a")),
            Commit::caused_by(Uuid::now_v7())
                .append("b", 5, vec![event(1)])
                .publish(message("x.y.b")),
            Commit::caused_by(cause).append("a", 1, vec![event(2)]),
            Commit::new().append("", 0, vec![event(1)]),
            Commit::caused_by(Uuid::now_v7())
                .append("a", 1, vec![event(2)])
                .publish(message("x.y.a")),
        ];
        let outcomes = store.commit_all(&batch).unwrap();
        assert!(matches!(
            outcomes[0],
            Ok(CommitOutcome::Committed { version: 1 })
        ));
        assert!(matches!(
            outcomes[1],
            Err(StorageError::Conflict {
                expected: 5,
                actual: 0,
                ..
            })
        ));
        assert!(matches!(outcomes[2], Ok(CommitOutcome::Duplicate)));
        assert!(matches!(
            outcomes[3],
            Err(StorageError::InvalidAggregateId { .. })
        ));
        assert!(matches!(
            outcomes[4],
            Ok(CommitOutcome::Committed { version: 2 })
        ));
        assert_eq!(store.version("b").unwrap(), 0);
        let b_cause = match &batch[1].caused_by {
            Some(id) => *id,
            None => unreachable!(),
        };
        assert!(
            !store.is_processed(b_cause).unwrap(),
            "a conflicting commit leaves no inbox mark"
        );
        assert_eq!(store.outbox_depth(), 2, "only the landed commits' rows");
    }

    #[test]
    fn an_inbound_event_is_applied_once() {
        let (_dir, store) = open();
        let cause = Uuid::now_v7();
        let first = Commit::caused_by(cause)
            .append("a", 0, vec![event(1)])
            .publish(message("x.y.a"));
        assert_eq!(
            store.commit(&first).unwrap(),
            CommitOutcome::Committed { version: 1 }
        );
        // the redelivered copy, decided against the same state, is recognised before the version check
        assert_eq!(store.commit(&first).unwrap(), CommitOutcome::Duplicate);
        assert!(store.is_processed(cause).unwrap());
        assert_eq!(store.version("a").unwrap(), 1);
        assert_eq!(store.outbox_depth(), 1);
    }

    #[test]
    fn a_flush_is_owed_only_after_a_commit() {
        let (_dir, store) = open();
        assert!(
            store.flushed_already().unwrap().is_some(),
            "nothing committed yet"
        );
        let cause = Uuid::now_v7();
        let inbox_only = Commit::caused_by(cause);
        store.commit(&inbox_only).unwrap();
        assert!(
            store.flushed_already().unwrap().is_none(),
            "a mark to flush"
        );
        let _durable = store.flush_blocking().unwrap();
        assert!(store.flushed_already().unwrap().is_some());
        // Even a commit that wrote nothing (a duplicate) is flushed before it is trusted.
        assert_eq!(store.commit(&inbox_only).unwrap(), CommitOutcome::Duplicate);
        assert!(store.flushed_already().unwrap().is_none());
        assert!(store.commit_all(&[]).unwrap().is_empty());
        let _durable = store.flush_blocking().unwrap();
        assert!(
            store.commit_all(&[]).unwrap().is_empty(),
            "no transaction for nothing"
        );
        assert!(store.flushed_already().unwrap().is_some());
        // A commit that conflicted is counted too.
        let stale = Commit::new().append("a", 7, vec![event(1)]);
        assert!(store.commit(&stale).is_err());
        assert!(store.flushed_already().unwrap().is_none());
    }

    #[tokio::test]
    async fn after_a_failed_flush_nothing_is_proven_until_the_store_is_opened_again() {
        let (dir, store) = open();
        let kept = message("a.b.1");
        store.commit(&Commit::new().publish(kept.clone())).unwrap();
        let _durable = store.flush().await.unwrap();
        let lost = message("a.b.2");
        store.commit(&Commit::new().publish(lost.clone())).unwrap();
        let disk = &store.inner.durable_files.failing;
        disk.store(true, Ordering::Relaxed);
        assert!(matches!(
            store.flush().await,
            Err(StorageError::Sync { .. })
        ));
        assert!(store.is_poisoned());
        let released = |store: &Store| -> Vec<Uuid> {
            let pending = store.pending(10).unwrap();
            pending
                .into_iter()
                .map(|row| row.message.event_id)
                .collect()
        };
        assert_eq!(released(&store), vec![kept.event_id], "not the lost row");
        // The disk answers again, yet what the failed flush held may be gone: no proof.
        disk.store(false, Ordering::Relaxed);
        let refused = |r: Result<Flushed, StorageError>| match r {
            Err(StorageError::Poisoned { cause, .. }) => cause.contains("the disk failed"),
            _ => false,
        };
        assert!(refused(store.flush().await));
        assert!(refused(store.flush_blocking()));
        assert!(refused(store.flush_if_owed().await));
        assert!(matches!(
            store.flushed_already(),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(matches!(
            store.commit(&Commit::new().publish(message("a.b.3"))),
            Err(StorageError::Poisoned { .. })
        ));
        let cause = tokio::time::timeout(Duration::from_secs(5), store.when_poisoned())
            .await
            .unwrap()
            .unwrap();
        assert!(cause.contains("the disk failed (a test's)"), "{cause}");
        assert_eq!(
            released(&store),
            vec![kept.event_id],
            "still not the lost row"
        );
        // Opened again, it reads what is on disk and works.
        drop(store);
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        assert!(!store.is_poisoned());
        let after = message("a.b.4");
        store.commit(&Commit::new().publish(after.clone())).unwrap();
        let _durable = store.flush().await.unwrap();
        assert!(released(&store).contains(&after.event_id));
        let closed = store.when_poisoned();
        drop(store);
        assert_eq!(closed.await, None, "ends with the store");
    }

    #[test]
    fn outbox_rows_reach_the_relay_only_after_flush() {
        let (_dir, store) = open();
        let released = store.outbox_released();
        store
            .commit(
                &Commit::new()
                    .publish(message("a.b.1"))
                    .publish(message("a.b.2")),
            )
            .unwrap();
        assert!(store.pending(10).unwrap().is_empty(), "not durable yet");
        assert!(!released.has_changed().unwrap());
        let _ = store.flush_blocking().unwrap();
        assert!(released.has_changed().unwrap(), "flush wakes the relay");
        let rows = store.pending(10).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| r.message.subject.as_str())
                .collect::<Vec<_>>(),
            ["a.b.1", "a.b.2"]
        );
        let position = crate::StreamPosition {
            stream: "S".into(),
            last_seq: 1,
            heal: None,
        };
        store
            .mark_sent(&[(rows[0].clone(), 1)], Some(&position))
            .unwrap();
        assert_eq!(store.stream_position().unwrap().unwrap().last_seq, 1);
        assert_eq!(store.pending(10).unwrap(), rows[1..].to_vec());
        assert_eq!(store.outbox_sent_count(), 1);
        assert_eq!(
            store
                .cleanup_sent(Duration::from_secs(3600), usize::MAX)
                .unwrap(),
            0
        );
        assert_eq!(store.cleanup_sent(Duration::ZERO, usize::MAX).unwrap(), 1);
    }

    #[test]
    fn rows_on_disk_at_open_are_durable_and_sequences_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
            store
                .commit(&Commit::new().publish(message("a.b.1")))
                .unwrap();
            let _ = store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        store
            .commit(&Commit::new().publish(message("a.b.2")))
            .unwrap();
        let _ = store.flush_blocking().unwrap();
        let seqs: Vec<_> = store.pending(10).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn a_second_opener_is_refused_with_the_path() {
        let (_dir, store) = open();
        let err = Store::open(store.path(), &StoreConfig::default()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&store.path().display().to_string()));
    }

    #[test]
    fn a_corrupt_directory_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\xff\xfe not a sled config").unwrap();
        std::fs::write(dir.path().join("db"), vec![0xAB; 4096]).unwrap();
        let err = Store::open(dir.path(), &StoreConfig::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Corrupt { .. } | StorageError::Open { .. }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    /// sled's `flush_async` deadlocked the whole process when several databases flushed while
    /// others committed and read (sled issue #1308): every thread waited on sled's global lock,
    /// for good. Found by `bench soak` after about 14,000 orders.
    #[test]
    fn stores_committing_and_flushing_at_once_all_make_progress() {
        const WRITERS: usize = 12;
        const ROUNDS: u64 = 100;
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Store> = (0..6)
            .map(|i| Store::open(dir.path().join(format!("s{i}")), &StoreConfig::default()))
            .collect::<Result<_, _>>()
            .unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        for w in 0..WRITERS {
            let (store, done) = (stores[w % stores.len()].clone(), done.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let aggregate = format!("writer-{w}");
                    for round in 0..ROUNDS {
                        let commit = Commit::new()
                            .append(&aggregate, round, vec![event(round)])
                            .publish(message("t.x"));
                        store.commit(&commit).unwrap();
                        let _durable = store.flush().await.unwrap();
                        let sent: Vec<_> = store
                            .pending(10)
                            .unwrap()
                            .into_iter()
                            .map(|row| (row, round))
                            .collect();
                        store.mark_sent(&sent, None).unwrap();
                    }
                });
                done.send(w).unwrap();
            });
        }
        drop(done); // a writer that fails drops its sender: no wait for it
        for _ in 0..WRITERS {
            finished
                .recv_timeout(Duration::from_secs(120))
                .expect("every writer finishes: none failed, none is stuck on sled's lock");
        }
    }

    #[test]
    fn a_snapshot_replaces_the_events_it_covers() {
        let (_dir, store) = open();
        let events: Vec<_> = (1..=5).map(event).collect();
        store.commit(&Commit::new().append("a", 0, events)).unwrap();
        store
            .commit(&Commit::new().append("b", 0, vec![event(6)]))
            .unwrap();
        store
            .compact(&[crate::Snapshot::new("a", 4, "{\"sum\":10}".into())])
            .unwrap();
        let (snapshot, rest) = store.load("a").unwrap();
        assert_eq!(snapshot.unwrap().version, 4);
        assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [5]);
        assert_eq!(
            store.events_after("a", 0).unwrap().len(),
            1,
            "1..=4 dropped"
        );
        assert_eq!(store.version("a").unwrap(), 5, "the head stays");
        assert_eq!(
            store.events_after("b", 0).unwrap().len(),
            1,
            "others untouched"
        );
        // Appending goes on after the snapshot.
        store
            .commit(&Commit::new().append("a", 5, vec![event(7)]))
            .unwrap();
        let (_, rest) = store.load("a").unwrap();
        assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn a_snapshot_lands_only_at_a_version_the_log_holds_or_the_one_there() {
        let (_dir, store) = open();
        let events: Vec<_> = (1..=4).map(event).collect();
        store.commit(&Commit::new().append("a", 0, events)).unwrap();
        let snapshot = |version| crate::Snapshot::new("a", version, "{}".into());
        let ahead = store.compact(&[snapshot(5)]).unwrap_err();
        assert!(
            matches!(
                ahead,
                StorageError::Conflict {
                    expected: 5,
                    actual: 4,
                    ..
                }
            ),
            "{ahead}"
        );
        store.compact(&[snapshot(3)]).unwrap();
        store.compact(&[snapshot(3)]).unwrap(); // the one there, again
        let stale = store.compact(&[snapshot(2)]).unwrap_err();
        assert!(matches!(stale, StorageError::Conflict { .. }), "{stale}");
        let (kept, rest) = store.load("a").unwrap();
        assert_eq!(
            kept.map(|s| s.version),
            Some(3),
            "refused ones change nothing"
        );
        assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [4]);
        store.compact(&[snapshot(4)]).unwrap();
        assert_eq!(store.version("a").unwrap(), 4);
    }

    #[test]
    fn a_database_that_recorded_anything_is_never_new_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let store = Store::open(&path, &StoreConfig::default()).unwrap();
        assert!(store.is_empty());
        // A reaction that changed nothing: no event, no outbox row, no inbox mark.
        store.commit(&Commit::new().append("a", 0, vec![])).unwrap();
        assert!(!store.is_empty());
        drop(store);
        let store = Store::open(&path, &StoreConfig::default()).unwrap();
        assert!(!store.is_empty(), "remembered across a restart");
        drop(store);

        // A database of a build that kept head rows, with nothing else left.
        let legacy = dir.path().join("legacy");
        let store = Store::open(&legacy, &StoreConfig::default()).unwrap();
        let heads = store.inner.db.open_tree(LEGACY_HEADS).unwrap();
        heads.insert("a", &0u64.to_be_bytes()).unwrap();
        let _durable = store.flush_blocking().unwrap();
        drop((heads, store));
        let store = Store::open(&legacy, &StoreConfig::default()).unwrap();
        assert!(!store.is_empty(), "its head rows count");
    }

    #[test]
    fn an_aggregate_all_in_its_snapshot_keeps_its_version_against_stale_appends() {
        let (_dir, store) = open();
        let events: Vec<_> = (1..=3).map(event).collect();
        store.commit(&Commit::new().append("a", 0, events)).unwrap();
        store
            .compact(&[crate::Snapshot::new("a", 3, "{}".into())])
            .unwrap();
        assert!(store.events_after("a", 0).unwrap().is_empty());
        assert_eq!(store.version("a").unwrap(), 3, "the snapshot's");
        assert!(!store.is_empty(), "a snapshot is something written");
        for stale in [0, 1, 2, 4] {
            let err = store
                .commit(&Commit::new().append("a", stale, vec![event(9)]))
                .unwrap_err();
            assert!(
                matches!(err, StorageError::Conflict { actual: 3, .. }),
                "expected {stale}: {err}"
            );
        }
        assert_eq!(
            store
                .commit(&Commit::new().append("a", 3, vec![event(4)]))
                .unwrap(),
            CommitOutcome::Committed { version: 4 }
        );
        assert_eq!(store.version("a").unwrap(), 4, "its last event's");
        let stale = store.commit(&Commit::new().append("a", 3, vec![event(5)]));
        assert!(
            matches!(stale, Err(StorageError::Conflict { actual: 4, .. })),
            "{stale:?}"
        );
        assert_eq!(store.version("ab").unwrap(), 0, "a longer id is another");
    }

    #[test]
    fn bad_aggregate_ids_are_rejected() {
        let (_dir, store) = open();
        for id in [String::new(), "x".repeat(256)] {
            let err = store
                .commit(&Commit::new().append(id, 0, vec![event(1)]))
                .unwrap_err();
            assert!(matches!(err, StorageError::InvalidAggregateId { .. }));
        }
    }

    #[test]
    fn inbox_cleanup_forgets_only_old_marks() {
        let (_dir, store) = open();
        store.commit(&Commit::caused_by(Uuid::now_v7())).unwrap();
        assert_eq!(
            store
                .cleanup_inbox(Duration::from_secs(3600), usize::MAX)
                .unwrap(),
            0
        );
        assert_eq!(store.inbox_len(), 1);
        assert_eq!(store.cleanup_inbox(Duration::ZERO, usize::MAX).unwrap(), 1);
    }
}
