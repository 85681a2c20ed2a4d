//! `commerce up --cluster 3`: the broker as three nats-servers with every stream on all three.
//! A node's SIGKILL under orders loses nothing and stops nothing; when it returns it catches up.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{commerce, order, Api, Proc, ADDRESS, CARD};

/// `commerce status` on `data`: its report, or `None` if it failed (while a leader is elected).
fn try_status(data: &Path) -> Option<String> {
    let out = commerce()
        .args(["status", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// Each of the 8 streams has a leader and two replicas, both current.
fn all_current(report: &str) -> bool {
    let replication: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_start().starts_with("leader node-"))
        .collect();
    replication.len() == 8
        && replication
            .iter()
            .all(|l| l.matches(" current lag 0").count() == 2)
}

/// Place an order as a client does, retrying a 503 under its key.
async fn place(api: &Api, customer: &str) -> String {
    let order = order(customer, "SKU-MUG", 1, CARD, ADDRESS);
    api.place_retrying(&order, &format!("cluster-{customer}"))
        .await
}

/// A nats-server the test started; killed when the test ends, however it ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pid a node wrote into its store.
fn node_pid(node: &Path) -> i32 {
    let text = std::fs::read_to_string(node.join("nats-server.pid")).unwrap();
    text.trim().parse().unwrap()
}

/// Start a node again from the config `commerce up` wrote for it, as an operator's supervisor
/// would.
fn restart(node: &Path) -> Node {
    let child = Command::new(bus::server::find_binary().unwrap())
        .arg("-c")
        .arg(node.join("nats-server.conf"))
        .arg("-l")
        .arg(node.join("nats-server.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Node(child)
}

#[tokio::test]
async fn a_cluster_keeps_every_order_through_a_nodes_death_and_return() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (mut up, nats, api) = support::started(
        Proc::up(&["--data-dir", dir, "--cluster", "3"]),
        data.path(),
    );
    assert_eq!(nats.split(',').count(), 3, "every node's URL: {nats}");

    // Every stream is led by one node and replicated, current, on the two others.
    support::wait_until(
        "8 streams, each with a leader and two current replicas",
        || async { try_status(data.path()).is_some_and(|report| all_current(&report)) },
    )
    .await;

    let before = place(&api, "una").await;
    api.wait_status(&before, &["COMPLETED"]).await;

    // A node dies (clients connected to any of the three: a third of them to this one, which
    // fail over); orders go on on the others.
    let node = data.path().join("nats/node-1");
    kill(Pid::from_raw(node_pid(&node)), Signal::SIGKILL).unwrap();
    let mut during = Vec::new();
    for customer in ["vera", "wim", "xia"] {
        during.push(place(&api, customer).await);
    }
    for id in &during {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    support::wait_until("the dead node shows as not current", || async {
        try_status(data.path())
            .is_some_and(|report| report.contains("offline") || report.contains("behind"))
    })
    .await;

    // It returns and catches up: every replica of every stream is current again.
    let returned = restart(&node);
    support::wait_until("every replica is current again", || async {
        try_status(data.path()).is_some_and(|report| all_current(&report))
    })
    .await;
    let after = place(&api, "yan").await;
    api.wait_status(&after, &["COMPLETED"]).await;

    // Each order charged once: nothing was lost or applied twice across the failover.
    let ledger = api.ledger(&api.payment_gateway).await;
    assert_eq!(
        ledger["authorizations"].as_array().unwrap().len(),
        5,
        "{ledger}"
    );
    up.stop();
    drop(returned);
}

#[test]
fn a_data_dir_keeps_the_kind_of_broker_it_was_started_with() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("nats/jetstream")).unwrap();
    let out = commerce()
        .args(["up", "--cluster", "3", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds the store of a single nats-server"),
        "{stderr}"
    );
}
