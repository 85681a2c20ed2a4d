//! Liveness and durability: every saga ends after any fault heals. Work that outlives AckWait is
//! not redelivered under its own feet; a broker that loses acknowledged messages (its whole
//! store, or a stream's tail) gets them back from the outboxes, exactly once, and the consumers
//! find their place again.

mod support;

use std::collections::HashSet;
use std::process::Command;

use bus::server::NatsServer;
use serde_json::json;
use support::{commerce, order, scenario, wait_until, wait_until_within, Api, Proc, ADDRESS, CARD};

/// `commerce up` on a broker the test owns (authenticated, as `up` makes it), so the test can
/// crash it and take its data away.
/// Fields drop in order: the system stops before its broker, and both before their data.
struct System {
    up: Proc,
    api: Api,
    server: NatsServer,
    data: tempfile::TempDir,
}

impl System {
    async fn start(env: &[(&str, &str)]) -> System {
        let data = tempfile::tempdir().unwrap();
        let server = support::authenticated_broker(data.path()).await;
        let up = Proc::spawn(up_command(data.path(), &server, env));
        let api = Api::of(&up, data.path());
        System {
            up,
            api,
            server,
            data,
        }
    }

    /// `commerce up` again (once the last one has stopped), on the same data and broker.
    fn up_again(&mut self, env: &[(&str, &str)], log: &std::path::Path) {
        let mut cmd = up_command(self.data.path(), &self.server, env);
        cmd.stderr(std::fs::File::create(log).unwrap());
        self.up = Proc::spawn(cmd);
        self.api = Api::of(&self.up, self.data.path());
    }

    /// The broker dies (as an OS crash takes it), `lose` happens to its store, and it starts
    /// again on the same port.
    async fn crash_broker(&mut self, lose: impl FnOnce(&std::path::Path)) {
        self.server.kill();
        lose(self.server.store_dir());
        self.server.restart().await.unwrap();
    }

    /// A `commerce` command against this system (as its operator).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let url = self.server.url();
        let mut args = args.to_vec();
        args.extend(["--nats", url.as_str()]);
        support::cli(self.data.path(), &args)
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(support::operator(&self.server.url(), self.data.path()).await)
    }
}

fn up_command(data: &std::path::Path, server: &NatsServer, env: &[(&str, &str)]) -> Command {
    let mut cmd = commerce();
    cmd.args(["up", "--data-dir"])
        .arg(data)
        .args(["--nats", &server.url()])
        .envs(env.iter().copied());
    cmd
}

/// Five more orders after the crash: new sagas go on too.
async fn place_more(system: &System, mut placed: scenario::Placed) -> scenario::Placed {
    for i in 0..5 {
        let customer = format!("after-{i}");
        let late = order(&customer, "SKU-MUG", 1, CARD, ADDRESS);
        // The services may still be reconnecting: a 503 is retried, as a client does.
        let id = system.api.place_retrying(&late, &customer).await;
        placed.completed.push(id);
        placed.bulk += 1;
    }
    placed
}

/// Every domain stream holds each event once (by `Nats-Msg-Id`).
async fn assert_each_event_once(js: &async_nats::jetstream::Context) {
    for domain in bus::Domain::ALL {
        let stream = js.get_stream(domain.stream()).await.unwrap();
        let info = stream.cached_info().state.clone();
        let mut ids = HashSet::new();
        for seq in info.first_sequence..=info.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue; // deleted
            };
            let id = message.headers.get("Nats-Msg-Id").unwrap().to_string();
            assert!(ids.insert(id.clone()), "{id} twice in {}", domain.stream());
        }
    }
}

/// The sagas of `placed` all end right (money and stock exact); nothing applied twice; the
/// live read model equals one rebuilt from the streams, so every event is in them.
async fn assert_all_ended_right(system: &System, placed: &scenario::Placed) {
    scenario::check(&system.api, placed).await;
    let js = system.js().await;
    support::projection_caught_up(&js).await;
    let ids = placed.all();
    let live = support::rows(&system.api, &ids).await;
    support::assert_no_double_apply(&live);
    assert_each_event_once(&js).await;
    let (ok, said) = system.cli(&["projection", "rebuild"]);
    assert!(ok, "{said}");
    let rebuilt = support::rows(&system.api, &ids).await;
    assert_eq!(rebuilt, live, "rebuilt rows equal the live ones");
    support::assert_no_permission_violations(system.data.path());
}

#[tokio::test]
async fn a_broker_that_loses_its_whole_store_mid_saga_gets_every_event_back_once() {
    let mut system = System::start(&[]).await;
    let placed = scenario::place(&system.api, 20).await;
    system
        .crash_broker(|store| std::fs::remove_dir_all(store.join("jetstream")).unwrap())
        .await;
    let placed = place_more(&system, placed).await;
    assert_all_ended_right(&system, &placed).await;
    system.up.stop();
}

#[tokio::test]
async fn a_broker_that_loses_the_tail_of_a_stream_gets_it_back_once() {
    let mut system = System::start(&[]).await;
    let placed = scenario::place(&system.api, 20).await;
    // Their shipments are in the stream whose tail is lost.
    for id in &placed.completed {
        system
            .api
            .wait_status(id, &["CONFIRMED", "SHIPPED", "COMPLETED"])
            .await;
    }
    system
        .crash_broker(|store| commerce_tests::cut_last_block(store, "SHIPMENTS"))
        .await;
    let placed = place_more(&system, placed).await;
    assert_all_ended_right(&system, &placed).await;
    system.up.stop();
}

/// A carrier slower than its client's timeout, with AckWait shorter than a call: in-progress
/// acks keep every delivery alive, and once the carrier is quick again every order completes;
/// no order is both refunded and picked up, none is booked twice, and none is stuck.
#[tokio::test]
async fn work_slower_than_ack_wait_ends_every_saga_once_the_carrier_heals() {
    let system = System::start(&[
        ("COMMERCE_ACK_WAIT_MS", "1000"),
        ("COMMERCE_STUCK_AFTER_SECS", "1"),
        // The breaker stays closed, so every order's booking reaches the carrier and times out
        // (its outcome unknown). An open breaker would shield the carrier from whichever orders
        // came after its fifth timeout, and how many those are depends on the machine's pace.
        ("COMMERCE_RESILIENCE__BREAKER__FAILURES_PER_WINDOW", "0"),
        ("COMMERCE_RESILIENCE__BREAKER__MINIMUM_CALLS", "1000"),
    ])
    .await;
    let api = &system.api;
    api.set_faults(&api.carrier, json!({ "latency_ms": 6000 }))
        .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let o = order(&format!("slow-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        ids.push(api.place_ok(&o).await);
    }
    // 20 bookings at 6 s each through the carrier's bulkhead and breaker: about a minute on
    // this machine alone, so twice the usual bound.
    let bound = std::time::Duration::from_secs(120);
    wait_until_within("the carrier has seen every booking", bound, || async {
        api.ledger(&api.carrier).await["bookings"]
            .as_array()
            .is_some_and(|b| b.len() >= 20)
    })
    .await;
    // Stuck meanwhile: `commerce status` names them.
    let status = commerce_status(&system);
    assert!(stuck(&status) > 0, "{status}");
    api.set_faults(&api.carrier, json!({})).await;
    for id in &ids {
        let done = api.wait_status(id, &["COMPLETED", "CANCELLED"]).await;
        assert_eq!(done["order_status"], "COMPLETED", "{done}");
    }
    let refunds = api.ledger(&api.payment_gateway).await["refunds"].clone();
    assert_eq!(refunds, json!([]), "nothing refunded");
    let bookings = api.ledger(&api.carrier).await["bookings"].clone();
    let booked: HashSet<&str> = bookings
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(booked.len(), 20, "{bookings}");
    assert_eq!(bookings.as_array().unwrap().len(), 20, "each booked once");
    wait_until("no saga is open", || async {
        commerce_status(&system).contains("sagas: 0 open, 0 stuck")
    })
    .await;
}

/// A disk that fails a flush under `commerce up`: the process stops with an error, for its
/// database may have lost what the flush held; started again on a disk that works, it serves.
#[tokio::test]
async fn commerce_up_stops_when_a_flush_fails_and_serves_once_started_again() {
    let mut system = System::start(&[]).await;
    let before = order("before", "SKU-MUG", 1, CARD, ADDRESS);
    let id = system.api.place_ok(&before).await;
    system.api.wait_status(&id, &["COMPLETED"]).await;
    // Nothing left to deliver: the next flush is the next order's.
    support::all_settled(&system.js().await).await;
    system.up.stop();

    let log = system.data.path().join("failing-up.log");
    system.up_again(&[("FAILPOINTS", "store.flush_fails=1*return")], &log);
    let doomed = order("doomed", "SKU-MUG", 1, CARD, ADDRESS);
    let (status, said) = system.api.place(&doomed, Some("doomed")).await;
    assert_eq!(
        status, 503,
        "no order is accepted on a failed flush: {said}"
    );
    // The answer names an incident, not the database that failed.
    let data_dir = system.data.path().to_string_lossy().to_string();
    assert!(!said.to_string().contains(&data_dir), "{said}");
    let incident = said["incident"].as_str().expect("an incident").to_string();
    assert!(!system.up.wait_exit().success(), "it stopped on its own");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("a flush failed") && logged.contains("commerce stopped on its own"),
        "{logged}"
    );
    let cause = logged
        .lines()
        .find(|l| l.contains(&incident))
        .unwrap_or_else(|| panic!("incident {incident} is not in the log: {logged}"));
    assert!(cause.contains("flush failed"), "{cause}");

    system.up_again(&[], &system.data.path().join("up.log"));
    let after = order("after", "SKU-MUG", 1, CARD, ADDRESS);
    let id = system.api.place_retrying(&after, "after").await;
    let done = system
        .api
        .wait_status(&id, &["COMPLETED", "CANCELLED"])
        .await;
    assert_eq!(done["order_status"], "COMPLETED", "{done}");
    system.up.stop();
}

/// `M` of `sagas: N open, M stuck` in `commerce status`.
fn stuck(status: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with("sagas: "))
        .unwrap_or_else(|| panic!("no sagas line in {status}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    words[3].parse().unwrap_or_else(|_| panic!("{line}"))
}

fn commerce_status(system: &System) -> String {
    let (ok, said) = system.cli(&["status"]);
    assert!(ok, "{said}");
    said
}
