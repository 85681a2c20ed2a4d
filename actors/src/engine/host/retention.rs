//! Retention: sent outbox rows and inbox marks past their age are deleted, once a minute, off the
//! actor's thread.

use std::time::Duration;

use storage::Store;
use tokio_util::sync::CancellationToken;

pub async fn clean_up(
    store: Store,
    outbox: Duration,
    inbox: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let store = store.clone();
        let cleaned = tokio::task::spawn_blocking(move || {
            Ok::<_, storage::StorageError>((
                store.cleanup_sent(outbox)?,
                store.cleanup_inbox(inbox)?,
            ))
        })
        .await;
        match cleaned {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((sent, marks))) => tracing::debug!(sent, marks, "retention: old rows deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention clean-up failed"),
            Err(e) => tracing::warn!(error = %e, "retention clean-up panicked"),
        }
    }
}
