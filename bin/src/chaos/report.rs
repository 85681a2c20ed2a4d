//! The run's report: the seed first, how to replay it, what was done, what was counted, and
//! each invariant with its counterexamples. Text for people, JSON (the same fields) for machines.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::invariants::{Check, Facts};
use super::plan::{Kind, Plan};
use super::proxy::ProxyStats;
use super::world::ProcessCounts;
use super::{ChaosArgs, DedupTotals};

/// Counterexamples shown per invariant in the text (the JSON has them all).
const SHOWN: usize = 15;

/// What a run hands the report.
pub struct Run<'a> {
    pub seed: u64,
    pub args: &'a ChaosArgs,
    pub kinds: &'a [Kind],
    pub broken: Option<&'static str>,
    pub plan: &'a Plan,
    pub injected: BTreeMap<&'static str, u64>,
    pub facts: &'a Facts,
    pub processes: ProcessCounts,
    pub links: BTreeMap<String, ProxyStats>,
    pub dedup: DedupTotals,
    pub drained_s: f64,
    pub checks: Vec<Check>,
    pub dir: &'a Path,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub passed: bool,
    /// The command that replays this run's schedule.
    pub replay: String,
    pub duration_s: u64,
    pub rate: f64,
    pub broken: Option<&'static str>,
    pub orders: Orders,
    pub faults_injected: BTreeMap<&'static str, u64>,
    pub processes: ProcessCounts,
    /// Each proxied link's connections and resets.
    pub links: BTreeMap<String, ProxyStats>,
    pub dedup: DedupTotals,
    pub drained_s: f64,
    pub drain_bound_s: u64,
    pub checks: Vec<Check>,
    pub plan: Plan,
    pub dir: String,
}

#[derive(Debug, Serialize)]
pub struct Orders {
    pub offered: usize,
    pub accepted: usize,
    /// Answered with a 4xx (e.g. a key reused): refused, nothing placed.
    pub refused: usize,
    /// Never answered, through every retry.
    pub unanswered: usize,
    pub by_path: BTreeMap<String, usize>,
    pub by_status: BTreeMap<String, usize>,
    /// Client retries of a request that got no definite answer.
    pub retries: u64,
    /// Orders whose stock was reserved shard by shard (`--partitions`: lines across SKU
    /// shards), in the warehouse or the stores.
    pub across_shards: usize,
}

impl Report {
    pub fn new(run: Run<'_>) -> Report {
        let f = run.facts;
        let mut by_path = BTreeMap::new();
        let mut by_status = BTreeMap::new();
        for p in &f.placed {
            let path = serde_json::to_value(p.path)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *by_path.entry(path).or_default() += 1;
            if let Some(id) = &p.order_id {
                let status = f
                    .rows
                    .get(id)
                    .and_then(Option::as_ref)
                    .and_then(|r| r.order_status.clone())
                    .unwrap_or_else(|| "MISSING".into());
                *by_status.entry(status).or_default() += 1;
            }
        }
        let across_shards: std::collections::BTreeSet<&str> = f
            .events
            .values()
            .flatten()
            .filter(|e| e.event_type.ends_with("LinesReserved"))
            .map(|e| e.subject.as_str())
            .collect();
        let orders = Orders {
            across_shards: across_shards.len(),
            offered: f.placed.len(),
            accepted: f.placed.iter().filter(|p| p.order_id.is_some()).count(),
            refused: f
                .placed
                .iter()
                .filter(|p| p.order_id.is_none() && p.answer.is_some())
                .count(),
            unanswered: f.placed.iter().filter(|p| p.answer.is_none()).count(),
            by_path,
            by_status,
            retries: f
                .placed
                .iter()
                .map(|p| u64::from(p.attempts.saturating_sub(1)))
                .sum(),
        };
        let kinds: Vec<&str> = run.kinds.iter().map(|k| k.name()).collect();
        let mut replay = format!(
            "commerce chaos --seed {} --duration {} --rate {} --faults {}",
            run.seed,
            humantime::format_duration(run.args.duration),
            run.args.rate,
            kinds.join(",")
        );
        if run.args.cluster > 1 {
            let _ = write!(replay, " --cluster {}", run.args.cluster);
        }
        if run.args.instances > 1 {
            let _ = write!(replay, " --instances {}", run.args.instances);
        }
        if run.args.partitions > 1 {
            let _ = write!(replay, " --partitions {}", run.args.partitions);
        }
        if let Some(drain) = run.args.drain {
            let _ = write!(replay, " --drain {}", humantime::format_duration(drain));
        }
        if let Some(bug) = run.broken {
            let _ = write!(
                replay,
                " --break {}",
                bug.trim_start_matches("broken.").replace('_', "-")
            );
        }
        Report {
            seed: run.seed,
            passed: run.checks.iter().all(|c| c.passed) && run.processes.crashes.is_empty(),
            replay,
            duration_s: run.args.duration.as_secs(),
            rate: run.args.rate,
            broken: run.broken,
            orders,
            faults_injected: run.injected,
            processes: run.processes,
            links: run.links,
            dedup: run.dedup,
            drained_s: run.drained_s,
            drain_bound_s: f.drain_bound_s,
            checks: run.checks,
            plan: run.plan.clone(),
            dir: run.dir.display().to_string(),
        }
    }

    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        let verdict = if self.passed {
            "PASSED".to_string()
        } else {
            format!(
                "FAILED ({} of {} invariants)",
                self.failed(),
                self.checks.len()
            )
        };
        let _ = writeln!(t, "\nchaos run, seed {}: {verdict}", self.seed);
        let _ = writeln!(t, "replay: {}", self.replay);
        if let Some(bug) = self.broken {
            let _ = writeln!(t, "deliberate bug: {bug}");
        }
        let o = &self.orders;
        let _ = writeln!(
            t,
            "orders: {} offered, {} accepted, {} refused, {} never answered, {} client retries",
            o.offered, o.accepted, o.refused, o.unanswered, o.retries
        );
        let _ = writeln!(t, "  by path: {}", pairs(&o.by_path));
        let _ = writeln!(t, "  by status: {}", pairs(&o.by_status));
        if o.across_shards > 0 {
            let _ = writeln!(
                t,
                "  across SKU shards: {} (stock reserved shard by shard)",
                o.across_shards
            );
        }
        let total: u64 = self.faults_injected.values().sum();
        let _ = writeln!(
            t,
            "faults: {total} injected ({})",
            pairs(&self.faults_injected)
        );
        let p = &self.processes;
        let _ = writeln!(
            t,
            "processes: {} starts, {} seam crashes, {} stopped with an error",
            p.starts,
            p.seam_crashes,
            p.error_exits.len(),
        );
        for crash in &p.crashes {
            let _ = writeln!(t, "  CRASHED (a bug; fails the run): {crash}");
        }
        let (connections, resets) = self
            .links
            .values()
            .fold((0, 0), |(c, r), s| (c + s.connections, r + s.resets));
        let _ = writeln!(
            t,
            "links: {} proxied, {connections} connections, {resets} reset",
            self.links.len()
        );
        let d = &self.dedup;
        let _ = writeln!(
            t,
            "dedup: {} redeliveries, {} duplicates dropped by inboxes, {} duplicate publishes dropped by the broker",
            d.redelivered, d.duplicates_dropped_by_inboxes, d.duplicate_publishes
        );
        let _ = writeln!(
            t,
            "drain: {:.1} s (bound {} s)",
            self.drained_s, self.drain_bound_s
        );
        let _ = writeln!(t, "invariants:");
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(t, "  [{mark}] {}. {} ({})", c.number, c.name, c.checked);
            for example in c.counterexamples.iter().take(SHOWN) {
                let _ = writeln!(t, "         {example}");
            }
            if c.counterexamples.len() > SHOWN {
                let _ = writeln!(t, "         … and {} more", c.counterexamples.len() - SHOWN);
            }
        }
        let _ = writeln!(t, "data and logs: {}", self.dir);
        t
    }
}

fn pairs<K: std::fmt::Display, V: std::fmt::Display>(map: &BTreeMap<K, V>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
