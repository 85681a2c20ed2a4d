//! A cluster's announcements of new leaders (`$JS.EVENT.ADVISORY.…LEADER_ELECTED.…`), followed
//! as cues: what was asked of the old leader may never be answered, so look again. Their content
//! is never read, so a forged one costs a look, no more.

use futures::{FutureExt, StreamExt};

/// Where the broker announces a new leader of durable consumer `durable` on `stream`.
pub fn consumer_subject(stream: &str, durable: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{durable}")
}

/// Where the broker announces a new leader of `stream`.
pub fn stream_subject(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")
}

/// The announcements on one subject, or none: without them (a subscription that fails, or one
/// the broker refuses, which then hears nothing) each waiter falls back on its own timeout.
pub struct Elections(Option<async_nats::Subscriber>);

impl Elections {
    /// Follow the announcements on `subject`.
    pub async fn follow(client: &async_nats::Client, subject: String) -> Elections {
        match client.subscribe(subject.clone()).await {
            Ok(subscriber) => Elections(Some(subscriber)),
            Err(e) => {
                tracing::debug!(%subject, error = %e, "leader elections not followed");
                Elections(None)
            }
        }
    }

    /// Was any announced since the last look? Never waits.
    pub fn announced(&mut self) -> bool {
        let mut any = false;
        if let Some(subscriber) = &mut self.0 {
            while let Some(Some(_)) = subscriber.next().now_or_never() {
                any = true;
            }
        }
        any
    }

    /// The next announcement; never, when none are followed (or the subscription ended).
    pub async fn next(&mut self) {
        if let Some(subscriber) = &mut self.0 {
            if subscriber.next().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}
