//! `commerce chaos` as CI runs it: a short seeded run passes every invariant, and each
//! deliberate bug of the test build (its failpoints) makes the invariant that guards against
//! it fail. Longer runs: README, "The chaos harness".

use std::process::Command;

use serde_json::Value;

/// One whole-system run at a time (each is a broker and eight processes).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `commerce chaos <args>`; whether it passed, and its JSON report.
fn chaos(args: &[&str]) -> (bool, Value) {
    chaos_in(&tempfile::tempdir().expect("temp dir"), args)
}

/// [`chaos`] with its report, databases and logs under `dir` (the run's in `dir/run`).
fn chaos_in(dir: &tempfile::TempDir, args: &[&str]) -> (bool, Value) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .arg("chaos")
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--dir")
        .arg(dir.path().join("run"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run commerce chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!("no report written (is nats-server installed? scripts/install-nats-server)\n{stdout}\n{stderr}")
    });
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    println!("{stdout}");
    (out.status.success(), report)
}

/// The counterexamples of invariant `number`.
fn counterexamples(report: &Value, number: u64) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["number"] == number)
        .flat_map(|c| c["counterexamples"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// The numbers of the invariants the report says failed.
fn failed(report: &Value) -> Vec<u64> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .filter_map(|c| c["number"].as_u64())
        .collect()
}

#[test]
fn a_short_seeded_run_under_every_kind_of_fault_keeps_every_invariant() {
    let (passed, report) = chaos(&["--seed", "2", "--duration", "60s", "--rate", "3"]);
    assert!(passed, "{:#}", report["checks"]);
    assert_eq!(report["seed"], 2);
    assert_eq!(failed(&report), Vec::<u64>::new());
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(9));
    let injected: u64 = report["faults_injected"]
        .as_object()
        .expect("faults")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(injected >= 5, "faults were injected: {report:#}");
    assert!(
        report["orders"]["accepted"].as_u64() > Some(100),
        "orders went through: {:#}",
        report["orders"]
    );
    // The run proves the dedup paths ran: events came again and inboxes dropped them.
    assert!(
        report["dedup"]["redelivered"].as_u64() > Some(0),
        "{report:#}"
    );
    assert!(
        report["dedup"]["duplicates_dropped_by_inboxes"].as_u64() > Some(0),
        "{report:#}"
    );
    assert!(
        report["processes"]["seam_crashes"].as_u64() > Some(0),
        "{report:#}"
    );
    assert_eq!(report["processes"]["crashes"], serde_json::json!([]));
}

/// Run with deliberate bug `bug` and only crash seams, on a seed whose plan crashes where
/// the bug shows (found with `commerce chaos --faults seams --duration 30s --dry-run`).
fn broken(bug: &str, seed: &str) -> Value {
    let (passed, report) = chaos(&[
        "--seed",
        seed,
        "--duration",
        "30s",
        "--rate",
        "3",
        "--faults",
        "seams",
        "--drain",
        "30s",
        "--break",
        bug,
    ]);
    assert!(!passed, "the harness missed {bug}: {report:#}");
    assert_eq!(report["passed"], false);
    report
}

#[test]
fn skipping_the_inbox_is_caught_as_an_event_applied_twice() {
    // Seed 20 crashes recommendation after a commit, before its ack: events come again.
    let report = broken("skip-inbox", "20");
    let twice = counterexamples(&report, 6);
    assert!(
        twice
            .iter()
            .any(|e| e.contains("RecommendationUpdated 2 times")),
        "{twice:?}"
    );
}

#[test]
fn acknowledging_before_the_flush_is_caught_as_a_stuck_saga() {
    // Seed 21 crashes inventory with a batch fetched, not yet applied (and acknowledged).
    let report = broken("ack-before-flush", "21");
    // The batch payment acknowledged and then lost: its sagas never move again.
    assert!(failed(&report).contains(&2), "{:#}", report["checks"]);
    let stuck = counterexamples(&report, 2);
    assert!(stuck.iter().all(|e| e.contains("last events")), "{stuck:?}");
}

#[test]
fn skipping_a_compensation_is_caught_as_stock_held() {
    let report = broken("skip-compensation", "20");
    let held = counterexamples(&report, 4);
    assert!(
        held.iter()
            .any(|e| e.contains("CANCELLED with {") && e.contains("held, expected {}")),
        "{held:?}"
    );
}

#[test]
fn a_short_run_on_a_cluster_loses_nothing_when_its_nodes_die_or_stall() {
    // Seed 4 pauses node 2, kills node 1, then node 2 (drawn with --cluster 3 --dry-run).
    let (passed, report) = chaos(&[
        "--seed",
        "4",
        "--duration",
        "40s",
        "--rate",
        "3",
        "--cluster",
        "3",
        "--faults",
        "broker,kill",
    ]);
    assert!(passed, "{:#}", report["checks"]);
    assert_eq!(failed(&report), Vec::<u64>::new());
    let nodes_hit: std::collections::BTreeSet<u64> = report["plan"]["faults"]
        .as_array()
        .expect("plan")
        .iter()
        .filter_map(|f| f["node"].as_u64())
        .collect();
    assert!(
        nodes_hit.len() >= 2,
        "faults on several nodes: {nodes_hit:?}"
    );
    assert!(
        report["orders"]["accepted"].as_u64() > Some(60),
        "orders went through: {:#}",
        report["orders"]
    );
    assert!(report["replay"]
        .as_str()
        .is_some_and(|r| r.contains("--cluster 3")));
    assert_eq!(report["processes"]["crashes"], serde_json::json!([]));
}

/// Seed 9 with two instances of every service (and `extra` flags), 40 s of kills, pauses and
/// lost databases: every invariant held, no crash, and the report's replay line names `flags`.
fn seed_9_with_two_instances(dir: &tempfile::TempDir, extra: &[&str], flags: &str) -> Value {
    let mut args = vec![
        "--seed",
        "9",
        "--duration",
        "40s",
        "--rate",
        "3",
        "--faults",
        "kill,pause,db-loss",
        "--instances",
        "2",
    ];
    args.extend(extra);
    let (passed, report) = chaos_in(dir, &args);
    assert!(passed, "{:#}", report["checks"]);
    assert_eq!(failed(&report), Vec::<u64>::new());
    assert!(report["replay"].as_str().is_some_and(|r| r.contains(flags)));
    assert_eq!(report["processes"]["crashes"], serde_json::json!([]));
    report
}

#[test]
fn a_short_run_with_two_instances_of_every_service_fails_over_and_loses_nothing() {
    // Seed 9 pauses shipment, kills shipment twice, order and payment, and loses payment's
    // database (drawn with --instances 2 --dry-run); each hits the instance that owns it.
    let dir = tempfile::tempdir().expect("temp dir");
    seed_9_with_two_instances(&dir, &[], "--instances 2");
    // An instance says it is up once it owns its service: six at the start, and once more at
    // every takeover by a standby.
    let mut owned = 0;
    for log in std::fs::read_dir(dir.path().join("run/logs")).expect("logs") {
        let log = log.expect("log").path();
        if log.to_string_lossy().contains('@') {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            owned += text.matches(" is up").count();
        }
    }
    assert!(owned > 6, "standbys took over ({owned} terms began)");
}

#[test]
fn a_short_run_over_two_partitions_with_two_instances_loses_nothing() {
    // Seed 9's faults again, now with the services split over two partitions (stock by SKU),
    // each instance the home of one. A killed instance is back within 4 s, before its
    // partitions stayed free for the away instance's wait (bin/tests/instances.rs has a
    // takeover).
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = "--instances 2 --partitions 2";
    let report = seed_9_with_two_instances(&dir, &["--partitions", "2"], flags);
    // Orders with lines in both SKU shards were reserved shard by shard.
    let chained = report["orders"]["across_shards"].as_u64().unwrap_or(0);
    assert!(chained > 0, "{:#}", report["orders"]);
    // One database per partition of the split services, each kept by its home instance.
    let run = dir.path().join("run");
    for service in ["order", "payment", "shipment", "inventory", "store"] {
        for home in [format!("{service}@a.p0"), format!("{service}@b.p1")] {
            // payment@a's were deleted by the lost-database fault, and rebuilt on its return.
            assert!(run.join(&home).is_dir(), "{home} missing");
        }
        assert!(
            !run.join(format!("{service}@a")).exists(),
            "{service} is split"
        );
    }
}
