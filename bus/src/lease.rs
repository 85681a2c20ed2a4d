//! Leases: one owner at a time per partition of a service, in a JetStream key-value bucket.
//!
//! The lease on partition `p` of service `s` is key `s.p` of bucket [`LEASES_BUCKET`]. Taking
//! it is a `create` (refused while the key exists); keeping it is an `update` that names the
//! revision last written (refused once anyone else wrote); the bucket's `max_age` is the lease's
//! time to live, so the broker itself removes a lease nobody renews. The revision at which it was
//! taken is the fencing token.
//!
//! The owner believes its lease only until three quarters of the time to live after it *sent*
//! its last successful renewal: the broker counts from when it received it, later, so the owner
//! always stops believing before anyone else can take over. Its [`Fence`] carries that time, and
//! its store checks it at every commit, every flush and every publish. A renewal that fails for
//! broker trouble leaves the fence to lapse by itself and is tried again (a later success proves
//! nobody took over meanwhile); one the broker refuses means someone else holds the lease: the
//! fence closes for good and the instance must stop.
//!
//! Home and away: an instance may be the *home* of some partitions (`--home`). A home instance
//! that finds its partition held by another says so under `s.p.wanted` (renewed while it waits;
//! the bucket's `max_age` removes it once it stops); an *away* holder gives the partition back
//! when it sees that key ([`until_wanted`]). An away instance tries to take a partition only
//! after one time to live on standby, and never while its home wants it, so home instances
//! started together get theirs first.
//!
//! Clocks: the broker's wall clock measures the time to live and ours the belief; a clock
//! stepped forward on the broker by more than a quarter of the time to live could free a lease
//! early. Keep the broker's clock slewed, not stepped (NTP's default).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use storage::Fence;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::BusError;

/// The bucket of every lease.
pub const LEASES_BUCKET: &str = "LEASES";

/// Who holds a lease: the value of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The instance's name (`commerce run payment --instance b`).
    pub instance: String,
    pub pid: u32,
    /// When this holder took the lease, in ms since the epoch.
    pub since_ms: i64,
}

impl Holder {
    /// This process, as instance `instance`.
    pub fn this_process(instance: &str) -> Holder {
        Holder {
            instance: instance.to_string(),
            pid: std::process::id(),
            since_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// The lease key of `partition` of `service`.
pub fn key(service: &str, partition: u32) -> String {
    format!("{service}.{partition}")
}

/// Where the home instance of lease `key`'s partition asks for it back.
pub fn wanted_key(key: &str) -> String {
    format!("{key}.wanted")
}

/// Whether `key` is a request for a partition back, not a lease.
fn is_wanted_key(key: &str) -> bool {
    key.ends_with(".wanted")
}

/// How an instance stands to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its home: taken at once when free, asked back when another instance holds it.
    Home,
    /// Someone else's home: taken only after a time to live on standby, and not while its
    /// home instance wants it; given back when asked.
    Away,
}

/// Wait until the home instance of lease `key`'s partition asks for it back (checking every
/// quarter of the time to live, through broker trouble); `false` if `stop` came first.
pub async fn until_wanted(js: &jetstream::Context, key: &str, stop: &CancellationToken) -> bool {
    let mut opened = None;
    loop {
        let every = opened
            .as_ref()
            .map_or(Duration::from_secs(1), |(_, ttl)| *ttl / 4);
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(every) => {}
        }
        // Broker trouble: look again (this holder would otherwise never give it back).
        if opened.is_none() {
            opened = bucket(js).await.ok();
        }
        if let Some((kv, _)) = &opened {
            if wanted(kv, key).await {
                return true;
            }
        }
    }
}

/// Does the home instance of lease `key`'s partition want it back? (Broker trouble: no.)
async fn wanted(kv: &kv::Store, key: &str) -> bool {
    matches!(kv.entry(wanted_key(key)).await, Ok(Some(e)) if e.operation == kv::Operation::Put)
}

/// Create the bucket, or raise its time to live and replicas to what is asked (neither is ever
/// lowered: an owner believes the time to live it read when it took its lease, so a shorter
/// one set under it would let a standby take over while the owner still writes; lower it by
/// hand while no instance runs). Without direct gets: their answer is the stored message itself,
/// headers and body, sent to whatever reply subject the asker names (no permission covers a
/// reply), so a service could have a stream store a message it wrote under its own lease key
/// as if its owner had published it. A get through the API answers in a JSON wrapper instead.
/// Safe from every process at once.
pub async fn provision(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<(), BusError> {
    let stream_name = format!("KV_{LEASES_BUCKET}");
    match js.get_stream(&stream_name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(BusError::jetstream("lease bucket info"))?;
            let mut config = info.config.clone();
            if config.max_age > ttl {
                tracing::info!(bucket = LEASES_BUCKET, kept = ?config.max_age, asked = ?ttl,
                    "the lease bucket keeps its longer time to live");
            }
            if config.max_age < ttl || config.num_replicas < replicas || config.allow_direct {
                config.max_age = config.max_age.max(ttl);
                config.num_replicas = config.num_replicas.max(replicas);
                config.allow_direct = false;
                js.update_stream(&config)
                    .await
                    .map_err(BusError::jetstream("update the lease bucket"))?;
            }
            Ok(())
        }
        Err(e) if crate::streams::is_not_found(&e) => {
            // A bucket's stream as async-nats' `create_key_value` makes it, but born without
            // direct gets: a process opening it is never told it answers them (it would keep
            // asking, and be refused, once they went off).
            let created = js
                .create_stream(jetstream::stream::Config {
                    name: stream_name.clone(),
                    description: Some("who owns which partition of which service".into()),
                    subjects: vec![format!("$KV.{LEASES_BUCKET}.>")],
                    max_messages_per_subject: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    allow_direct: false,
                    ..Default::default()
                })
                .await;
            // Another process may have created it meanwhile.
            if let Err(e) = created {
                if js.get_stream(&stream_name).await.is_err() {
                    return Err(BusError::jetstream("create the lease bucket")(e));
                }
            }
            // What is there is raised to what is asked, as any existing bucket.
            Box::pin(provision(js, ttl, replicas)).await
        }
        Err(e) => Err(BusError::jetstream("lease bucket")(e)),
    }
}

/// The lease bucket, and the leases' time to live (its `max_age`).
pub async fn bucket(js: &jetstream::Context) -> Result<(kv::Store, Duration), BusError> {
    let kv = js
        .get_key_value(LEASES_BUCKET)
        .await
        .map_err(BusError::jetstream("open the lease bucket"))?;
    let ttl = kv
        .status()
        .await
        .map_err(BusError::jetstream("lease bucket status"))?
        .max_age();
    if ttl.is_zero() {
        return Err(BusError::Invalid(format!(
            "bucket {LEASES_BUCKET} keeps entries forever: a lease in it would never lapse"
        )));
    }
    Ok((kv, ttl))
}

/// An away instance's try at lease `key`: the holder while there is one; once it is free,
/// taken after it stayed free for `ttl` (`free_since` keeps when it was first seen free).
async fn away(
    kv: &kv::Store,
    ttl: Duration,
    key: &str,
    holder: &Holder,
    free_since: &mut Option<Instant>,
) -> Result<Attempt, BusError> {
    let entry = kv
        .entry(key)
        .await
        .map_err(BusError::jetstream(format!("read lease {key}")))?;
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(held) => {
            *free_since = None;
            Ok(Attempt::Held {
                holder: serde_json::from_slice(&held.value).ok(),
                revision: held.revision,
            })
        }
        None if free_long_enough(free_since, Instant::now(), ttl) => {
            Lease::try_acquire(kv, ttl, key, holder).await
        }
        None => Ok(Attempt::Held {
            holder: None,
            revision: 0,
        }),
    }
}

/// Has a lease seen free at `now` been free for `ttl`, since `free_since` (its first sighting)?
fn free_long_enough(free_since: &mut Option<Instant>, now: Instant, ttl: Duration) -> bool {
    now.duration_since(*free_since.get_or_insert(now)) >= ttl
}

/// A lease as `commerce status` shows it.
#[derive(Debug, Clone)]
pub struct Held {
    pub key: String,
    pub holder: Option<Holder>,
    /// The revision of its last renewal.
    pub revision: u64,
}

/// Every lease held now, by key; empty when no instance ever took one.
pub async fn held(js: &jetstream::Context) -> Result<Vec<Held>, BusError> {
    use futures::TryStreamExt;
    let Ok(kv) = js.get_key_value(LEASES_BUCKET).await else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(BusError::jetstream("list leases"))?
        .try_collect()
        .await
        .map_err(BusError::jetstream("list leases"))?;
    let mut held = Vec::new();
    for key in keys.into_iter().filter(|k| !is_wanted_key(k)) {
        let entry = kv
            .entry(key.as_str())
            .await
            .map_err(BusError::jetstream(format!("read lease {key}")))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            continue;
        };
        held.push(Held {
            key,
            holder: serde_json::from_slice(&entry.value).ok(),
            revision: entry.revision,
        });
    }
    held.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(held)
}

/// The outcome of one try.
#[derive(Debug)]
pub enum Attempt {
    Acquired(Box<Lease>),
    /// Someone holds it, at `revision` (its holder, if the value reads).
    Held {
        holder: Option<Holder>,
        revision: u64,
    },
}

/// A lease's key, fencing token and fence: what its terms are marked under (`crate::term`).
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: String,
    pub token: u64,
    pub fence: Fence,
}

/// A lease this instance holds (or held: see its [`Fence`]).
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    value: Bytes,
    ttl: Duration,
    /// The revision we last wrote: a renewal names it.
    revision: u64,
    /// The revision at which the lease was taken.
    token: u64,
    fence: Fence,
}

impl Lease {
    /// Take the lease `key` for `holder`, if nobody holds it.
    pub async fn try_acquire(
        kv: &kv::Store,
        ttl: Duration,
        key: &str,
        holder: &Holder,
    ) -> Result<Attempt, BusError> {
        let value: Bytes = serde_json::to_vec(holder)
            .map_err(|e| BusError::Invalid(format!("lease holder: {e}")))?
            .into();
        let sent = Instant::now();
        match kv.create(key, value.clone()).await {
            Ok(revision) => {
                let fence = Fence::new();
                fence.open_until(revision, believed_until(sent, ttl));
                Ok(Attempt::Acquired(Box::new(Lease {
                    kv: kv.clone(),
                    key: key.to_string(),
                    value,
                    ttl,
                    revision,
                    token: revision,
                    fence,
                })))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = kv
                    .entry(key)
                    .await
                    .map_err(BusError::jetstream(format!("read lease {key}")))?;
                Ok(Attempt::Held {
                    holder: entry
                        .as_ref()
                        .and_then(|e| serde_json::from_slice(&e.value).ok()),
                    revision: entry.map_or(0, |e| e.revision),
                })
            }
            Err(e) => Err(BusError::jetstream(format!("take lease {key}"))(e)),
        }
    }

    /// Wait until the lease `key` is ours (trying every quarter of its time to live), or
    /// `None` at shutdown. Says once who holds it meanwhile. At `Home`, asks for it back while
    /// another instance holds it. `Away`, leaves it to its home instance while that one wants
    /// it, and takes it only once it has been free for a whole time to live: a home whose
    /// lease lapsed in broker trouble takes it back first, instead of the two instances
    /// swapping partitions.
    pub async fn acquire(
        js: &jetstream::Context,
        key: &str,
        holder: &Holder,
        role: Role,
        shutdown: &CancellationToken,
    ) -> Result<Option<Lease>, BusError> {
        let (kv, ttl) = bucket(js).await?;
        let mut said = None;
        let mut free_since = None;
        loop {
            let home_wants = role == Role::Away && wanted(&kv, key).await;
            let attempt = match role {
                Role::Home => Lease::try_acquire(&kv, ttl, key, holder).await,
                Role::Away if home_wants => {
                    free_since = None;
                    Ok(Attempt::Held {
                        holder: None,
                        revision: 0,
                    })
                }
                Role::Away => away(&kv, ttl, key, holder, &mut free_since).await,
            };
            match attempt {
                Ok(Attempt::Acquired(lease)) => {
                    tracing::info!(lease = key, token = lease.token, instance = %holder.instance,
                        "lease taken: this instance owns the partition");
                    return Ok(Some(*lease));
                }
                Ok(Attempt::Held { holder: other, .. }) => {
                    if role == Role::Home {
                        let value = serde_json::to_vec(holder).unwrap_or_default();
                        if let Err(e) = kv.put(wanted_key(key), value.into()).await {
                            tracing::debug!(lease = key, error = %e, "not asked back");
                        }
                    }
                    let who = match other {
                        Some(h) => Some(format!("instance {} (pid {})", h.instance, h.pid)),
                        None if home_wants => Some("its home instance, which wants it".into()),
                        None => None,
                    };
                    if said != who {
                        tracing::info!(
                            lease = key,
                            held_by = who.as_deref().unwrap_or("?"),
                            ?ttl,
                            "standby: the partition is owned; taking over if its lease lapses"
                        );
                        said = who;
                    }
                }
                Err(e) => tracing::warn!(lease = key, error = %e, "lease not taken; trying again"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(ttl / 4) => {}
            }
        }
    }

    /// What the store checks.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// What a term needs of this lease, kept past [`Lease::keep`].
    pub fn claim(&self) -> Claim {
        Claim {
            key: self.key.clone(),
            token: self.token,
            fence: self.fence.clone(),
        }
    }

    /// The fencing token: the revision at which the lease was taken.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Renew once. `Err(LeaseLost)`: someone else holds it, stop. Any other error: broker
    /// trouble, try again (the fence lapses by itself meanwhile).
    pub async fn renew(&mut self) -> Result<(), BusError> {
        // Twice at most: once more after adopting a renewal that was written late.
        for _ in 0..2 {
            if self.fence.is_lost() {
                return Err(self.lost());
            }
            let sent = Instant::now();
            match self.update().await {
                Ok(revision) => {
                    self.revision = revision;
                    self.fence
                        .open_until(self.token, believed_until(sent, self.ttl));
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if !self.adopt_late_renewal().await? {
                        self.fence.lose();
                        return Err(self.lost());
                    }
                }
                Err(e) => return Err(BusError::jetstream(format!("renew lease {}", self.key))(e)),
            }
        }
        Err(BusError::Invalid(format!(
            "lease {}: its revision changed under two renewals in a row",
            self.key
        )))
    }

    /// A renewal we gave up on may have been written after all: then the key still holds our
    /// value, at a revision we did not hear of, which the next renewal names. Anyone else's
    /// write (a successor's create) holds theirs: `false`.
    async fn adopt_late_renewal(&mut self) -> Result<bool, BusError> {
        let entry = self
            .kv
            .entry(self.key.as_str())
            .await
            .map_err(BusError::jetstream(format!("read lease {}", self.key)))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put && e.value == self.value => {
                tracing::info!(lease = %self.key, revision = e.revision,
                    "a renewal that timed out was written after all: renewing from it");
                self.revision = e.revision;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The renewal's write, given up on after a quarter of the time to live (the broker may
    /// still write it: see [`Lease::renew`]).
    async fn update(&self) -> Result<u64, kv::UpdateError> {
        let update = self.kv.update(&self.key, self.value.clone(), self.revision);
        match tokio::time::timeout(self.ttl / 4, update).await {
            Ok(written) => written,
            Err(_) => Err(kv::UpdateError::new(kv::UpdateErrorKind::TimedOut)),
        }
    }

    fn lost(&self) -> BusError {
        BusError::LeaseLost {
            key: self.key.clone(),
            token: self.token,
        }
    }

    /// Give the lease back: nothing is written under it again, and a standby takes over at once.
    /// A renewal that timed out but was written after all is deleted from its revision.
    pub async fn release(mut self) -> Result<(), BusError> {
        self.fence.lose();
        let mut adopted = false;
        loop {
            let deleted = self
                .kv
                .delete_expect_revision(&self.key, Some(self.revision))
                .await;
            match deleted {
                Ok(()) => return Ok(()),
                Err(_) if !adopted && self.adopt_late_renewal().await? => adopted = true,
                Err(e) => {
                    return Err(BusError::jetstream(format!("release lease {}", self.key))(
                        e,
                    ))
                }
            }
        }
    }

    /// Renew every quarter of the time to live, in the background, until asked to give the
    /// lease back. When someone else took it, `on_lost` is cancelled (its holder stops).
    pub fn keep(self, on_lost: CancellationToken) -> Keeper {
        let (release, asked) = oneshot::channel();
        let task = tokio::spawn(self.renew_until(asked, on_lost));
        Keeper {
            release: Some(release),
            task: Some(task),
        }
    }

    async fn renew_until(
        mut self,
        mut release: oneshot::Receiver<()>,
        on_lost: CancellationToken,
    ) -> Result<(), BusError> {
        // Renewals are sent every quarter of the time to live, however long each took.
        let every = self.ttl / 4;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut release => {
                    let (key, token) = (self.key.clone(), self.token);
                    self.release().await?;
                    tracing::info!(lease = key, token, "lease given back");
                    return Ok(());
                }
                _ = tick.tick() => {}
            }
            match self.renew().await {
                Ok(()) => {}
                Err(lost @ BusError::LeaseLost { .. }) => {
                    tracing::error!(error = %lost, "lease lost: its holder stops writing under it");
                    on_lost.cancel();
                    return Err(lost);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease not renewed; writes wait until it is")
                }
            }
        }
    }
}

/// A lease renewed in the background; dropped without [`Keeper::release`] (a component that
/// failed to start), it stops renewing and the lease lapses.
pub struct Keeper {
    release: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), BusError>>>,
}

impl Keeper {
    /// Give the lease back (after the last flush); the error says if it had been lost.
    pub async fn release(mut self) -> Result<(), BusError> {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(BusError::Invalid(format!("lease keeper: {e}")))),
            None => Ok(()),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The owner believes a lease until three quarters of its time to live after it sent the
/// request that took or renewed it.
fn believed_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_away_instance_waits_until_a_lease_stayed_free_for_a_time_to_live() {
        let (ttl, t0) = (Duration::from_secs(3), Instant::now());
        let mut since = None;
        assert!(!free_long_enough(&mut since, t0, ttl), "just freed");
        assert!(!free_long_enough(&mut since, t0 + ttl / 2, ttl));
        assert!(free_long_enough(&mut since, t0 + ttl, ttl));
        // Held again in between: the wait starts over.
        since = None;
        assert!(!free_long_enough(&mut since, t0 + ttl * 2, ttl));
        assert_eq!(wanted_key("payment.1"), "payment.1.wanted");
        assert!(is_wanted_key("payment.1.wanted") && !is_wanted_key("payment.1"));
    }
}
