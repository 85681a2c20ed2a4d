//! Event sourcing's promise: a service whose database is lost rebuilds it from its own stream.
//!
//! Every event a service ever published is in its stream with its aggregate version and the id
//! of the event that caused it. Replaying them restores the aggregates (in version order, each
//! once) and the inbox (from `causationid`), without publishing anything again. Then the
//! service's durable consumers are recreated from the start of their streams: events already
//! reacted to are skipped by the rebuilt inbox, and any whose reaction was lost with the old
//! database (committed, acked, but not yet published) are reacted to again. External calls are
//! keyed by the order, so nothing is booked or charged twice.
//!
//! Events the service had dead-lettered are marked as such (not as applied): the recreated
//! consumers skip them (no charge weeks later), and `commerce dlq replay` can still re-drive
//! them (a refund that reached `DLQ` is never lost to a recovery).
//!
//! A recovery reads its stream up to a marker stored before it began reading ([`ReadTo`]): a
//! publish of the dead process that the broker took before the marker, but had not stored yet
//! (a cluster without its quorum), is read, not made again under the same versions.

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::jetstream;
use bus::partition::{self, Slice};
use bus::{Domain, Envelope};
use storage::{Commit, NewEvent, Store};

use super::host::consume::{dead_letter_owner, durable_name};
use super::{Aggregate, DomainEvent, EngineError, Placement, Scope, Service, Shard};
use crate::rpc::Address;
use crate::Settings;

/// Present in a service's database directory while a recovery runs: if it is still there at
/// start, that recovery was cut short and is redone from scratch.
const MARKER: &str = "RECOVERING";

/// Open the service's database at `dir`, emptied first when a rebuild was asked for
/// (`--rebuild`) or an earlier recovery was cut short.
pub fn open(dir: &Path, settings: &Settings) -> Result<Store, EngineError> {
    let store = Store::open(dir, &settings.store)?;
    if !(settings.rebuild || dir.join(MARKER).exists()) || store.is_empty() {
        return Ok(store);
    }
    // We hold its lock, so it is ours to clear.
    drop(store);
    std::fs::remove_dir_all(dir).map_err(|e| EngineError::Io {
        what: format!("clearing {} to rebuild it", dir.display()),
        source: e,
    })?;
    Ok(Store::open(dir, &settings.store)?)
}

/// A new or lost database: restore what the stream knows, and read every upstream event again
/// (even with nothing restored, a reaction may have been lost before it was published).
pub async fn recover_if_empty<S: Service>(
    dir: &Path,
    store: &Store,
    js: &jetstream::Context,
    login: &bus::Login,
    scope: Scope,
    read_to: ReadTo,
) -> Result<(), EngineError> {
    let address = scope.address;
    if !store.is_empty() {
        return Ok(());
    }
    let marker = dir.join(MARKER);
    let io = |e: std::io::Error| EngineError::Io {
        what: marker.display().to_string(),
        source: e,
    };
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    let restored = recover::<S>(store, js, login, scope, read_to).await?;
    reset_consumers::<S>(js, address).await?;
    std::fs::remove_file(&marker).map_err(io)?;
    if restored > 0 {
        tracing::info!(
            service = %address,
            events = restored,
            "database rebuilt from the stream; consumers restart from the beginning"
        );
    }
    Ok(())
}

/// Where a recovery reads its stream to: a marker stored before it began reading, so that a
/// dead predecessor's last publishes are ahead of it, not behind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadTo {
    /// This host's term marker, at this sequence (`bus::term`).
    TermMarker(u64),
    /// A marker of its own, published first ([`bus::term::mark_recovery`]).
    OwnMarker,
}

fn failed(cause: impl Into<async_nats::Error>) -> EngineError {
    EngineError::Bus(bus::BusError::jetstream("recovery")(cause))
}

/// The service's own domain.
pub(crate) fn own<S: Service>() -> Domain {
    <<S::State as Aggregate>::Event as DomainEvent>::DOMAIN
}

/// The events `address` reads and holds: every partition's, or its partition's (a service
/// split by order; a shard of stock split by SKU takes part in every order).
pub fn slice(address: Address) -> Slice {
    match address.partition {
        Some(k) if address.component.keeps_orders() => Slice::One(k),
        _ => Slice::All,
    }
}

/// Rebuild `store` (which must be empty) from the service's stream (only `scope`'s part of
/// it: its partition's orders, or its SKU shard's aggregate), and mark the events it
/// dead-lettered (so live consumers do not try them again; a replay still may). The streams are
/// read as `login`'s replay identity. Returns the events restored.
pub async fn recover<S: Service>(
    store: &Store,
    js: &jetstream::Context,
    login: &bus::Login,
    scope: Scope,
    read_to: ReadTo,
) -> Result<u64, EngineError> {
    let slice = slice(scope.address);
    let restored = restore_events::<S>(store, js, login, scope, read_to).await?;
    restore_dead_letters(store, js, login, scope.address, slice).await?;
    let _durable = store.flush().await?;
    Ok(restored)
}

async fn restore_events<S: Service>(
    store: &Store,
    js: &jetstream::Context,
    login: &bus::Login,
    scope: Scope,
    read_to: ReadTo,
) -> Result<u64, EngineError> {
    let (slice, shard) = (slice(scope.address), scope.shard());
    let domain = own::<S>();
    let mut stream = js.get_stream(domain.stream()).await.map_err(failed)?;
    let info = bus::streams::leader_info(&mut stream).await?;
    // An empty stream is marked and read too: the dead process's very first publish may have
    // been taken by a leader that could not store it yet, and lands before the marker.
    let first = info.state.first_sequence;
    if first > 1 {
        return Err(failed(format!(
            "{} no longer holds its first events (retention), so it cannot rebuild a database",
            domain.stream()
        )));
    }
    let partition_number = scope.address.partition.unwrap_or(0);
    let marker = match read_to {
        ReadTo::TermMarker(sequence) => sequence,
        ReadTo::OwnMarker => bus::term::mark_recovery(js, domain, partition_number).await?,
    };
    // Own events only (a stream holds only its owner's events, but be strict), of `slice`'s
    // partitions, and the marker's subject: read up to the marker at least, for the replay's
    // consumer may sit on a replica still catching up, whose count of what is left stops short.
    let filters = vec![
        partition::events(domain, "*", slice),
        bus::term::term_subject(domain, partition_number),
    ];
    let mut by_aggregate: BTreeMap<String, BTreeMap<u64, Envelope>> = BTreeMap::new();
    let mut messages =
        bus::replay::Replay::open_filtered(login, domain.stream(), filters.clone()).await?;
    let mut more = true;
    // A message the leader holds at this sequence, which the replay has not reached yet.
    let mut held = 0;
    while more {
        let read = messages.next().await?;
        let message = read.message;
        // Past the marker with nothing left after it (a last one deleted since keeps its
        // number, not its message).
        more = read.sequence < marker || read.pending > 0;
        // Nothing left where the replay's consumer sits, short of the marker: a replica still
        // catching up if the leader holds more of ours (read on), else the marker went with
        // the stream's tail and there is nothing more to read.
        if more && read.pending == 0 && read.sequence >= held {
            match bus::streams::leader_next(&stream, &filters, read.sequence + 1).await? {
                Some(sequence) => held = sequence,
                None => {
                    tracing::warn!(
                        stream = domain.stream(),
                        marker,
                        "the recovery's marker is no longer in the stream (it lost its tail); \
                         read to the stream's end"
                    );
                    more = false;
                }
            }
        }
        if bus::term::is_term_subject(&message.subject) {
            continue;
        }
        let Ok(envelope) = Envelope::from_slice(&message.payload) else {
            continue;
        };
        if envelope.source != domain.source() {
            continue;
        }
        let Some(version) = envelope.aggregateversion else {
            return Err(failed(format!(
                "event {} has no aggregateversion (written by an older version)",
                envelope.id
            )));
        };
        // The aggregate whose log it is in: named by the event (a shard's), or by its order.
        let aggregate = match &envelope.aggregateid {
            Some(id) => id.clone(),
            None => S::PLACEMENT.aggregate_id(&envelope.subject, None),
        };
        // A shard of split stock holds only its own aggregate; stock recorded for another
        // count of shards cannot be split up by replaying it.
        if let Placement::BySku(_) = S::PLACEMENT {
            if !stock_of_this_layout::<S>(&aggregate, shard) {
                return Err(failed(format!(
                    "{}: event {} is stock of {aggregate:?}, which is not a shard of {} \
                     partitions; stock cannot be re-partitioned by replaying its events",
                    domain.stream(),
                    envelope.id,
                    shard.map_or(1, |s| s.count)
                )));
            }
            if aggregate != S::PLACEMENT.aggregate_id("", shard) {
                continue;
            }
        }
        // A copy published twice (after a broker outage) lands once.
        by_aggregate
            .entry(aggregate)
            .or_default()
            .entry(version)
            .or_insert(envelope);
    }

    let mut restored = 0;
    let mut commits = Vec::new();
    for (aggregate_id, events) in by_aggregate {
        // Versions must be 1..n: a gap is an event lost with the old database before it was
        // published; rebuilding around it would renumber the rest. Refuse, naming it.
        if let Some((expected, found)) = events
            .keys()
            .zip(1..)
            .find_map(|(v, expected)| (*v != expected).then_some((expected, *v)))
        {
            return Err(failed(format!(
                "{aggregate_id}: version {expected} is missing from {} (found {found} next); \
                 the event was lost before it was published",
                domain.stream()
            )));
        }
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
    Ok(restored)
}

/// Events this service dead-lettered are given up on for its live consumers: mark them, so the
/// consumers recreated from the start of their streams do not try them again (a charge weeks
/// later). The mark is not the inbox's "applied": an operator's replay still re-drives them.
async fn restore_dead_letters(
    store: &Store,
    js: &jetstream::Context,
    login: &bus::Login,
    address: Address,
    slice: Slice,
) -> Result<(), EngineError> {
    let mut stream = js
        .get_stream(bus::streams::DLQ_STREAM)
        .await
        .map_err(failed)?;
    let info = bus::streams::leader_info(&mut stream).await?;
    if info.state.messages == 0 {
        return Ok(());
    }
    // `dlq.<owner>.<stored subject>`, whose last token is the partition.
    let owner = dead_letter_owner(address);
    let filter = match slice {
        Slice::All => format!("{}.{owner}.>", bus::dlq::PREFIX),
        Slice::One(k) => format!("{}.{owner}.*.*.*.{k}", bus::dlq::PREFIX),
    };
    // As many as the leader holds, for the replay's consumer may sit on a replica still catching
    // up. Counted again where the consumer sees nothing left: an operator may have discarded
    // some meanwhile, and those are not waited for.
    let mut held = bus::streams::leader_count(&stream, &filter).await?;
    if held == 0 {
        return Ok(());
    }
    let mut messages = bus::replay::Replay::open(login, bus::streams::DLQ_STREAM, &filter).await?;
    let mut ids = Vec::new();
    let mut read_count = 0;
    while read_count < held {
        let read = messages.next().await?;
        let message = read.message;
        read_count += 1;
        if read_count < held && read.pending == 0 {
            held = bus::streams::leader_count(&stream, &filter).await?;
        }
        // Undecodable ones would be dead-lettered again; nothing to mark.
        if let Ok(envelope) = Envelope::from_slice(&message.payload) {
            ids.push(envelope.id);
        }
        if ids.len() >= 256 {
            store.mark_dead_lettered(ids.drain(..))?;
        }
    }
    store.mark_dead_lettered(ids)?;
    Ok(())
}

/// Is `aggregate` one of the stock aggregates of `S` split as `shard` says (the whole, or one
/// of its count)?
fn stock_of_this_layout<S: Service>(aggregate: &str, shard: Option<Shard>) -> bool {
    let Some(shard) = shard else {
        return aggregate == S::PLACEMENT.aggregate_id("", None);
    };
    (0..shard.count)
        .any(|index| aggregate == S::PLACEMENT.aggregate_id("", Some(Shard { index, ..shard })))
}

fn write(store: &Store, commits: &mut Vec<Commit>) -> Result<(), EngineError> {
    for outcome in store.commit_all(commits)? {
        outcome?;
    }
    commits.clear();
    Ok(())
}

/// Delete the durable consumers of `address`, so they are recreated from the start of their
/// streams (the rebuilt inbox skips what was already done).
pub async fn reset_consumers<S: Service>(
    js: &jetstream::Context,
    address: Address,
) -> Result<(), EngineError> {
    let durable = durable_name(address);
    for (domain, _) in S::LISTENS {
        let stream = js.get_stream(domain.stream()).await.map_err(failed)?;
        match stream.delete_consumer(&durable).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => {
                return Err(failed(format!(
                    "cannot reset {durable} on {}: {e}",
                    domain.stream()
                )))
            }
        }
    }
    Ok(())
}

fn not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}
