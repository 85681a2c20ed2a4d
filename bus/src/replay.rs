//! Reading a stream from a sequence on (a projection rebuild, a service's recovery): a pull
//! consumer of our own, started again by us from just after the last message read when it stops
//! answering (a cluster's leader moved, a node paused).
//!
//! Its name is one of a few its identity's permissions list ([`grants`]): an identity allowed to
//! create consumers of any name (or to have the server pick one: the body of that request may
//! name one all the same) could change, rewind or delete another component's durable consumer,
//! and one allowed to pull from any could take its messages.
//!
//! Not async-nats' ordered consumer: that one starts itself again under a name of its own
//! (`<name>_1`), which a component's permissions rightly refuse (a named create could change
//! another component's consumer), so on a cluster its replay stalled for good.
//!
//! A replay connects as an identity of its own ([`Login::replayer`]), which answers no
//! requests. For a connection that may (`allow_responses`: a component's own, for its micro
//! endpoints) the broker checks and keeps every reply subject of every message it delivers,
//! until answered or two minutes old; a replay's are the acks of messages that want none, so
//! each had to be answered just to be forgotten. On a connection that answers nothing the
//! broker keeps none: no ack is sent, and the broker delivers the messages at less cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{BusError, Login};

/// How long a consumer may be silent before it is started again.
const SILENCE: Duration = Duration::from_secs(10);
/// Consumers started in a row without a message before the replay gives up.
const ATTEMPTS: u32 = 4;
/// Messages asked for per pull request (async-nats' default is 200).
const MESSAGES_PER_PULL: usize = 1000;
/// How long a replay waits for its connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Consumers one identity may have on one stream at once: each replay holds one while it reads,
/// and deletes it when dropped (else, after a crash, the server does once it has been idle for
/// 30 s).
const SLOTS: usize = 8;
/// Replays one process runs at once per identity and stream (the others wait their turn): half
/// the slots, so that another process of the same identity finds some free.
const PER_PROCESS: usize = SLOTS / 2;
/// How long a replay waits for a free slot: past the time the server takes to remove the
/// consumers of a process that crashed.
const SLOT_WAIT: Duration = Duration::from_secs(45);

/// Turns per (identity, stream).
type Turns = Mutex<HashMap<(String, String), Arc<Semaphore>>>;

/// The turns of this process's replays of `stream` as `identity`.
fn turns(identity: &str, stream: &str) -> Arc<Semaphore> {
    static TURNS: OnceLock<Turns> = OnceLock::new();
    let mut turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    turns
        .entry((identity.to_string(), stream.to_string()))
        .or_insert_with(|| Arc::new(Semaphore::new(PER_PROCESS)))
        .clone()
}

/// The name of `identity`'s replay consumer in `slot`.
fn slot_name(identity: &str, slot: usize) -> String {
    format!("{identity}-{slot}")
}

/// What `identity` must be allowed to publish to replay `stream`: read its state, and create,
/// pull from, read the info of and delete its own replay consumers, each by name. Nothing else:
/// no acks (they want none), no consumer of another name.
pub fn grants(identity: &str, stream: &str) -> Vec<String> {
    let api = "$JS.API";
    let mut grants = vec![format!("{api}.STREAM.INFO.{stream}")];
    for slot in 0..SLOTS {
        let name = slot_name(identity, slot);
        grants.extend([
            format!("{api}.CONSUMER.CREATE.{stream}.{name}"),
            // With its filter subject appended.
            format!("{api}.CONSUMER.CREATE.{stream}.{name}.>"),
            format!("{api}.CONSUMER.MSG.NEXT.{stream}.{name}"),
            // To tell its own consumer from another's of the name before deleting it.
            format!("{api}.CONSUMER.INFO.{stream}.{name}"),
            format!("{api}.CONSUMER.DELETE.{stream}.{name}"),
        ]);
    }
    grants
}

/// Connect as `login`'s replay identity ([`Login::replayer`]), once: a refusal is an answer, not
/// something to retry for ever in the background.
async fn connect(login: &Login) -> Result<async_nats::Client, BusError> {
    let replayer = login.replayer();
    let failed = |why: String| {
        BusError::jetstream(format!("replay as {}", replayer.name))(format!(
            "{why} (are {}'s credentials, <data-dir>/credentials/{}.nk or beside the \
             component's own, known to the broker?)",
            replayer.name, replayer.name
        ))
    };
    match tokio::time::timeout(CONNECT_WITHIN, replayer.connect_once()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!("no connection within {CONNECT_WITHIN:?}"))),
    }
}

/// A message read, with where it sits in its stream (its reply subject parsed once).
pub struct Entry {
    pub message: jetstream::Message,
    /// Its stream sequence.
    pub sequence: u64,
    /// How many messages the stream held after it when it was delivered.
    pub pending: u64,
    /// When the broker stored it, in ns since the epoch.
    pub stored_ns: i128,
}

pub struct Replay {
    stream: jetstream::stream::Stream,
    name: String,
    /// The replay identity, whose consumers these are.
    identity: String,
    /// The consumer it reads with, while it has one.
    consumer: Option<Held>,
    /// Its turn among this process's replays of the stream.
    _turn: OwnedSemaphorePermit,
    /// The subjects read (all, if none).
    filters: Vec<String>,
    /// The sequence of the next message wanted.
    next: u64,
    /// Messages the first consumer had to deliver when it was created.
    pending: u64,
    messages: Option<consumer::pull::Stream>,
}

impl Replay {
    /// Read `stream` (only `filter`'s subjects, if not empty) from its first message, as
    /// `login`'s replay identity: a connection of its own, closed when the replay is dropped.
    pub async fn open(login: &Login, stream: &str, filter: &str) -> Result<Replay, BusError> {
        let filters = match filter {
            "" => Vec::new(),
            filter => vec![filter.to_string()],
        };
        Self::open_filtered(login, stream, filters).await
    }

    /// [`Replay::open`], reading the subjects of any of `filters` (all, if none).
    pub async fn open_filtered(
        login: &Login,
        stream: &str,
        filters: Vec<String>,
    ) -> Result<Replay, BusError> {
        let js = jetstream::new(connect(login).await?);
        let identity = login.replayer().name;
        let _turn = turns(&identity, stream)
            .acquire_owned()
            .await
            .map_err(|e| BusError::jetstream(format!("replay of {stream}"))(e))?;
        let handle = js
            .get_stream(stream)
            .await
            .map_err(|e| BusError::jetstream(format!("replay of {stream}"))(e))?;
        let mut replay = Replay {
            stream: handle,
            name: stream.to_string(),
            identity,
            consumer: None,
            _turn,
            filters,
            next: 1,
            pending: 0,
            messages: None,
        };
        replay.pending = replay.start().await?;
        Ok(replay)
    }

    /// How many messages there were to read when the replay opened.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Done with: its consumer is deleted now (dropped, it is deleted in the background).
    pub async fn close(mut self) {
        self.give_back().await;
    }

    /// The next message, with where it sits in its stream.
    pub async fn next(&mut self) -> Result<Entry, BusError> {
        let mut silent = 0;
        loop {
            let answer = match self.messages.as_mut() {
                Some(messages) => tokio::time::timeout(SILENCE, messages.next()).await,
                None => Ok(None),
            };
            match answer {
                Ok(Some(Ok(message))) => {
                    let info = message.info().map_err(|e| self.failed(e.to_string()))?;
                    let (sequence, pending) = (info.stream_sequence, info.pending);
                    let stored_ns = info.published.unix_timestamp_nanos();
                    // A message a consumer before this one already gave.
                    if sequence < self.next {
                        continue;
                    }
                    self.next = sequence + 1;
                    return Ok(Entry {
                        message,
                        sequence,
                        pending,
                        stored_ns,
                    });
                }
                Ok(Some(Err(e))) => {
                    tracing::info!(stream = %self.name, error = %e, "replay: starting its consumer again");
                }
                Ok(None) | Err(_) => {
                    tracing::info!(stream = %self.name, "replay: its consumer fell silent; starting it again");
                }
            }
            silent += 1;
            if silent >= ATTEMPTS {
                return Err(self.failed(format!(
                    "no message after {silent} consumers of {:?} each",
                    SILENCE
                )));
            }
            if let Err(e) = self.start().await {
                tracing::info!(stream = %self.name, error = %e, "replay: its consumer could not start");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// A consumer from `self.next` on, in a free slot; answers how many messages it has to
    /// deliver.
    async fn start(&mut self) -> Result<u64, BusError> {
        self.give_back().await;
        let waiting_since = Instant::now();
        loop {
            if let Some(pending) = self.take_a_slot().await? {
                return Ok(pending);
            }
            if waiting_since.elapsed() > SLOT_WAIT {
                return Err(self.failed(format!(
                    "all {SLOTS} replay consumers of {} stayed in use for {SLOT_WAIT:?}",
                    self.identity
                )));
            }
            tracing::info!(stream = %self.name, identity = %self.identity,
                "replay: every consumer name in use; waiting for one");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A consumer from `self.next` on in the first free slot, if one is: how many messages it
    /// has to deliver.
    async fn take_a_slot(&mut self) -> Result<Option<u64>, BusError> {
        // Random: concurrent replays (other processes', other tasks') look in different orders.
        let token = uuid::Uuid::now_v7();
        let first = (token.as_u128() % SLOTS as u128) as usize;
        for slot in (0..SLOTS).map(|k| (first + k) % SLOTS) {
            let name = slot_name(&self.identity, slot);
            let config = consumer::pull::Config {
                name: Some(name.clone()),
                // Unique, so that a create never takes over another replay's consumer of the
                // same start and filter (the server answers a create of an equal one with it).
                description: Some(format!("replay {token}")),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.next,
                },
                ack_policy: consumer::AckPolicy::None,
                filter_subjects: self.filters.clone(),
                // Ours only while we read it; the server removes it if we vanish.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            };
            let consumer = match self.stream.create_consumer_strict(config).await {
                Ok(consumer) => consumer,
                Err(e) if taken(&e) => continue,
                Err(e) => return Err(self.failed(e.to_string())),
            };
            self.consumer = Some(Held {
                name,
                description: format!("replay {token}"),
            });
            let pending = consumer.cached_info().num_pending;
            let messages = consumer
                .stream()
                .max_messages_per_batch(MESSAGES_PER_PULL)
                .heartbeat(Duration::from_secs(15))
                .messages()
                .await
                .map_err(|e| self.failed(e.to_string()))?;
            self.messages = Some(messages);
            return Ok(Some(pending));
        }
        Ok(None)
    }

    /// Delete the consumer it read with, if any.
    async fn give_back(&mut self) {
        self.messages = None;
        if let Some(held) = self.consumer.take() {
            held.delete(&self.stream).await;
        }
    }

    fn failed(&self, why: String) -> BusError {
        BusError::jetstream(format!("replay of {}", self.name))(why)
    }
}

/// A replay ended or abandoned gives its slot back at once.
impl Drop for Replay {
    fn drop(&mut self) {
        let (Some(held), Ok(runtime)) =
            (self.consumer.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let stream = self.stream.clone();
        runtime.spawn(async move { held.delete(&stream).await });
    }
}

/// A replay's consumer: its slot's name, and the description only its creator gave it.
struct Held {
    name: String,
    description: String,
}

impl Held {
    /// Delete it if it is still ours (a failure leaves it to the server's timer). Had the
    /// server removed it (idle for 30 s), another replay of the identity may hold the name now:
    /// that one is left alone. Only a create between the look and the delete could still lose
    /// its consumer, and that replay would start another from where it was.
    async fn delete(self, stream: &jetstream::stream::Stream) {
        let Held { name, description } = self;
        match stream.consumer_info(&name).await {
            Ok(info) if info.config.description.as_deref() != Some(description.as_str()) => {
                tracing::debug!(consumer = %name, "replay: its consumer expired; the name is another's now");
                return;
            }
            // Gone: nothing to delete.
            Err(e) if crate::consumer::consumer_not_found(&e) => return,
            // Ours, or not known (a broker configured before replays could ask: deleted
            // unchecked, as then).
            Ok(_) | Err(_) => {}
        }
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "replay: consumer left to expire");
        }
    }
}

/// Whether a create failed because a consumer of that name exists.
fn taken(e: &jetstream::stream::ConsumerCreateStrictError) -> bool {
    use jetstream::stream::ConsumerCreateStrictErrorKind as Kind;
    match e.kind() {
        Kind::AlreadyExists => true,
        Kind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NAME_EXIST,
        _ => false,
    }
}
