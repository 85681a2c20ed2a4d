//! The saga with every component in its own OS process (`commerce run <component>`), on one
//! nats-server, with one service killed by SIGKILL mid-run and restarted.

mod support;

use serde_json::json;
use support::{commerce, order, scenario, wait_until, Cluster, Proc, ADDRESS, CARD};

/// SIGKILL one of `services`; returns its slot, to start it again.
fn sigkill<'a>(services: &'a mut [(&str, Proc)], name: &str) -> &'a mut Proc {
    let (_, service) = services.iter_mut().find(|(n, _)| *n == name).unwrap();
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    service
}

#[tokio::test]
async fn one_process_per_service_loses_nothing_when_one_is_killed() {
    let (cluster, _broker, js, simulators) = Cluster::start(&bus::StreamSettings::default()).await;
    let mut services: Vec<(&str, Proc)> = actors::Component::SERVICES
        .iter()
        .map(|c| (c.name(), cluster.run(c.name())))
        .collect();
    let mut projection = cluster.run("projection");
    let gateway = cluster.run("gateway");
    let api = cluster.api(&gateway);

    let mut placed = scenario::place(&api, 20).await;

    // SIGKILL the payment service while its gateway calls are in flight (the gateway charges,
    // the service dies before recording it), then start it again.
    api.set_faults(&api.payment_gateway, json!({ "latency_ms": 800 }))
        .await;
    let calls = api.ledger(&api.payment_gateway).await["calls"]
        .as_u64()
        .unwrap();
    for i in 0..5 {
        let late = order(&format!("late-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        placed.completed.push(api.place_ok(&late).await);
        placed.bulk += 1;
    }
    wait_until("payment calls the gateway", || async {
        api.ledger(&api.payment_gateway).await["calls"]
            .as_u64()
            .unwrap()
            > calls
    })
    .await;
    let payment = sigkill(&mut services, "payment");
    // And the projection, mid-batch: it must resume without losing or double-applying.
    projection.child.kill().unwrap();
    projection.child.wait().unwrap();
    api.set_faults(&api.payment_gateway, json!({})).await;
    *payment = cluster.run("payment");
    projection = cluster.run("projection");

    scenario::check(&api, &placed).await;

    // The live read model equals one rebuilt from the streams. Payment, just back, may still
    // be closing the payments of orders that shipped meanwhile.
    let ids = placed.all();
    support::consumer_settled(&js, "ORDERS", "payment").await;
    support::projection_caught_up(&js).await;
    let live = support::rows(&api, &ids).await;
    support::assert_no_double_apply(&live);
    let out = commerce()
        .args(["projection", "rebuild", "--nats", &cluster.nats])
        // An operator elsewhere: credentials by environment.
        .env(
            "NATS_CREDS",
            cluster.data.path().join("credentials/operator.nk"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = support::rows(&api, &ids).await;
    assert_eq!(rebuilt, live, "rebuilt rows equal the live ones");

    // Lose the shipment service's database while orders are in flight: it rebuilds from its
    // stream and the sagas go on, with no parcel booked twice.
    let mut late = Vec::new();
    for i in 0..10 {
        let o = order(&format!("after-loss-{i}"), "SKU-SOCKS", 1, CARD, ADDRESS);
        late.push(api.place_ok(&o).await);
    }
    let shipment = sigkill(&mut services, "shipment");
    std::fs::remove_dir_all(cluster.data.path().join("shipment")).unwrap();
    *shipment = cluster.run("shipment");
    for id in &late {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    let bookings = api.ledger(&api.carrier).await;
    let mut booked = std::collections::BTreeSet::new();
    for booking in bookings["bookings"].as_array().unwrap() {
        let order_id = booking["order_id"].as_str().unwrap().to_string();
        assert!(booked.insert(order_id.clone()), "{order_id} booked twice");
    }
    assert!(late.iter().all(|id| booked.contains(id)));
    // Nothing the shipment service had done was done again: each of its events once per order.
    let mut once = std::collections::BTreeSet::new();
    for message in support::stream_events(&js, "SHIPMENTS").await {
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let key = (event["subject"].to_string(), event["type"].to_string());
        assert!(once.insert(key.clone()), "{key:?} published twice");
    }
    // Old sagas are intact: the held order is still cancelled, the completed still completed.
    scenario::check_final(&api, &placed).await;
    support::assert_no_permission_violations(cluster.data.path());

    // The composed view asks all six services; healthy, every part is there. A shipped
    // order's payment is final (`PaymentClosed`): kept as a snapshot, no longer as events.
    let done = &placed.completed[0];
    let path = format!("/orders/{done}/composed");
    let composed_now = || async { api.raw(reqwest::Method::GET, &path, None).await };
    wait_until("the completed order's payment is closed", || async {
        composed_now().await.1["payment"]["closed"] == true
    })
    .await;
    let (status, composed) = composed_now().await;
    assert_eq!(status, 200, "{composed}");
    assert_eq!(composed["order"]["status"], "COMPLETED");
    assert!(
        composed["payment"]["authorization_id"].is_string(),
        "{composed}"
    );
    assert!(
        composed["inventory"]["reservation"].is_object(),
        "{composed}"
    );
    assert_eq!(composed["shipment"]["status"], "DELIVERED");
    assert!(
        composed["recommendation"]["recommended_items"].is_array(),
        "{composed}"
    );
    assert!(composed["store"].is_null(), "shipped from the warehouse");

    // With one service down the read model still answers; the composed view cannot.
    sigkill(&mut services, "payment");
    let (status, row) = api.get(done).await;
    assert_eq!(
        (status, row["order_status"].as_str()),
        (200, Some("COMPLETED"))
    );
    let (status, composed) = api.raw(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 503, "{composed}");
    assert_eq!(composed["missing"][0]["service"], "payment", "{composed}");
    // Why is the operator's to read, under the incident in the gateway's log.
    assert!(composed["incident"].is_string(), "{composed}");
    assert!(composed["missing"][0].get("error").is_none(), "{composed}");

    // With the order service down too, a customer's view cannot tell whose order it is: 503.
    // One outage is one incident, whichever order was asked about.
    sigkill(&mut services, "order");
    let customer = api.customer("ann");
    let mut incidents = std::collections::BTreeSet::new();
    for id in placed.completed.iter().take(2) {
        let path = format!("/orders/{id}/composed");
        let (status, body) = api
            .raw_as(Some(&customer), reqwest::Method::GET, &path, None)
            .await;
        assert_eq!(status, 503, "{body}");
        incidents.insert(body["incident"].as_str().expect("an incident").to_string());
    }
    assert_eq!(incidents.len(), 1, "{incidents:?}");

    for (_, service) in &mut services {
        service.stop();
    }
    drop(gateway);
    drop(projection);
    drop(simulators);
}

/// `commerce run` of every service but `left_out`, each once it is up.
fn services_but(cluster: &Cluster, left_out: &str) -> Vec<Proc> {
    actors::Component::SERVICES
        .iter()
        .filter(|c| c.name() != left_out)
        .map(|c| cluster.run(c.name()))
        .collect()
}

/// How many bookings of order `id` the carrier's ledger holds.
fn bookings_of(ledger: &serde_json::Value, id: &str) -> usize {
    let bookings = ledger["bookings"].as_array().cloned().unwrap_or_default();
    bookings.iter().filter(|b| b["order_id"] == id).count()
}

/// A disk that fails a flush: the shipment service, whose database may then have lost what the
/// flush held (though a later flush would succeed), records and calls nothing more, stops, and
/// says why. Restarted, it opens its database from what is on disk, and the order completes,
/// booked once.
#[tokio::test]
async fn a_shipment_whose_flush_fails_stops_and_once_restarted_books_once() {
    let (cluster, _broker, js, simulators) = Cluster::start(&bus::StreamSettings::default()).await;
    let others = services_but(&cluster, "shipment");
    let mut shipment = cluster.run("shipment");
    let projection = cluster.run("projection");
    let gateway = cluster.run("gateway");
    let api = cluster.api(&gateway);
    // An order first, so that its database is not empty and it starts without a rebuild.
    let first = api
        .place_ok(&order("disk-1", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&first, &["COMPLETED"]).await;
    // Nothing left to deliver: the next flush is the next order's.
    support::all_settled(&js).await;
    shipment.stop();

    let log = cluster.data.path().join("failing-shipment.log");
    let mut cmd = cluster.command(
        "shipment",
        &[],
        &[("FAILPOINTS", "store.flush_fails=1*return")],
    );
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut failing = Proc::spawn(cmd);
    failing.line_starting("commerce shipment is up");
    let id = api
        .place_ok(&order("disk-2", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    assert!(!failing.wait_exit().success(), "it stopped on its own");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("takes no writes since a flush failed") && said.contains("restart"),
        "{said}"
    );
    let ledger = api.ledger(&api.carrier).await;
    assert_eq!(
        bookings_of(&ledger, &id),
        0,
        "no call on a request not durable"
    );

    let shipment = cluster.run("shipment");
    api.wait_status(&id, &["COMPLETED"]).await;
    let ledger = api.ledger(&api.carrier).await;
    assert_eq!(bookings_of(&ledger, &id), 1, "{ledger}");
    assert_eq!(bookings_of(&ledger, &first), 1, "{ledger}");
    drop((others, shipment, projection, gateway, simulators));
}

/// The shipment service dies after its echo called the carrier and before it recorded the
/// answer: once it is back, the stream's copy of the request books again by the order's key,
/// which finds the booking. One booking, one `ShipmentScheduled`.
#[tokio::test]
async fn a_shipment_that_dies_after_its_echo_called_the_carrier_books_once() {
    let (cluster, _broker, js, simulators) = Cluster::start(&bus::StreamSettings::default()).await;
    let others = services_but(&cluster, "shipment");
    // Its first commit (the request) passes; its second (the echo's, after the call) dies.
    let armed = [("FAILPOINTS", "engine.before_commit=1*off->1*return")];
    let mut shipment = cluster.spawn_with("shipment", &[], &armed);
    shipment.line_starting("commerce shipment is up");
    let projection = cluster.run("projection");
    let gateway = cluster.run("gateway");
    let api = cluster.api(&gateway);

    let id = api
        .place_ok(&order("echo", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    assert!(!shipment.wait_exit().success(), "the seam killed it");
    let booked = || async { bookings_of(&api.ledger(&api.carrier).await, &id) };
    assert_eq!(booked().await, 1, "the echo called");

    let shipment = cluster.run("shipment");
    api.wait_status(&id, &["COMPLETED"]).await;
    assert_eq!(booked().await, 1, "found, not booked again");
    let stream = js.get_stream("SHIPMENTS").await.unwrap();
    let mut types = Vec::new();
    for seq in 1..=stream.cached_info().state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        if event["subject"] == id.as_str() {
            types.push(event["type"].as_str().unwrap().to_string());
        }
    }
    let count = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(count("ShipmentBookingRequested"), 1, "{types:?}");
    assert_eq!(count("ShipmentScheduled"), 1, "{types:?}");
    drop((others, shipment, projection, gateway, simulators));
}
