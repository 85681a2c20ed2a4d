//! A replay (a projection rebuild, a service's recovery) reads with a consumer that wants no
//! acks, as an identity of its own that answers no requests. For a connection that may answer
//! (`allow_responses`) the broker keeps every reply subject it delivers until answered or two
//! minutes old: a replay's ack subjects piled up there unanswered, and each rebuild of the same
//! history ran slower than the one before (`commerce bench reads --rounds 25`: 100,000 → 43,000
//! events/s), so a replay used to answer each message just to be forgotten. As an identity that
//! answers nothing, it reads every message and answers none, and the broker keeps nothing.

use std::time::Duration;

use async_nats::jetstream;
use bus::auth::{self, Permissions};
use bus::server::{NatsServer, ServerConfig};
use bus::{Domain, Login};
use commerce_tests::Deadline;
use futures::StreamExt;

/// More than a consumer may have unacknowledged by default (1,000): a replay that wanted acks
/// would stall here, as it may not send any.
const EVENTS: usize = 3_000;

#[tokio::test]
async fn a_replay_reads_every_message_as_its_own_identity_and_answers_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (operator_key, operator) = auth::new_identity().expect("operator identity");
    let (reader_key, reader) = auth::new_identity().expect("reader identity");
    let stream = Domain::Orders.stream();
    // What a component's replays may do (`access::replayer`): consumers of its own names, no
    // answers, no acks.
    let reads = Permissions {
        publish: bus::replay::grants("order-replayer", stream),
        subscribe: vec![format!("{}.>", bus::inbox_prefix("order-replayer"))],
        allow_responses: false,
    };
    let mut config = ServerConfig::new(dir.path().join("nats"));
    config.authorization = Some((
        auth::authorization_config(&[(operator_key, Permissions::all()), (reader_key, reads)]),
        operator.clone(),
    ));
    let server = NatsServer::start(config)
        .await
        .expect("nats-server starts (run scripts/install-nats-server)");
    let admin = bus::connect(&server.url(), "operator", Some(&operator))
        .await
        .expect("operator connects");
    let js = jetstream::new(admin.clone());
    bus::provision(&js, &bus::StreamSettings::default())
        .await
        .expect("provision");
    for n in 0..EVENTS {
        js.publish(format!("orders.o{n}"), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    // The order service's login: its replays connect as `order-replayer`.
    let login = Login {
        replay: Some(reader),
        ..Login::open(&server.url(), "order")
    };
    let deadline = Deadline::after(Duration::from_secs(60), "the replay reads every message");
    // Two at once, from the same start: each with a consumer of its own.
    let mut replays = Vec::new();
    for _ in 0..2 {
        let replay = bus::replay::Replay::open(&login, stream, "")
            .await
            .expect("replay opens");
        assert_eq!(replay.pending(), EVENTS as u64);
        replays.push(replay);
    }
    for n in 1..=EVENTS as u64 {
        for (which, replay) in replays.iter_mut().enumerate() {
            deadline.check();
            let read = replay.next().await.expect("next message");
            assert_eq!(read.sequence, n, "replay {which}: the stream read in order");
        }
    }
    // Done with, their consumers are deleted at once (not left for the server's idle timer).
    drop(replays);
    let orders = &js.get_stream(stream).await.expect("stream");
    let deleted = move || async move {
        let info = orders.get_info().await.expect("stream info");
        info.state.consumer_count == 0
    };
    commerce_tests::wait_until(
        "the replays' consumers deleted",
        Duration::from_secs(10),
        deleted,
    )
    .await;

    // Every name taken (by consumers the server removes after 3 s idle, as it does a crashed
    // process's): a replay waits for one to free rather than fail.
    for slot in 0..8 {
        orders
            .create_consumer(jetstream::consumer::pull::Config {
                name: Some(format!("order-replayer-{slot}")),
                inactive_threshold: Duration::from_secs(3),
                ..Default::default()
            })
            .await
            .expect("a consumer in the slot");
    }
    let mut replay = bus::replay::Replay::open(&login, stream, "")
        .await
        .expect("a replay opens once a name is free");
    assert_eq!(replay.next().await.expect("first message").sequence, 1);

    // Its consumer gone (the server's idle timer) and its name taken by another replay's: done,
    // it leaves the other's alone.
    // (Listed with their infos at once: the slot fillers expire meanwhile.)
    let mut consumers = orders.consumers();
    let mut ours = None;
    while let Some(info) = consumers.next().await {
        let info = info.expect("a consumer's info");
        if info
            .config
            .description
            .is_some_and(|d| d.starts_with("replay "))
        {
            ours = Some(info.name);
        }
    }
    let ours = ours.expect("the replay's consumer");
    orders.delete_consumer(&ours).await.expect("expired");
    let another = jetstream::consumer::pull::Config {
        name: Some(ours.clone()),
        description: Some("another replay's".into()),
        ..Default::default()
    };
    orders
        .create_consumer(another)
        .await
        .expect("the name taken again");
    replay.close().await;
    let kept = orders
        .consumer_info(&ours)
        .await
        .expect("the other's consumer is kept");
    assert_eq!(kept.config.description.as_deref(), Some("another replay's"));

    // It sent no answer: one would be refused, and the broker logs each refusal.
    let log = std::fs::read_to_string(dir.path().join("nats/nats-server.log")).expect("log");
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "the replay sent: {refused:#?}");

    // A replay as an identity the broker does not know fails at once, and says which.
    let unknown = Login::open(&server.url(), "order");
    let error = match bus::replay::Replay::open(&unknown, stream, "").await {
        Ok(_) => panic!("a replay without credentials is refused"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("order-replayer"), "{error}");
    assert!(error.contains("authorization violation"), "{error}");
}
