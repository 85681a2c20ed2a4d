//! What the NATS CLI shows of a running `commerce up`, asked the way it asks: after a saga,
//! every component answers the NATS micro protocol (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`: what
//! `nats micro ls|info|stats` read) with its name, version and endpoints, the order service counts
//! the request that placed the order, and the embedded server's monitoring endpoint (`/jsz`: the
//! counts `nats stream report` and `nats consumer report` show) lists every stream and every
//! durable consumer, caught up.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use actors::contract::{
    Cancel, Get, InventoryService, OrderService, Part, PaymentService, Place, ReadOrder, Rebuild,
    RecommendationService, Service, ShipmentService, Slow, Status, StoreService,
};
use actors::rpc::Endpoint;
use actors::Component;
use futures::StreamExt;
use serde_json::Value;
use support::{order, ADDRESS, CARD, WAIT};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[tokio::test]
async fn after_a_saga_the_micro_services_and_the_monitoring_endpoint_show_it() {
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, api) = support::up(data.path());
    let id = api
        .place_ok(&order("alice", "SKU-MUG", 2, CARD, ADDRESS))
        .await;
    api.wait_status(&id, &["COMPLETED"]).await;
    let client = support::operator(&nats, data.path()).await;
    let components: BTreeSet<&str> = Component::with_status().map(Component::name).collect();

    // `nats micro ping`: each component once, with its name, version and instance id.
    let pings = gather(&client, "$SRV.PING", components.len()).await;
    let mut ids = BTreeMap::new();
    for ping in &pings {
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response", "{ping}");
        assert_eq!(ping["version"], VERSION, "{ping}");
        let name = ping["name"].as_str().expect("name");
        let id = ping["id"].as_str().filter(|id| !id.is_empty()).expect("id");
        assert!(ids.insert(name, id).is_none(), "{name} answered twice");
    }
    assert_eq!(ids.keys().copied().collect::<BTreeSet<_>>(), components);

    // `nats micro ls` / `nats micro info <name>`: the same instances, with their endpoints, each
    // on `commerce.<name>.<endpoint>`.
    let infos = gather(&client, "$SRV.INFO", components.len()).await;
    for info in &infos {
        assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
        assert_eq!(info["version"], VERSION, "{info}");
        let name = info["name"].as_str().expect("name");
        assert_eq!(
            info["id"], ids[name],
            "{name}: INFO and PING name one instance"
        );
        let description = info["description"].as_str().unwrap_or_default();
        assert!(description.starts_with("commerce "), "{info}");
        assert!(micro_name(info["name"].as_str()), "{info}");
        // Named by the library after their subject (`commerce-order-place`); the subject is ours.
        let prefix = format!("commerce.{name}.");
        let endpoints: BTreeSet<&str> = info["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .inspect(|e| assert!(micro_name(e["name"].as_str()), "{info}"))
            .map(|e| e["subject"].as_str().expect("endpoint subject"))
            .map(|subject| {
                let endpoint = subject.strip_prefix(&prefix);
                endpoint.unwrap_or_else(|| panic!("{name} serves {subject}: {info}"))
            })
            .collect();
        let missing: Vec<_> = expected_endpoints(name)
            .into_iter()
            .filter(|e| !endpoints.contains(e))
            .collect();
        assert!(missing.is_empty(), "{name} lacks {missing:?}: {info}");
    }
    let order_info = one(&client, "$SRV.INFO.order").await;
    assert_eq!(order_info["name"], "order", "{order_info}");
    assert_eq!(order_info["id"], ids["order"], "{order_info}");

    // `nats micro stats order`: every endpoint's counters as the CLI's schema requires them; the
    // gateway's request that placed the order was counted, and it failed nothing.
    let stats = one(&client, "$SRV.STATS.order").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response", "{stats}");
    assert_eq!(stats["name"], "order", "{stats}");
    assert_eq!(stats["id"], ids["order"], "{stats}");
    let endpoints = stats["endpoints"].as_array().expect("endpoints");
    for endpoint in endpoints {
        let counters = [
            "num_requests",
            "num_errors",
            "processing_time",
            "average_processing_time",
        ];
        for counter in counters {
            assert!(endpoint[counter].is_u64(), "{counter}: {stats}");
        }
        assert!(endpoint["last_error"].is_string(), "{stats}");
    }
    let place = endpoints
        .iter()
        .find(|e| e["subject"] == format!("commerce.order.{}", Place::NAME))
        .unwrap_or_else(|| panic!("no place endpoint: {stats}"));
    assert!(place["num_requests"].as_u64() > Some(0), "{stats}");
    assert_eq!(place["num_errors"], 0, "{stats}");

    // `/jsz`: every stream; the saga's events in the streams it passed through; nothing
    // dead-lettered; then every durable consumer has been handed everything and settled it.
    let monitor = monitor_url(data.path());
    let http = reqwest::Client::new();
    let jsz = fetch_jsz(&http, &monitor).await;
    let listed = streams(&jsz);
    // And the leases' bucket, a stream too.
    let leases = format!("KV_{}", bus::lease::LEASES_BUCKET);
    let specified: BTreeSet<&str> = bus::streams::stream_specs()
        .into_iter()
        .map(|(name, ..)| name)
        .chain([leases.as_str()])
        .collect();
    assert_eq!(
        listed.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        specified,
        "{jsz}"
    );
    for stream in [
        "ORDERS",
        "PAYMENTS",
        "INVENTORY",
        "SHIPMENTS",
        "RECOMMENDATIONS",
    ] {
        // Past its service's recovery marker, which every new system's stream holds.
        let messages = listed[stream]["state"]["messages"].as_u64();
        assert!(
            messages > Some(1),
            "{stream} holds the saga's events: {jsz}"
        );
    }
    assert_eq!(listed["DLQ"]["state"]["messages"], 0, "{jsz}");

    // `/varz`: the embedded broker runs on half the cores (its collector cannot take them all).
    let varz: Value = http
        .get(format!("{monitor}/varz"))
        .send()
        .await
        .expect("/varz")
        .json()
        .await
        .expect("/varz answers JSON");
    let cores = actors::Settings::default().nats_cores() as u64;
    assert_eq!(varz["gomaxprocs"].as_u64(), Some(cores), "{varz}");

    let durables = expected_durables();
    let deadline = Instant::now() + WAIT;
    support::wait_until("every durable consumer has settled everything", || async {
        let jsz = fetch_jsz(&http, &monitor).await;
        let streams = streams(&jsz);
        let unsettled: Vec<String> = durables
            .iter()
            .filter_map(|(stream, durable)| {
                let consumers = consumers(&streams[stream.as_str()]);
                match consumers.get(durable.as_str()) {
                    Some(c) if c["num_pending"] == 0 && c["num_ack_pending"] == 0 => None,
                    Some(c) => Some(format!(
                        "{stream}/{durable}: {} pending, {} unacknowledged",
                        c["num_pending"], c["num_ack_pending"]
                    )),
                    None => Some(format!("{stream}/{durable}: missing")),
                }
            })
            .collect();
        // Says which, before `wait_until`'s own (later) deadline.
        assert!(
            unsettled.is_empty() || Instant::now() < deadline,
            "{unsettled:#?}"
        );
        unsettled.is_empty()
    })
    .await;
    // Each step of this saga was handed to its service by that service's durable consumer.
    let jsz = fetch_jsz(&http, &monitor).await;
    let streams = streams(&jsz);
    for (stream, durable) in [
        ("ORDERS", "payment"),
        ("PAYMENTS", "inventory"),
        ("INVENTORY", "shipment"),
        ("SHIPMENTS", "order"),
        ("ORDERS", "recommendation"),
    ] {
        let consumer = consumers(&streams[stream])[durable];
        let delivered = consumer["delivered"]["consumer_seq"].as_u64();
        assert!(delivered > Some(0), "{stream}/{durable}: {consumer}");
    }
}

/// A name the NATS CLI accepts in a micro answer (its schemas: `^[a-zA-Z0-9_-]+$`); it refuses
/// the whole answer otherwise.
fn micro_name(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The endpoints `component` must list (it may have more).
fn expected_endpoints(component: &str) -> Vec<&'static str> {
    match component {
        "projection" => vec![ReadOrder::NAME, Status::NAME, Rebuild::NAME],
        service => {
            let mut endpoints = vec![
                Status::NAME,
                Get::<OrderService>::NAME,
                Part::<OrderService>::NAME,
                Slow::NAME,
            ];
            if service == "order" {
                endpoints.extend([Place::NAME, Cancel::NAME]);
            }
            endpoints
        }
    }
}

/// Every durable consumer the system binds, as (stream, name): each service's on the streams it
/// listens to, and the projection's on every domain stream.
fn expected_durables() -> BTreeSet<(String, String)> {
    let listens = [
        (Component::Order, OrderService::LISTENS),
        (Component::Payment, PaymentService::LISTENS),
        (Component::Inventory, InventoryService::LISTENS),
        (Component::Store, StoreService::LISTENS),
        (Component::Shipment, ShipmentService::LISTENS),
        (Component::Recommendation, RecommendationService::LISTENS),
    ];
    let mut durables = BTreeSet::new();
    for (component, streams) in listens {
        for (domain, _) in streams {
            durables.insert((domain.stream().to_string(), component.name().to_string()));
        }
    }
    for domain in bus::Domain::ALL {
        durables.insert((domain.stream().to_string(), "projection".to_string()));
    }
    durables
}

/// Publish an empty request on `subject` and collect the first `count` answers (a discovery
/// subject is answered by every instance; nothing says how many, so the caller does).
async fn gather(client: &async_nats::Client, subject: &str, count: usize) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < count {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(answer)) => got.push(serde_json::from_slice(&answer.payload).unwrap()),
            _ => panic!("{subject}: {} of {count} answered: {got:?}", got.len()),
        }
    }
    got
}

/// The one answer to an empty request on `subject`.
async fn one(client: &async_nats::Client, subject: &str) -> Value {
    let answer = client
        .request(subject.to_string(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&answer.payload).unwrap()
}

/// The embedded server's monitoring endpoint, from the config `commerce up` wrote for it
/// (`http: 127.0.0.1:<port>`).
fn monitor_url(data: &std::path::Path) -> String {
    let conf = std::fs::read_to_string(data.join("nats").join("nats-server.conf"))
        .expect("the embedded server's config");
    let address = conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("http:"))
        .unwrap_or_else(|| panic!("no monitoring address in:\n{conf}"));
    format!("http://{}", address.trim())
}

async fn fetch_jsz(http: &reqwest::Client, monitor: &str) -> Value {
    http.get(format!("{monitor}/jsz?streams=true&consumers=true"))
        .send()
        .await
        .expect("/jsz")
        .json()
        .await
        .expect("/jsz answers JSON")
}

/// The streams of a `/jsz` answer, by name.
fn streams(jsz: &Value) -> BTreeMap<String, Value> {
    let mut streams = BTreeMap::new();
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            let name = stream["name"].as_str().expect("stream name").to_string();
            streams.insert(name, stream.clone());
        }
    }
    streams
}

/// The consumers of one stream of a `/jsz` answer, by name.
fn consumers(stream: &Value) -> BTreeMap<&str, &Value> {
    stream["consumer_detail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["name"].as_str().expect("consumer name"), c))
        .collect()
}
