//! `commerce chaos`: the whole system as separate OS processes on its own nats-server, a
//! seeded mix of orders, faults on a seeded schedule (quiet start, fault windows, fault-free
//! windows, heal, drain), then the invariants, in a report that starts with the seed.
//!
//! # Layout
//! - [`plan`]: the schedule the seed draws (pure).
//! - [`world`]: the processes, the broker, the simulators and the fault proxies.
//! - [`proxy`]: the TCP fault proxy.
//! - [`load`]: the clients.
//! - [`facts`]: what is gathered after the drain.
//! - [`invariants`]: the nine checks (pure).
//! - [`report`]: text for people, JSON for machines.

mod facts;
mod invariants;
mod load;
mod plan;
mod proxy;
mod report;
pub(crate) mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::contract::Status;
use actors::gateway::auth::{mint, Caller};
use actors::rpc::{call_at, Address, Routes};
use actors::{Component, Settings};
use anyhow::Context;

use self::plan::{Fault, Kind, Timings};
use self::world::World;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// The seed every random choice is drawn from (default: a random one, printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected (then heal and drain), e.g. 90s or 5m.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Orders offered per second while faults run.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// Fault kinds, comma-separated: kill, pause, broker, db-loss, simulators, net, seams
    /// (seams only in test builds). Default: all this build has.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<Kind>>,
    /// How long the sagas may take to end after the heal (default: twice the saga deadline
    /// plus a minute).
    #[arg(long, value_parser = humantime::parse_duration)]
    drain: Option<Duration>,
    /// Print the plan the seed draws (JSON) and stop: to read a run's schedule.
    #[arg(long)]
    dry_run: bool,
    /// Write the JSON report here too.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Where the run's databases, broker store and logs go: a new or empty directory (default:
    /// a new temporary one, deleted after a passing run). The global --data-dir, --config and
    /// --nats do not apply: a run brings its own broker and settings.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Test builds only: run every component with a deliberate bug (ack-before-flush,
    /// skip-inbox, skip-compensation), to show the invariants catch it.
    #[arg(long, value_name = "BUG")]
    r#break: Option<String>,
    /// The broker as a cluster of N nodes with every stream on min(N, 3) of them: broker
    /// faults then kill or pause one node at a time.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cluster: usize,
    /// Run every service as N instances (2 or 3), each its own process: one owns the service
    /// while it holds the lease, the others stand by. Kills, pauses, lost databases and seams
    /// then hit the owner, so a standby takes over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    instances: usize,
    /// Spread the streams over N partitions: the per-order services (order, payment,
    /// shipment) then run one host per partition; with --instances, partition k's home is
    /// instance k mod N, and the others take it over when its home dies.
    #[arg(long, value_name = "N", default_value_t = 1)]
    partitions: u32,
}

/// The settings every component of a chaos run starts with: short enough that a run of a
/// couple of minutes meets redeliveries, deadlines and breakers.
const CHAOS_SETTINGS: &str = r#"# written by `commerce chaos`
ack_wait_ms = 2000
saga_deadline_secs = 20
stuck_after_secs = 30
retry_backoff_ms = [200, 1000, 2000]
tracking_poll_ms = 200

[simulators]
payment_gateway_addr = "127.0.0.1:0"
carrier_addr = "127.0.0.1:0"
carrier_pickup_ms = 1000
carrier_delivery_ms = 1000
"#;

/// The client timeout of the services' calls to the simulators (`actors::external`).
const CLIENT_TIMEOUT_MS: u64 = 5_000;

pub async fn run(args: ChaosArgs, _settings: Settings) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..1_000_000));
    println!("chaos seed {seed}");
    let broken = match args.r#break.as_deref() {
        None => None,
        Some(bug) => Some(broken_mode(bug)?),
    };
    let kinds = match args.faults.clone() {
        Some(kinds) => kinds,
        None => Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Seams || bus::failpoints::COMPILED)
            .collect(),
    };
    anyhow::ensure!(
        !kinds.contains(&Kind::Seams) || bus::failpoints::COMPILED,
        "fault kind `seams` needs the failpoints of a test build (`cargo test` builds one)"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(
        (1..=world::INSTANCES.len()).contains(&args.instances),
        "--instances must be within 1..={}",
        world::INSTANCES.len()
    );
    anyhow::ensure!(
        (1..=64).contains(&args.partitions)
            && (args.partitions == 1 || args.instances <= args.partitions as usize),
        "--partitions must be within 1..=64, and at least --instances when above 1 (each \
         instance is the home of one)"
    );

    let (dir, temporary) = match &args.dir {
        Some(dir) => {
            // A run's logs are appended and its streams reused: a fresh directory only.
            let used = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
            anyhow::ensure!(
                !used,
                "--dir {} is not empty; give a new one",
                dir.display()
            );
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("commerce-chaos-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("chaos.toml");
    // Top-level keys before the tables. A standby takes over 3 s after its owner died.
    let settings_text = format!(
        "nats_cluster = {}\n{CHAOS_SETTINGS}\n[streams]\nreplicas = {}\nlease_ttl_ms = 3000\n\
         partitions = {}\n",
        args.cluster,
        args.cluster.min(3),
        args.partitions
    );
    std::fs::write(&config, settings_text)?;
    let settings = Settings::load(
        Some(&config),
        &actors::settings::Overrides {
            data_dir: Some(dir.clone()),
            ..Default::default()
        },
    )?;
    let timings = Timings {
        duration_ms: args.duration.as_millis() as u64,
        ack_wait_ms: settings.ack_wait_ms,
        saga_deadline_ms: settings.saga_deadline_secs * 1_000,
        client_timeout_ms: CLIENT_TIMEOUT_MS,
        nodes: settings.nats_cluster,
    };
    let plan = plan::draw(seed, &kinds, timings);
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    println!(
        "{} faults planned over {} s; data and logs in {}",
        plan.faults.len(),
        args.duration.as_secs(),
        dir.display()
    );

    let setup = Setup {
        args: &args,
        seed,
        kinds: &kinds,
        broken,
        plan: &plan,
        dir: &dir,
        config: &config,
        settings: &settings,
    };
    let outcome = execute(setup).await;
    if !matches!(&outcome, Ok(report) if report.passed) {
        if let Some(temp) = temporary {
            println!("data and logs kept in {}", temp.keep().display());
        }
    }
    let report = outcome?;
    print!("{}", report.text());
    if let Some(file) = &args.report {
        std::fs::write(file, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!("report: {}", file.display());
    }
    anyhow::ensure!(
        report.passed,
        "chaos run failed: {} of 9 invariants broken, {} crashes (seed {seed})",
        report.failed(),
        report.processes.crashes.len()
    );
    Ok(())
}

/// What a run is, once drawn.
struct Setup<'a> {
    args: &'a ChaosArgs,
    seed: u64,
    kinds: &'a [Kind],
    broken: Option<&'static str>,
    plan: &'a plan::Plan,
    dir: &'a std::path::Path,
    config: &'a std::path::Path,
    settings: &'a Settings,
}

/// Start the world, run the plan under load, heal, drain, check; the report.
async fn execute(setup: Setup<'_>) -> anyhow::Result<report::Report> {
    let Setup {
        args,
        seed,
        kinds,
        broken,
        plan,
        dir,
        config,
        settings,
    } = setup;
    let mut world = World::up(dir, settings, config.to_path_buf(), broken, args.instances).await?;
    let token = mint(dir, &Caller::Operator, Duration::from_secs(24 * 3600))?;
    let client = load::Client::new(&world.http, &token)?;
    let stock_before = facts::stock(&client).await?.0;

    // Clients keep retrying through the faults, and until the drain ends.
    let drain_bound = args
        .drain
        .unwrap_or(Duration::from_secs(settings.saga_deadline_secs * 2 + 60));
    let started = Instant::now();
    let clients_until = started + args.duration + drain_bound;
    let orders = (args.rate * args.duration.as_secs_f64()).ceil() as usize;
    let ledger: load::Shared = Arc::default();
    let clients = actix_rt::spawn(load::drive(
        client.clone(),
        seed,
        orders,
        args.rate,
        clients_until,
        ledger.clone(),
    ));

    let mut dedup = Dedup::default();
    let injected = inject(&mut world, plan, started, &mut dedup).await?;
    world.heal().await?;
    let healed = started.elapsed();
    println!("healed at {:.1} s; draining", healed.as_secs_f64());

    let _ = clients.await;
    let placed = load::lock(&ledger).placed.clone();
    let drained = facts::drain(&mut world, &placed, started + healed + drain_bound).await?;
    dedup.poll(&world.operator, world.routes).await;
    let mut gathered = facts::gather(&world, &client, placed, stock_before, config).await;
    gathered.drain_bound_s = drain_bound.as_secs();
    let checks = invariants::all(&gathered);

    let report = report::Report::new(report::Run {
        seed,
        args,
        kinds,
        broken,
        plan,
        injected,
        facts: &gathered,
        processes: world.counts.clone(),
        links: world.link_stats(),
        dedup: dedup.totals(),
        drained_s: drained.as_secs_f64(),
        checks,
        dir,
    });
    world.stop().await;
    Ok(report)
}

fn broken_mode(bug: &str) -> anyhow::Result<&'static str> {
    anyhow::ensure!(
        bus::failpoints::COMPILED,
        "--break needs the failpoints of a test build (`cargo test` builds one)"
    );
    bus::failpoints::BROKEN_MODES
        .into_iter()
        .find(|m| m.trim_start_matches("broken.").replace('_', "-") == bug)
        .with_context(|| {
            format!("unknown bug {bug:?}: ack-before-flush, skip-inbox or skip-compensation")
        })
}

/// Run the plan: each fault at its time, undone when it lasts out; processes that died by
/// themselves started again. Returns how many faults of each kind were injected.
async fn inject(
    world: &mut World,
    plan: &plan::Plan,
    started: Instant,
    dedup: &mut Dedup,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut timeline: Vec<(u64, bool, &Fault)> = Vec::new();
    for s in &plan.faults {
        timeline.push((s.at_ms, true, &s.fault));
        if !matches!(s.fault, Fault::Seam { .. }) {
            timeline.push((s.at_ms + s.fault.lasts_ms(), false, &s.fault));
        }
    }
    timeline.sort_by_key(|(at, begins, _)| (*at, *begins));
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut next = timeline.into_iter().peekable();
    let mut polled = Instant::now();
    let heal_at = started + Duration::from_millis(plan.heal_at_ms);
    while Instant::now() < heal_at {
        let now = started.elapsed().as_millis() as u64;
        while let Some((_, begins, fault)) = next.next_if(|(at, _, _)| *at <= now) {
            if begins {
                *injected.entry(fault.kind().name()).or_default() += 1;
                println!("{:>7.1} s  {}", now as f64 / 1000.0, describe(fault));
            }
            if let Err(e) = apply(world, fault, begins).await {
                println!("          could not apply: {e:#}");
            }
        }
        world.tend()?;
        if polled.elapsed() >= Duration::from_secs(2) {
            dedup.poll(&world.operator, world.routes).await;
            polled = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(injected)
}

/// Begin (or undo) one fault.
async fn apply(world: &mut World, fault: &Fault, begins: bool) -> anyhow::Result<()> {
    match (fault, begins) {
        (Fault::Kill { component, .. }, true) => world.kill(component).await,
        (Fault::Kill { component, .. }, false) => world.start(component)?,
        (Fault::Pause { component, .. }, stop) => world.pause(component, stop).await,
        (Fault::KillBroker { node, .. }, true) => world.kill_broker(*node),
        (Fault::KillBroker { node, .. }, false) => world.restart_broker(*node).await?,
        (Fault::PauseBroker { node, .. }, stop) => world.pause_broker(*node, stop),
        (Fault::LoseDatabase { service, .. }, true) => world.lose_database(service).await?,
        (Fault::LoseDatabase { service, .. }, false) => world.start(service)?,
        (
            Fault::Simulator {
                simulator, faults, ..
            },
            true,
        ) => world.set_simulator(simulator, *faults).await?,
        (Fault::Simulator { simulator, .. }, false) => {
            world
                .set_simulator(simulator, plan::SimFaults::CALM)
                .await?
        }
        (Fault::Network { link, mode, .. }, true) => world.set_link(link, Some(*mode)),
        (Fault::Network { link, .. }, false) => world.set_link(link, None),
        (Fault::Seam { component, seam }, _) => world.arm(component, seam).await?,
    }
    Ok(())
}

fn describe(fault: &Fault) -> String {
    match fault {
        Fault::Kill { component, down_ms } => format!("SIGKILL {component}, down {down_ms} ms"),
        Fault::Pause { component, ms } => format!("SIGSTOP {component} for {ms} ms"),
        Fault::KillBroker { node, down_ms } => {
            format!("SIGKILL nats-server (node {node}), down {down_ms} ms")
        }
        Fault::PauseBroker { node, ms } => format!("SIGSTOP nats-server (node {node}) for {ms} ms"),
        Fault::LoseDatabase { service, down_ms } => {
            format!("SIGKILL {service} and delete its database, down {down_ms} ms")
        }
        Fault::Simulator {
            simulator,
            faults,
            ms,
        } => format!(
            "{simulator}: latency {} ms, errors {:.0}%, outage {} for {ms} ms",
            faults.latency_ms,
            faults.error_rate * 100.0,
            faults.outage
        ),
        Fault::Network { link, mode, ms } => format!("link {link}: {mode:?} for {ms} ms"),
        Fault::Seam { component, seam } => format!("{component}: crash at seam {seam}"),
    }
}

/// The dedup paths' counters, summed over each service's restarts (they count from start).
#[derive(Default)]
struct Dedup {
    /// Per service: the last reading, and the sum of readings before each restart.
    seen: BTreeMap<Address, ([u64; 3], [u64; 3])>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DedupTotals {
    pub redelivered: u64,
    pub duplicates_dropped_by_inboxes: u64,
    pub duplicate_publishes: u64,
}

impl Dedup {
    /// Read every service's counters at once (a paused one costs 300 ms, not the schedule).
    async fn poll(&mut self, operator: &async_nats::Client, routes: Routes) {
        let every = Component::SERVICES.into_iter().flat_map(|s| routes.all(s));
        let asks = every.map(|service| async move {
            let answer = tokio::time::timeout(
                Duration::from_millis(300),
                call_at::<Status>(operator, service, &()),
            )
            .await;
            (service, answer)
        });
        for (service, answer) in futures::future::join_all(asks).await {
            let Ok(Ok(s)) = answer else { continue };
            let now = [s.redelivered, s.duplicates_dropped, s.relay_duplicates];
            let (last, before) = self.seen.entry(service).or_default();
            if now.iter().zip(last.iter()).any(|(n, l)| n < l) {
                for (b, l) in before.iter_mut().zip(last.iter()) {
                    *b += l; // it restarted: its counters began again
                }
            }
            *last = now;
        }
    }

    fn totals(&self) -> DedupTotals {
        let sum = |i: usize| self.seen.values().map(|(l, b)| l[i] + b[i]).sum();
        DedupTotals {
            redelivered: sum(0),
            duplicates_dropped_by_inboxes: sum(1),
            duplicate_publishes: sum(2),
        }
    }
}
