//! `commerce up --cluster 3`: the broker as three nats-servers with every stream on all three.
//! A node's SIGKILL under orders loses nothing and stops nothing; when it returns it catches up.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{commerce, order, Proc, ADDRESS, CARD};

/// `commerce status` on `data`: its report.
fn status(data: &Path) -> String {
    let out = commerce()
        .args(["status", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// The pid a node wrote into its store.
fn node_pid(node: &Path) -> i32 {
    let text = std::fs::read_to_string(node.join("nats-server.pid")).unwrap();
    text.trim().parse().unwrap()
}

/// Start a node again from the config `commerce up` wrote for it, as an operator's supervisor
/// would.
fn restart(node: &Path) -> Child {
    Command::new(bus::server::find_binary().unwrap())
        .arg("-c")
        .arg(node.join("nats-server.conf"))
        .arg("-l")
        .arg(node.join("nats-server.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

    // Every stream is led by one node and replicated on the two others.
    let report = status(data.path());
    let orders = report
        .lines()
        .skip_while(|l| !l.starts_with("ORDERS"))
        .nth(1)
        .unwrap_or_default();
    assert!(orders.contains("leader node-"), "{report}");
    assert_eq!(orders.matches("replica node-").count(), 2, "{report}");

    let before = api
        .place_ok(&order("una", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&before, &["COMPLETED"]).await;

    // The first node (where every client connected first) dies; orders go on on the others.
    let node = data.path().join("nats/node-1");
    kill(Pid::from_raw(node_pid(&node)), Signal::SIGKILL).unwrap();
    let mut during = Vec::new();
    for customer in ["vera", "wim", "xia"] {
        during.push(
            api.place_ok(&order(customer, "SKU-MUG", 1, CARD, ADDRESS))
                .await,
        );
    }
    for id in &during {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    support::wait_until("the dead node shows as not current", || async {
        let report = status(data.path());
        report.contains("offline") || report.contains("behind")
    })
    .await;

    // It returns and catches up: every replica of every stream is current again.
    let mut returned = restart(&node);
    support::wait_until("every replica is current again", || async {
        let report = status(data.path());
        report.matches("replica node-").count() == 2 * 8
            && !report.contains("offline")
            && !report.contains("behind")
    })
    .await;
    let after = api
        .place_ok(&order("yan", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    api.wait_status(&after, &["COMPLETED"]).await;

    // Each order charged once: nothing was lost or applied twice across the failover.
    let ledger = api.ledger(&api.payment_gateway).await;
    assert_eq!(
        ledger["authorizations"].as_array().unwrap().len(),
        5,
        "{ledger}"
    );
    up.stop();
    let _ = returned.kill();
    let _ = returned.wait();
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
