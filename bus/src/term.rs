//! Terms: the broker's own fence between successive owners of a partition.
//!
//! An owner begins its term with a marker on `<domain>.term_<p>` in its own stream,
//! and every event it publishes names that marker as the subject's last message
//! (`Publisher::within_term`). Once a successor's marker is in the stream, the broker refuses
//! every publish of the earlier term, however late it arrives; everything the earlier owner
//! published before is ahead of the marker, where the successor's rebuild reads it.
//!
//! A marker is published only while its owner's fence is open, and only if the subject's last
//! marker is still the one it read before checking the fence: a pause anywhere in between makes
//! the broker refuse it. A stream that lost the current marker makes the broker refuse the
//! rightful owner's publishes; the owner then marks its term again ([`Term::reassert`]) under
//! the same rule, unless the last marker is a successor's (a larger fencing token): then its
//! lease is lost, whatever its clock says. Each term has its own id, so an owner knows its own
//! marker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, context::PublishErrorKind, stream::LastRawMessageErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use storage::Fence;

use crate::lease::{Claim, Holder};
use crate::{BusError, Domain};

/// How often marking may find another marker landed meanwhile before it gives up.
const MARK_TRIES: usize = 5;
/// How long to wait before looking again when a clustered stream is still checking another
/// publish of the term's subject ("wrong last sequence", 10164).
const CHECK_IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// How long to wait before publishing a recovery's marker, or a term's after a failure, again.
const RECOVERY_MARK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Where owners of `partition` of `domain`'s service mark their terms, in its own stream: two
/// tokens, `<domain>.term_<partition>`, so the partitioning transform (three tokens, events)
/// leaves it as is and no filter of events (four tokens) takes it.
pub fn term_subject(domain: Domain, partition: u32) -> String {
    format!("{}.term_{partition}", domain.subject_prefix())
}

/// Whether `subject` is a term marker (see [`term_subject`]).
pub fn is_term_subject(subject: &str) -> bool {
    subject.split_once('.').is_some_and(|(_, rest)| {
        rest.strip_prefix("term_")
            .is_some_and(|p| p.parse::<u32>().is_ok())
    })
}

/// This owner's term: the sequence of its marker, shared by every publisher of the term.
#[derive(Clone)]
pub struct Term {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// This term's own id, in its marker.
    id: String,
    key: String,
    token: u64,
    body: Bytes,
    fence: Fence,
    marker: Arc<AtomicU64>,
}

impl Term {
    /// Begin the term of `claim`'s lease on `partition` of `domain`'s stream.
    pub async fn begin(
        js: &jetstream::Context,
        domain: Domain,
        partition: u32,
        claim: &Claim,
        holder: &Holder,
    ) -> Result<Term, BusError> {
        let id = uuid::Uuid::now_v7().to_string();
        let body = serde_json::json!({
            "term": id,
            "lease": claim.key,
            "token": claim.token,
            "holder": holder,
        });
        let term = Term {
            js: js.clone(),
            stream: domain.stream().to_string(),
            subject: term_subject(domain, partition),
            id,
            key: claim.key.clone(),
            token: claim.token,
            body: body.to_string().into(),
            fence: claim.fence.clone(),
            marker: Arc::default(),
        };
        // A larger token than ours before our first marker is a bucket the broker lost and
        // made again (its revisions start over): we hold the lease, so it is an older term.
        let marker = term.mark(Successors::Ignored).await?;
        term.marker.store(marker, Ordering::SeqCst);
        Ok(term)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The sequence every publish of the term names as its subject's last.
    pub fn marker(&self) -> u64 {
        self.marker.load(Ordering::SeqCst)
    }

    /// The broker refused a publish of this term: its marker is no longer the subject's last.
    /// A successor's (a larger token): the lease is lost, and so is the fence. An earlier one's,
    /// or none (the stream lost ours): mark the term again, if the lease is still ours.
    pub async fn reassert(&self) -> Result<(), BusError> {
        let marker = self.mark(Successors::Win).await?;
        let was = self.marker.swap(marker, Ordering::SeqCst);
        if was != marker {
            tracing::warn!(subject = %self.subject, was, now = marker,
                "this term's marker was no longer the last (the broker lost it, or an earlier \
                 owner's landed late): marked the term again");
        }
        Ok(())
    }

    /// The sequence of this term's marker, published unless it is the subject's last already.
    ///
    /// A stream without its quorum (an election, nodes down) neither answers nor acknowledges;
    /// marking is asked again, every answer read afresh, for up to the time a leader takes to be
    /// elected ([`crate::streams::LEADER_PATIENCE`]) rather than given up at the first failure
    /// (which stopped the process). Only a lost lease, or a fence closed, ends it at once. A
    /// publish that timed out may still land: the next look finds it ours, and a second publish
    /// of the term expects the same last marker, so the broker stores one of the two.
    async fn mark(&self, successors: Successors) -> Result<u64, BusError> {
        let what = || format!("mark the term on {}", self.subject);
        let deadline = std::time::Instant::now() + crate::streams::LEADER_PATIENCE;
        let mut landed_meanwhile = 0;
        loop {
            let failed = match self.mark_once(successors).await {
                Ok(Marking::Marked(sequence)) => return Ok(sequence),
                Ok(Marking::Landed) => {
                    landed_meanwhile += 1;
                    if landed_meanwhile < MARK_TRIES {
                        continue;
                    }
                    return Err(BusError::Invalid(format!(
                        "{}: other markers kept landing ({MARK_TRIES} tries)",
                        what()
                    )));
                }
                // A clustered stream still checking another publish of the subject (perhaps
                // this term's own that timed out).
                Ok(Marking::InFlight) => None,
                Err(Retry::Later(e)) => Some(e),
                Err(Retry::Never(e)) => return Err(e),
            };
            if std::time::Instant::now() >= deadline {
                return Err(failed.unwrap_or_else(|| {
                    BusError::Invalid(format!(
                        "{}: another publish of it stayed in flight for {:?}",
                        what(),
                        crate::streams::LEADER_PATIENCE
                    ))
                }));
            }
            match failed {
                Some(e) => {
                    tracing::warn!(subject = %self.subject, error = %e, "marking the term again");
                    tokio::time::sleep(RECOVERY_MARK_WAIT).await;
                }
                None => tokio::time::sleep(CHECK_IN_FLIGHT_WAIT).await,
            }
        }
    }

    /// One look at the subject's last marker, and one publish of ours behind it.
    async fn mark_once(&self, successors: Successors) -> Result<Marking, Retry> {
        let expected = match self.last().await.map_err(Retry::Later)? {
            Some(last) if last.id == self.id => return Ok(Marking::Marked(last.sequence)),
            Some(last) if last.token > self.token && successors == Successors::Win => {
                self.fence.lose();
                return Err(Retry::Never(BusError::LeaseLost {
                    key: self.key.clone(),
                    token: self.token,
                }));
            }
            Some(last) => last.sequence,
            None => 0,
        };
        // Checked after reading the last marker, and the publish expects that one: a pause
        // after either, long enough for a successor to mark, gets this publish refused.
        self.fence
            .check()
            .map_err(|why| Retry::Never(BusError::Storage(storage::StorageError::Fenced(why))))?;
        let mut headers = HeaderMap::new();
        // Each marking its own id: marking again must not be taken for a duplicate.
        let msg_id = format!("term-{}-{}", self.id, uuid::Uuid::now_v7());
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let failed = |e: async_nats::Error| {
            BusError::jetstream(format!("mark the term on {}", self.subject))(e)
        };
        let sent = self
            .js
            .publish_with_headers(self.subject.clone(), headers, self.body.clone())
            .await
            .map_err(|e| Retry::Later(failed(e.into())))?;
        match sent.await {
            Ok(ack) => Ok(Marking::Marked(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Marking::Landed),
            Err(e) if is_check_in_flight(&e) => Ok(Marking::InFlight),
            // A timeout, no leader to answer (no responders, one stepping down), a broken link:
            // all pass with an election.
            Err(e) => Err(Retry::Later(failed(e.into()))),
        }
    }

    /// The subject's last marker.
    async fn last(&self) -> Result<Option<Marker>, BusError> {
        let what = || format!("read the last marker on {}", self.subject);
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(BusError::jetstream(what()))?;
        match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(message) => {
                let body = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .unwrap_or_default();
                Ok(Some(Marker {
                    sequence: message.sequence,
                    id: body["term"].as_str().unwrap_or_default().to_string(),
                    token: body["token"].as_u64().unwrap_or(0),
                }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::jetstream(what())(e)),
        }
    }
}

/// Mark where a recovery of `partition` of `domain`'s service reads its stream to, when no
/// term does (a service run without `--instance`): returns the marker's sequence.
///
/// A publish its dead predecessor sent may still be on its way into the stream (a clustered
/// stream that had lost its quorum commits it once the quorum is back). Read before it lands,
/// the successor would make the same versions again. The broker stores a stream's messages in
/// the order its leader took them, so once this marker is acknowledged, every publish taken
/// before it is stored ahead of it, where a replay that reads up to the marker reads it. It is
/// published under one `Nats-Msg-Id`, asked again until acknowledged for up to the time a
/// leader takes to be elected ([`crate::streams::LEADER_PATIENCE`]).
pub async fn mark_recovery(
    js: &jetstream::Context,
    domain: Domain,
    partition: u32,
) -> Result<u64, BusError> {
    let subject = term_subject(domain, partition);
    let id = uuid::Uuid::now_v7().to_string();
    let body: Bytes = serde_json::json!({ "recovery": id }).to_string().into();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("recovery-{id}").as_str());
    let deadline = std::time::Instant::now() + crate::streams::LEADER_PATIENCE;
    loop {
        let acked = match js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await
        {
            Ok(sent) => sent.await.map_err(async_nats::Error::from),
            Err(e) => Err(e.into()),
        };
        match acked {
            Ok(ack) => return Ok(ack.sequence),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(BusError::jetstream(format!("mark a recovery on {subject}"))(e))
            }
            Err(e) => {
                // Broker trouble passes (an election); anything else fails, named, at the
                // deadline.
                tracing::warn!(%subject, error = %e, "recovery marker not stored; publishing it again");
                tokio::time::sleep(RECOVERY_MARK_WAIT).await
            }
        }
    }
}

/// A marker as read back.
struct Marker {
    sequence: u64,
    id: String,
    /// Its lease's fencing token (0 if it has none).
    token: u64,
}

/// What one publish of a term's marker came to.
enum Marking {
    Marked(u64),
    /// Another marker landed since we looked: look again.
    Landed,
    /// The stream is still checking another publish of the subject.
    InFlight,
}

/// Why marking failed: for now (a stream without its quorum), or for good.
enum Retry {
    Later(BusError),
    Never(BusError),
}

/// Whether a marker with a larger token than ours means a successor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Successors {
    /// Yes: the lease is lost.
    Win,
    /// No: before our first marker, we hold the lease and it can only be an older term.
    Ignored,
}

/// "Wrong last sequence" 10164: the stream refused the check because another publish checking
/// the same subject is still in flight (clustered streams), not because the check failed.
fn is_check_in_flight(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| {
            e.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}
