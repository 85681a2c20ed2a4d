//! Seams where a test build crashes, or misbehaves, on purpose: the chaos harness's failpoints.
//!
//! Armed per process by `FAILPOINTS="name=actions;…"` (fail-rs syntax: `return` arms a seam,
//! `1*return` for one hit, `20%return` for a fifth of them). Compiled in only with the
//! `failpoints` feature, which only the test build of `commerce` turns on; without it every seam
//! is a constant `false` (inlined away) and [`setup`] ignores `FAILPOINTS`, with a warning.
//!
//! Two kinds: crash seams ([`crash`]: the process dies there, as SIGKILL would leave it) and
//! broken modes ([`broken`]: a deliberate bug, so a test can show the chaos harness catches it).

/// Whether this build has the seams.
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// The crash seams, in the order a message meets them.
pub const CRASH_SEAMS: [&str; 5] = [
    // A batch fetched, not yet applied.
    "consume.before_apply",
    // A service's external call answered, its effect not yet committed.
    "engine.before_commit",
    // A batch committed and flushed, not yet acknowledged.
    "consume.after_commit",
    // An outbox row's PubAck received, the row not yet marked sent.
    "relay.after_puback",
    // A refund made at the gateway, not yet recorded (mid-compensation).
    "payment.refunded_before_commit",
];

/// The deliberate bugs.
pub const BROKEN_MODES: [&str; 3] = [
    // Acknowledge a batch before applying it.
    "broken.ack_before_flush",
    // Apply an event again although the inbox has it.
    "broken.skip_inbox",
    // The warehouse keeps a cancelled order's reservation.
    "broken.skip_compensation",
];

/// Seams where the disk fails an operation (it returns an error, as a failing drive does).
pub const DISK_FAULTS: [&str; 1] = [
    // A flush (sled's write or the `fdatasync` after it) fails.
    "store.flush_fails",
];

/// Seams where the process stalls, its thread blocked by a `sleep(ms)` action, as on a machine
/// too loaded to run it: long enough, and a lease lapses under it.
pub const STALL_SEAMS: [&str; 1] = [
    // A partition's host holds its lease, and has not begun to recover and serve.
    "host.before_serving",
];

/// Arm the seams `FAILPOINTS` names. Call once, at process start.
pub fn setup() -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    if spec.trim().is_empty() {
        return Ok(());
    }
    if !COMPILED {
        tracing::warn!("FAILPOINTS is ignored: this build has no failpoints (a test build has)");
        return Ok(());
    }
    for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS entry {entry:?} is not name=actions"))?;
        arm(name.trim(), actions.trim())?;
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn arm(name: &str, actions: &str) -> Result<(), String> {
    if ![&CRASH_SEAMS[..], &BROKEN_MODES, &DISK_FAULTS, &STALL_SEAMS]
        .iter()
        .any(|seams| seams.contains(&name))
    {
        return Err(format!("FAILPOINTS: no seam named {name:?}"));
    }
    tracing::warn!(seam = name, actions, "failpoint armed");
    fail::cfg(name, actions).map_err(|e| format!("FAILPOINTS {name}={actions}: {e}"))
}

#[cfg(not(feature = "failpoints"))]
fn arm(_: &str, _: &str) -> Result<(), String> {
    Ok(())
}

/// Does seam `name` fire at this hit?
#[inline(always)]
fn fires(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        let hit = || {
            fail::fail_point!(name, |_| true);
            false
        };
        hit()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Die here if seam `name` fires: SIGKILL to itself, so nothing after this point runs, as in a
/// power cut or an OOM kill.
#[inline(always)]
pub fn crash(name: &str) {
    if fires(name) {
        tracing::error!(seam = name, "failpoint: the process dies here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// Is the deliberate bug `name` switched on?
#[inline(always)]
pub fn broken(name: &str) -> bool {
    fires(name)
}

/// Does the disk fail here, as seam `name` says?
#[inline(always)]
pub fn disk_fails(name: &str) -> bool {
    fires(name)
}

/// Stall here as seam `name`'s `sleep(ms)` action says (nothing when it is not armed).
#[inline(always)]
pub fn stall(name: &str) {
    let _ = fires(name);
}
