//! The process's logs and trace export, set up before anything runs.
//!
//! - Logs go to stderr as text, or as JSON lines with `COMMERCE_LOG_FORMAT=json`; `RUST_LOG`
//!   filters them.
//! - Spans are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, in the standard way: protobuf unless
//!   `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`, service name from `OTEL_SERVICE_NAME` (default
//!   `commerce-<command>`). Otherwise no span is even built.

use actors::telemetry::trace;
use anyhow::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};

pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,async_nats=warn,actix_server=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("COMMERCE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Spans go to the OTLP endpoint the environment names, if any. Keep the provider until the
/// end and [`shut_down`] it, so the last spans are sent.
pub fn traces(process: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    let protocol = match protocol.trim() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use http/protobuf or http/json"
        ),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .context("cannot set up the OTLP span exporter")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(format!("commerce-{process}"));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(EventIds::default())
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    trace::enable();
    Ok(Some(provider))
}

/// Send the spans still buffered.
pub fn shut_down(provider: Option<SdkTracerProvider>) {
    if let Some(provider) = provider {
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "spans not all exported");
        }
    }
}

/// Random ids, except where an event dictates them (its span, its order's trace): see
/// `actors::telemetry::trace`.
#[derive(Debug, Default)]
struct EventIds(RandomIdGenerator);

impl IdGenerator for EventIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        trace::chosen_trace_id().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        trace::chosen_span_id().unwrap_or_else(|| self.0.new_span_id())
    }
}
