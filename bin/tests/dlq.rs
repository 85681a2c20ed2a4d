//! The dead-letter queue is not a grave: `commerce dlq ls | show | replay | discard` against the
//! real system, a refund that reached DLQ re-driven to exact money, and a database loss that
//! does not turn a dead-lettered compensation into a done one.

mod support;

use actors::engine::api::{Replay, ReplayOutcome, ReplayRequest};
use actors::rpc::call;
use actors::Component;
use bus::dlq::{DeadLetters, Filter};
use serde_json::{json, Value};
use support::{cli, order, Api, Proc, CARD};

/// Parcels to this address are booked and never picked up: the order can still be cancelled.
const HELD: &str = "5 Harbor Road [hold]";

/// Give up after three deliveries, quickly; a breaker that never trips (each replay below
/// reaches the gateway, and a healed gateway answers at once).
const QUICK_DLQ: &[(&str, &str)] = &[
    ("COMMERCE_MAX_DELIVER", "3"),
    ("COMMERCE_RETRY_BACKOFF_MS", "[100, 200]"),
    ("COMMERCE_RESILIENCE__BREAKER__FAILURES_PER_WINDOW", "0"),
    ("COMMERCE_RESILIENCE__BREAKER__MINIMUM_CALLS", "1000"),
    // A saga open a second after its last event is stuck (the sweep re-drives it).
    ("COMMERCE_STUCK_AFTER_SECS", "1"),
];

fn up(data: &tempfile::TempDir) -> (Proc, String, Api) {
    let mut cmd = support::commerce();
    cmd.envs(QUICK_DLQ.iter().copied())
        .args(["up", "--data-dir"])
        .arg(data.path());
    support::started(Proc::spawn(cmd), data.path())
}

/// `n` paid orders, confirmed and held at the depot, then cancelled while the payment gateway
/// is down: each refund (payment's reaction to `OrderCancelled`) fails `max_deliver` times and
/// goes to DLQ. Returns each order id with its DLQ entry's sequence.
async fn refunds_dead_lettered(
    api: &Api,
    js: &async_nats::jetstream::Context,
    n: usize,
) -> Vec<(String, u64)> {
    let mut ids = Vec::new();
    for i in 0..n {
        let held = order(&format!("rita-{i}"), "SKU-MUG", 2, CARD, HELD);
        ids.push(api.place_ok(&held).await);
    }
    for id in &ids {
        let confirmed = api.wait_status(id, &["CONFIRMED"]).await;
        assert_eq!(confirmed["payment_status"], "APPROVED", "{confirmed}");
    }
    api.set_faults(&api.payment_gateway, json!({ "outage": true }))
        .await;
    let mut dead = Vec::new();
    for id in ids {
        let (status, body) = api.cancel(&id).await;
        assert_eq!(status, 202, "{body}");
        api.wait_status(&id, &["CANCELLED"]).await;
        let letter = support::dead_letter(js, "payment", &id).await;
        assert_eq!(letter.subject, format!("orders.order_cancelled.{id}.0"));
        let event = letter.event.as_ref().expect("the payload is an event");
        assert_eq!(event.event_type, "OrderCancelled");
        assert!(
            letter.reason.contains("exhausted after 3 deliveries"),
            "{}",
            letter.reason
        );
        dead.push((id, letter.seq));
    }
    dead
}

/// The order's authorizations and refunds at the payment gateway.
async fn money(api: &Api, id: &str) -> (Vec<Value>, Vec<Value>) {
    let ledger = api.ledger(&api.payment_gateway).await;
    let of = |kind: &str| -> Vec<Value> {
        ledger[kind]
            .as_array()
            .expect(kind)
            .iter()
            .filter(|entry| entry["order_id"] == id)
            .cloned()
            .collect()
    };
    (of("authorizations"), of("refunds"))
}

/// The order was charged once and refunded once, for exactly what was charged.
async fn assert_refunded_exactly(api: &Api, id: &str) {
    let (charges, refunds) = money(api, id).await;
    assert_eq!(charges.len(), 1, "charged once: {charges:?}");
    assert_eq!(refunds.len(), 1, "refunded once: {refunds:?}");
    assert_eq!(charges[0]["status"], "approved");
    assert_eq!(
        refunds[0]["amount_cents"], charges[0]["amount_cents"],
        "the refund is the charge"
    );
    support::wait_until("the read model shows the refund", || async {
        api.get(id).await.1["payment_status"] == "REFUNDED"
    })
    .await;
}

#[tokio::test]
async fn a_refund_sent_to_dlq_while_the_gateway_was_down_is_re_driven_by_replay_to_exact_money() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    let js = async_nats::jetstream::new(support::operator(&nats, data.path()).await);
    let (id, seq) = refunds_dead_lettered(&api, &js, 1).await.remove(0);
    let (_, refunds) = money(&api, &id).await;
    assert!(refunds.is_empty(), "nothing refunded yet: {refunds:?}");
    let row = api.get(&id).await.1;
    assert_eq!(row["payment_status"], "APPROVED", "{row}");

    // It is listed and shown with its reason.
    let (ok, listed) = cli(data.path(), &["dlq", "ls", "--order", &id]);
    assert!(ok, "{listed}");
    let line = listed
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{seq} ")))
        .unwrap_or_else(|| panic!("#{seq} listed: {listed}"));
    for needle in [
        "payment",
        "OrderCancelled",
        id.as_str(),
        "exhausted after 3",
    ] {
        assert!(line.contains(needle), "{needle} in {line}");
    }
    let (ok, shown) = cli(data.path(), &["dlq", "show", &seq.to_string()]);
    assert!(ok, "{shown}");
    for needle in [
        "Commerce-Dlq-Reason: exhausted after 3 deliveries",
        "Commerce-Dlq-Stream: ORDERS",
        "\"type\": \"OrderCancelled\"",
    ] {
        assert!(shown.contains(needle), "{needle} in {shown}");
    }
    assert!(!shown.contains(CARD), "no card number in: {shown}");

    // While the gateway is still down, a replay changes nothing and keeps the entry.
    let (ok, said) = cli(data.path(), &["dlq", "replay", &seq.to_string()]);
    assert!(!ok, "a replay that did not apply fails: {said}");
    assert!(said.contains("not now") && said.contains("kept"), "{said}");
    let dlq = DeadLetters::new(js.clone());
    assert!(dlq.get(seq).await.unwrap().is_some(), "kept in DLQ");
    assert!(money(&api, &id).await.1.is_empty());

    // Cancelled with the money still taken: a stuck saga, named by `commerce status`.
    support::wait_until("the saga is listed as stuck", || async {
        let (ok, status) = cli(data.path(), &["status"]);
        ok && status
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("stuck {id}")))
    })
    .await;

    // The gateway is back: the sweep replays the stuck saga's dead letters, which refunds, and
    // the entry is gone.
    api.set_faults(&api.payment_gateway, json!({})).await;
    let (ok, said) = cli(data.path(), &["dlq", "replay", "--stuck"]);
    assert!(ok, "{said}");
    assert!(said.contains("applied; removed from DLQ"), "{said}");
    assert_refunded_exactly(&api, &id).await;
    assert!(dlq.get(seq).await.unwrap().is_none(), "removed from DLQ");

    // Once more: nothing to replay, nothing moves.
    let (ok, said) = cli(data.path(), &["dlq", "replay", &seq.to_string()]);
    assert!(
        !ok && said.contains(&format!("no dead letter #{seq}")),
        "{said}"
    );
    assert_refunded_exactly(&api, &id).await;
    up.stop();
    support::assert_no_permission_violations(data.path());
}

#[tokio::test]
async fn dead_letters_are_listed_shown_refused_on_replay_when_they_are_no_event_and_discarded() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    let js = async_nats::jetstream::new(support::operator(&nats, data.path()).await);
    let (ok, said) = cli(data.path(), &["dlq", "ls"]);
    assert!(ok && said.contains("DLQ is empty"), "{said}");

    // Poison where payment and the projection listen, and a real event on another order's
    // subject (misplaced): each consumer dead-letters its copy.
    js.publish("orders.order_created.poison", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let about_a = bus::Envelope::new(
        bus::Domain::Orders,
        "OrderCancelled",
        "order-a",
        json!({ "reason": "forged" }),
    )
    .unwrap();
    js.publish(
        "orders.order_cancelled.order-b",
        about_a.to_json().unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let poison = support::dead_letter(&js, "payment", "poison").await;
    let projection_poison = support::dead_letter(&js, "projection", "poison").await;
    let misplaced = support::dead_letter(&js, "payment", "order-b").await;
    // Everyone who listens to OrderCancelled refuses the misplaced one.
    for consumer in ["projection", "inventory", "store"] {
        support::dead_letter(&js, consumer, "order-b").await;
    }
    assert!(poison.event.is_none());
    assert!(
        misplaced.reason.contains("misplaced"),
        "{}",
        misplaced.reason
    );

    let (ok, listed) = cli(data.path(), &["dlq", "ls", "--consumer", "payment"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains("(not an event) orders.order_created.poison"),
        "{listed}"
    );
    assert!(!listed.contains("projection"), "only payment's: {listed}");
    let (ok, page) = cli(data.path(), &["dlq", "ls", "--limit", "1"]);
    assert!(ok && page.contains("1 shown; more from --from"), "{page}");
    let next = page.rsplit("--from ").next().unwrap().trim().to_string();
    let (ok, second) = cli(data.path(), &["dlq", "ls", "--limit", "1", "--from", &next]);
    assert!(ok, "{second}");
    let first_row = |text: &str| text.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        first_row(&second)
            .trim_start()
            .starts_with(&format!("{next} ")),
        "{second}"
    );
    assert_ne!(first_row(&page), first_row(&second));
    let (ok, shown) = cli(data.path(), &["dlq", "show", &poison.seq.to_string()]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains("not an event") && shown.contains("{not json"),
        "{shown}"
    );

    // Replays that cannot apply: not an event; misplaced; the projection's (rebuilt instead).
    for (letter, needle) in [
        (&poison, "not an event"),
        (&misplaced, "belongs on"),
        (&projection_poison, "commerce projection rebuild"),
    ] {
        let (ok, said) = cli(data.path(), &["dlq", "replay", &letter.seq.to_string()]);
        assert!(!ok, "{said}");
        assert!(
            said.contains(needle) && said.contains("kept"),
            "{needle}: {said}"
        );
    }
    // In bulk: the services' four are tried (and kept), the projection's two left alone.
    let (ok, said) = cli(data.path(), &["dlq", "replay", "--all"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("2 dead letter(s) of the projection"),
        "{said}"
    );
    assert!(
        said.contains("0 of 4 re-driven and removed from DLQ; 4 kept"),
        "{said}"
    );
    // The misplaced cancel moved no money: nothing was ever charged or refunded.
    let ledger = api.ledger(&api.payment_gateway).await;
    assert_eq!(ledger["refunds"], json!([]), "{ledger}");

    // Unknown sequences are named.
    let (ok, said) = cli(data.path(), &["dlq", "show", "999999"]);
    assert!(!ok && said.contains("no dead letter #999999"), "{said}");
    let (ok, said) = cli(data.path(), &["dlq", "replay", "0", "999999"]);
    assert!(!ok && said.contains("no dead letter #0"), "{said}");
    assert!(said.contains("0 of 2 re-driven"), "{said}");
    let (ok, said) = cli(data.path(), &["dlq", "ls", "--order", "a.b"]);
    assert!(
        !ok && said.contains("not a single NATS subject token"),
        "{said}"
    );

    // Discard: nothing without --yes; with it, exactly those.
    let dlq = DeadLetters::new(js.clone());
    let all = dlq.list(&Filter::default(), 1, 100).await.unwrap();
    assert_eq!(all.letters.len(), 6, "2 poison copies, 4 misplaced ones");
    let seqs: Vec<String> = all.letters.iter().map(|l| l.seq.to_string()).collect();
    let mut args = vec!["dlq", "discard"];
    args.extend(seqs.iter().map(String::as_str));
    let (ok, said) = cli(data.path(), &args);
    assert!(
        !ok && said.contains("would discard") && said.contains("--yes"),
        "{said}"
    );
    assert!(dlq.get(poison.seq).await.unwrap().is_some(), "still there");
    args.push("--yes");
    let (ok, said) = cli(data.path(), &args);
    assert!(ok, "{said}");
    assert_eq!(said.matches("discarded #").count(), 6, "{said}");
    // Out of sight, not gone: listed on demand, never replayed in bulk.
    let left = dlq.list(&Filter::default(), 1, 10).await.unwrap();
    assert!(left.letters.is_empty(), "{left:?}");
    assert_eq!(left.discarded, 6);
    let (ok, said) = cli(data.path(), &["dlq", "ls"]);
    assert!(
        ok && said.contains("no dead letters match (6 discarded"),
        "{said}"
    );
    let (ok, said) = cli(data.path(), &["dlq", "ls", "--discarded"]);
    assert!(ok && said.matches("[discarded]").count() == 6, "{said}");
    let (ok, said) = cli(data.path(), &["dlq", "replay", "--all"]);
    assert!(ok && said.contains("no dead letters match"), "{said}");
    let copy = dlq
        .list(
            &Filter {
                discarded: true,
                ..Filter::default()
            },
            1,
            1,
        )
        .await
        .unwrap();
    let again = copy.letters[0].seq.to_string();
    let (ok, said) = cli(data.path(), &["dlq", "discard", &again, "--yes"]);
    assert!(ok && said.contains("was discarded already"), "{said}");
    up.stop();
    support::assert_no_permission_violations(data.path());
}

#[tokio::test]
async fn after_a_database_loss_a_dead_lettered_refund_is_skipped_live_but_still_replayable_once() {
    let outside = support::Outside::start().await;
    let data = outside.data.path();
    let js = async_nats::jetstream::new(support::operator(&outside.server.url(), data).await);
    let (mut first, api) = outside.up(QUICK_DLQ);
    let mut dead = refunds_dead_lettered(&api, &js, 2).await;
    let (given_up, given_up_seq) = dead.pop().unwrap();
    let (id, seq) = dead.pop().unwrap();
    // One of the two refunds an operator gives up for good.
    let (ok, said) = cli(
        data,
        &["dlq", "discard", &given_up_seq.to_string(), "--yes"],
    );
    assert!(ok, "{said}");
    first.stop();

    // The payment database is lost; the gateway is healthy again before the service returns,
    // so a recovery that retried the dead letter would refund it on its own.
    let last_marker = || async {
        js.get_stream("PAYMENTS")
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&bus::term::term_subject(bus::Domain::Payments, 0))
            .await
            .expect("a marker: the first start's, at least")
    };
    let before = last_marker().await.sequence;
    std::fs::remove_dir_all(data.join("payment")).unwrap();
    api.set_faults(&api.payment_gateway, json!({})).await;
    let (mut second, api) = outside.up(QUICK_DLQ);
    // It read its own stream up to a marker of its own (`bus::term::mark_recovery`).
    let marker = last_marker().await;
    assert!(
        marker.sequence > before,
        "the recovery marked where it read to"
    );
    let marker: Value = serde_json::from_slice(&marker.payload).unwrap();
    assert!(marker["recovery"].is_string(), "{marker}");
    // The recovered payment service re-read ORDERS from the start (OrderCancelled included).
    support::consumer_settled(&js, "ORDERS", "payment").await;
    let fine = api
        .place_ok(&order("sam", "SKU-MUG", 1, CARD, support::ADDRESS))
        .await;
    api.wait_status(&fine, &["COMPLETED"]).await;
    for order in [&id, &given_up] {
        assert!(
            money(&api, order).await.1.is_empty(),
            "the recovery did not refund {order}'s dead letter on its own"
        );
    }
    let dlq = DeadLetters::new(js.clone());
    assert!(dlq.get(seq).await.unwrap().is_some(), "still in DLQ");

    // Yet it is not marked done: the payment service re-handles it, once.
    let client = support::operator(&outside.server.url(), data).await;
    let first_replay = call::<Replay>(&client, Component::Payment, &ReplayRequest { seq })
        .await
        .unwrap();
    assert_eq!(first_replay.outcome, ReplayOutcome::Applied);
    assert_eq!(first_replay.order_id, id);
    assert_eq!(first_replay.event_type, "OrderCancelled");
    assert_refunded_exactly(&api, &id).await;
    let second_replay = call::<Replay>(&client, Component::Payment, &ReplayRequest { seq })
        .await
        .unwrap();
    assert_eq!(second_replay.outcome, ReplayOutcome::AlreadyApplied);
    // Another service is not handed payment's dead letter.
    let refused = call::<Replay>(&client, Component::Inventory, &ReplayRequest { seq }).await;
    assert!(
        matches!(refused, Err(actors::rpc::DomainError::NotFound(_))),
        "{refused:?}"
    );

    // The CLI's replay of an applied event changes nothing and clears the entry.
    let (ok, said) = cli(data, &["dlq", "replay", "--consumer", "payment"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("already applied (nothing done); removed"),
        "{said}"
    );
    assert_refunded_exactly(&api, &id).await;
    let (ok, said) = cli(data, &["dlq", "ls", "--consumer", "payment"]);
    assert!(
        ok && said.contains("no dead letters match (1 discarded"),
        "{said}"
    );
    assert!(
        money(&api, &given_up).await.1.is_empty(),
        "the discarded one stays given up"
    );
    second.stop();
    support::assert_no_permission_violations(data);
}
