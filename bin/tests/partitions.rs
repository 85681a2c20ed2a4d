//! The saga with its streams over three partitions (`streams.partitions = 3`): the per-order
//! services (order, payment, shipment) run one host per partition, each with its own database
//! and consumers, answering on `commerce.<service>.<k>.<endpoint>`; every path of the saga still
//! ends right, and each partition keeps only its own orders.

mod support;

use std::collections::BTreeSet;

use actors::contract::{Get, PaymentService};
use actors::rpc::{call_at, Address, Routes};
use actors::Component;
use bus::Partitions;
use support::{scenario, Proc};

const PARTITIONS: u32 = 3;

#[tokio::test]
async fn every_path_ends_right_with_the_per_order_services_split_over_three_partitions() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = support::commerce();
    cmd.args(["up", "--data-dir", data.path().to_str().unwrap()])
        .env("COMMERCE_STREAMS__PARTITIONS", PARTITIONS.to_string());
    let (up, nats, api) = support::started(Proc::spawn(cmd), data.path());
    let partitions = Partitions::new(PARTITIONS).unwrap();

    let placed = scenario::place(&api, 12).await;
    scenario::check(&api, &placed).await;
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
    for service in ["order", "payment", "shipment"] {
        for k in 0..PARTITIONS {
            assert!(
                data.path().join(format!("{service}.p{k}")).is_dir(),
                "{service}.p{k}"
            );
        }
        assert!(!data.path().join(service).exists(), "{service} is split");
    }
    assert!(data.path().join("inventory").is_dir());
    let mut orders = js.get_stream("ORDERS").await.unwrap();
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
    let last = orders.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let message = orders.get_raw_message(seq).await.unwrap();
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
        "inventory",
    ] {
        assert!(status.contains(line), "{line} missing from:\n{status}");
    }
    support::assert_no_permission_violations(data.path());
    drop(up);
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
