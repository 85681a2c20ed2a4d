//! A circuit breaker with Resilience4j's semantics, as a pure state machine: every method takes
//! `now`, so tests drive time without sleeping.
//!
//! - **Closed**: calls pass; outcomes go into a sliding window (the last N calls, or the calls of
//!   the last T). Once the window holds `minimum_calls`, a failure rate or a slow-call rate at or
//!   above its threshold opens the breaker. `failures_per_window` opens it on that many failures
//!   even below `minimum_calls` (a quiet dependency that only fails still trips).
//! - **Open**: calls are refused at once, for `wait_in_open_ms`; then half-open.
//! - **Half-open**: `permitted_in_half_open` trial calls pass; their rates decide closed or open.
//!   If they have not all come back within `half_open_timeout_ms`, it opens again: half-open
//!   cannot stick (a gap in Resilience4j when trial calls never complete).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The last N calls.
    Count(usize),
    /// The calls of the last this many ms.
    TimeMs(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub window: Window,
    /// Percent of failed calls that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Percent of slow calls that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long (ms) is slow.
    pub slow_call_duration_ms: u64,
    /// Rates are judged only once the window holds this many calls.
    pub minimum_calls: usize,
    /// Open on this many failures in the window, whatever the rate (0: off).
    pub failures_per_window: usize,
    /// How long it stays open before half-open, in ms.
    pub wait_in_open_ms: u64,
    pub permitted_in_half_open: usize,
    /// Longest time in half-open before opening again, in ms.
    pub half_open_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Window::Count(20),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 80.0,
            slow_call_duration_ms: 2_000,
            minimum_calls: 10,
            failures_per_window: 5,
            wait_in_open_ms: 5_000,
            permitted_in_half_open: 3,
            half_open_timeout_ms: 10_000,
        }
    }
}

impl BreakerConfig {
    pub fn slow_call_duration(&self) -> Duration {
        Duration::from_millis(self.slow_call_duration_ms)
    }

    pub fn wait_in_open(&self) -> Duration {
        Duration::from_millis(self.wait_in_open_ms)
    }

    pub fn half_open_timeout(&self) -> Duration {
        Duration::from_millis(self.half_open_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// As published and shown: `closed`, `open`, `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A change of state, and why (published on `ops.circuit.<dependency>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    since: Instant,
    window: VecDeque<Call>,
    /// Half-open: trial permits given, and their outcomes.
    trials_given: usize,
    trials: Vec<Call>,
    /// Counts state changes: an outcome belongs to the period its call started in, so a call
    /// from before a change cannot count as a trial of the next half-open.
    period: u64,
}

/// A call let through: pass it back to [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    period: u64,
}

/// The breaker refused the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub state: State,
    pub retry_after: Duration,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            since: now,
            window: VecDeque::new(),
            trials_given: 0,
            trials: Vec::new(),
            period: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// May a call go out now? Also moves open → half-open after the wait, and half-open → open
    /// when its trials took too long.
    pub fn acquire(&mut self, now: Instant) -> (Result<Permit, Refused>, Option<Transition>) {
        let mut transition = None;
        let passed =
            |since: Instant, span: Duration| since.checked_add(span).is_some_and(|t| now >= t);
        if self.state == State::Open && passed(self.since, self.config.wait_in_open()) {
            transition = self.go(State::HalfOpen, now, "wait in open elapsed".into());
        }
        if self.state == State::HalfOpen && passed(self.since, self.config.half_open_timeout()) {
            let back = self.trials.len();
            transition = if back > 0 && back == self.trials_given {
                // Quiet traffic: the trials given all came back; judge them rather than flap.
                let trials = std::mem::take(&mut self.trials);
                match self.judge(now, &trials, true) {
                    Some(opened) => Some(opened),
                    None => self.go(State::Closed, now, "half-open trials succeeded".into()),
                }
            } else {
                let reason = format!(
                    "half-open trials not back within {:?}",
                    self.config.half_open_timeout()
                );
                self.go(State::Open, now, reason)
            };
        }
        let permit = Permit {
            period: self.period,
        };
        let answer = match self.state {
            State::Closed => Ok(permit),
            State::HalfOpen if self.trials_given < self.config.permitted_in_half_open => {
                self.trials_given += 1;
                Ok(permit)
            }
            State::HalfOpen => Err(Refused {
                state: State::HalfOpen,
                retry_after: self
                    .since
                    .checked_add(self.config.half_open_timeout())
                    .map_or(Duration::MAX, |t| t.saturating_duration_since(now)),
            }),
            State::Open => Err(Refused {
                state: State::Open,
                retry_after: self
                    .since
                    .checked_add(self.config.wait_in_open())
                    .map_or(Duration::MAX, |t| t.saturating_duration_since(now)),
            }),
        };
        (answer, transition)
    }

    /// The outcome of a call that was let through with `permit`.
    pub fn record(
        &mut self,
        permit: Permit,
        now: Instant,
        took: Duration,
        failed: bool,
    ) -> Option<Transition> {
        if permit.period != self.period {
            return None; // started before the state changed: not this period's evidence
        }
        let call = Call {
            at: now,
            failed,
            slow: took >= self.config.slow_call_duration(),
        };
        match self.state {
            State::Closed => {
                self.window.push_back(call);
                self.evict(now);
                self.judge(now, &self.window.iter().copied().collect::<Vec<_>>(), false)
            }
            State::HalfOpen => {
                self.trials.push(call);
                if self.trials.len() < self.config.permitted_in_half_open {
                    return None;
                }
                let trials = std::mem::take(&mut self.trials);
                match self.judge(now, &trials, true) {
                    Some(opened) => Some(opened),
                    None => self.go(State::Closed, now, "half-open trials succeeded".into()),
                }
            }
            // A call let through before the breaker opened: its outcome is moot now.
            State::Open => None,
        }
    }

    fn evict(&mut self, now: Instant) {
        match self.config.window {
            Window::Count(n) => {
                while self.window.len() > n {
                    self.window.pop_front();
                }
            }
            Window::TimeMs(ms) => {
                let span = Duration::from_millis(ms);
                while self
                    .window
                    .front()
                    .is_some_and(|c| now.saturating_duration_since(c.at) > span)
                {
                    self.window.pop_front();
                }
            }
        }
    }

    /// Open if `calls` say so.
    fn judge(&mut self, now: Instant, calls: &[Call], trial: bool) -> Option<Transition> {
        let n = calls.len();
        let failures = calls.iter().filter(|c| c.failed).count();
        let slow = calls.iter().filter(|c| c.slow).count();
        let per_window = self.config.failures_per_window;
        if !trial && per_window > 0 && failures >= per_window {
            return self.go(
                State::Open,
                now,
                format!("{failures} failures in the window"),
            );
        }
        if n == 0 || (!trial && n < self.config.minimum_calls) {
            return None;
        }
        let failure_rate = 100.0 * failures as f64 / n as f64;
        let slow_rate = 100.0 * slow as f64 / n as f64;
        if failure_rate >= self.config.failure_rate_threshold {
            return self.go(
                State::Open,
                now,
                format!("failure rate {failure_rate:.0}% of {n} calls"),
            );
        }
        if slow_rate >= self.config.slow_call_rate_threshold {
            return self.go(
                State::Open,
                now,
                format!("slow-call rate {slow_rate:.0}% of {n} calls"),
            );
        }
        None
    }

    fn go(&mut self, to: State, now: Instant, reason: String) -> Option<Transition> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        self.since = now;
        self.period += 1;
        self.trials_given = 0;
        self.trials.clear();
        if to == State::Closed {
            self.window.clear();
        }
        Some(Transition { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Window::Count(4),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 75.0,
            slow_call_duration_ms: 100,
            minimum_calls: 4,
            failures_per_window: 0,
            wait_in_open_ms: 1000,
            permitted_in_half_open: 2,
            half_open_timeout_ms: 500,
        }
    }

    /// Let a call through at `t` and record its outcome.
    fn call(b: &mut Breaker, t: Instant, took: Duration, failed: bool) -> Option<Transition> {
        let (ok, moved) = b.acquire(t);
        let permit = ok.unwrap_or_else(|_| panic!("refused at {:?}", b.state()));
        assert!(moved.is_none());
        b.record(permit, t, took, failed)
    }

    fn to(t: &Option<Transition>) -> Option<State> {
        t.as_ref().map(|t| t.to)
    }

    #[test]
    fn closed_stays_closed_below_minimum_calls_then_opens_on_failure_rate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        assert_eq!(to(&call(&mut b, t0, MS, true)), None);
        assert_eq!(to(&call(&mut b, t0, MS, true)), None);
        assert_eq!(
            to(&call(&mut b, t0, MS, true)),
            None,
            "3 of 3 failed but minimum is 4"
        );
        let opened = call(&mut b, t0, MS, false);
        assert_eq!(to(&opened), Some(State::Open), "3 of 4 = 75% ≥ 50%");
        assert!(opened.unwrap().reason.contains("failure rate"));
    }

    #[test]
    fn a_healthy_window_stays_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for i in 0..20 {
            assert_eq!(to(&call(&mut b, t0, MS, i % 4 == 0)), None, "25% failures");
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn slow_calls_open_it_too() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..3 {
            call(&mut b, t0, 150 * MS, false);
        }
        let opened = call(&mut b, t0, MS, false);
        assert_eq!(opened.unwrap().to, State::Open, "3 of 4 slow = 75%");
    }

    #[test]
    fn failures_per_window_trip_below_minimum_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                failures_per_window: 2,
                minimum_calls: 100,
                ..config()
            },
            t0,
        );
        assert_eq!(to(&call(&mut b, t0, MS, true)), None);
        let opened = call(&mut b, t0, MS, true).unwrap();
        assert_eq!(opened.to, State::Open);
        assert!(opened.reason.contains("2 failures"));
    }

    #[test]
    fn a_time_window_forgets_old_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                window: Window::TimeMs(1000),
                ..config()
            },
            t0,
        );
        for _ in 0..3 {
            call(&mut b, t0, MS, true);
        }
        // Two seconds later the old failures are out of the window: 1 failure of 4 is 25%.
        let t = t0 + 2000 * MS;
        call(&mut b, t, MS, false);
        call(&mut b, t, MS, false);
        call(&mut b, t, MS, true);
        assert_eq!(to(&call(&mut b, t, MS, false)), None);
        assert_eq!(b.state(), State::Closed);
    }

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(config(), t0);
        for _ in 0..4 {
            call(&mut b, t0, MS, true);
        }
        assert_eq!(b.state(), State::Open);
        b
    }

    fn permit(b: &mut Breaker, t: Instant) -> Permit {
        b.acquire(t).0.expect("a permit")
    }

    #[test]
    fn open_refuses_until_the_wait_is_over_then_half_open_lets_the_permitted_number_through() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let (refused, moved) = b.acquire(t0 + 999 * MS);
        assert_eq!(refused.unwrap_err().retry_after, MS);
        assert!(moved.is_none());
        let t = t0 + 1000 * MS;
        let (first, moved) = b.acquire(t);
        assert!(first.is_ok());
        assert_eq!(moved.unwrap().to, State::HalfOpen);
        assert!(b.acquire(t).0.is_ok(), "second permitted trial");
        assert_eq!(
            b.acquire(t).0.unwrap_err().state,
            State::HalfOpen,
            "no third"
        );
    }

    #[test]
    fn half_open_closes_on_good_trials_and_reopens_on_bad_ones() {
        let t0 = Instant::now();
        let t = t0 + 1000 * MS;
        let mut good = opened(t0);
        let (a, b) = (permit(&mut good, t), permit(&mut good, t));
        assert_eq!(good.record(a, t, MS, false), None, "waits for both trials");
        assert_eq!(to(&good.record(b, t, MS, false)), Some(State::Closed));

        let mut bad = opened(t0);
        let (a, b) = (permit(&mut bad, t), permit(&mut bad, t));
        bad.record(a, t, MS, false);
        assert_eq!(
            to(&bad.record(b, t, MS, true)),
            Some(State::Open),
            "1 of 2 = 50%"
        );
        assert!(bad.acquire(t + 999 * MS).0.is_err(), "a fresh wait in open");
    }

    #[test]
    fn half_open_cannot_stick_when_trials_never_come_back() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t = t0 + 1000 * MS;
        let _ = b.acquire(t);
        let _ = b.acquire(t); // both trials hang forever
        let (refused, moved) = b.acquire(t + 500 * MS);
        assert_eq!(moved.unwrap().to, State::Open);
        assert_eq!(refused.unwrap_err().state, State::Open);
        // And the cycle continues: after the wait, half-open again.
        let (ok, moved) = b.acquire(t + 1500 * MS);
        assert!(ok.is_ok());
        assert_eq!(moved.unwrap().to, State::HalfOpen);
    }

    #[test]
    fn a_late_outcome_from_an_earlier_period_changes_nothing() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        let early = permit(&mut b, t0); // a slow call that started while closed
        for _ in 0..4 {
            call(&mut b, t0, MS, true);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.record(early, t0, MS, false), None, "ignored while open");
        let t = t0 + 1000 * MS;
        let trial = permit(&mut b, t);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(
            b.record(early, t, MS, false),
            None,
            "not counted as a trial"
        );
        assert_eq!(
            b.record(trial, t, MS, false),
            None,
            "one of two trials back"
        );
    }

    #[test]
    fn quiet_half_open_closes_on_its_trials_at_the_timeout_instead_of_flapping() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t = t0 + 1000 * MS;
        let only = permit(&mut b, t); // one caller, every now and then
        assert_eq!(b.record(only, t, MS, false), None);
        let (ok, moved) = b.acquire(t + 600 * MS);
        assert!(ok.is_ok());
        assert_eq!(moved.unwrap().to, State::Closed, "its one trial succeeded");
    }
}
