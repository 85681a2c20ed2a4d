//! `commerce bench soak`: a long run at a steady rate, to show cost stays flat as history grows.
//! Per window of orders: orders/s, latency (`POST /orders` → `OrderConfirmed`), the RSS of each
//! process (this one: every component, the gateway and the load; the simulators, in a process of
//! their own; nats-server), disk bytes per order so far (streams, each component's sled
//! database), and the CPU time each process spent per order in the window (the cost per order,
//! however loaded the machine). The customer cancels each order once it is confirmed (its
//! parcel is held, so the cancel wins: refund, release), so the seeded stock lasts any number of
//! orders and every order closes in every service; retention trims outbox and inbox rows after
//! minutes, not days, so trimming runs during the soak.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use actors::Settings;
use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::saga::{Running, HELD};

pub async fn run(
    orders: usize,
    window: usize,
    rate: u32,
    hops: bool,
    mut settings: Settings,
) -> anyhow::Result<()> {
    settings.outbox_retention_secs = 60;
    settings.inbox_retention_secs = 300;
    // Short retention, so trimming runs; still within what the settings allow.
    settings.validate()?;
    // The simulators stand for the payment provider and the carrier, whose ledgers keep every
    // order by design: in a process of their own, their memory is not counted as the system's.
    let outside = OutsideSystems::start(&settings).await?;
    settings.payment_gateway_url = Some(outside.payment_gateway.clone());
    settings.carrier_url = Some(outside.carrier.clone());
    let running = Running::start_with(settings, true).await?;
    let nats_pid = running.broker_pid();
    let data = running.dir.path().to_path_buf();
    let js = async_nats::jetstream::new(super::saga::operator(&running.system)?);
    println!(
        "Soak: {orders} orders at {rate}/s, each cancelled once confirmed, reported per {window} \
         (latency: POST /orders → OrderConfirmed)"
    );
    println!(
        "{:>9} {:>10} {:>8} {:>8} {:>10} {:>9} {:>10} {:>9} {:>9} {:>12}",
        "orders",
        "orders/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "sims MiB",
        "nats MiB",
        "CPU ms/o",
        "nats ms/o",
        "disk B/order"
    );
    let mut rows = Vec::new();
    let mut done = 0;
    let mut cpu_before = cpu_now(nats_pid.as_deref());
    for round in 0.. {
        if done >= orders {
            break;
        }
        let n = window.min(orders - done);
        let offered = running.load.offer(round, n, rate, HELD);
        let (result, window_hops) = super::hops::around(&js, hops, offered).await?;
        done += n;
        let rss = rss_mib("self");
        let sims = rss_mib(&outside.pid);
        let nats = nats_pid.as_deref().map_or(f64::NAN, rss_mib);
        let disk = dir_bytes(&data) as f64 / done as f64;
        let cpu = cpu_now(nats_pid.as_deref());
        let (cpu_self, cpu_nats) = (
            (cpu.0 - cpu_before.0) / n as f64,
            (cpu.1 - cpu_before.1) / n as f64,
        );
        cpu_before = cpu;
        println!(
            "{:>9} {:>10.1} {:>8.1} {:>8.1} {:>10.1} {:>9.1} {:>10.1} {:>9.2} {:>9.2} {:>12.0}",
            done,
            result.achieved,
            result.p50,
            result.p99,
            rss,
            sims,
            nats,
            cpu_self,
            cpu_nats,
            disk
        );
        if let Some(window_hops) = window_hops {
            super::hops::print(&format!("orders {}-{done}", done - n + 1), &window_hops);
        }
        rows.push((result, rss, sims));
    }
    println!();
    println!("disk after {done} orders, bytes per order:");
    let mut parts: Vec<(String, u64)> = std::fs::read_dir(&data)?
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                dir_bytes(&e.path()),
            )
        })
        .collect();
    parts.sort();
    for (name, bytes) in parts {
        println!("  {name:<16} {:>10.0}", bytes as f64 / done as f64);
    }
    if let (Some((first, ..)), Some((last, last_rss, last_sims))) = (rows.first(), rows.last()) {
        // The first window warms up (caches, allocator); growth is measured after it.
        let (warm_rss, warm_sims) = rows
            .get(1)
            .map_or((f64::NAN, f64::NAN), |(_, rss, sims)| (*rss, *sims));
        println!();
        println!(
            "last window / first: orders/s {:.3}, p99 {:.3}; RSS last / second window {:.3} \
             (the simulators' {:.3})",
            last.achieved / first.achieved,
            last.p99 / first.p99,
            last_rss / warm_rss,
            last_sims / warm_sims
        );
    }
    println!(
        "client retries (503 or no answer, sent again under the same Idempotency-Key): {}",
        running
            .load
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    running.stop().await;
    outside.stop().await;
    Ok(())
}

/// `commerce run simulators`, a child of this process, and where it listens.
struct OutsideSystems {
    child: tokio::process::Child,
    pid: String,
    payment_gateway: String,
    carrier: String,
    _dir: tempfile::TempDir,
}

impl OutsideSystems {
    async fn start(settings: &Settings) -> anyhow::Result<OutsideSystems> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let sims = &settings.simulators;
        let mut child = tokio::process::Command::new(&exe)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["run", "simulators"])
            .env("COMMERCE_SIMULATORS__PAYMENT_GATEWAY_ADDR", "127.0.0.1:0")
            .env("COMMERCE_SIMULATORS__CARRIER_ADDR", "127.0.0.1:0")
            .env(
                "COMMERCE_SIMULATORS__CARRIER_PICKUP_MS",
                sims.carrier_pickup_ms.to_string(),
            )
            .env(
                "COMMERCE_SIMULATORS__CARRIER_DELIVERY_MS",
                sims.carrier_delivery_ms.to_string(),
            )
            // It stops when this process is gone, however this one ends.
            .env(crate::launch::EXIT_WITH_PARENT, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} run simulators", exe.display()))?;
        let pid = child
            .id()
            .context("the simulators exited at once")?
            .to_string();
        let stdout = child.stdout.take().context("the simulators' output")?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = async {
            let (mut payment_gateway, mut carrier) = (None, None);
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.trim().strip_prefix("payment gateway: ") {
                    payment_gateway = Some(url.to_string());
                } else if let Some(url) = line.trim().strip_prefix("carrier: ") {
                    carrier = Some(url.to_string());
                }
                if let (Some(payment_gateway), Some(carrier)) = (&payment_gateway, &carrier) {
                    return Ok((payment_gateway.clone(), carrier.clone()));
                }
            }
            anyhow::bail!("the simulators stopped before they listened (see above)")
        };
        let (payment_gateway, carrier) = tokio::time::timeout(Duration::from_secs(30), listening)
            .await
            .context("the simulators did not say where they listen within 30 s")??;
        // Keep reading what it says, so it never waits on a full pipe.
        let mut rest = lines.into_inner();
        actix_rt::spawn(async move { tokio::io::copy(&mut rest, &mut tokio::io::sink()).await });
        Ok(OutsideSystems {
            child,
            pid,
            payment_gateway,
            carrier,
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        // Closing its stdin stops it cleanly; kill it should it not.
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The resident set of process `pid` (`self` for this one) in MiB, from `/proc`.
pub(super) fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// CPU time so far of this process and of process `other` (NaN without one), in ms.
pub(super) fn cpu_now(other: Option<&str>) -> (f64, f64) {
    (cpu_ms("self"), other.map_or(f64::NAN, cpu_ms))
}

/// CPU time (user + system) process `pid` (`self` for this one) used so far, in ms, from
/// `/proc` (fields 14 and 15 of `stat`, in clock ticks).
pub(super) fn cpu_ms(pid: &str) -> f64 {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces: count fields after its closing parenthesis.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) * 1000.0 / ticks_per_s)
        })
        .unwrap_or(f64::NAN)
}

/// Bytes of every file under `path`.
fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}
