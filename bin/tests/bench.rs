//! The benchmarks a person runs keep working: a small `bench null`, `bench saga`, `bench soak`,
//! `bench scale`, `bench reads` and `bench subjects` end to end, their reports complete and
//! their numbers readable. (What they measure is for the README, not for assertions: the
//! machines are shared.)

mod support;

use support::commerce;

/// Run `commerce bench <args>`, insisting it succeeds; its report.
fn bench(args: &[&str]) -> String {
    let out = commerce().arg("bench").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The numbers on the report line that starts with `label`.
fn numbers(report: &str, label: &str) -> Vec<f64> {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line {label:?} in:\n{report}"));
    line.split_whitespace()
        .filter_map(|w| w.trim_end_matches(['/', 'x']).parse().ok())
        .collect()
}

#[test]
fn bench_null_measures_the_pipeline_and_the_saga_and_their_ratio() {
    let report = bench(&["null", "--orders", "40", "--saga-rate", "200"]);
    let null = numbers(&report, "null pipeline");
    let saga = numbers(&report, "saga, offered");
    assert!(null[0] > 0.0 && saga[0] > 0.0, "{report}");
    let ratio = numbers(&report, "saga / null:")[0];
    assert!((ratio - saga[0] / null[0]).abs() < 0.01, "{report}");
}

#[test]
fn bench_soak_reports_every_window_and_where_the_disk_went() {
    let report = bench(&[
        "soak", "--orders", "60", "--window", "20", "--rate", "60", "--hops",
    ]);
    for done in ["20", "40", "60"] {
        let values = numbers(&report, &format!("{done} "));
        assert_eq!(values.len(), 10, "window ending at {done}:\n{report}");
        assert!(
            values.iter().all(|v| *v > 0.0),
            "orders/s, latency, RSS (ours, the simulators', nats'), CPU per order, disk: {values:?}"
        );
    }
    for part in ["nats", "order", "payment", "inventory", "projection"] {
        let bytes = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(part))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|b| b.parse::<f64>().ok());
        assert!(bytes.is_some_and(|b| b > 0.0), "{part}:\n{report}");
    }
    assert!(report.contains("last window / first"), "{report}");
    assert!(report.contains("(the simulators' "), "{report}");
    // With --hops, where each window's time went: its own orders' confirmations, no others.
    for window in ["1-20", "21-40", "41-60"] {
        let table = report
            .split(&format!("Where the time went at orders {window}"))
            .nth(1)
            .unwrap_or_else(|| panic!("no hops for orders {window}:\n{report}"));
        let confirmed = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some("OrderConfirmed"))
            .and_then(|l| l.split_whitespace().nth(1));
        assert_eq!(confirmed, Some("20"), "orders {window}:\n{report}");
    }
}

#[test]
fn bench_scale_measures_each_setup_as_processes_and_their_ratios() {
    let report = bench(&["scale", "--orders", "20", "--rates", "0"]);
    for setup in [
        "1 node, 1 instance",
        "3 nodes, 1 instance",
        "3 nodes, 2 instances",
        "3 nodes, 2 inst., 2 part.",
    ] {
        assert!(
            report.contains(&format!("End to end ({setup})")),
            "{setup}:\n{report}"
        );
    }
    // CPU per order, as `bench saga` prints it: the components' processes (with the load) and
    // the broker's nodes, all three of them here.
    let round = report
        .split("End to end (3 nodes, 1 instance)")
        .nth(1)
        .and_then(|table| {
            table
                .lines()
                .find(|l| l.trim_start().starts_with("all at once"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no round of 3 nodes:
{report}"
            )
        });
    // The last column, the read model's trail, is `bench saga`'s alone ("-" here).
    let cpu: Vec<f64> = round
        .split_whitespace()
        .rev()
        .skip(1)
        .take(2)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        cpu.len() == 2 && cpu.iter().all(|v| *v > 0.0),
        "CPU ms/o: {round}"
    );
    let (_, ratios) = report
        .split_once("As ratios to 1 node, 1 instance")
        .unwrap_or_else(|| panic!("no ratios:\n{report}"));
    let row = ratios
        .lines()
        .find(|l| l.trim_start().starts_with("all at once"))
        .unwrap_or_else(|| panic!("no ratio row:\n{report}"));
    let values: Vec<f64> = row
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(values.len(), 6, "achieved and p99 for three setups: {row}");
    assert!(values.iter().all(|v| *v > 0.0), "{row}");
}

#[test]
fn bench_saga_measures_latency_cost_and_the_read_models_trail() {
    let report = bench(&["saga", "--orders", "20", "--rates", "0"]);
    let values = numbers(&report, "all at once");
    // achieved/s, p50, p99, max, CPU ms/o, nats ms/o, read ms
    assert_eq!(values.len(), 7, "{report}");
    assert!(values.iter().all(|v| *v > 0.0), "{report}");
    assert!(values[1] <= values[2] && values[2] <= values[3], "{report}");
    assert!(
        report.contains("Where the time went at all at once"),
        "{report}"
    );
}

#[test]
fn bench_reads_measures_each_round_of_rebuild_against_raw_consume() {
    let report = bench(&[
        "reads",
        "--orders",
        "10",
        "--rounds",
        "2",
        "--requests",
        "8",
    ]);
    let median = numbers(&report, "median ratio")[0];
    let mut ratios = Vec::new();
    for round in ["1", "2"] {
        // round, events, raw ev/s, rebuild ev/s, ratio
        let values = numbers(&report, &format!("{round} "));
        assert_eq!(values.len(), 5, "round {round}:\n{report}");
        // Each completed order is twelve events in six streams; the last (inventory's close)
        // may still be on its way when the projection shows the order completed.
        assert!(
            values[1] >= 110.0,
            "every order's events were read: {report}"
        );
        assert!(values[2] > 0.0 && values[3] > 0.0, "{report}");
        assert!((values[4] - values[3] / values[2]).abs() < 0.01, "{report}");
        ratios.push(values[4]);
    }
    // Of two rounds, the median printed is the higher ratio (the upper of the middle two).
    ratios.sort_by(f64::total_cmp);
    assert!((ratios[1] - median).abs() < 0.01, "{report}");
    for view in [
        "GET /orders/{id} (read model), healthy",
        "GET /orders/{id}/composed, payment +50ms",
        "with bulkhead + breaker",
    ] {
        assert_eq!(numbers(&report, view).len(), 2, "{view}:\n{report}");
    }
}

#[test]
fn bench_subjects_counts_a_subject_per_order_against_a_fixed_few() {
    let report = bench(&["subjects", "--messages", "2048", "--window", "1024"]);
    let (per_order, bounded) = report
        .split_once("64 subjects:")
        .unwrap_or_else(|| panic!("no bounded run in:\n{report}"));
    for (run, subjects) in [(per_order, [1024.0, 2048.0]), (bounded, [64.0, 64.0])] {
        for (done, expected) in ["1024 ", "2048 "].into_iter().zip(subjects) {
            let values = numbers(run, done);
            assert_eq!(values.len(), 8, "window ending at {done}:\n{report}");
            // The broker's CPU (column 6) is read from /proc in 10 ms ticks: a window of 1,024
            // messages may take less than one.
            let measured = |(column, v): (usize, &f64)| *v > 0.0 || (column == 6 && *v == 0.0);
            assert!(
                values.iter().enumerate().all(measured),
                "{values:?}\n{report}"
            );
            assert_eq!(values[7], expected, "subjects the stream holds:\n{report}");
        }
    }
    assert!(report.contains("last window / first:"), "{report}");
}
