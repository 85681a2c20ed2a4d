//! One durable consumer's loop: fetch a batch, let the sink apply it (commit + flush), then
//! settle it on the bus. A batch already fetched is always finished before shutdown is honoured.

use std::time::Duration;

use bus::{ConsumerSpec, Delivery, DurableConsumer, InHand, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::core::Settled;
use crate::engine::{EngineError, Handle, Service};
use crate::rpc::Address;
use crate::Settings;

/// How often a consumer checks it still exists and points inside its stream (and after every
/// reconnect): a broker that lost data may have lost both.
const REALIGN_EVERY: Duration = Duration::from_secs(10);
/// How often a consumer whose instance's lease lapsed looks whether it is renewed.
const FENCED_POLL: Duration = Duration::from_millis(50);

/// Where a consumer hands its batches: commits and flushes them, then says how to settle each.
pub trait Sink: Clone + 'static {
    fn name(&self) -> &'static str;
    /// Whether a batch could be committed now: not while an instance's lease has lapsed.
    fn may_write(&self) -> bool {
        true
    }
    fn deliver(
        &self,
        batch: Vec<Delivery>,
    ) -> impl std::future::Future<Output = Result<Settled, EngineError>>;
}

impl<S: Service> Sink for Handle<S> {
    fn name(&self) -> &'static str {
        S::name()
    }
    fn may_write(&self) -> bool {
        self.may_write()
    }
    async fn deliver(&self, batch: Vec<Delivery>) -> Result<Settled, EngineError> {
        Handle::deliver(self, batch).await
    }
}

/// A durable consumer of `stream` for `durable`, with the settings' redelivery policy.
/// The durable consumers' name of `address`: the component's, or `<service>-p<k>` for
/// partition `k` of a split service.
pub fn durable_name(address: Address) -> String {
    match address.partition {
        None => address.component.name().to_string(),
        Some(k) => format!("{}-p{k}", address.component),
    }
}

/// Whom `address`'s dead letters are filed under (`dlq.<owner>.…`): the service (a partition's
/// letters say their partition in their subject), or, for a shard of stock split by SKU (which
/// reads every partition), the shard's own durable name, so that each rebuilds and replays only
/// its own.
pub fn dead_letter_owner(address: Address) -> String {
    match address.component.keeps_stock() {
        true => durable_name(address),
        false => address.component.name().to_string(),
    }
}

pub fn consumer_spec(stream: &str, durable: &str, settings: &Settings) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(stream, durable);
    spec.ack_wait = settings.ack_wait();
    spec.max_deliver = settings.max_deliver;
    if !settings.retry_backoff_ms.is_empty() {
        spec.backoff = settings.retry_backoff();
    }
    spec
}

pub async fn consume<K: Sink>(
    js: async_nats::jetstream::Context,
    mut consumer: DurableConsumer,
    sink: K,
    shutdown: CancellationToken,
) {
    loop {
        if !sink.may_write() {
            // A lapsed lease: fetch nothing (it could not be committed, and would wait out its
            // AckWait), and leave the consumer as it is, for a successor may be reading it.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(FENCED_POLL) => continue,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            realigned = consumer.realign(REALIGN_EVERY) => if let Err(e) = realigned {
                tracing::debug!(component = sink.name(), error = %e, "consumer position not checked");
            },
        }
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = consumer.next_batch(Duration::from_secs(1)) => batch,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                ack_before_flush_if_broken(&batch).await;
                bus::failpoints::crash("consume.before_apply");
                match consumer
                    .working(InHand::of(&batch), sink.deliver(batch))
                    .await
                {
                    Ok(settled) => {
                        bus::failpoints::crash("consume.after_commit");
                        record_retries(&js, sink.name(), &settled.verdicts).await;
                        consumer.settle(settled.verdicts, settled.flushed).await
                    }
                    Err(e) => tracing::warn!(component = sink.name(), error = %e,
                        "batch not applied; the broker redelivers it after AckWait"),
                }
            }
            Err(e) => {
                tracing::warn!(component = sink.name(), error = %e, "consumer lost; binding again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if let Err(e) = consumer.rebind().await {
                    tracing::warn!(component = sink.name(), error = %e, "bind failed");
                }
            }
        }
    }
}

/// A handling put off (redelivered later): a breaker's refusal, a timeout, an outage. Recorded
/// on [`retry_subject`] in the `OPS` stream, so `commerce order trace` shows what held an
/// order up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub service: String,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub order_id: String,
    /// Which delivery this was (1: the first).
    pub attempt: i64,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// `ops.retry.<service>.<order id>`: one service's put-off handlings of one order.
pub fn retry_subject(service: &str, order_id: &str) -> String {
    format!("ops.retry.{service}.{order_id}")
}

/// Record every Retry verdict of a batch. Best effort, not awaited to the broker's ack: the
/// record informs people, the redelivery itself does not depend on it.
async fn record_retries(
    js: &async_nats::jetstream::Context,
    service: &str,
    verdicts: &[(Verdict, Delivery)],
) {
    for (verdict, delivery) in verdicts {
        let Verdict::Retry(reason) = verdict else {
            continue;
        };
        let envelope = &delivery.envelope;
        let record = RetryRecord {
            service: service.to_string(),
            event_id: envelope.id,
            event_type: envelope.event_type.clone(),
            order_id: envelope.subject.clone(),
            attempt: delivery.delivered,
            reason: reason.clone(),
            at: Utc::now(),
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("retry-{service}-{}-{}", envelope.id, delivery.delivered);
        headers.insert("Nats-Msg-Id", id.as_str());
        let subject = retry_subject(service, &envelope.subject);
        if let Err(e) = js.publish_with_headers(subject, headers, body.into()).await {
            tracing::debug!(service, error = %e, "retry record not published");
        }
    }
}

/// The deliberate bug `broken.ack_before_flush` (test builds): acknowledge a batch before it is
/// applied, so a crash in between loses it.
async fn ack_before_flush_if_broken(batch: &[Delivery]) {
    #[cfg(feature = "failpoints")]
    if bus::failpoints::broken("broken.ack_before_flush") {
        for delivery in batch {
            delivery.ack_unproven().await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = batch;
}
