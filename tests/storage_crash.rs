//! Crash test: the test binary re-runs itself as a child that commits in a loop (events + outbox
//! row + inbox mark per commit, one flush per batch of 8) and reports each flushed commit on
//! stdout. The parent kills it with SIGKILL mid-write, reopens the database and checks:
//! every reported (flushed) commit survived, and every commit on disk is whole: its event, its
//! outbox row and its inbox mark all present, or none of them.
//!
//! A second child flushes on its own thread while the first commits, as the services do (the
//! flush on tokio's blocking pool, the next batch's commit on the actor): a flush then overlaps a
//! commit, and covers every commit that had returned when it began.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use storage::{Commit, NewEvent, OutboxMessage, Store, StoreConfig};
use uuid::Uuid;

const CHILD_DIR: &str = "COMMERCE_CRASH_CHILD_DIR";
const CHILD_START: &str = "COMMERCE_CRASH_CHILD_START";
/// Set: the child flushes on a thread of its own, concurrently with its commits.
const CHILD_FLUSHES_ALONGSIDE: &str = "COMMERCE_CRASH_CHILD_FLUSHES_ALONGSIDE";
const AGGREGATES: u64 = 7;
const BATCH: u64 = 8;

fn cause_id(k: u64) -> Uuid {
    Uuid::from_u128(k as u128 + 1)
}

fn event_id(k: u64) -> Uuid {
    Uuid::from_u128((1u128 << 64) | k as u128)
}

fn aggregate(k: u64) -> String {
    format!("order-{}", k % AGGREGATES)
}

/// The child: commit k = start, start+1, … forever, printing `flushed <k>` once commit k (and
/// every one before it) is flushed.
#[test]
#[ignore = "run by the crash tests below as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let store = Store::open(&dir, &StoreConfig::default()).unwrap();
    if std::env::var_os(CHILD_FLUSHES_ALONGSIDE).is_some() {
        commit_while_another_thread_flushes(&store, start);
    }
    for k in start.. {
        commit(&store, k);
        if k % BATCH == BATCH - 1 {
            let _ = store.flush_blocking().unwrap();
            println!("flushed {k}");
        }
    }
}

/// Commit forever on this thread; flush in a loop on another, each flush reporting the last
/// commit that had returned before it began.
fn commit_while_another_thread_flushes(store: &Store, start: u64) -> ! {
    // How many commits have returned: commit k returned once this is above k - start.
    let returned = std::sync::Arc::new(AtomicU64::new(0));
    let (flusher, counted) = (store.clone(), returned.clone());
    std::thread::spawn(move || loop {
        let covered = counted.load(Ordering::Acquire);
        let _ = flusher.flush_blocking().unwrap();
        if covered > 0 {
            println!("flushed {}", start + covered - 1);
        }
    });
    for k in start.. {
        commit(store, k);
        returned.store(k - start + 1, Ordering::Release);
    }
    unreachable!("commits never end")
}

/// Commit k: its event, outbox row and inbox mark.
fn commit(store: &Store, k: u64) {
    let agg = aggregate(k);
    let version = store.version(&agg).unwrap();
    let payload = format!(
        "{{\"k\":{k},\"pad\":\"{}\"}}",
        "x".repeat((k % 512) as usize)
    );
    let commit = Commit::caused_by(cause_id(k))
        .append(
            agg.as_str(),
            version,
            vec![NewEvent {
                event_id: event_id(k),
                event_type: "Crashed".into(),
                payload: payload.clone(),
            }],
        )
        .publish(OutboxMessage {
            event_id: event_id(k),
            subject: format!("orders.crashed.{agg}"),
            payload,
            headers: vec![],
        });
    store.commit(&commit).unwrap();
}

/// Run the child until it has reported `flushes` flushes, then SIGKILL it. Returns the last
/// commit it reported as flushed.
fn run_child_and_kill(dir: &Path, start: u64, flushes: usize, alongside: bool) -> u64 {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if alongside {
        command.env(CHILD_FLUSHES_ALONGSIDE, "1");
    }
    let mut child = command
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_START, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let mut seen = 0;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("flushed ") {
            last = Some(k.trim().parse().unwrap());
            seen += 1;
            if seen == flushes {
                break; // the child is still writing: kill it mid-commit
            }
        }
        assert!(Instant::now() < deadline, "child too slow");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    last.expect("the child flushed at least once")
}

/// Reopen and check. Returns the first k not on disk (where the next child should start).
fn check_atomicity(dir: &Path, last_flushed: u64) -> u64 {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let mut in_events = BTreeSet::new();
    for a in 0..AGGREGATES {
        let agg = format!("order-{a}");
        let events = store.events_after(&agg, 0).unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "{agg}: versions are gap-free");
        }
        assert_eq!(
            store.version(&agg).unwrap(),
            events.len() as u64,
            "{agg}: head matches log"
        );
        in_events.extend(
            events
                .iter()
                .map(|e| (e.event_id.as_u128() & u64::MAX as u128) as u64),
        );
    }
    let mut in_outbox = BTreeSet::new();
    for row in store.pending(usize::MAX).unwrap() {
        in_outbox.insert((row.message.event_id.as_u128() & u64::MAX as u128) as u64);
    }
    let top = in_events
        .iter()
        .chain(&in_outbox)
        .max()
        .copied()
        .unwrap_or(0)
        + 64;
    let in_inbox: BTreeSet<u64> = (0..top)
        .filter(|k| store.is_processed(cause_id(*k)).unwrap())
        .collect();

    assert_eq!(
        in_events, in_outbox,
        "every event has its outbox row and no other row exists"
    );
    assert_eq!(
        in_events, in_inbox,
        "every event has its inbox mark and no other mark exists"
    );
    let expected: BTreeSet<u64> = (0..=last_flushed).collect();
    let missing: Vec<_> = expected.difference(&in_events).collect();
    assert!(
        missing.is_empty(),
        "flushed commits lost in the crash: {missing:?}"
    );
    // Commits are sequential, so what survived is a prefix 0..n.
    let n = in_events.len() as u64;
    assert_eq!(
        in_events,
        (0..n).collect(),
        "what survived is a prefix of the commits"
    );
    n
}

#[test]
fn crash_mid_write_leaves_whole_commits_only() {
    crash_three_times(false);
}

#[test]
fn crash_while_a_flush_overlaps_commits_loses_no_flushed_commit() {
    crash_three_times(true);
}

fn crash_three_times(alongside: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut next = 0;
    for round in 0..3 {
        let last_flushed = run_child_and_kill(&db, next, 40 + round * 30, alongside);
        next = check_atomicity(&db, last_flushed);
        assert!(next > last_flushed);
    }
}
