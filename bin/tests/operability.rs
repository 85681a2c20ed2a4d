//! What an operator reads of a running system: `/metrics` in valid Prometheus text with counters
//! that move and histograms that fill, one order as one OpenTelemetry trace with the right
//! parents (exported over OTLP/HTTP to a collector the test runs), and `commerce order trace`
//! showing a refund as a branch of the causation tree.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{order, wait_until, Proc};

const CARD: &str = "4242424242424242";
const ADDRESS: &str = "1 Main Street, Seoul";

/// Prometheus text format: `# HELP`/`# TYPE` lines, and samples `name{label="v",…} value`.
/// Returns each sample's value by its full series name; panics naming a malformed line.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split_whitespace();
            let kind = words.next();
            assert!(matches!(kind, Some("HELP" | "TYPE")), "bad comment: {line}");
            if kind == Some("TYPE") {
                let (_name, ty) = (words.next(), words.next());
                assert!(
                    matches!(
                        ty,
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                    ),
                    "bad type: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

fn sum(samples: &HashMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(admin: &str) -> HashMap<String, f64> {
    let response = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/plain"), "{kind}");
    parse_prometheus(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_move_during_a_saga_run_in_valid_prometheus_text() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _nats, api) = support::up(data.path());
    let admin = support::admin_url(data.path());

    let first = api
        .place_ok(&order("ann", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&first, &["COMPLETED"]).await;
    let before = scrape(&admin).await;
    let handled_before = sum(&before, "commerce_events_handled_total");
    assert!(handled_before > 0.0, "events handled are counted");

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            api.place_ok(&order(&format!("c{i}"), "SKU-MUG", 1, CARD, ADDRESS))
                .await,
        );
    }
    for id in &ids {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    wait_until("the saga outcomes and the sampled gauges", || {
        let admin = admin.clone();
        async move {
            let now = scrape(&admin).await;
            sum(&now, "commerce_sagas_ended_total{outcome=\"completed\"}") >= 4.0
                && now
                    .keys()
                    .any(|s| s.starts_with("commerce_consumer_pending{"))
                && now.keys().any(|s| s.starts_with("commerce_outbox_depth{"))
        }
    })
    .await;
    let after = scrape(&admin).await;
    assert!(
        sum(&after, "commerce_events_handled_total") > handled_before,
        "the handled counter moved"
    );
    assert!(sum(&after, "commerce_events_published_total") > 0.0);
    for histogram in [
        "commerce_handle_seconds_count",
        "commerce_commit_seconds_count",
        "commerce_batch_size_count",
        "commerce_saga_seconds_count",
        "commerce_external_call_seconds_count",
    ] {
        assert!(sum(&after, histogram) > 0.0, "{histogram} is filled");
    }
    let buckets = after
        .iter()
        .filter(|(s, v)| s.starts_with("commerce_handle_seconds_bucket{") && **v > 0.0)
        .count();
    assert!(buckets > 1, "latencies land in buckets");
    assert_eq!(
        sum(
            &after,
            "commerce_breaker_state{dependency=\"payment-gateway\"}"
        ),
        0.0,
        "the payment gateway's breaker is closed"
    );
    assert_eq!(sum(&after, "commerce_sagas_stuck"), 0.0);
    up.stop();
}

#[tokio::test]
async fn order_trace_shows_the_refund_of_an_order_cancelled_after_payment() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _nats, api) = support::up(data.path());
    // No stock anywhere: paid, then cancelled, then refunded.
    let id = api
        .place_ok(&order("carol", "SKU-VINYL", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&id, &["CANCELLED"]).await;
    api.wait_refunded(&id).await;

    let (ok, json) = support::cli(data.path(), &["order", "trace", &id, "--json"]);
    assert!(ok, "{json}");
    let history: Value = serde_json::from_str(&json).unwrap();
    let events = history["events"].as_array().unwrap();
    let find = |kind: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {json}"))
    };
    let approved = find("PaymentApproved");
    let refunded = find("PaymentRefunded");
    // The refund hangs below the approval's branch: its chain of causes reaches OrderCreated
    // through the cancellation, and each hop has a latency.
    let by_id: HashMap<&str, &Value> = events
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap(), e))
        .collect();
    let mut chain = vec![refunded["type"].as_str().unwrap()];
    let mut at = refunded;
    while let Some(cause) = at["caused_by"].as_str() {
        at = by_id[cause];
        chain.push(at["type"].as_str().unwrap());
    }
    assert_eq!(chain.last(), Some(&"OrderCreated"), "{chain:?}");
    assert!(chain.len() >= 3, "{chain:?}");
    assert!(refunded["depth"].as_u64().unwrap() > approved["depth"].as_u64().unwrap() - 1);
    assert!(refunded["hop_ms"].as_i64().is_some());

    let (ok, text) = support::cli(data.path(), &["order", "trace", &id]);
    assert!(ok, "{text}");
    assert!(text.contains("└─ PaymentRefunded"), "{text}");
    assert!(text.contains("OrderCancelled"), "{text}");
    let (ok, text) = support::cli(data.path(), &["order", "trace", "not-an-order"]);
    assert!(!ok && text.contains("not an order id"), "{text}");
    up.stop();
}

/// An OTLP/HTTP (JSON) collector: every span it receives.
fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    // Request line, then headers up to the empty line.
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                        let mut store = store.lock().unwrap();
                        for resource in json["resourceSpans"].as_array().into_iter().flatten() {
                            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                                store.extend(
                                    scope["spans"].as_array().into_iter().flatten().cloned(),
                                );
                            }
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, spans)
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test]
async fn one_order_is_one_trace_with_the_right_parents() {
    let (endpoint, spans) = collector();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = support::commerce();
    cmd.arg("up")
        .args(["--data-dir", data.path().to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (mut up, _nats, api) = support::started(Proc::spawn(cmd), data.path());
    let id = api
        .place_ok(&order("tess", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&id, &["COMPLETED"]).await;
    let ours = |spans: &[Value]| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| attribute(s, "commerce.order_id") == Some(id.as_str()))
            .cloned()
            .collect()
    };
    let named = |spans: &[Value], name: &str, service: &str| -> Option<Value> {
        spans
            .iter()
            .find(|s| s["name"] == name && attribute(s, "commerce.service") == Some(service))
            .cloned()
    };
    wait_until("the saga's spans at the collector", || {
        let spans = ours(&spans.lock().unwrap());
        let done = named(&spans, "OrderCompleted process", "projection").is_some()
            && named(&spans, "PaymentApproved publish", "payment").is_some();
        std::future::ready(done)
    })
    .await;
    let all = spans.lock().unwrap().clone();
    let saga = ours(&all);
    let trace_id = uuid::Uuid::parse_str(&id).unwrap().simple().to_string();
    assert!(saga.len() >= 20, "{} spans", saga.len());
    for span in &saga {
        assert_eq!(span["traceId"], trace_id.as_str(), "{span}");
    }

    let (ok, json) = support::cli(data.path(), &["order", "trace", &id, "--json"]);
    assert!(ok, "{json}");
    let history: Value = serde_json::from_str(&json).unwrap();
    let created_id = history["events"][0]["event_id"].as_str().unwrap();
    let created = named(&saga, "OrderCreated publish", "order").expect("OrderCreated publish");
    assert_eq!(
        created["spanId"],
        uuid::Uuid::parse_str(created_id)
            .unwrap()
            .simple()
            .to_string()[16..],
        "an event's span is the one its traceparent names"
    );
    assert!(
        created["parentSpanId"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "the root"
    );
    let handled = named(&saga, "OrderCreated process", "payment").expect("handled by payment");
    assert_eq!(handled["parentSpanId"], created["spanId"]);
    let approved = named(&saga, "PaymentApproved publish", "payment").unwrap();
    assert_eq!(approved["parentSpanId"], handled["spanId"]);
    let call = all
        .iter()
        .find(|s| s["name"] == "payment-gateway POST" && s["parentSpanId"] == handled["spanId"]);
    assert!(
        call.is_some(),
        "the gateway call is a child of the handling"
    );
    let next = named(&saga, "PaymentApproved process", "inventory").unwrap();
    assert_eq!(next["parentSpanId"], approved["spanId"]);
    up.stop();
}
