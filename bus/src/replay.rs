//! Reading a stream from a sequence on (a projection rebuild, a service's recovery): an
//! ephemeral pull consumer whose name the server picks, started again by us from just after the
//! last message read when it stops answering (a cluster's leader moved, a node paused).
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

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::{BusError, Login};

/// How long a consumer may be silent before it is started again.
const SILENCE: Duration = Duration::from_secs(10);
/// Consumers started in a row without a message before the replay gives up.
const ATTEMPTS: u32 = 4;
/// Messages asked for per pull request (async-nats' default is 200).
const MESSAGES_PER_PULL: usize = 1000;
/// How long a replay waits for its connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

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
    filter: String,
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
        let js = jetstream::new(connect(login).await?);
        let handle = js
            .get_stream(stream)
            .await
            .map_err(|e| BusError::jetstream(format!("replay of {stream}"))(e))?;
        let mut replay = Replay {
            stream: handle,
            name: stream.to_string(),
            filter: filter.to_string(),
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
            self.messages = None;
            if let Err(e) = self.start().await {
                tracing::info!(stream = %self.name, error = %e, "replay: its consumer could not start");
            }
        }
    }

    /// A consumer from `self.next` on; answers how many messages it has to deliver.
    async fn start(&mut self) -> Result<u64, BusError> {
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.next,
            },
            ack_policy: consumer::AckPolicy::None,
            filter_subject: self.filter.clone(),
            // Ours only while we read it; the server removes it when we move on.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| self.failed(e.to_string()))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .stream()
            .max_messages_per_batch(MESSAGES_PER_PULL)
            .heartbeat(Duration::from_secs(15))
            .messages()
            .await
            .map_err(|e| self.failed(e.to_string()))?;
        self.messages = Some(messages);
        Ok(pending)
    }

    fn failed(&self, why: String) -> BusError {
        BusError::jetstream(format!("replay of {}", self.name))(why)
    }
}
