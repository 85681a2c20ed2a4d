//! Resilience around every external and fan-out call: a bulkhead (bounded concurrency with a
//! bounded wait, per dependency, so a slow one can use up only its own permits) and a circuit
//! breaker (stop calling a dependency that fails or is slow; try again carefully).
//!
//! - [`breaker`]: the breaker's state machine (pure, explicit clock).
//! - [`Guard`]: bulkhead + breaker for one dependency; transitions go to [`Ops`], which
//!   publishes them on `ops.circuit.<dependency>` and shows them in `commerce status`.

pub mod breaker;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::telemetry::metrics;

pub use self::breaker::{Breaker, BreakerConfig, State, Transition};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceSettings {
    pub breaker: BreakerConfig,
    /// Calls in flight per dependency (at least 1).
    pub bulkhead_max_concurrent: usize,
    /// How long a call may wait for a bulkhead permit before it is refused, in ms.
    pub bulkhead_max_wait_ms: u64,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        ResilienceSettings {
            breaker: BreakerConfig::default(),
            // At least the engine's concurrency per batch, so a batch never overflows it.
            bulkhead_max_concurrent: 64,
            bulkhead_max_wait_ms: 100,
        }
    }
}

impl ResilienceSettings {
    pub fn bulkhead_max_wait(&self) -> Duration {
        Duration::from_millis(self.bulkhead_max_wait_ms)
    }
}

/// Why a guarded call did not produce the dependency's answer.
#[derive(Debug, thiserror::Error)]
pub enum Guarded<E> {
    // No time in the text: it is an incident's cause, alike for every refusal of one outage.
    #[error("{dependency}: circuit {}, not calling", state.name())]
    Open {
        dependency: String,
        state: State,
        retry_after: Duration,
    },
    #[error("{dependency}: bulkhead full ({limit} calls in flight)")]
    Full {
        dependency: String,
        limit: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Call(E),
}

/// A circuit transition of one dependency, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitEvent {
    pub dependency: String,
    pub from: State,
    pub to: State,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// One guard's state and counts, as `commerce status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub dependency: String,
    pub state: State,
    pub calls: u64,
    pub refused: u64,
    pub transitions: u64,
    pub in_flight: u64,
}

/// Bulkhead + circuit breaker for one dependency.
pub struct Guard {
    dependency: String,
    breaker: Mutex<Breaker>,
    permits: Semaphore,
    limit: usize,
    max_wait: Duration,
    ops: mpsc::UnboundedSender<CircuitEvent>,
    calls: AtomicU64,
    refused: AtomicU64,
    transitions: AtomicU64,
}

impl Guard {
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    pub fn state(&self) -> State {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()
    }

    /// Call the dependency through the bulkhead and the breaker. `failed` says which outcomes
    /// count against the dependency (a refusal it answered, e.g. a 4xx, is not its failure).
    pub async fn call<T, E, Fut>(
        &self,
        failed: impl Fn(&Result<T, E>) -> bool,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, Guarded<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let waited = Instant::now();
        let Ok(Ok(_permit)) = tokio::time::timeout(self.max_wait, self.permits.acquire()).await
        else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::guard_refused(&self.dependency, "full");
            return Err(Guarded::Full {
                dependency: self.dependency.clone(),
                limit: self.limit,
                waited: waited.elapsed(),
            });
        };
        let (allowed, moved) = self.lock().acquire(Instant::now());
        self.publish(moved);
        let permit = match allowed {
            Ok(permit) => permit,
            Err(refused) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                metrics::guard_refused(&self.dependency, "open");
                return Err(Guarded::Open {
                    dependency: self.dependency.clone(),
                    state: refused.state,
                    retry_after: refused.retry_after,
                });
            }
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = call().await;
        let failed = failed(&outcome);
        let outcome_name = match (&outcome, failed) {
            (Ok(_), _) => "ok",
            (Err(_), true) => "failed",
            (Err(_), false) => "refused",
        };
        metrics::external_call(
            &self.dependency,
            outcome_name,
            started.elapsed().as_secs_f64(),
        );
        let moved = self
            .lock()
            .record(permit, Instant::now(), started.elapsed(), failed);
        self.publish(moved);
        outcome.map_err(Guarded::Call)
    }

    /// [`Guard::call`], answering with `fallback` instead when the guard refuses the call (open
    /// breaker, full bulkhead): a cached value, a default, or an error of the caller's own.
    pub async fn call_or<T, E, Fut>(
        &self,
        failed: impl Fn(&Result<T, E>) -> bool,
        call: impl FnOnce() -> Fut,
        fallback: impl FnOnce(Guarded<E>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        match self.call(failed, call).await {
            Ok(answer) => Ok(answer),
            Err(Guarded::Call(e)) => Err(e),
            Err(refused) => fallback(refused),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, moved: Option<Transition>) {
        if let Some(t) = moved {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            metrics::breaker_transition(&self.dependency, t.from.name(), t.to.name());
            tracing::warn!(dependency = %self.dependency, from = ?t.from, to = ?t.to,
                reason = %t.reason, "circuit transition");
            let _ = self.ops.send(CircuitEvent {
                dependency: self.dependency.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                at: chrono::Utc::now(),
            });
        }
    }

    /// For `commerce status`.
    pub fn status(&self) -> GuardStatus {
        GuardStatus {
            dependency: self.dependency.clone(),
            state: self.state(),
            calls: self.calls.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
            in_flight: (self.limit - self.permits.available_permits()) as u64,
        }
    }
}

/// Where a component's guards report: their transitions (to be published) and their states.
#[derive(Clone)]
pub struct Ops {
    settings: ResilienceSettings,
    events: mpsc::UnboundedSender<CircuitEvent>,
    guards: Arc<Mutex<Vec<Arc<Guard>>>>,
}

impl Ops {
    /// Returns the receiver of circuit transitions; publish them with [`publish_transitions`].
    pub fn new(settings: ResilienceSettings) -> (Ops, mpsc::UnboundedReceiver<CircuitEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let ops = Ops {
            settings,
            events,
            guards: Arc::default(),
        };
        (ops, receiver)
    }

    /// A new guard for `dependency` (its own bulkhead and breaker).
    pub fn guard(&self, dependency: &str) -> Arc<Guard> {
        let limit = self.settings.bulkhead_max_concurrent;
        let guard = Arc::new(Guard {
            dependency: dependency.to_string(),
            breaker: Mutex::new(Breaker::new(self.settings.breaker.clone(), Instant::now())),
            permits: Semaphore::new(limit),
            limit,
            max_wait: self.settings.bulkhead_max_wait(),
            ops: self.events.clone(),
            calls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
        });
        self.guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(guard.clone());
        guard
    }

    /// Every guard's state.
    pub fn status(&self) -> Vec<GuardStatus> {
        let guards = self.guards.lock().unwrap_or_else(PoisonError::into_inner);
        guards.iter().map(|g| g.status()).collect()
    }
}

/// Publish circuit transitions on `ops.circuit.<dependency>` (the `OPS` stream), in order.
pub async fn publish_transitions(
    js: async_nats::jetstream::Context,
    mut events: mpsc::UnboundedReceiver<CircuitEvent>,
) {
    while let Some(event) = events.recv().await {
        let subject = format!("ops.circuit.{}", event.dependency);
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        let sent = js.publish_with_headers(subject, headers, body.into()).await;
        let stored = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "circuit transition not published (it is in the log)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_bulkhead_refuses_fast_and_only_for_its_own_dependency() {
        let settings = ResilienceSettings {
            bulkhead_max_concurrent: 2,
            bulkhead_max_wait_ms: 20,
            ..ResilienceSettings::default()
        };
        let (ops, _events) = Ops::new(settings);
        let slow = ops.guard("slow");
        let other = ops.guard("other");
        let (release, hold) = tokio::sync::watch::channel(false);
        let hang = |mut hold: tokio::sync::watch::Receiver<bool>| async move {
            let _ = hold.wait_for(|go| *go).await;
            Ok::<_, ()>(())
        };
        let never = |_: &Result<(), ()>| false;
        let first = slow.call(never, || hang(hold.clone()));
        let second = slow.call(never, || hang(hold.clone()));
        let third = async {
            // Both permits are taken by now: refused after the bounded wait.
            tokio::task::yield_now().await;
            let refused = slow.call(never, || async { Ok::<_, ()>(()) }).await;
            assert!(
                matches!(refused, Err(Guarded::Full { limit: 2, .. })),
                "{refused:?}"
            );
            // Another dependency is not affected.
            assert!(other
                .call(never, || async { Ok::<_, ()>(()) })
                .await
                .is_ok());
            let _ = release.send(true);
        };
        let (a, b, ()) = tokio::join!(first, second, third);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(slow.status().refused, 1);
    }

    #[tokio::test]
    async fn an_open_breaker_does_not_call_and_its_transitions_are_reported_in_order() {
        let settings = ResilienceSettings {
            breaker: BreakerConfig {
                failures_per_window: 2,
                ..BreakerConfig::default()
            },
            ..ResilienceSettings::default()
        };
        let (ops, mut events) = Ops::new(settings);
        let guard = ops.guard("gateway");
        let calls = AtomicU64::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>("down")
        };
        for _ in 0..2 {
            assert!(matches!(
                guard.call(Result::is_err, failing).await,
                Err(Guarded::Call(_))
            ));
        }
        for _ in 0..5 {
            let refused = guard.call(Result::is_err, failing).await;
            assert!(matches!(
                refused,
                Err(Guarded::Open {
                    state: State::Open,
                    ..
                })
            ));
        }
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "nothing reached it while open"
        );
        let event = events.try_recv().unwrap();
        assert_eq!((event.from, event.to), (State::Closed, State::Open));
        assert_eq!(ops.status()[0].state, State::Open);
        assert_eq!(ops.status()[0].transitions, 1);
    }
}
