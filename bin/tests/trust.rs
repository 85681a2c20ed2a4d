//! The trust boundary, tried as an attacker on the same host would: a NATS client without
//! credentials or with a component's own, and an HTTP client without the right token.

mod support;

use std::time::Duration;

use support::{connect_as, wait_until, Api, Proc};
use tokio::sync::mpsc;

fn up(data: &tempfile::TempDir) -> (Proc, String, Api) {
    support::up(data.path())
}

/// A connection as `identity` and what the server said it refused.
async fn watched(
    nats: &str,
    data: &std::path::Path,
    identity: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let seed = std::fs::read_to_string(data.join(format!("credentials/{identity}.nk"))).unwrap();
    let (tx, refusals) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix(bus::inbox_prefix(identity))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats)
        .await
        .unwrap();
    (client, refusals)
}

/// Wait for the server's permission error for a publish to `subject`.
async fn refused(refusals: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    refused_to(refusals, "Publish", subject).await
}

/// Wait for the server's permission error for a `what` ("Publish", "Subscription") to `subject`.
async fn refused_to(refusals: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
    loop {
        let said = tokio::time::timeout(support::WAIT, refusals.recv())
            .await
            .unwrap_or_else(|_| panic!("no permission error for {subject}"))
            .expect("connection open");
        if said.contains(&wanted) {
            return;
        }
    }
}

#[tokio::test]
async fn the_bus_admits_only_known_identities_each_to_its_own_subjects() {
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, _api) = up(&data);
    let operator = support::operator(&nats, data.path()).await;
    let seen = async_nats::jetstream::new(operator);
    // Where each stream ends before anyone tries anything (its service's marker is in it).
    let mut ends = std::collections::BTreeMap::new();
    for stream in ["SHIPMENTS", "ORDERS", "PAYMENTS"] {
        let mut stream = seen.get_stream(stream).await.unwrap();
        ends.insert(
            stream.cached_info().config.name.clone(),
            last_sequence(&mut stream).await,
        );
    }

    // No credentials: refused at connect.
    let anonymous = async_nats::ConnectOptions::new()
        .connect(&nats)
        .await
        .expect_err("an anonymous client is refused");
    assert_eq!(
        anonymous.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{anonymous}"
    );

    // The payment service's identity cannot forge a shipment event nor delete a stream.
    let (payment, mut refusals) = watched(&nats, data.path(), "payment").await;
    let forged = "shipments.shipment_failed.01939a6e-0000-7000-8000-000000000001";
    payment.publish(forged, "{}".into()).await.unwrap();
    payment.flush().await.unwrap();
    refused(&mut refusals, forged).await;
    // Nor pick the partition of one of its own (the stream appends it).
    let partitioned = "payments.payment_approved.01939a6e-0000-7000-8000-000000000001.0";
    payment.publish(partitioned, "{}".into()).await.unwrap();
    payment.flush().await.unwrap();
    refused(&mut refusals, partitioned).await;
    let js = async_nats::jetstream::new(payment.clone());
    let _ = tokio::time::timeout(Duration::from_secs(2), js.delete_stream("SHIPMENTS")).await;
    refused(&mut refusals, "$JS.API.STREAM.DELETE.SHIPMENTS").await;
    // Nor call another service's endpoint.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        payment.request("commerce.order.cancel", "x".into()),
    )
    .await;
    refused(&mut refusals, "commerce.order.cancel").await;
    // Nor read a stream from its start: its replays connect as `payment-replayer` (below).
    payment
        .publish("$JS.API.CONSUMER.CREATE.PAYMENTS", "{}".into())
        .await
        .unwrap();
    payment.flush().await.unwrap();
    refused(&mut refusals, "$JS.API.CONSUMER.CREATE.PAYMENTS").await;

    // That identity reads the payment service's stream from its start (at the end, below), and
    // does nothing else: no event, no other stream, no consumer of someone else's.
    let (replayer, mut refusals) = watched(&nats, data.path(), "payment-replayer").await;
    let replays = async_nats::jetstream::new(replayer.clone());
    let event = "payments.payment_approved.01939a6e-0000-7000-8000-000000000001";
    replayer.publish(event, "{}".into()).await.unwrap();
    replayer.flush().await.unwrap();
    refused(&mut refusals, event).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), replays.get_stream("SHIPMENTS")).await;
    refused(&mut refusals, "$JS.API.STREAM.INFO.SHIPMENTS").await;
    // Nor change a consumer it did not make: a named create could rewind payment's own, and a
    // create the server names takes a name in its body all the same (this one would turn the
    // order service's consumer of PAYMENTS into one the server deletes when idle). Nor pull
    // from one.
    let named = "$JS.API.CONSUMER.CREATE.PAYMENTS.payment";
    replayer.publish(named, "{}".into()).await.unwrap();
    let takeover = serde_json::json!({
        "stream_name": "PAYMENTS",
        "config": { "name": "order", "ack_policy": "explicit", "inactive_threshold": 1_000_000_000 },
    });
    let unnamed = "$JS.API.CONSUMER.CREATE.PAYMENTS";
    replayer
        .publish(unnamed, takeover.to_string().into())
        .await
        .unwrap();
    let pull = "$JS.API.CONSUMER.MSG.NEXT.PAYMENTS.order";
    replayer.publish(pull, "1".into()).await.unwrap();
    replayer.flush().await.unwrap();
    for subject in [named, unnamed, pull] {
        refused(&mut refusals, subject).await;
    }

    // The gateway's identity publishes no event.
    let (gateway, mut refusals) = watched(&nats, data.path(), "gateway").await;
    let event = "orders.order_created.01939a6e-0000-7000-8000-000000000001";
    gateway.publish(event, "{}".into()).await.unwrap();
    gateway.flush().await.unwrap();
    refused(&mut refusals, event).await;
    // Nor calls an operator endpoint.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        gateway.request("commerce.projection.rebuild", "".into()),
    )
    .await;
    refused(&mut refusals, "commerce.projection.rebuild").await;

    // Nothing of it reached a stream: the operator sees SHIPMENTS and ORDERS as they were.
    for name in ["SHIPMENTS", "ORDERS"] {
        let mut stream = seen
            .get_stream(name)
            .await
            .expect("the stream is still there");
        assert_eq!(last_sequence(&mut stream).await, ends[name], "{name}");
    }
    // And the payment service's own publishing still works.
    let own = connect_as(&nats, data.path(), "payment").await;
    let own = async_nats::jetstream::new(own);
    let ack = own
        .publish(
            "payments.probe.01939a6e-0000-7000-8000-000000000001",
            "{}".into(),
        )
        .await
        .unwrap();
    ack.await.expect("stored");
    // Only the probe, in the partition the stream gave it: the forged one never landed.
    let mut payments = seen.get_stream("PAYMENTS").await.unwrap();
    assert_eq!(last_sequence(&mut payments).await, ends["PAYMENTS"] + 1);
    let events = support::stream_events(&seen, "PAYMENTS").await;
    let subjects: Vec<&str> = events.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        ["payments.probe.01939a6e-0000-7000-8000-000000000001.0"]
    );
    // Which payment's replays read, as `payment-replayer` (its credentials beside payment's).
    let seed = data.path().join("credentials/payment-replayer.nk");
    let login = bus::Login {
        replay: Some(bus::auth::Credentials::from_file(&seed).unwrap()),
        ..bus::Login::open(&nats, "payment")
    };
    let mut replay = bus::replay::Replay::open(&login, "PAYMENTS", "")
        .await
        .expect("payment-replayer reads PAYMENTS");
    let mut read = replay.next().await.expect("a message");
    while bus::term::is_term_subject(&read.message.subject) {
        read = replay.next().await.expect("the probe, after the markers");
    }
    assert_eq!(
        (read.sequence, read.pending),
        (events[0].sequence, 0),
        "the probe, last"
    );
}

/// `stream`'s last sequence now.
async fn last_sequence(stream: &mut async_nats::jetstream::stream::Stream) -> u64 {
    stream.info().await.unwrap().state.last_sequence
}

/// Publish `envelope` on `subject` as the broker's `identity` would (with its message id).
async fn publish_as(js: &async_nats::jetstream::Context, subject: &str, envelope: &bus::Envelope) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    let payload = envelope.to_json().unwrap();
    js.publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .unwrap()
        .await
        .expect("stored");
}

/// The dead letters on `subject`: original message id → reason.
async fn dead_letters(
    js: &async_nats::jetstream::Context,
    subject: &str,
) -> std::collections::BTreeMap<String, String> {
    use futures::StreamExt;
    let mut reasons = std::collections::BTreeMap::new();
    let config = async_nats::jetstream::consumer::pull::OrderedConfig {
        filter_subject: subject.to_string(),
        ..Default::default()
    };
    let Ok(consumer) = js.create_consumer_on_stream(config, "DLQ").await else {
        return reasons;
    };
    let Ok(mut messages) = consumer.messages().await else {
        return reasons;
    };
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.to_string()).unwrap_or_default();
        reasons.insert(
            header(bus::consumer::DLQ_ORIGINAL_MSG_ID),
            header(bus::consumer::DLQ_REASON),
        );
    }
    reasons
}

#[tokio::test]
async fn an_event_is_believed_only_where_it_belongs_and_when_it_is_possible() {
    use actors::events::{PaymentEvent, ShipmentEvent};
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, api) = up(&data);
    let id = api
        .place_ok(&support::order(
            "olga",
            "SKU-MUG",
            1,
            support::CARD,
            support::ADDRESS,
        ))
        .await;
    api.wait_status(&id, &["COMPLETED"]).await;
    let other = api
        .place_ok(&support::order(
            "petra",
            "SKU-MUG",
            1,
            support::CARD,
            support::ADDRESS,
        ))
        .await;
    api.wait_status(&other, &["COMPLETED"]).await;
    let ledger = api.ledger(&api.payment_gateway).await;

    // Even the shipment service's own identity, on its own stream, is not believed:
    let shipment = async_nats::jetstream::new(connect_as(&nats, data.path(), "shipment").await);
    let failed = ShipmentEvent::ShipmentFailed {
        reason: "forged".into(),
        booking_unknown: false,
    };
    let subject = format!("shipments.shipment_failed.{id}");
    // 1. impossible in the order's state (its parcel has left);
    let impossible = actors::codec::encode(&failed, &id, None).unwrap();
    publish_as(&shipment, &subject, &impossible).await;
    // 2. naming another order than its subject does;
    let mismatched = actors::codec::encode(&failed, &other, None).unwrap();
    publish_as(&shipment, &subject, &mismatched).await;
    // 3. from another domain than the stream it is on.
    let declined = PaymentEvent::PaymentDeclined {
        amount_cents: 200,
        reason: "forged".into(),
    };
    let mut cross = actors::codec::encode(&declined, &id, None).unwrap();
    cross.event_type = "ShipmentFailed".into();
    cross.data = serde_json::json!({ "reason": "forged", "booking_unknown": false });
    publish_as(&shipment, &subject, &cross).await;

    // Each lands in DLQ from the order service, with its reason.
    let operator = support::operator(&nats, data.path()).await;
    let js = async_nats::jetstream::new(operator);
    // Filed under the stored subject: the stream appended the order's partition.
    let dead = format!("dlq.order.{subject}.*");
    let deadline = std::time::Instant::now() + support::WAIT;
    let reasons = loop {
        let reasons = dead_letters(&js, &dead).await;
        if reasons.len() >= 3 {
            break reasons;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = |envelope: &bus::Envelope| reasons[&envelope.id.to_string()].clone();
    assert!(reason(&impossible).contains("impossible"), "{reasons:?}");
    assert!(reason(&impossible).contains("COMPLETED"), "{reasons:?}");
    assert!(reason(&mismatched).contains("misplaced"), "{reasons:?}");
    assert!(reason(&cross).contains("misplaced"), "{reasons:?}");

    // The orders are unchanged and no money moved.
    for order in [&id, &other] {
        let (status, row) = api.get(order).await;
        assert_eq!(status, 200);
        assert_eq!(row["order_status"], "COMPLETED", "{row}");
    }
    assert_eq!(api.ledger(&api.payment_gateway).await, ledger);

    // A rebuild believes no more than the live projection: the same rows.
    let ids = [id.clone(), other.clone()];
    support::projection_caught_up(&js).await;
    let live = support::rows(&api, &ids).await;
    let (rebuilt, out) = support::cli(data.path(), &["projection", "rebuild"]);
    assert!(
        rebuilt && out.contains("read model rebuilt: generation 1"),
        "{out}"
    );
    assert_eq!(support::rows(&api, &ids).await, live, "{out}");
}

#[tokio::test]
async fn a_customer_sees_only_their_own_orders_and_operator_surfaces_need_an_operator() {
    use reqwest::Method;
    let data = tempfile::tempdir().unwrap();
    let (_up, _nats, api) = up(&data);
    let (ann, bob) = (api.customer("ann"), api.customer("bob"));
    let json =
        |value: serde_json::Value| Some(("application/json", value.to_string().into_bytes()));
    let form = serde_json::json!({
        "lines": [{ "sku": "SKU-MUG", "quantity": 1 }],
        "card_number": support::CARD,
        "shipping_address": support::ADDRESS,
    });

    // No token, or one this system did not sign: 401, and nothing placed.
    let (status, body) = api
        .raw_as(None, Method::POST, "/orders", json(form.clone()))
        .await;
    assert_eq!(status, 401, "{body}");
    let elsewhere = tempfile::tempdir().unwrap();
    let forged = Api::new(&api.base, "", "", elsewhere.path()).operator();
    let (status, body) = api
        .raw_as(Some(&forged), Method::POST, "/orders", json(form.clone()))
        .await;
    assert_eq!(status, 401, "{body}");

    // Ann's token places Ann's order; Bob's cannot place one for Ann.
    let (status, placed) = api
        .raw_as(Some(&ann), Method::POST, "/orders", json(form.clone()))
        .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["customer"], "ann");
    let id = placed["order_id"].as_str().unwrap().to_string();
    let mut as_ann = form.clone();
    as_ann["customer"] = "ann".into();
    let (status, body) = api
        .raw_as(Some(&bob), Method::POST, "/orders", json(as_ann))
        .await;
    assert_eq!(status, 403, "{body}");

    // Ann reads her order; to Bob it does not exist, read, composed or cancelled.
    let path = format!("/orders/{id}");
    support::wait_until("Ann sees her order", || async {
        api.raw_as(Some(&ann), Method::GET, &path, None).await.0 == 200
    })
    .await;
    let composed = format!("/orders/{id}/composed");
    let cancel = format!("/orders/{id}/cancel");
    for (method, path) in [
        (Method::GET, &path),
        (Method::GET, &composed),
        (Method::POST, &cancel),
    ] {
        let (status, body) = api.raw_as(Some(&bob), method.clone(), path, None).await;
        assert_eq!(status, 404, "{method} {path} as Bob: {body}");
        let (status, body) = api.raw_as(None, method.clone(), path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
    }
    let (status, body) = api.raw_as(Some(&ann), Method::GET, &composed, None).await;
    assert_eq!(status, 200, "{body}");

    // The operator surface of the API: guards=false, for an operator only.
    let unguarded = format!("{composed}?guards=false");
    let (status, body) = api.raw_as(Some(&ann), Method::GET, &unguarded, None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = api.raw(Method::GET, &unguarded, None).await;
    assert_eq!(status, 200, "{body}");

    // Bob's cancel changed nothing (the order service's own state says so); Ann's goes through.
    let (_, composed) = api.raw(Method::GET, &composed, None).await;
    let state = composed["order"]["status"].as_str().unwrap();
    assert!(!["CANCELLING", "CANCELLED"].contains(&state), "{composed}");
    let (status, body) = api.raw_as(Some(&ann), Method::POST, &cancel, None).await;
    assert!(status == 202 || status == 409, "{body}");

    // No CORS grant to any origin; JSON bodies only.
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.base))
        .header("Origin", "https://evil.example")
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let (status, body) = api
        .raw_as(
            Some(&ann),
            Method::POST,
            "/orders",
            Some(("text/plain", form.to_string().into_bytes())),
        )
        .await;
    assert_eq!(status, 415, "{body}");
}

/// Whoever may create a consumer on a stream may have it deliver the stream's messages to any
/// subject, an endpoint's too, and a service writes what it likes into its own stream. So an
/// endpoint answers only requests: a stream's deliveries (their reply is `$JS.ACK.…`) change
/// nothing.
#[tokio::test]
async fn an_endpoint_acts_on_requests_not_on_what_a_stream_delivers_to_it() {
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, api) = up(&data);
    let held = "5 Harbor Road [hold]";
    let target = api
        .place_ok(&support::order("victim", "SKU-MUG", 1, support::CARD, held))
        .await;
    let witness = api
        .place_ok(&support::order(
            "witness",
            "SKU-MUG",
            1,
            support::CARD,
            held,
        ))
        .await;
    for id in [&target, &witness] {
        api.wait_status(id, &["CONFIRMED"]).await;
    }

    // The payment service writes an operator's cancel of the target into its own stream, and
    // its replay identity has a consumer deliver it to the order service's cancel endpoint, in
    // the group the endpoints listen in (the micro protocol's).
    let ask = serde_json::json!({ "order_id": target }).to_string();
    let name = &pushed_by_payment(
        &nats,
        &data,
        &target,
        ask,
        "commerce.order.cancel",
        Some("q"),
    )
    .await;
    // The order service listens there, so the broker delivers it (the operator sees how far).
    let operator = async_nats::jetstream::new(support::operator(&nats, data.path()).await);
    let payments = &operator.get_stream("PAYMENTS").await.unwrap();
    wait_until(
        "the forged cancel delivered to the endpoint",
        move || async move {
            let info = payments.consumer_info(name).await.unwrap();
            info.delivered.stream_sequence > 0
        },
    )
    .await;

    // A real cancel, asked after it on the same endpoint, is handled after it: once it shows,
    // the forged one would have too.
    let (code, body) = api.cancel(&witness).await;
    assert!(code < 300, "{code} {body}");
    api.wait_status(&witness, &["CANCELLED"]).await;
    let (_, target) = api.get(&target).await;
    assert_eq!(target["order_status"], "CONFIRMED", "{target}");
}

/// A push consumer delivers wherever its maker says, once someone subscribes to exactly that
/// subject, and a stream capturing it stores what it delivers (under the message's own
/// subject). No identity may subscribe where a stream stores, not even the operator following
/// events (it reads them through JetStream), so such a consumer never delivers.
#[tokio::test]
async fn a_push_consumer_cannot_write_into_another_stream() {
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, _api) = up(&data);
    let order = "01939a6e-0000-7000-8000-000000000001";

    // The operator follows the shipments through JetStream, as `nats sub --new 'shipments.>'`
    // does: a consumer delivering to its inbox.
    let (operator, mut refusals) = watched(&nats, data.path(), "operator").await;
    let js = async_nats::jetstream::new(operator.clone());
    let mut shipments = js.get_stream("SHIPMENTS").await.unwrap();
    let _following = shipments
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let stored = shipments.info().await.unwrap().state.last_sequence;

    // The payment service stores an event in its own stream, and its replay identity has a
    // consumer deliver it to a subject SHIPMENTS stores.
    let deliver = format!("shipments.shipment_failed.{order}");
    let name = pushed_by_payment(&nats, &data, order, "{}".into(), &deliver, None).await;

    // Listening there, exactly or not, is refused...
    for subject in [deliver.as_str(), "shipments.>"] {
        let _listening = operator.subscribe(subject.to_string()).await.unwrap();
        operator.flush().await.unwrap();
        refused_to(&mut refusals, "Subscription", subject).await;
    }
    // ...so the consumer has delivered nothing, and SHIPMENTS holds what it held.
    let info = js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .consumer_info(&name)
        .await
        .unwrap();
    assert!(!info.push_bound, "{info:?}");
    assert_eq!(info.delivered.stream_sequence, 0, "{info:?}");
    assert_eq!(info.num_pending, 1, "{info:?}");
    let now = shipments.info().await.unwrap().state.last_sequence;
    assert_eq!(now, stored, "SHIPMENTS stored what payment delivered");
}

/// The payment service stores `body` in its own stream under `order`'s subject, and its replay
/// identity has a push consumer deliver it to `deliver` (in `group`, if any): that consumer's
/// name.
async fn pushed_by_payment(
    nats: &str,
    data: &tempfile::TempDir,
    order: &str,
    body: String,
    deliver: &str,
    group: Option<&str>,
) -> String {
    let payment = async_nats::jetstream::new(connect_as(nats, data.path(), "payment").await);
    let forged = format!("payments.forged.{order}");
    payment
        .publish(forged.clone(), body.into())
        .await
        .unwrap()
        .await
        .expect("stored in PAYMENTS");
    let replayer =
        async_nats::jetstream::new(connect_as(nats, data.path(), "payment-replayer").await);
    let consumer = replayer
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            // One of the names it may make consumers under (`bus::replay`).
            name: Some("payment-replayer-0".into()),
            deliver_subject: deliver.into(),
            deliver_group: group.map(Into::into),
            filter_subject: format!("{forged}.>"),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("the broker lets it make such a consumer");
    consumer.cached_info().name.clone()
}

/// A direct get answers with the stored message itself, headers and body, to whatever reply
/// subject the asker names: the payment service could have written a shipment event under its
/// own lease key and asked for it back on a shipment subject, for `SHIPMENTS` to store as if the
/// shipment service had published it. No component may ask one, and the lease bucket answers
/// none.
#[tokio::test]
async fn a_lease_cannot_be_read_back_into_another_stream() {
    let data = tempfile::tempdir().unwrap();
    let (_up, nats, _api) = up(&data);
    let (payment, mut refusals) = watched(&nats, data.path(), "payment").await;
    let leases = async_nats::jetstream::new(payment.clone())
        .get_key_value(bus::lease::LEASES_BUCKET)
        .await
        .unwrap();
    let forged = r#"{"specversion":"1.0","source":"shipment","type":"ShipmentFailed"}"#;
    leases.put("payment.forged", forged.into()).await.unwrap();
    let get = "$JS.API.DIRECT.GET.KV_LEASES.$KV.LEASES.payment.forged";
    let reply = "shipments.shipment_failed.01939a6e-0000-7000-8000-000000000001";
    payment
        .publish_with_reply(get, reply, "".into())
        .await
        .unwrap();
    payment.flush().await.unwrap();
    refused(&mut refusals, get).await;

    // Whoever asks, the bucket does not answer with the message.
    let operator = support::operator(&nats, data.path()).await;
    match tokio::time::timeout(Duration::from_secs(5), operator.request(get, "".into())).await {
        Ok(Err(e)) => assert_eq!(e.kind(), async_nats::RequestErrorKind::NoResponders, "{e}"),
        Ok(Ok(answer)) => panic!("the bucket answered a direct get: {answer:?}"),
        Err(_) => panic!("no answer, not even \"no responders\""),
    }
}
