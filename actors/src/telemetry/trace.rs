//! Traces of the saga, in OpenTelemetry's terms.
//!
//! One order is one trace: the trace id is the order id (a UUID's 16 bytes), so an operator
//! goes from an order to its trace without a lookup. Every event is a `publish` span whose span
//! id is its event id's last 8 bytes, exactly what its `traceparent` header (and
//! [`Envelope::traceparent`]) says, so a consumer in another process finds its parent from the
//! event alone. The tree:
//!
//! ```text
//! OrderCreated publish            (root: an order placed by a client)
//! └─ OrderCreated process         (payment, one span per handling, with its verdict)
//!    ├─ payment-gateway POST /authorize   (an external call)
//!    └─ PaymentApproved publish
//!       └─ PaymentApproved process (inventory) …
//! ```
//!
//! The SDK makes span and trace ids itself; [`with_chosen_ids`] lets the process's id generator
//! (installed by the launcher, see [`chosen_span_id`]) hand out the two ids an event dictates.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use bus::{Envelope, Verdict};
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{global, Context, KeyValue};

/// The instrumentation scope of every span.
const SCOPE: &str = "commerce";

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The ids the next span built on this thread must have (see [`with_chosen_ids`]).
    static CHOSEN: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Spans are made from now on (the launcher installed a tracer provider that exports them).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// For the process's id generator: the span id chosen for the span being built, if any.
pub fn chosen_span_id() -> Option<SpanId> {
    CHOSEN.with(|c| {
        let (trace, span) = c.get();
        c.set((trace, None));
        span
    })
}

/// For the process's id generator: the trace id chosen for the root span being built, if any.
pub fn chosen_trace_id() -> Option<TraceId> {
    CHOSEN.with(|c| {
        let (trace, span) = c.get();
        c.set((None, span));
        trace
    })
}

/// Build a span with these ids (the SDK asks the generator while `build` runs, on this thread).
fn with_chosen_ids<T>(trace: TraceId, span: SpanId, build: impl FnOnce() -> T) -> T {
    CHOSEN.with(|c| c.set((Some(trace), Some(span))));
    let built = build();
    CHOSEN.with(|c| c.set((None, None)));
    built
}

/// The span an event stands for: its trace and span id, from its `traceparent`.
pub fn event_span(envelope: &Envelope) -> SpanContext {
    parse_traceparent(&envelope.traceparent()).unwrap_or_else(SpanContext::empty_context)
}

/// A W3C `traceparent` (`00-<trace>-<span>-<flags>`) as a remote span context.
pub fn parse_traceparent(header: &str) -> Option<SpanContext> {
    let mut parts = header.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::default(),
    ))
}

/// The span of `service` handling `envelope`, child of the event's own span. The reaction runs
/// inside it (external calls become its children); [`finish_handling`] ends it with the verdict.
pub fn handling(service: &'static str, envelope: &Envelope) -> Context {
    if !enabled() {
        return Context::new();
    }
    let parent = Context::new().with_remote_span_context(event_span(envelope));
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder(format!("{} process", envelope.event_type))
        .with_kind(SpanKind::Consumer)
        .with_attributes(event_attributes("process", service, envelope))
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// End a handling span with what came of it.
pub fn finish_handling(cx: &Context, verdict: &Verdict) {
    if !enabled() {
        return;
    }
    let span = cx.span();
    match verdict {
        Verdict::Done => span.set_attribute(KeyValue::new("commerce.verdict", "done")),
        Verdict::Retry(reason) => {
            span.set_attribute(KeyValue::new("commerce.verdict", "retry"));
            span.add_event("put off", vec![KeyValue::new("reason", reason.clone())]);
        }
        Verdict::Reject(reason) => {
            span.set_attribute(KeyValue::new("commerce.verdict", "dead-lettered"));
            span.set_status(Status::error(reason.clone()));
        }
    }
    span.end();
}

/// The `publish` span of an event just recorded (with its outbox row): its ids are the ones
/// its `traceparent` carries; its parent is the handling that decided it, or none (a root: an
/// order placed, or a customer's cancel).
pub fn emitted(service: &'static str, envelope: &Envelope, handling: Option<&Context>) {
    if !enabled() {
        return;
    }
    let own = event_span(envelope);
    let parent = match handling {
        Some(cx) if cx.has_active_span() => cx.clone(),
        _ => Context::new(),
    };
    let tracer = global::tracer(SCOPE);
    let mut span = with_chosen_ids(own.trace_id(), own.span_id(), || {
        tracer
            .span_builder(format!("{} publish", envelope.event_type))
            .with_kind(SpanKind::Producer)
            .with_attributes(event_attributes("publish", service, envelope))
            .start_with_context(&tracer, &parent)
    });
    span.end();
}

/// What every event span says: the messaging operation, the event, its service and its order.
fn event_attributes(
    operation: &'static str,
    service: &'static str,
    envelope: &Envelope,
) -> [KeyValue; 6] {
    [
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.message.id", envelope.id.to_string()),
        KeyValue::new("commerce.service", service),
        KeyValue::new("commerce.event_type", envelope.event_type.clone()),
        KeyValue::new("commerce.order_id", envelope.correlationid.clone()),
    ]
}

/// The span of one call to an external system, child of the handling it serves (the current
/// context). [`finish_call`] ends it.
pub fn calling(dependency: &str, method: &'static str, url: &str) -> Context {
    if !enabled() {
        return Context::new();
    }
    let parent = Context::current();
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder(format!("{dependency} {method}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.full", url.to_string()),
            KeyValue::new("peer.service", dependency.to_string()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// End an external call's span; a failure is its status.
pub fn finish_call<E: std::fmt::Display>(cx: &Context, outcome: Result<(), &E>) {
    if !enabled() {
        return;
    }
    let span = cx.span();
    if let Err(e) = outcome {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_traceparent_names_the_order_as_trace_and_the_event_as_span() {
        let order = uuid::Uuid::now_v7();
        let envelope = Envelope::new(
            bus::Domain::Orders,
            "OrderCreated",
            order.to_string(),
            serde_json::json!({}),
        )
        .unwrap();
        let span = event_span(&envelope);
        assert!(span.is_valid() && span.is_remote());
        assert_eq!(span.trace_id().to_string(), order.simple().to_string());
        assert_eq!(
            span.span_id().to_string(),
            envelope.id.simple().to_string()[16..]
        );
        assert!(parse_traceparent("00-nothex-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn chosen_ids_are_handed_out_once_and_only_while_building() {
        let (trace, span) = (TraceId::from(7u128), SpanId::from(9u64));
        let seen = with_chosen_ids(trace, span, || (chosen_trace_id(), chosen_span_id()));
        assert_eq!(seen, (Some(trace), Some(span)));
        let again = with_chosen_ids(trace, span, || {
            let _ = chosen_span_id();
            chosen_span_id()
        });
        assert_eq!(
            again, None,
            "a second span in the same build gets its own id"
        );
        assert_eq!((chosen_trace_id(), chosen_span_id()), (None, None));
    }
}
