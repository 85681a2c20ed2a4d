//! Event sourcing's promise: a service whose database is lost rebuilds it from its own stream.
//!
//! Every event a service ever published is in its stream with its aggregate version and the id
//! of the event that caused it. Replaying them restores the aggregates (in version order, each
//! once) and the inbox (from `causationid`), without publishing anything again. Then the
//! service's durable consumers are recreated from the start of their streams: events already
//! reacted to are skipped by the rebuilt inbox, and any whose reaction was lost with the old
//! database (committed, acked, but not yet published) are reacted to again. External calls are
//! keyed by the order, so nothing is booked or charged twice.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use bus::{Domain, Envelope};
use futures::StreamExt;
use storage::{Commit, NewEvent, Store};

use super::{Aggregate, DomainEvent, EngineError, Service};

fn failed(reason: impl std::fmt::Display) -> EngineError {
    EngineError::Bus(bus::BusError::JetStream {
        what: "recovery".into(),
        reason: reason.to_string(),
    })
}

/// The service's own domain.
fn own<S: Service>() -> Domain {
    <<S::State as Aggregate>::Event as DomainEvent>::DOMAIN
}

/// Rebuild `store` (which must be empty) from the service's stream. Returns the events restored.
pub async fn recover<S: Service>(
    store: &Store,
    js: &jetstream::Context,
) -> Result<u64, EngineError> {
    let domain = own::<S>();
    let mut stream = js.get_stream(domain.stream()).await.map_err(failed)?;
    let last = stream.info().await.map_err(failed)?.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    // Own events only (a stream holds only its owner's events, but be strict).
    let mut by_aggregate: BTreeMap<String, BTreeMap<u64, Envelope>> = BTreeMap::new();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(failed)?;
    let mut messages = consumer.messages().await.map_err(failed)?;
    let mut seen = 0;
    let mut unversioned = 0;
    while seen < last {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| failed(format!("{} stopped answering", domain.stream())))?
            .ok_or_else(|| failed("stream ended"))?
            .map_err(failed)?;
        seen = message.info().map_err(failed)?.stream_sequence;
        let Ok(envelope) = Envelope::from_slice(&message.payload) else {
            continue;
        };
        if envelope.source != domain.service() {
            continue;
        }
        let version = envelope.aggregateversion.unwrap_or_else(|| {
            unversioned += 1;
            u64::MAX / 2 + unversioned
        });
        // A copy published twice (after a broker outage) lands once.
        by_aggregate
            .entry(S::own_aggregate(&envelope.subject))
            .or_default()
            .entry(version)
            .or_insert(envelope);
    }

    let mut restored = 0;
    let mut commits = Vec::new();
    for (aggregate_id, events) in by_aggregate {
        let mut version = 0;
        let events: Vec<Envelope> = events.into_values().collect();
        // Events recorded together (same cause) are committed together, with that cause's mark.
        for group in events.chunk_by(|a, b| a.causationid == b.causationid) {
            let new_events = group
                .iter()
                .map(|e| {
                    Ok(NewEvent {
                        event_id: e.id,
                        event_type: e.event_type.clone(),
                        payload: e.to_json()?,
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            let commit = match group[0].causationid {
                Some(cause) => Commit::caused_by(cause),
                None => Commit::new(),
            };
            commits.push(commit.append(aggregate_id.clone(), version, new_events));
            version += group.len() as u64;
            restored += group.len() as u64;
        }
        if commits.len() >= 256 {
            write(store, &mut commits)?;
        }
    }
    write(store, &mut commits)?;
    let _durable = store.flush().await?;
    Ok(restored)
}

fn write(store: &Store, commits: &mut Vec<Commit>) -> Result<(), EngineError> {
    for outcome in store.commit_all(commits)? {
        outcome?;
    }
    commits.clear();
    Ok(())
}

/// Delete the service's durable consumers, so they are recreated from the start of their
/// streams (the rebuilt inbox skips what was already done).
pub async fn reset_consumers<S: Service>(js: &jetstream::Context) -> Result<(), EngineError> {
    for (domain, _) in S::LISTENS {
        let stream = js.get_stream(domain.stream()).await.map_err(failed)?;
        if let Err(e) = stream.delete_consumer(S::name()).await {
            tracing::debug!(error = %e, stream = domain.stream(), "no consumer to delete");
        }
    }
    Ok(())
}
