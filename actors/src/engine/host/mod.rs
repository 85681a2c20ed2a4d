//! Running a component on its own Arbiter (thread) with its own database, NATS connection,
//! durable consumers, micro service and background tasks. The same code runs in `commerce up`
//! (every component in one process) and `commerce run <component>` (one per process).
//!
//! - [`Host`]: what every component's run shares: start-up, tasks, orderly stop.
//! - [`consume`]: one durable consumer's loop, handing batches to a [`Sink`](consume::Sink).
//! - [`retention`]: deleting sent outbox rows and old inbox marks.
//! - [`service`]: running a [`Service`](super::Service): recovery, relay, consumers, endpoints.

pub mod consume;
pub mod retention;
pub mod service;

use std::future::Future;

use actix_rt::Arbiter;
use bus::{DurableConsumer, Login};
use storage::Store;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::EngineError;
use crate::rpc::{Address, Component, Server};
use crate::Settings;

pub use service::spawn;

/// Cancelled when a component of this process must not go on, and only a restart helps: its
/// database refused writes after a flush failed ([`storage::StorageError::Poisoned`]). `commerce
/// up` and `commerce run` then stop every component and exit with an error.
pub fn must_restart() -> CancellationToken {
    static MUST_RESTART: std::sync::LazyLock<CancellationToken> =
        std::sync::LazyLock::new(CancellationToken::new);
    MUST_RESTART.clone()
}

/// A component running on its own Arbiter.
pub struct RunningComponent {
    pub component: Component,
    arbiter: Arbiter,
    done: oneshot::Receiver<Result<(), EngineError>>,
}

impl RunningComponent {
    /// Wait until the component has stopped (after its shutdown token was cancelled), then stop
    /// its Arbiter. Returns the error it stopped with, if any.
    pub async fn join(self) -> Result<(), EngineError> {
        let result = self
            .done
            .await
            .unwrap_or(Err(EngineError::Stopped(self.component.name())));
        self.arbiter.stop();
        let arbiter = self.arbiter;
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        result
    }
}

/// How a component runs on its Arbiter: until `shutdown`, signalling `ready` once it serves.
pub type Runner = fn(
    Settings,
    Login,
    CancellationToken,
    oneshot::Sender<()>,
) -> futures::future::LocalBoxFuture<'static, Result<(), EngineError>>;

/// Start a component on a new Arbiter; returns once it is ready (or why it could not start).
pub async fn spawn_with(
    component: Component,
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
    runner: Runner,
) -> Result<RunningComponent, EngineError> {
    let name = component.name();
    let arbiter = Arbiter::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, mut done_rx) = oneshot::channel();
    arbiter.spawn_fn(move || {
        actix_rt::spawn(async move {
            let result = runner(settings, login, shutdown, ready_tx).await;
            if let Err(e) = &result {
                tracing::error!(component = name, error = %e, "component stopped");
            }
            let _ = done_tx.send(result);
        });
    });
    if ready_rx.await.is_err() {
        // It stopped before it was ready: the reason is in `done`.
        let result = (&mut done_rx)
            .await
            .unwrap_or(Err(EngineError::Stopped(name)));
        arbiter.stop();
        return Err(result.err().unwrap_or(EngineError::Stopped(name)));
    }
    Ok(RunningComponent {
        component,
        arbiter,
        done: done_rx,
    })
}

/// One component's process-side resources while it runs: its database, its connection, and the
/// tasks that end at shutdown.
pub struct Host {
    /// The component, or the partition of a split service, this host runs.
    pub address: Address,
    pub settings: Settings,
    pub store: Store,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// How it reached the broker (and how its replays do: `bus::Login::replayer`).
    pub login: Login,
    pub shutdown: CancellationToken,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
    /// The lease this instance owns its partition by, renewed until the last flush.
    lease: Option<bus::lease::Keeper>,
}

impl Host {
    /// Connect `component`, whose database is `store`, to the broker as `login` says.
    pub async fn connect(
        component: Address,
        settings: Settings,
        store: Store,
        login: &Login,
        shutdown: CancellationToken,
    ) -> Result<Host, EngineError> {
        let client = login.connect().await?;
        Ok(Host::with_client(
            component, settings, store, client, login, shutdown,
        ))
    }

    /// [`Host::connect`] on a connection made already (as `login`).
    pub fn with_client(
        address: Address,
        settings: Settings,
        store: Store,
        client: async_nats::Client,
        login: &Login,
        shutdown: CancellationToken,
    ) -> Host {
        let js = async_nats::jetstream::new(client.clone());
        // A failed flush stops the component and the process, from start-up (a rebuild's
        // flush) to its last flush: only a restart opens the database again.
        let (poisoned, stop) = (store.when_poisoned(), shutdown.clone());
        actix_rt::spawn(async move {
            if let Some(cause) = poisoned.await {
                tracing::error!(component = %address, %cause,
                    "a flush failed: stopping, for only a restart opens the database again");
                must_restart().cancel();
                stop.cancel();
            }
        });
        Host {
            address,
            settings,
            store,
            client,
            js,
            login: login.clone(),
            shutdown,
            tasks: Vec::new(),
            lease: None,
        }
    }

    /// Give `lease` back once the component has stopped and flushed.
    pub fn keep_lease(&mut self, lease: bus::lease::Keeper) {
        self.lease = Some(lease);
    }

    /// Run `task` until shutdown; it is joined before the component stops.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + 'static) {
        self.tasks.push(actix_rt::spawn(task));
    }

    /// Bind a durable consumer of `stream` named after this component, or its partition
    /// (`payment-p2`; with the settings' redelivery policy), and hand its batches to `sink`.
    pub async fn consume<K: consume::Sink>(
        &mut self,
        stream: &str,
        filter_subjects: Vec<String>,
        sink: K,
    ) -> Result<(), EngineError> {
        let durable = consume::durable_name(self.address);
        let mut spec = consume::consumer_spec(stream, &durable, &self.settings);
        spec.owner = consume::dead_letter_owner(self.address);
        spec.filter_subjects = filter_subjects;
        let consumer = DurableConsumer::bind(&self.js, spec).await?;
        let task = consume::consume(self.js.clone(), consumer, sink, self.shutdown.clone());
        self.spawn(task);
        Ok(())
    }

    /// Start this component's micro service.
    pub async fn server(&self, description: &str) -> Result<Server, EngineError> {
        Ok(Server::start(
            &self.client,
            self.address,
            description,
            self.shutdown.clone(),
        )
        .await?)
    }

    /// Signal `ready`, serve until shutdown, then stop in order: every task (a consumer finishes
    /// its batch), the micro service, a last flush, the connection.
    pub async fn serve_until_shutdown(
        mut self,
        server: Server,
        ready: oneshot::Sender<()>,
    ) -> Result<(), EngineError> {
        let retention = retention::clean_up(
            self.store.clone(),
            self.settings.outbox_retention(),
            self.settings.inbox_retention(),
            self.shutdown.clone(),
        );
        self.spawn(retention);
        let name = self.address.to_string();
        let name = name.as_str();
        tracing::info!(component = name, db = %self.store.path().display(), "started");
        let _ = ready.send(());
        self.shutdown.cancelled().await;

        for task in self.tasks {
            let _ = task.await;
        }
        server.stop().await;
        let flushed = self.store.flush().await;
        // Given back only now: a successor must not start before our last write.
        let released = match self.lease.take() {
            Some(lease) => lease.release().await,
            None => Ok(()),
        };
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "drain");
        }
        let flushed = match flushed {
            Ok(_) => Ok(()),
            // A flush failed, maybe this one: the process must restart.
            Err(e) if self.store.is_poisoned() => {
                must_restart().cancel();
                Err(e)
            }
            // A lapsed lease refuses the last flush; nothing it would cover was acknowledged.
            Err(e) => {
                tracing::warn!(component = name, error = %e, "last flush refused");
                Ok(())
            }
        };
        released?;
        flushed?;
        tracing::info!(component = name, "stopped");
        Ok(())
    }
}
