//! `commerce bench scale`: the saga with every component its own process (as `commerce chaos`
//! runs them, with no faults) on one broker node, on a cluster of three with every stream on all
//! three, on that cluster with every service run twice (`commerce run … --instance`, one owner
//! and one standby each), and with the streams over two partitions, each instance the home of
//! one: orders/s and latency as ratios to the single node, in one run.

use std::path::Path;

use actors::settings::Overrides;
use actors::Settings;

use super::saga::{
    card_token_at, offered, operator_token_for, print_table, Load, RoundResult, HELD,
};
use crate::chaos::world::World;

/// What the components run with: simulators on free ports, nothing else changed.
const SETTINGS: &str = r#"# written by `commerce bench scale`
[simulators]
payment_gateway_addr = "127.0.0.1:0"
carrier_addr = "127.0.0.1:0"
"#;

/// (label, broker nodes, instances of every service, partitions)
const SETUPS: [(&str, usize, usize, u32); 4] = [
    ("1 node, 1 instance", 1, 1, 1),
    ("3 nodes, 1 instance", 3, 1, 1),
    ("3 nodes, 2 instances", 3, 2, 1),
    ("3 nodes, 2 inst., 2 part.", 3, 2, 2),
];

pub async fn run(orders: usize, rates: &[u32]) -> anyhow::Result<()> {
    let mut measured: Vec<(&str, Vec<RoundResult>)> = Vec::new();
    for (label, nodes, instances, partitions) in SETUPS {
        eprintln!("bench: {label}");
        let results = measure(orders, rates, nodes, instances, partitions).await?;
        print_table(label, orders, &results);
        measured.push((label, results));
    }
    let Some((base_label, base)) = measured.first() else {
        return Ok(());
    };
    println!();
    println!("As ratios to {base_label} (achieved orders/s, p99):");
    print!("{:>14}", "offered/s");
    for (label, _) in &measured[1..] {
        print!(" {label:>24}");
    }
    println!();
    for (i, first) in base.iter().enumerate() {
        print!("{:>14}", offered(first.rate));
        for (_, results) in &measured[1..] {
            let r = &results[i];
            let cell = format!(
                "{:.2}, {:.2}",
                r.achieved / first.achieved,
                r.p99 / first.p99
            );
            print!(" {cell:>24}");
        }
        println!();
    }
    Ok(())
}

/// A fresh world of processes with `nodes` broker nodes, `instances` of every service and the
/// streams over `partitions`, each rate offered in turn.
async fn measure(
    orders: usize,
    rates: &[u32],
    nodes: usize,
    instances: usize,
    partitions: u32,
) -> anyhow::Result<Vec<RoundResult>> {
    let dir = tempfile::Builder::new()
        .prefix("commerce-bench-scale-")
        .tempdir()?;
    let settings = write_settings(dir.path(), nodes, partitions)?;
    let config = dir.path().join("bench.toml");
    let world = World::up(dir.path(), &settings, config, None, instances).await?;
    let outcome = offer_all(&world, &settings, orders, rates).await;
    world.stop().await;
    outcome.map_err(|e| {
        let kept = dir.keep();
        e.context(format!("data and logs kept in {}", kept.display()))
    })
}

async fn offer_all(
    world: &World,
    settings: &Settings,
    orders: usize,
    rates: &[u32],
) -> anyhow::Result<Vec<RoundResult>> {
    // The world's settings name its directory as the data dir, where its signing key is.
    let headers = operator_token_for(settings)?;
    let token = card_token_at(&world.payment_gateway).await?;
    let load = Load::start(
        world.operator.clone(),
        world.http.clone(),
        headers,
        token,
        false,
    )
    .await?;
    // CPU as `bench saga` counts it: the components (here their processes, with this one's
    // load) and the broker (here every node).
    let (components, brokers) = world.pids();
    let cpu = || {
        let sum = |pids: &[u32]| {
            pids.iter()
                .map(|pid| super::soak::cpu_ms(&pid.to_string()))
                .sum::<f64>()
        };
        (
            super::soak::cpu_ms("self") + sum(&components),
            sum(&brokers),
        )
    };
    let mut results = Vec::with_capacity(rates.len());
    for (round, &rate) in rates.iter().enumerate() {
        let before = cpu();
        let offered = load.offer(round, orders, rate, HELD).await;
        let after = cpu();
        match offered {
            Ok(mut result) => {
                result.spent(orders, before, after);
                results.push(result)
            }
            Err(e) => {
                load.stop();
                return Err(e);
            }
        }
    }
    load.stop();
    Ok(results)
}

/// The run's settings file (`<dir>/bench.toml`, which every process reads) and its settings.
fn write_settings(dir: &Path, nodes: usize, partitions: u32) -> anyhow::Result<Settings> {
    let config = dir.join("bench.toml");
    let text = format!(
        "nats_cluster = {nodes}\n{SETTINGS}\n[streams]\nreplicas = {}\npartitions = {partitions}\n",
        nodes.min(3)
    );
    std::fs::write(&config, text)?;
    Ok(Settings::load(
        Some(&config),
        &Overrides {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )?)
}
