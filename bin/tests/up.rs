//! `commerce up` as a user runs it: a real process with an embedded nats-server, stopped by Ctrl-C.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{commerce, Proc, WAIT};

#[test]
fn up_provisions_the_streams_and_ctrl_c_stops_everything() {
    let data = tempfile::tempdir().unwrap();
    // The default port is taken: up must pick another one rather than fail.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let data_dir = data.path().to_str().unwrap();
    let mut child = Proc::up(&["--data-dir", data_dir, "--nats-port", &taken_port]);

    let url = child.line_starting("nats: ");
    let url = url.split_whitespace().next().unwrap().to_string();
    assert!(
        !url.ends_with(&format!(":{taken_port}")),
        "{url} should avoid the taken port"
    );
    child.line_starting("Press Ctrl-C");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the data dir is private: {mode:o}");
    }

    let status = commerce()
        .args(["status", "--data-dir", data_dir])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{report}");
    for stream in [
        "ORDERS",
        "PAYMENTS",
        "INVENTORY",
        "STORES",
        "SHIPMENTS",
        "RECOMMENDATIONS",
        "DLQ",
        "OPS",
    ] {
        assert!(report.contains(stream), "status lists {stream}:\n{report}");
    }

    child.signal(Signal::SIGINT);
    child.line_starting("commerce stopped cleanly");
    assert!(child.wait_exit().success());
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the embedded nats-server is gone with it"
    );
    assert!(
        data.path().join("nats/jetstream").is_dir(),
        "the broker stored under --data-dir"
    );

    // A second start on the same data dir finds the streams already there.
    let mut child = Proc::up(&["--data-dir", data_dir]);
    assert_eq!(child.line_starting("stream ORDERS: "), "Unchanged");
    child.signal(Signal::SIGTERM);
    assert!(child.wait_exit().success());
}

#[test]
fn status_without_a_running_system_says_so() {
    let data = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = commerce()
        .args(["status", "--nats", &format!("nats://127.0.0.1:{port}")])
        .current_dir(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("commerce up"), "{err}");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("bad.toml");
    std::fs::write(&file, "nats_prot = 1\n").unwrap();
    let out = commerce()
        .args(["--config", file.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nats_prot"), "{err}");
}

#[tokio::test]
async fn with_a_nats_url_up_uses_that_server_and_spawns_none() {
    let data = tempfile::tempdir().unwrap();
    let server = bus::server::NatsServer::start(bus::server::ServerConfig::new(
        data.path().join("external"),
    ))
    .await
    .unwrap();
    let data_dir = data.path().join("data");
    let mut child = Proc::up(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--nats",
        &server.url(),
    ]);
    assert_eq!(
        child.line_starting("nats: "),
        format!("{} (external)", server.url())
    );
    child.line_starting("Press Ctrl-C");
    assert!(
        !data_dir.join("nats").exists(),
        "no embedded server was started"
    );

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let streams = bus::status::streams(&js).await.unwrap();
    assert_eq!(
        streams.len(),
        8,
        "the streams were provisioned on the external server"
    );

    child.signal(Signal::SIGINT);
    assert!(child.wait_exit().success());
    assert!(
        async_nats::connect(server.url()).await.is_ok(),
        "the external server keeps running"
    );
}

#[test]
fn after_a_sigkill_the_next_up_stops_the_orphaned_nats_server() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let mut child = Proc::up(&["--data-dir", data_dir]);
    child.line_starting("Press Ctrl-C");
    let pid_file = data.path().join("nats/nats-server.pid");
    let orphan: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.child.kill().unwrap(); // SIGKILL: its nats-server child lives on
    child.child.wait().unwrap();
    assert!(
        kill(Pid::from_raw(orphan), None).is_ok(),
        "the orphan is running"
    );

    let mut child = Proc::up(&["--data-dir", data_dir]);
    child.line_starting("Press Ctrl-C");
    let deadline = Instant::now() + WAIT;
    // The orphan is not our child (init reaps it): poll until it is gone.
    while kill(Pid::from_raw(orphan), None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the orphaned nats-server {orphan} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(Signal::SIGTERM);
    assert!(child.wait_exit().success());
}

/// The simulators stand for outside systems: `commerce run simulators` needs no broker, and a
/// `commerce up` given both their addresses reaches them there (and says so).
#[test]
fn the_simulators_run_without_a_broker_and_up_stands_in_only_for_what_is_not_told() {
    let outside = tempfile::tempdir().unwrap();
    let mut cmd = commerce();
    cmd.args(["run", "simulators", "--data-dir"])
        .arg(outside.path());
    let mut simulators = Proc::spawn(cmd);
    simulators.line_starting("commerce simulators is up");
    let payment_gateway = simulators.line_starting("payment gateway: ");
    let carrier = simulators.line_starting("carrier: ");

    let data = tempfile::tempdir().unwrap();
    let mut cmd = commerce();
    // Simulators of up's own would bind where the outside ones listen, and up would fail.
    let addr = |url: &str| url.trim_start_matches("http://").to_string();
    cmd.env("COMMERCE_PAYMENT_GATEWAY_URL", &payment_gateway)
        .env("COMMERCE_CARRIER_URL", &carrier)
        .env(
            "COMMERCE_SIMULATORS__PAYMENT_GATEWAY_ADDR",
            addr(&payment_gateway),
        )
        .env("COMMERCE_SIMULATORS__CARRIER_ADDR", addr(&carrier))
        .args(["up", "--data-dir"])
        .arg(data.path());
    let mut up = Proc::spawn(cmd);
    assert_eq!(up.line_starting("payment gateway: "), payment_gateway);
    assert_eq!(up.line_starting("carrier: "), carrier);
    up.line_starting("Press Ctrl-C");
    up.stop();

    // One outside system set: up stands in for the other only (a payment gateway of its own
    // would bind where the outside one listens, and up would fail).
    let data = tempfile::tempdir().unwrap();
    let mut cmd = commerce();
    cmd.env("COMMERCE_PAYMENT_GATEWAY_URL", &payment_gateway)
        .env(
            "COMMERCE_SIMULATORS__PAYMENT_GATEWAY_ADDR",
            addr(&payment_gateway),
        )
        .env("COMMERCE_SIMULATORS__CARRIER_ADDR", "127.0.0.1:0")
        .args(["up", "--data-dir"])
        .arg(data.path());
    let mut up = Proc::spawn(cmd);
    assert_eq!(up.line_starting("payment gateway: "), payment_gateway);
    let own_carrier = up.line_starting("carrier: ");
    assert!(
        own_carrier.starts_with("http://127.0.0.1:") && own_carrier != carrier,
        "up's own carrier simulator, not the outside one: {own_carrier}"
    );
    up.line_starting("Press Ctrl-C");
    up.stop();
    simulators.stop();
}
