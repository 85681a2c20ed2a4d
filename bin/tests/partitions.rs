//! The saga with its streams over three partitions (`streams.partitions = 3`): the per-order
//! services (order, payment, shipment) run one host per partition, each with its own database
//! and consumers, answering on `commerce.<service>.<k>.<endpoint>`, and the stock services
//! (inventory, store) one shard per partition, by SKU; every path of the saga still ends right,
//! each partition keeps only its own orders, and an order whose lines span shards is reserved
//! shard by shard, in the warehouse and in the stores.

mod support;

use std::collections::BTreeSet;

use actors::contract::{Get, PaymentService};
use actors::rpc::{call_at, Address, Routes};
use actors::Component;
use bus::Partitions;
use serde_json::json;
use support::{scenario, Api, Proc, ADDRESS, CARD};

const PARTITIONS: u32 = 3;

#[tokio::test]
async fn every_path_ends_right_with_orders_and_stock_split_over_three_partitions() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = support::commerce();
    cmd.args(["up", "--data-dir", data.path().to_str().unwrap()])
        .env("COMMERCE_STREAMS__PARTITIONS", PARTITIONS.to_string());
    let (up, nats, api) = support::started(Proc::spawn(cmd), data.path());
    let partitions = Partitions::new(PARTITIONS).unwrap();

    let placed = scenario::place(&api, 12).await;
    scenario::check(&api, &placed).await;
    orders_across_shards(&api).await;
    let ids = placed.all();
    let spread: BTreeSet<u32> = ids.iter().map(|id| partitions.of(id)).collect();
    assert_eq!(spread.len(), 3, "the orders fell in every partition");

    // Each partition's host knows its own orders only.
    let operator = support::operator(&nats, data.path()).await;
    for id in &ids {
        let home = partitions.of(id);
        for k in 0..PARTITIONS {
            let at = Address {
                component: Component::Payment,
                partition: Some(k),
            };
            let answer = call_at::<Get<PaymentService>>(&operator, at, &Some(id.clone())).await;
            assert_eq!(
                answer.is_ok(),
                k == home,
                "{id} asked of payment/{k}: {answer:?}"
            );
        }
    }

    // One database and one durable consumer per partition of each split service; one for the
    // others.
    let js = async_nats::jetstream::new(operator.clone());
    let routes = Routes::of_broker(&js).await.unwrap();
    assert_eq!(routes.partitions(), partitions);
    for service in ["order", "payment", "shipment", "inventory", "store"] {
        for k in 0..PARTITIONS {
            assert!(
                data.path().join(format!("{service}.p{k}")).is_dir(),
                "{service}.p{k}"
            );
        }
        assert!(!data.path().join(service).exists(), "{service} is split");
    }
    assert!(data.path().join("recommendation").is_dir());
    let orders = js.get_stream("ORDERS").await.unwrap();
    let consumers: BTreeSet<String> = {
        use futures::TryStreamExt;
        orders
            .consumer_names()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .collect()
    };
    for expected in ["payment-p0", "payment-p1", "payment-p2", "projection"] {
        assert!(consumers.contains(expected), "{consumers:?}");
    }
    assert!(!consumers.contains("payment"), "{consumers:?}");
    // Every order event is stored in its order's partition.
    for message in support::stream_events(&js, "ORDERS").await {
        let event = bus::Envelope::from_slice(&message.payload).unwrap();
        let (_, partition) = bus::partition::split_stored(&message.subject).unwrap();
        assert_eq!(
            partition,
            partitions.of(&event.subject),
            "{}",
            message.subject
        );
    }

    // `commerce status` shows each partition's host.
    let (ok, status) = support::cli(data.path(), &["status", "--nats", &nats]);
    assert!(ok, "{status}");
    for line in [
        "partitions 3",
        "payment/0",
        "payment/2",
        "shipment/1",
        "inventory/2",
        "store/0",
        "recommendation",
    ] {
        assert!(status.contains(line), "{line} missing from:\n{status}");
    }
    // Each shard's events are in its own aggregate's log.
    for (stream, shard_event, aggregate) in [
        ("INVENTORY", "InventoryLinesReserved", "warehouse."),
        ("STORES", "StoreLinesReserved", "stores."),
    ] {
        let events = stored(&js, stream).await;
        assert!(
            events.iter().any(|e| e.event_type == shard_event),
            "{stream}"
        );
        for e in &events {
            let id = e.aggregateid.as_deref().unwrap_or_default();
            assert!(id.starts_with(aggregate), "{stream}: {id:?}");
        }
    }
    support::assert_no_permission_violations(data.path());
    drop(up);
}

/// Every event of `stream`.
async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> Vec<bus::Envelope> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut events = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        if let Ok(event) = bus::Envelope::from_slice(&message.payload) {
            events.push(event);
        }
    }
    events
}

/// Orders whose lines span the SKU shards. Of three: SKU-TSHIRT and SKU-HOODIE are in shard 0,
/// SKU-MUG in 1, SKU-POSTER in 2; posters are only in store-busan, hoodies only in store-seoul.
async fn orders_across_shards(api: &Api) {
    let before = api.products().await;
    let two = |a: &str, b: &str| {
        json!({
            "customer": "grace",
            "lines": [{ "sku": a, "quantity": 1 }, { "sku": b, "quantity": 1 }],
            "card_number": CARD,
            "shipping_address": ADDRESS,
        })
    };
    // From the warehouse: shard 0 reserves its shirt, then shard 1 its mug and decides.
    let warehouse = api.place_ok(&two("SKU-TSHIRT", "SKU-MUG")).await;
    // No poster in the warehouse: shard 0 gives its shirt back; then both from store-busan,
    // the store shard 0 chose.
    let from_store = api.place_ok(&two("SKU-TSHIRT", "SKU-POSTER")).await;
    // No store has both: every shard gives back what it held, and the order is refunded.
    let nowhere = api.place_ok(&two("SKU-HOODIE", "SKU-POSTER")).await;
    api.wait_status(&warehouse, &["COMPLETED"]).await;
    let shipped = api.wait_status(&from_store, &["COMPLETED"]).await;
    assert_eq!(shipped["store_stock_available"], true, "{shipped}");
    api.wait_status(&nowhere, &["CANCELLED"]).await;
    api.wait_refunded(&nowhere).await;

    let moved = |products: &serde_json::Value| {
        let w = |sku| support::warehouse(products, sku);
        let s = |sku, store| support::store(products, sku, store);
        [
            w("SKU-TSHIRT"),
            w("SKU-MUG"),
            w("SKU-HOODIE"),
            s("SKU-TSHIRT", "store-busan"),
            s("SKU-POSTER", "store-busan"),
            s("SKU-HOODIE", "store-seoul"),
        ]
    };
    let [shirts, mugs, hoodies, busan_shirts, posters, seoul_hoodies] = moved(&before);
    let expected = [
        shirts - 1,
        mugs - 1,
        hoodies,
        busan_shirts - 1,
        posters - 1,
        seoul_hoodies,
    ];
    support::wait_until("the shards' stock is settled", || async {
        moved(&api.products().await) == expected
    })
    .await;
}

/// `commerce up --instances 2` over two partitions: every service runs as two processes, each
/// the home of one partition. An instance killed with SIGKILL is started again by `commerce up`;
/// meanwhile the other instance takes its partition over, and gives it back once it is up.
/// Orders placed throughout complete, each charged once.
#[tokio::test]
async fn up_with_instances_keeps_every_service_running_as_processes_sharing_the_partitions() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = support::commerce();
    cmd.args(["up", "--instances", "2", "--data-dir"])
        .arg(data.path())
        .env("COMMERCE_STREAMS__PARTITIONS", "2")
        .env("COMMERCE_STREAMS__LEASE_TTL_MS", "2000");
    let (mut up, nats, api) = support::started(Proc::spawn(cmd), data.path());
    for service in actors::Component::SERVICES {
        for i in [1, 2] {
            let log = data.path().join(format!("logs/{service}@{i}.log"));
            assert!(log.is_file(), "{} missing", log.display());
        }
    }
    let operator = support::operator(&nats, data.path()).await;
    let js = async_nats::jetstream::new(operator);
    let holders = || async {
        let held = bus::lease::held(&js).await.unwrap();
        ["payment.0", "payment.1"].map(|key| {
            held.iter()
                .find(|l| l.key == key)
                .and_then(|l| l.holder.clone())
                .map(|h| (h.instance, h.pid))
        })
    };
    support::wait_until("each payment instance holds its home partition", || async {
        matches!(holders().await, [Some((a, _)), Some((b, _))] if a == "1" && b == "2")
    })
    .await;
    let mut placed = support::place_completed(&api, "before", 6).await;

    // Instance 2 of payment dies: 1 takes partition 1 over, 2 comes back and gets it back.
    let [_, Some((_, pid))] = holders().await else {
        panic!("partition 1 has no holder")
    };
    let killed = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(killed, nix::sys::signal::Signal::SIGKILL).unwrap();
    placed.extend(support::place_completed(&api, "while-2-restarts", 6).await);
    support::wait_until(
        "the restarted instance 2 holds partition 1 again",
        || async { matches!(holders().await, [_, Some((b, p))] if b == "2" && p != pid) },
    )
    .await;
    placed.extend(support::place_completed(&api, "after", 6).await);

    support::charged_once(&api, &placed).await;
    up.stop();
    support::assert_no_permission_violations(data.path());
}
