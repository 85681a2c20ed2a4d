//! A replay (a projection rebuild, a service's recovery) reads with a consumer that wants no
//! acks, from a connection that may answer requests (`allow_responses`). The broker keeps every
//! reply subject such a connection receives until it is answered or two minutes old, and scans
//! them all every 4,096 messages: unanswered, a replay's ack subjects piled up there, and each
//! rebuild of the same history ran slower than the one before (`commerce bench reads
//! --rounds 25`: 100,000 → 43,000 events/s). So a replay answers each message once.

use std::time::Duration;

use async_nats::jetstream;
use bus::auth::{self, Permissions};
use bus::server::{NatsServer, ServerConfig};
use bus::Domain;
use commerce_tests::Deadline;
use futures::StreamExt;

const EVENTS: usize = 1_000;

#[tokio::test]
async fn a_replay_answers_every_message_it_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (operator_key, operator) = auth::new_identity().expect("operator identity");
    let (reader_key, reader) = auth::new_identity().expect("reader identity");
    let stream = Domain::Orders.stream();
    // What a component that replays and answers requests may do, and no ack of anyone's.
    let reads = Permissions {
        publish: vec![
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        ],
        subscribe: vec![format!("{}.>", bus::inbox_prefix("reader"))],
        allow_responses: true,
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
    // Every answer to a message of the stream, whoever's consumer it was.
    let mut answers = admin
        .subscribe(format!("$JS.ACK.{stream}.>"))
        .await
        .expect("subscribe");
    admin.flush().await.expect("flush");

    let client = bus::connect(&server.url(), "reader", Some(&reader))
        .await
        .expect("reader connects");
    let mut replay = bus::replay::Replay::open(&jetstream::new(client), stream, "")
        .await
        .expect("replay opens");
    for n in 1..=EVENTS as u64 {
        let read = replay.next().await.expect("next message");
        assert_eq!(read.sequence, n, "the replay reads the stream in order");
    }

    // Each answer reached the broker, one for every message: the permission to answer covered
    // it. An ack's subject names the message it answers:
    // `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…`.
    let deadline = Deadline::after(
        Duration::from_secs(30),
        "an answer to every replayed message",
    );
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < EVENTS {
        deadline.check();
        if let Ok(Some(answer)) =
            tokio::time::timeout(Duration::from_millis(200), answers.next()).await
        {
            let seq = answer
                .subject
                .split('.')
                .nth(5)
                .and_then(|s| s.parse::<u64>().ok());
            answered.insert(seq.expect("an ack subject names its stream sequence"));
        }
    }
    assert_eq!(answered, (1..=EVENTS as u64).collect());
}
