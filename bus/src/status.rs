//! What a person sees in `commerce status`: every stream, and who lags behind it.

use std::fmt;

use async_nats::jetstream;
use futures::TryStreamExt;

use crate::partition::Partitions;
use crate::streams::stream_specs;
use crate::BusError;

#[derive(Debug, Clone)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub last_sequence: u64,
    /// Over how many partitions its events are spread (`None`: not an event stream).
    pub partitions: Option<u32>,
    /// On a cluster: the node leading the stream, and how far each other replica is behind.
    pub cluster: Option<Replication>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Clone)]
pub struct Replication {
    /// `None` while a leader is being elected.
    pub leader: Option<String>,
    pub replicas: Vec<Replica>,
}

#[derive(Debug, Clone)]
pub struct Replica {
    pub name: String,
    /// Has every operation the leader committed.
    pub current: bool,
    /// The group gave up on reaching it.
    pub offline: bool,
    /// Operations it is behind the leader.
    pub lag: u64,
}

#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    pub name: String,
    /// Messages not yet delivered to it: its lag.
    pub pending: u64,
    /// Delivered but not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
}

/// Read every stream this system provisions, with its consumers. A missing stream is an error
/// that says to start the system first.
pub async fn streams(js: &jetstream::Context) -> Result<Vec<StreamStatus>, BusError> {
    let mut report = Vec::new();
    for (name, _, _, domain) in stream_specs() {
        let what = || format!("status of stream {name} (has `commerce up` run?)");
        let mut stream = js
            .get_stream(name)
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        let state = info.state.clone();
        let partitions = domain.and_then(|d| {
            let transform = info.config.subject_transform.as_ref()?;
            Some(Partitions::of_transform(d, transform)?.count())
        });
        // A single server answers with a cluster block too (itself the leader), but no replicas.
        let cluster = info
            .cluster
            .as_ref()
            .filter(|c| !c.replicas.is_empty())
            .map(|c| Replication {
                leader: c.leader.clone(),
                replicas: c
                    .replicas
                    .iter()
                    .map(|p| Replica {
                        name: p.name.clone(),
                        current: p.current,
                        offline: p.offline,
                        lag: p.lag.unwrap_or(0),
                    })
                    .collect(),
            });
        let mut consumers: Vec<ConsumerStatus> = stream
            .consumers()
            .map_ok(|c| ConsumerStatus {
                name: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                redelivered: c.num_redelivered,
            })
            .try_collect()
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        report.push(StreamStatus {
            name: name.to_string(),
            messages: state.messages,
            bytes: state.bytes,
            last_sequence: state.last_sequence,
            partitions,
            cluster,
            consumers,
        });
    }
    Ok(report)
}

impl fmt::Display for StreamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<16} {:>10} msgs {:>12} bytes  last seq {}",
            self.name, self.messages, self.bytes, self.last_sequence
        )?;
        match self.partitions {
            Some(p) => writeln!(f, "  partitions {p}")?,
            None => writeln!(f)?,
        }
        if let Some(cluster) = &self.cluster {
            write!(
                f,
                "  leader {}",
                cluster.leader.as_deref().unwrap_or("(electing)")
            )?;
            for r in &cluster.replicas {
                let state = if r.offline {
                    "offline"
                } else if r.current {
                    "current"
                } else {
                    "behind"
                };
                write!(f, "  replica {} {state} lag {}", r.name, r.lag)?;
            }
            writeln!(f)?;
        }
        for c in &self.consumers {
            writeln!(
                f,
                "  consumer {:<16} lag {:>8}  unacked {:>6}  redelivered {:>6}",
                c.name, c.pending, c.ack_pending, c.redelivered
            )?;
        }
        Ok(())
    }
}
