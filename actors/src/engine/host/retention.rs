//! Retention: sent outbox rows and inbox marks past their age are deleted off the actor's
//! thread, a little at a time.
//!
//! A pass used to run once a minute and delete a minute of traffic's rows at once, in every
//! database of the process within the same second: in a soak at 100 orders/s the p99 of the
//! windows it fell in jumped from about 0.1 s to 0.6–1.5 s (`bench soak`, README: Performance).
//! So a pass runs every few seconds, from a moment of its own per database, and deletes in small
//! steps with a pause after each: the same work, beside the saga's rather than in front of it.

use std::time::Duration;

use storage::Store;
use tokio_util::sync::CancellationToken;

/// How often a pass runs.
const EVERY: Duration = Duration::from_secs(5);
/// Rows (of each kind) a step deletes at most, and the pause after a full step: under 6,400 rows
/// of each kind a second, far above what a service writes, so a backlog (after a long stop, or a
/// shorter retention) still drains.
const STEP: usize = 128;
const PAUSE: Duration = Duration::from_millis(20);

pub async fn clean_up(
    store: Store,
    outbox: Duration,
    inbox: Duration,
    shutdown: CancellationToken,
) {
    // Each database from a moment of its own, so the process's passes do not line up.
    let mut wait = EVERY.mul_f64(fastrand::f64());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        let (mut sent, mut marks) = (0, 0);
        loop {
            let store = store.clone();
            let step = tokio::task::spawn_blocking(move || {
                Ok::<_, storage::StorageError>((
                    store.cleanup_sent(outbox, STEP)?,
                    store.cleanup_inbox(inbox, STEP)?,
                ))
            })
            .await;
            match step {
                Ok(Ok((s, m))) => {
                    (sent, marks) = (sent + s, marks + m);
                    if s < STEP && m < STEP {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "retention clean-up failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention clean-up panicked");
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PAUSE) => {}
            }
        }
        if sent + marks > 0 {
            tracing::debug!(sent, marks, "retention: old rows deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use storage::{Commit, OutboxMessage, StoreConfig};
    use uuid::Uuid;

    use super::*;

    /// More expired rows of each kind than a few steps take: all go, and nothing else.
    #[tokio::test]
    async fn passes_delete_everything_expired_step_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        let rows = 3 * STEP + 1;
        let commits: Vec<Commit> = (0..rows)
            .map(|i| {
                Commit::caused_by(Uuid::now_v7()).publish(OutboxMessage {
                    event_id: Uuid::now_v7(),
                    subject: format!("orders.tested.o-{i}"),
                    payload: "{}".into(),
                    headers: vec![],
                })
            })
            .collect();
        store.commit_all(&commits).unwrap();
        let _durable = store.flush().await.unwrap();
        // Each row a run of its own, as a relay sending one at a time leaves them.
        for (place, row) in (1..).zip(store.pending(rows).unwrap()) {
            store.mark_sent(&[(row, place)], None).unwrap();
        }
        assert_eq!((store.outbox_sent_count(), store.inbox_len()), (rows, rows));

        let shutdown = CancellationToken::new();
        let task = tokio::spawn(clean_up(
            store.clone(),
            Duration::ZERO,
            Duration::ZERO,
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while (store.outbox_sent_count(), store.inbox_len()) != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "left after 60 s: {} sent rows, {} inbox marks",
                store.outbox_sent_count(),
                store.inbox_len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
