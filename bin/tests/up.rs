//! `commerce up` as a user runs it: a real process with an embedded nats-server, stopped by Ctrl-C.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(60);

fn commerce() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_commerce"));
    cmd.env_remove("NATS_URL").env("RUST_LOG", "warn");
    cmd
}

/// Start `commerce up`, return it and the lines of its stdout as they come.
fn up(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = commerce()
        .arg("up")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn line_starting(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line starting {prefix:?}"));
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return rest.to_string();
        }
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "commerce did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_provisions_the_streams_and_ctrl_c_stops_everything() {
    let data = tempfile::tempdir().unwrap();
    // The default port is taken: up must pick another one rather than fail.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let data_dir = data.path().to_str().unwrap();
    let (mut child, lines) = up(&["--data-dir", data_dir, "--nats-port", &taken_port]);

    let url = line_starting(&lines, "nats: ");
    let url = url.split_whitespace().next().unwrap().to_string();
    assert!(
        !url.ends_with(&format!(":{taken_port}")),
        "{url} should avoid the taken port"
    );
    line_starting(&lines, "Press Ctrl-C");

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

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    line_starting(&lines, "commerce stopped cleanly");
    assert!(wait_exit(&mut child).success());
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
    let (mut child, lines) = up(&["--data-dir", data_dir]);
    assert_eq!(line_starting(&lines, "stream ORDERS: "), "Unchanged");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
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
    let (mut child, lines) = up(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--nats",
        &server.url(),
    ]);
    assert_eq!(
        line_starting(&lines, "nats: "),
        format!("{} (external)", server.url())
    );
    line_starting(&lines, "Press Ctrl-C");
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

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert!(wait_exit(&mut child).success());
    assert!(
        async_nats::connect(server.url()).await.is_ok(),
        "the external server keeps running"
    );
}

#[test]
fn after_a_sigkill_the_next_up_stops_the_orphaned_nats_server() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let (mut child, lines) = up(&["--data-dir", data_dir]);
    line_starting(&lines, "Press Ctrl-C");
    let pid_file = data.path().join("nats/nats-server.pid");
    let orphan: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.kill().unwrap(); // SIGKILL: its nats-server child lives on
    child.wait().unwrap();
    assert!(
        kill(Pid::from_raw(orphan), None).is_ok(),
        "the orphan is running"
    );

    let (mut child, lines) = up(&["--data-dir", data_dir]);
    line_starting(&lines, "Press Ctrl-C");
    let deadline = Instant::now() + WAIT;
    // The orphan is not our child (init reaps it): poll until it is gone.
    while kill(Pid::from_raw(orphan), None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the orphaned nats-server {orphan} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
}
