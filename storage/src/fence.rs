//! A fence: what lets a store write only while its owner holds the lease on it.
//!
//! Several instances of a service may be started; one at a time owns its partition and the
//! others wait (`bus::lease`). The owner's lease is valid until a time measured from before its
//! last renewal was sent, well short of when the broker would let anyone else take it. Every
//! commit, every flush that proves a batch durable (and so lets it be acknowledged) and every
//! publish of the outbox checks the fence first: an owner paused past its lease (a stopped
//! process, a stalled disk) wakes up to refusals, never to a second writer's effects.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Shared between the lease that keeps it open and the store that checks it. Closed when new.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    /// The lease's fencing token: the bucket revision at which it was taken.
    token: u64,
    /// Writes are allowed before this instant.
    until: Option<Instant>,
    /// Someone else took the lease: closed for good.
    lost: bool,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    #[error("this instance does not hold the lease on its partition (yet)")]
    NotHeld,
    #[error("the lease (token {token}) was not renewed in time; writes wait for a renewal")]
    Lapsed { token: u64 },
    #[error(
        "the lease (token {token}) is lost: another instance holds it or held it since; this \
         one must stop"
    )]
    Lost { token: u64 },
}

impl Fence {
    /// A closed fence.
    pub fn new() -> Fence {
        Fence::default()
    }

    /// Writes are allowed until `until`, under `token`. A lost fence stays closed.
    pub fn open_until(&self, token: u64, until: Instant) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.lost {
            state.token = token;
            state.until = Some(until);
        }
    }

    /// Another instance holds the lease now: nothing is written again.
    pub fn lose(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.lost = true;
        state.until = None;
    }

    /// The token, if a write may go ahead now.
    pub fn check(&self) -> Result<u64, Fenced> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let token = state.token;
        match state.until {
            _ if state.lost => Err(Fenced::Lost { token }),
            None => Err(Fenced::NotHeld),
            Some(until) if Instant::now() >= until => Err(Fenced::Lapsed { token }),
            Some(_) => Ok(token),
        }
    }

    /// Closed for good.
    pub fn is_lost(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fence_is_open_only_until_its_time_and_never_again_once_lost() {
        let fence = Fence::new();
        assert_eq!(fence.check(), Err(Fenced::NotHeld));
        fence.open_until(7, Instant::now() + Duration::from_secs(60));
        assert_eq!(fence.check(), Ok(7));
        fence.open_until(7, Instant::now());
        assert_eq!(fence.check(), Err(Fenced::Lapsed { token: 7 }));
        fence.lose();
        fence.open_until(9, Instant::now() + Duration::from_secs(60));
        assert_eq!(fence.check(), Err(Fenced::Lost { token: 7 }));
        assert!(fence.is_lost());
    }
}
