//! The saga end to end, in one process: `commerce up` on free ports and a temp data dir.

mod support;

use std::time::Duration;

use actors::Component;
use futures::StreamExt;
use serde_json::json;
use support::{order, scenario, warehouse, Api, Proc, ADDRESS, CARD};

fn up(data: &tempfile::TempDir) -> (Proc, String, Api) {
    support::up(data.path())
}

#[tokio::test]
async fn every_path_ends_right_and_a_poison_event_does_not_stop_the_saga() {
    let data = tempfile::tempdir().unwrap();
    // Its log goes under the data dir, so the card search below reads it too.
    let log = data.path().join("commerce.log");
    let mut up = Proc::up_logging(&["--data-dir", data.path().to_str().unwrap()], &log);
    let nats = up.line_starting("nats: ");
    let nats = nats.split_whitespace().next().unwrap().to_string();
    let api = Api::of(&up, data.path());

    // An undecodable event where the payment service listens: it goes to DLQ with a reason.
    let client = support::operator(&nats, data.path()).await;
    let js = async_nats::jetstream::new(client);
    js.publish("orders.order_created.poison", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let placed = scenario::place(&api, 10).await;
    scenario::check(&api, &placed).await;

    let dlq = js.get_stream("DLQ").await.unwrap();
    let mut messages = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap()
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    // Every consumer of ORDERS that would see it (payment, projection) dead-letters its copy.
    let mut subjects = std::collections::BTreeSet::new();
    while subjects.len() < 2 {
        let poison = messages.next().await.expect("a DLQ message").unwrap();
        let reason = poison
            .headers
            .as_ref()
            .unwrap()
            .get(bus::consumer::DLQ_REASON)
            .unwrap();
        assert!(reason.as_str().contains("undecodable"), "{reason}");
        subjects.insert(poison.subject.to_string());
    }
    assert_eq!(
        subjects.into_iter().collect::<Vec<_>>(),
        [
            "dlq.payment.orders.order_created.poison.0",
            "dlq.projection.orders.order_created.poison.0"
        ]
    );

    // Card numbers were exchanged for tokens at the edge and went nowhere else.
    support::assert_no_card_number(&js, data.path(), &api, &[CARD, scenario::DECLINED]).await;
    support::assert_no_permission_violations(data.path());
    assert!(
        std::fs::metadata(&log).unwrap().len() > 0,
        "the log was written"
    );
    up.stop();
}

#[tokio::test]
async fn the_last_units_are_never_oversold() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _, api) = up(&data);
    let before = warehouse(&api.products().await, "SKU-LAMP");
    assert_eq!(
        before, 5,
        "the seeded catalog has 5 lamps and no store has one"
    );

    let orders = (0..20).map(|i| {
        let api = api.clone();
        async move {
            api.place_ok(&order(&format!("rush-{i}"), "SKU-LAMP", 1, CARD, ADDRESS))
                .await
        }
    });
    let ids = futures::future::join_all(orders).await;
    let mut sold = 0;
    for id in &ids {
        let order = api.wait_status(id, &["COMPLETED", "CANCELLED"]).await;
        if order["order_status"] == "COMPLETED" {
            sold += 1;
        }
    }
    assert_eq!(sold, 5, "exactly the 5 lamps in stock were sold");
    assert_eq!(warehouse(&api.products().await, "SKU-LAMP"), 0);
    let ledger = api.ledger(&api.payment_gateway).await;
    assert_eq!(
        ledger["refunds"].as_array().unwrap().len(),
        15,
        "every other buyer was refunded"
    );
    up.stop();
}

#[tokio::test]
async fn bad_input_is_a_json_4xx_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _, api) = up(&data);
    let post = reqwest::Method::POST;
    let json = "application/json";
    let good = order("alice", "SKU-MUG", 1, CARD, ADDRESS);
    let with = |field: &str, value: serde_json::Value| {
        let mut o = good.clone();
        if field == "quantity" {
            o["lines"][0]["quantity"] = value;
        } else {
            o[field] = value;
        }
        serde_json::to_vec(&o).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"customer\": ".to_vec(),
            400,
            "invalid JSON",
        ),
        ("not an order", b"[1,2,3]".to_vec(), 400, "invalid JSON"),
        (
            "unknown field",
            with("coupon", json!("FREE")),
            400,
            "unknown field",
        ),
        (
            "unknown sku",
            serde_json::to_vec(&order("a", "SKU-NOPE", 1, CARD, ADDRESS)).unwrap(),
            422,
            "unknown sku",
        ),
        ("zero quantity", with("quantity", json!(0)), 422, "quantity"),
        (
            "negative quantity",
            with("quantity", json!(-2)),
            422,
            "got -2",
        ),
        (
            "huge quantity",
            with("quantity", json!(1_000_000_000_000_000_000u64)),
            422,
            "quantity",
        ),
        (
            "fractional quantity",
            with("quantity", json!(1.5)),
            400,
            "invalid JSON",
        ),
        (
            "bad card",
            with("card_number", json!("1234")),
            422,
            "card_number",
        ),
        (
            "empty address",
            with("shipping_address", json!("")),
            422,
            "shipping_address",
        ),
        ("oversized body", vec![b' '; 64 * 1024], 413, "larger than"),
    ];
    let mut placed = 0;
    for (what, body, code, needle) in cases {
        let (status, answer) = api.raw(post.clone(), "/orders", Some((json, body))).await;
        assert_eq!(status, code, "{what}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no JSON error: {answer}"));
        assert!(
            error.contains(needle),
            "{what}: {error:?} should mention {needle:?}"
        );
        placed += usize::from(status < 300);
    }
    assert_eq!(placed, 0);
    let (status, _) = api
        .raw(
            post.clone(),
            "/orders",
            Some(("text/plain", serde_json::to_vec(&good).unwrap())),
        )
        .await;
    assert_eq!(status, 415, "JSON only");

    for (path, code) in [
        ("/orders/not-a-uuid", 404),
        ("/orders/01939a6e-0000-7000-8000-000000000000", 404),
        ("/nowhere", 404),
    ] {
        let (status, answer) = api.raw(reqwest::Method::GET, path, None).await;
        assert_eq!(status, code, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let (status, answer) = api.cancel("01939a6e-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404, "cancel of an unknown order: {answer}");

    // Nothing reached the payment gateway.
    let ledger = api.ledger(&api.payment_gateway).await;
    assert_eq!(ledger["authorizations"], json!([]));

    // And the system still works: anyone may ask whether it is healthy, an operator which
    // component is up.
    let (status, health) = api.raw(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["services"]["payment"], "up", "{health}");
    let (status, health) = api
        .raw_as(None, reqwest::Method::GET, "/health", None)
        .await;
    assert_eq!((status, health), (200, json!({ "status": "ok" })));
    let id = api.place_ok(&good).await;
    api.wait_status(&id, &["COMPLETED"]).await;
    up.stop();
}

#[tokio::test]
async fn the_cli_places_shows_and_cancels_and_every_service_is_listed() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, _api) = up(&data);
    let dir = data.path().to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = support::commerce()
            .args(args)
            .args(["--data-dir", dir])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), stdout, stderr)
    };
    let order_of = |stdout: &str| -> serde_json::Value {
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };

    let (ok, stdout, stderr) = cli(&["order", "place", "--item", "SKU-MUG:2", "--wait"]);
    assert!(ok, "{stderr}");
    let placed = order_of(&stdout);
    assert!(
        ["CONFIRMED", "SHIPPED", "COMPLETED"].contains(&placed["order_status"].as_str().unwrap()),
        "{placed}"
    );

    let (ok, stdout, stderr) = cli(&[
        "order",
        "place",
        "--item",
        "SKU-TSHIRT",
        "--address",
        "2 Quay [hold]",
        "--wait",
    ]);
    assert!(ok, "{stderr}");
    let held = order_of(&stdout);
    assert_eq!(held["order_status"], "CONFIRMED");
    let id = held["order_id"].as_str().unwrap();
    let (ok, stdout, stderr) = cli(&["order", "cancel", id]);
    assert!(ok, "{stderr}");
    assert!(["CANCELLING", "CANCELLED"].contains(&order_of(&stdout)["status"].as_str().unwrap()));
    support::wait_until("the held order is cancelled", || async {
        let (_, stdout, _) = cli(&["order", "show", id]);
        order_of(&stdout)["order_status"] == "CANCELLED"
    })
    .await;

    let (ok, _, stderr) = cli(&["order", "place", "--item", "SKU-NOPE"]);
    assert!(!ok);
    assert!(stderr.contains("unknown sku"), "{stderr}");
    let (ok, _, stderr) = cli(&["order", "show", "01939a6e-0000-7000-8000-000000000000"]);
    assert!(!ok);
    assert!(stderr.contains("no order"), "{stderr}");

    let (ok, stdout, stderr) = cli(&["status"]);
    assert!(ok, "{stderr}");
    for service in Component::with_status().map(Component::name) {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(service) && l.contains("outbox depth"))
            .unwrap_or_else(|| panic!("status shows {service}'s outbox:\n{stdout}"));
        assert!(!line.contains("not running"), "{line}");
    }

    // What `nats micro ls` shows: every service and the projection answer $SRV.INFO.
    let client = support::operator(&nats, data.path()).await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.INFO", inbox, "".into())
        .await
        .unwrap();
    let mut names = std::collections::BTreeSet::new();
    while names.len() < Component::with_status().count() {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("every service answers $SRV.INFO")
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        names.insert(info["name"].as_str().unwrap().to_string());
    }
    let expected: std::collections::BTreeSet<String> =
        Component::with_status().map(|c| c.to_string()).collect();
    assert_eq!(names, expected);
    up.stop();
}

#[tokio::test]
async fn a_cancel_that_overtakes_a_failing_payment_ends_refunded() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    // The gateway is down: OrderCreated waits for retries while the customer cancels.
    api.set_faults(&api.payment_gateway, json!({ "outage": true }))
        .await;
    let id = api
        .place_ok(&order("olga", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    support::wait_until("payment tried the gateway", || async {
        api.ledger(&api.payment_gateway).await["calls"]
            .as_u64()
            .unwrap()
            > 0
    })
    .await;
    // Each put-off handling is on record (`ops.retry.payment.<id>` in OPS), as `commerce order
    // trace` and a chaos report's stuck saga show it.
    let js = async_nats::jetstream::new(support::operator(&nats, data.path()).await);
    support::wait_until("payment's retry on record", || async {
        let retries = actors::admin::history::retries(&js, &id).await.unwrap();
        retries
            .iter()
            .any(|r| r.service == "payment" && r.event_type == "OrderCreated" && r.attempt >= 1)
    })
    .await;
    let (status, body) = api.cancel(&id).await;
    assert_eq!(status, 202, "{body}");
    let order = api.wait_status(&id, &["CANCELLED"]).await;
    assert_eq!(order["cancel_reason"], "cancelled by the customer");

    // The gateway recovers; the late OrderCreated must not leave a charge standing.
    api.set_faults(&api.payment_gateway, json!({})).await;
    api.wait_refunded(&id).await;
    let ledger = api.ledger(&api.payment_gateway).await;
    let charges = ledger["authorizations"].as_array().unwrap();
    assert_eq!(charges.len(), 1, "charged once: {ledger}");
    assert_eq!(
        ledger["refunds"].as_array().unwrap().len(),
        1,
        "refunded once: {ledger}"
    );
    let before = warehouse(&api.products().await, "SKU-MUG");
    assert_eq!(
        before, 10_000,
        "nothing was reserved for the cancelled order"
    );
    up.stop();
}

#[tokio::test]
async fn the_live_read_model_equals_one_rebuilt_from_scratch_despite_duplicates() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    let placed = scenario::place(&api, 5).await;
    scenario::check(&api, &placed).await;

    // Republish copies of stored events under new Nats-Msg-Ids: the broker keeps them, so every
    // consumer (and the rebuild) sees them twice.
    let client = support::operator(&nats, data.path()).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut copies = 0;
    for stream in ["ORDERS", "PAYMENTS", "SHIPMENTS"] {
        let stream = js.get_stream(stream).await.unwrap();
        let mut messages = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap()
            .fetch()
            .max_messages(20)
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = messages.next().await {
            let subject = message.subject.to_string();
            let ack = js.publish(subject, message.payload.clone()).await.unwrap();
            ack.await.unwrap();
            copies += 1;
        }
    }
    assert!(copies >= 40, "{copies} copies injected");
    // The last message of ORDERS (a copy) deleted: its sequence stays the stream's last, and the
    // rebuild must not wait for it.
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    let last = orders.info().await.unwrap().state.last_sequence;
    assert!(orders.delete_message(last).await.unwrap());
    assert_eq!(orders.info().await.unwrap().state.last_sequence, last);
    let ids = placed.all();
    support::projection_caught_up(&js).await;
    let live = support::rows(&api, &ids).await;
    support::assert_no_double_apply(&live);
    let live_sagas = sagas(&client).await;
    assert!(live_sagas.total >= ids.len() as u64, "{live_sagas:?}");
    let counts = |s: &actors::projection::api::OpenSagas| {
        (
            s.open,
            s.stuck,
            s.total,
            s.by_status.clone(),
            s.oldest.clone(),
        )
    };

    // Twice: the second one fills a new generation while the first one's predecessor is swept.
    for generation in [1, 2] {
        let out = support::commerce()
            .args(["projection", "rebuild", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("read model rebuilt: generation {generation}")),
            "{stdout}"
        );
        let rebuilt = support::rows(&api, &ids).await;
        for id in &ids {
            assert_eq!(
                rebuilt[id], live[id],
                "order {id}: rebuilt row differs from the live one"
            );
        }
        // The saga tracker took the rebuilt rows' sagas: the same counts as the live rows'.
        let rebuilt_sagas = sagas(&client).await;
        assert_eq!(counts(&rebuilt_sagas), counts(&live_sagas));
    }
    // An order after the switch: live batches write its saga to the rebuilt generation's index.
    let later = api
        .place_ok(&order("ines", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&later, &["COMPLETED"]).await;
    support::projection_caught_up(&js).await;
    let before_restart = sagas(&client).await;
    assert_eq!(
        before_restart.total,
        live_sagas.total + 1,
        "{before_restart:?}"
    );
    up.stop();

    // Started again, the tracker reads that generation's index, not every row.
    let log = data.path().join("again.log");
    let args = ["--data-dir", data.path().to_str().unwrap()];
    let (mut up, nats, _) = support::started(Proc::up_logging(&args, &log), data.path());
    let client = support::operator(&nats, data.path()).await;
    assert_eq!(counts(&sagas(&client).await), counts(&before_restart));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("sagas read from the index"), "{logged}");
    assert!(!logged.contains("every row's saga read once"), "{logged}");
    up.stop();
}

async fn sagas(client: &async_nats::Client) -> actors::projection::api::OpenSagas {
    actors::rpc::call::<actors::projection::api::Sagas>(client, Component::Projection, &())
        .await
        .expect("the projection reports its sagas")
}

#[tokio::test]
async fn a_recovered_service_does_not_retry_what_it_dead_lettered() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let start = || {
        let mut cmd = support::commerce();
        cmd.env("COMMERCE_MAX_DELIVER", "2")
            .args(["up", "--data-dir", dir]);
        Proc::spawn(cmd)
    };
    let mut first = start();
    let nats = first.line_starting("nats: ");
    let nats = nats.split_whitespace().next().unwrap().to_string();
    let api = Api::of(&first, data.path());
    // The gateway is down for good: OrderCreated is dead-lettered after 2 deliveries.
    api.set_faults(&api.payment_gateway, json!({ "outage": true }))
        .await;
    let stuck = api
        .place_ok(&order("una", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    let client = support::operator(&nats, data.path()).await;
    let js = async_nats::jetstream::new(client);
    let subject = format!("dlq.payment.orders.order_created.{stuck}.0");
    support::wait_until("OrderCreated is dead-lettered", || async {
        let mut dlq = js.get_stream("DLQ").await.unwrap();
        dlq.info().await.unwrap().state.messages > 0
            && dlq.get_last_raw_message_by_subject(&subject).await.is_ok()
    })
    .await;
    first.stop();

    // Lose the payment database; the next start rebuilds it from the stream.
    std::fs::remove_dir_all(data.path().join("payment")).unwrap();
    let mut second = start();
    let api = Api::of(&second, data.path());
    let fine = api
        .place_ok(&order("vera", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&fine, &["COMPLETED"]).await;
    // The recovered payment service re-read ORDERS from the start, yet did not charge the
    // dead-lettered order weeks later.
    let ledger = api.ledger(&api.payment_gateway).await;
    let charged: Vec<&str> = ledger["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(charged, [fine.as_str()], "{ledger}");
    second.stop();
    // Recovery replayed its stream and its dead letters within its permissions.
    support::assert_no_permission_violations(data.path());
}

#[tokio::test]
async fn a_card_form_token_pays_and_a_bad_payment_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _, api) = up(&data);
    // What a card form does in the browser: the card goes to the payment gateway only.
    let card: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/tokens", api.payment_gateway))
        .json(&json!({ "card_number": CARD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (card["brand"].as_str(), card["last4"].as_str()),
        (Some("visa"), Some("4242"))
    );
    let token = card["token"].as_str().unwrap();
    assert!(
        token.starts_with("tok_") && !token.contains(CARD),
        "{token}"
    );

    let mut paid_by_token = order("tina", "SKU-MUG", 1, CARD, ADDRESS);
    paid_by_token["payment_token"] = json!(token);
    paid_by_token.as_object_mut().unwrap().remove("card_number");
    let id = api.place_ok(&paid_by_token).await;
    let row = api.wait_status(&id, &["CONFIRMED", "COMPLETED"]).await;
    assert_eq!(row["payment_status"], "APPROVED", "{row}");

    let mut unknown = paid_by_token.clone();
    unknown["payment_token"] = json!("tok_nobody");
    let mut both = paid_by_token.clone();
    both["card_number"] = json!(CARD);
    let mut neither = paid_by_token.clone();
    neither.as_object_mut().unwrap().remove("payment_token");
    for (body, needle) in [
        (unknown, "unknown payment_token"),
        (both, "exactly one"),
        (neither, "exactly one"),
    ] {
        let (status, answer) = api.place(&body, None).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    up.stop();
}
