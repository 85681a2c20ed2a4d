//! The streams: one per owning service (`ORDERS` holds `orders.>`, …), plus `DLQ` (`dlq.>`) for
//! poison or exhausted messages and `OPS` (`ops.>`) for operational events. Provisioning is
//! idempotent: run it at every start; it creates what is missing and updates what drifted.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use crate::envelope::Domain;
use crate::partition::Partitions;
use crate::BusError;

pub const DLQ_STREAM: &str = "DLQ";
pub const OPS_STREAM: &str = "OPS";

/// Retention and deduplication of every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// How long events are kept, in seconds; zero keeps them forever (replay and rebuild need
    /// history).
    pub max_age_secs: u64,
    /// Window in which the broker drops a second message with the same `Nats-Msg-Id`, in
    /// seconds (at most `max_age_secs` when that is set: the broker refuses more).
    pub duplicate_window_secs: u64,
    /// Replicas (1 on a single server; `commerce up --cluster 3` makes it 3). Provisioning
    /// raises a stream's replicas to this, never lowers them.
    pub replicas: usize,
    /// How long the lease on a partition outlives its owner's last renewal, in ms: a standby
    /// instance takes over about this long after the owner died (and the owner stops writing
    /// a quarter of it earlier). Shorter fails over sooner and steps down on shorter broker
    /// trouble.
    pub lease_ttl_ms: u64,
    /// How many partitions every domain stream spreads its events over, by order id
    /// ([`crate::partition`]). Fixed once events are stored: re-partitioning is offline.
    pub partitions: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_age_secs: 0,
            duplicate_window_secs: 120,
            replicas: 1,
            lease_ttl_ms: 10_000,
            partitions: 1,
        }
    }
}

impl StreamSettings {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn partitions(&self) -> Result<Partitions, BusError> {
        Partitions::new(self.partitions)
    }
}

/// Name, subjects and purpose of every stream, in provisioning order, with the domain whose
/// events it holds (partitioned by order).
pub fn stream_specs() -> Vec<(&'static str, String, &'static str, Option<Domain>)> {
    let mut specs: Vec<_> = Domain::ALL
        .into_iter()
        .map(|d| {
            (
                d.stream(),
                format!("{}.>", d.subject_prefix()),
                "domain events, owned by one service",
                Some(d),
            )
        })
        .collect();
    specs.push((
        DLQ_STREAM,
        "dlq.>".into(),
        "poison or exhausted messages, with the reason",
        None,
    ));
    specs.push((
        OPS_STREAM,
        "ops.>".into(),
        "operational events (circuit breakers)",
        None,
    ));
    specs
}

/// What provisioning did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    Updated,
    Unchanged,
}

/// Create or update every stream so that it matches `settings`. Safe to run at every start,
/// from every process at once.
pub async fn provision(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Vec<(&'static str, Provisioned)>, BusError> {
    let partitions = settings.partitions()?;
    let mut report = Vec::new();
    for (name, subjects, description, domain) in stream_specs() {
        let wanted = stream::Config {
            name: name.to_string(),
            subjects: vec![subjects],
            description: Some(description.to_string()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: settings.max_age(),
            duplicate_window: settings.duplicate_window(),
            num_replicas: settings.replicas,
            // An instance's relay publishes a term's messages as one atomic batch.
            allow_atomic_publish: true,
            subject_transform: domain.map(|d| partitions.transform(d)),
            ..Default::default()
        };
        let outcome = match js.get_stream(name).await {
            Ok(mut existing) => {
                let have = existing
                    .info()
                    .await
                    .map_err(|e| BusError::jetstream(format!("stream info {name}"))(e))?
                    .config
                    .clone();
                // Never fewer replicas than it has: a process started with the defaults must
                // not shrink a cluster's streams (lower them by hand, with the NATS CLI).
                let wanted = stream::Config {
                    num_replicas: wanted.num_replicas.max(have.num_replicas),
                    ..wanted
                };
                if have.subjects == wanted.subjects
                    && have.max_age == wanted.max_age
                    && have.duplicate_window == wanted.duplicate_window
                    && have.description == wanted.description
                    && have.num_replicas == wanted.num_replicas
                    && have.allow_atomic_publish == wanted.allow_atomic_publish
                    && have.subject_transform == wanted.subject_transform
                {
                    Provisioned::Unchanged
                } else {
                    if have.subject_transform != wanted.subject_transform
                        && holds_events(&existing, domain).await?
                    {
                        return Err(BusError::Repartition {
                            stream: name.to_string(),
                            stored: describe(domain, have.subject_transform.as_ref()),
                            wanted: partitions.count(),
                        });
                    }
                    js.update_stream(&wanted)
                        .await
                        .map_err(|e| BusError::jetstream(format!("update stream {name}"))(e))?;
                    Provisioned::Updated
                }
            }
            Err(e) if is_not_found(&e) => {
                // Another process may create it at the same moment: create is idempotent.
                js.get_or_create_stream(wanted)
                    .await
                    .map_err(|e| BusError::jetstream(format!("create stream {name}"))(e))?;
                Provisioned::Created
            }
            Err(e) => {
                return Err(BusError::jetstream(format!("get stream {name}"))(e));
            }
        };
        report.push((name, outcome));
    }
    crate::lease::provision(js, settings.lease_ttl(), settings.replicas).await?;
    Ok(report)
}

/// Provision every `every` until `shutdown`: a stream the broker lost with its store comes back
/// at once, so the outbox relays can publish into it again what it had acknowledged.
pub async fn keep_provisioned(
    js: jetstream::Context,
    settings: StreamSettings,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match provision(&js, &settings).await {
            Ok(report) => {
                for (stream, outcome) in report {
                    if outcome == Provisioned::Created {
                        tracing::warn!(
                            stream,
                            "stream was missing (broker store lost?); created again"
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "streams not checked (broker unreachable?)"),
        }
    }
}

/// The stream's state as its leader knows it. While a cluster elects a stream's leader, each
/// replica answers for it with its own state, and one that lags (a node just thawed from a
/// freeze) would show a stream that lost its tail: the relay would publish again what the
/// stream holds, a consumer start over, a rebuild stop short. So that answer is refused, as
/// the broker itself refuses to serve a message then; asked again, the new leader answers.
///
/// A replica can also answer just as a leader is elected, naming it: an answer is the leader's
/// own only if the leader is not among the replicas it lists (each answer leaves its own
/// server out).
pub fn leader_state(info: &stream::Info) -> Result<&stream::State, BusError> {
    let led = info.cluster.as_ref().is_none_or(|cluster| {
        cluster.leader.as_deref().is_some_and(|leader| {
            !leader.is_empty() && cluster.replicas.iter().all(|peer| peer.name != leader)
        })
    });
    if led {
        Ok(&info.state)
    } else {
        Err(BusError::jetstream(format!("stream {}", info.config.name))(
            "answered by a replica while no leader is elected (its state may lag): ask again",
        ))
    }
}

/// How long a caller that cannot try again later (a process's start) waits for a stream's
/// leader to be elected: longer than the broker's Raft election timeout (at most 9 s).
pub const LEADER_PATIENCE: Duration = Duration::from_secs(30);

/// `stream`'s info as its leader gives it ([`leader_state`]), asked again every 250 ms while
/// no leader is elected, for up to [`LEADER_PATIENCE`].
pub async fn leader_info(stream: &mut stream::Stream) -> Result<stream::Info, BusError> {
    let name = stream.cached_info().config.name.clone();
    from_the_leader(|| {
        let (mut stream, name) = (stream.clone(), name.clone());
        async move {
            let info = stream
                .info()
                .await
                .map_err(|e| BusError::jetstream(format!("stream {name}"))(e))?;
            Ok(leader_state(info).map(|_| info.clone()))
        }
    })
    .await
}

/// Whether `stream` holds any of `domain`'s events (three or more tokens, with or without a
/// partition): its markers (two, `crate::term`) do not count. One look-up at the leader.
async fn holds_events(stream: &stream::Stream, domain: Option<Domain>) -> Result<bool, BusError> {
    match domain {
        Some(d) => {
            let events = [format!("{}.*.>", d.subject_prefix())];
            Ok(leader_next(stream, &events, 1).await?.is_some())
        }
        None => Ok(leader_state(stream.cached_info())?.messages > 0),
    }
}

/// How many messages of `filter`'s subjects `stream` holds, as its leader counts them
/// ([`leader_state`]), asked again as [`leader_info`] does. A count a replay can read up to:
/// its consumer may sit on a replica still catching up, whose own count of what is left stops
/// short.
pub async fn leader_count(stream: &stream::Stream, filter: &str) -> Result<u64, BusError> {
    use futures::TryStreamExt;
    let name = stream.cached_info().config.name.clone();
    let failed = |e| BusError::jetstream(format!("stream {name}, counting {filter}"))(e);
    from_the_leader(|| async {
        let subjects = stream.info_with_subjects(filter).await.map_err(failed)?;
        if let Err(refused) = leader_state(&subjects.info) {
            return Ok(Err(refused));
        }
        let counts: Vec<(String, usize)> = subjects.try_collect().await.map_err(failed)?;
        Ok(Ok(counts.iter().map(|(_, n)| *n as u64).sum()))
    })
    .await
}

/// The sequence of the first message on any of `filters` (wildcards allowed) at or after
/// `from` that `stream`'s leader holds, or `None` if it holds none. `STREAM.MSG.GET` is answered
/// by the leader alone, so this tells a replay whose consumer counts nothing left short of its
/// target whether that replica is still catching up (`Some`, at or below the target) or there
/// is nothing more to read. Asked again every 250 ms for up to [`LEADER_PATIENCE`] while it
/// cannot be answered (an election).
pub async fn leader_next(
    stream: &stream::Stream,
    filters: &[String],
    from: u64,
) -> Result<Option<u64>, BusError> {
    let mut next: Option<u64> = None;
    for filter in filters {
        let name = &stream.cached_info().config.name;
        let failed = |e| {
            BusError::jetstream(format!("stream {name}, the first of {filter} from #{from}"))(e)
        };
        // A request that fails is asked again, as a replica's answer is.
        let found = from_the_leader(|| async {
            Ok(
                match stream.get_first_raw_message_by_subject(filter, from).await {
                    Ok(message) => Ok(Some(message.sequence)),
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(failed(e)),
                },
            )
        })
        .await?;
        next = match (next, found) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(next)
}

/// `ask`'s answer, asked again every 250 ms for up to [`LEADER_PATIENCE`] while it is a
/// replica's (the inner error, [`leader_state`]'s refusal); a failure to ask ends it at once.
async fn from_the_leader<T, F, Fut>(mut ask: F) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, BusError>, BusError>>,
{
    let deadline = std::time::Instant::now() + LEADER_PATIENCE;
    loop {
        match ask().await? {
            Ok(answer) => return Ok(answer),
            Err(refused) if std::time::Instant::now() >= deadline => return Err(refused),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// How a stream's stored events are partitioned, for an error message.
fn describe(domain: Option<Domain>, transform: Option<&stream::SubjectTransform>) -> String {
    match (domain, transform) {
        (_, None) => "without partitions (written by an older version)".into(),
        (Some(domain), Some(t)) => match Partitions::of_transform(domain, t) {
            Some(p) => format!("over {} partitions", p.count()),
            None => format!("by a foreign transform ({} -> {})", t.source, t.destination),
        },
        (None, Some(t)) => format!("by a foreign transform ({} -> {})", t.source, t.destination),
    }
}

pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's info as the broker sends it, with `cluster` as given.
    fn info(cluster: serde_json::Value) -> stream::Info {
        let ts = "2026-01-01T00:00:00Z";
        serde_json::from_value(serde_json::json!({
            "config": stream::Config {
                name: "ORDERS".into(),
                ..Default::default()
            },
            "created": ts,
            "state": {"messages": 7, "bytes": 1, "first_seq": 1, "first_ts": ts,
                      "last_seq": 7, "last_ts": ts, "consumer_count": 0},
            "cluster": cluster,
        }))
        .expect("a stream info")
    }

    #[test]
    fn a_stream_state_is_believed_only_from_its_leader() {
        let led = info(
            serde_json::json!({"name": "c", "leader": "node-1", "replicas": [
            {"name": "node-2", "current": true, "active": 1_000, "lag": 0},
            {"name": "node-3", "current": false, "active": 1_000, "lag": 5}]}),
        );
        assert_eq!(leader_state(&led).unwrap().last_sequence, 7);
        // A single server (or a stream of one replica) names itself and lists no replicas; a
        // broker that sends no cluster at all is taken at its word too.
        let single = info(serde_json::json!({"name": "", "leader": "solo"}));
        assert!(leader_state(&single).is_ok());
        assert!(leader_state(&info(serde_json::Value::Null)).is_ok());
        // A replica answering while no leader is elected.
        for leaderless in [
            serde_json::json!({"name": "c", "replicas": [{"name": "node-2", "current": false, "active": 1_000, "lag": 3}]}),
            serde_json::json!({"name": "c", "leader": ""}),
            // A follower answering as the leader is elected: it lists the leader as a replica.
            serde_json::json!({"name": "c", "leader": "node-1", "replicas": [
                {"name": "node-1", "current": true, "active": 1_000, "lag": 0},
                {"name": "node-3", "current": true, "active": 1_000, "lag": 0}]}),
        ] {
            let refused = leader_state(&info(leaderless)).unwrap_err().to_string();
            assert!(refused.contains("no leader"), "{refused}");
        }
    }
}
