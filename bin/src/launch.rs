//! `commerce up` and `commerce run <component>`: start, print where things are, run until a
//! stop signal, stop cleanly.

use std::path::{Path, PathBuf};

use actors::{Component, Settings, System};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Where `up` tells other commands which broker it is using.
pub fn url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats.url")
}

/// The data dir, created if needed and readable by its owner only (databases, the broker's
/// store and logs of orders live under it).
fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make data dir {} private (0700)", dir.display()))
}

/// `commerce up`: the whole system; with `instances` above one, every service as that many
/// processes this one keeps running ([`crate::instances`]).
pub async fn up(
    settings: Settings,
    instances: usize,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    private_data_dir(&settings.data_dir)?;
    let data_dir = settings.data_dir.clone();
    let partitions = settings.streams.partitions;
    // Where the instances reach the outside systems: as set, or the simulators started here.
    let external = (
        settings.payment_gateway_url.clone(),
        settings.carrier_url.clone(),
    );
    anyhow::ensure!(
        (1..=16).contains(&instances) && (partitions <= 1 || instances as u32 <= partitions),
        "--instances must be within 1..=16, and at most the partitions ({partitions}) when there \
         are several (each instance is the home of at least one)"
    );
    // Listen before starting anything: a signal during start-up must not orphan nats-server.
    let mut stop = StopSignals::new()?;
    let system = tokio::select! {
        system = System::up_with(settings, instances == 1) => system?,
        // Dropping the start-up future drops (and so kills) a nats-server it had started.
        _ = stop.recv() => {
            println!("stopped during start-up");
            return Ok(());
        }
    };
    let endpoints = system.endpoints();
    let supervised = CancellationToken::new();
    let (mut supervisor, mut summary) = (None, None);
    if instances > 1 {
        let launch = crate::instances::Launch {
            exe: std::env::current_exe().context("cannot find this executable")?,
            data_dir: data_dir.clone(),
            config,
            nats: endpoints.nats.clone(),
            payment_gateway: external.0.or(endpoints.payment_gateway.clone()),
            carrier: external.1.or(endpoints.carrier.clone()),
            instances,
            partitions,
        };
        let started = tokio::select! {
            started = crate::instances::Instances::start(launch) => started,
            _ = stop.recv() => Err(anyhow::anyhow!("stopped during start-up")),
        };
        let running = match started {
            Ok(running) => running,
            Err(e) => {
                system.shutdown().await;
                return Err(e);
            }
        };
        summary = Some(format!(
            "  instances: {} (logs under {})",
            running.names().collect::<Vec<_>>().join(", "),
            data_dir.join("logs").display()
        ));
        supervisor = Some(actix_rt::spawn(running.supervise(supervised.clone())));
    }
    let url_file = url_file(&data_dir);
    let endpoints_file = data_dir.join("endpoints.json");
    std::fs::write(&url_file, &endpoints.nats)
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    std::fs::write(&endpoints_file, serde_json::to_string_pretty(&endpoints)?)
        .with_context(|| format!("cannot write {}", endpoints_file.display()))?;
    let kind = match &system.runtime.broker {
        actors::runtime::Broker::Embedded(_) => "embedded nats-server".to_string(),
        actors::runtime::Broker::Cluster(cluster) => {
            format!("embedded cluster of {} nats-servers", cluster.nodes().len())
        }
        actors::runtime::Broker::External(_) => "external".to_string(),
    };
    println!("commerce is up");
    println!("  nats: {} ({kind})", endpoints.nats);
    print_endpoints(&endpoints);
    println!("  data: {}", data_dir.display());
    println!(
        "  services: {}",
        Component::SERVICES.map(Component::name).join(", ")
    );
    if let Some(summary) = summary {
        println!("{summary}");
    }
    for (stream, outcome) in &system.runtime.streams {
        println!("  stream {stream}: {outcome:?}");
    }
    println!("Press Ctrl-C to stop.");
    let must_restart = actors::engine::host::must_restart();
    let on_its_own = tokio::select! {
        _ = stop.recv() => false,
        _ = must_restart.cancelled() => true,
    };
    println!("stopping…");
    supervised.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    let _ = std::fs::remove_file(&url_file);
    let _ = std::fs::remove_file(&endpoints_file);
    system.shutdown().await;
    // Or a component's last flush failed.
    let on_its_own = on_its_own || must_restart.is_cancelled();
    anyhow::ensure!(!on_its_own, "commerce {STOPPED_ON_ITS_OWN}");
    println!("commerce stopped cleanly");
    Ok(())
}

/// Why a process stopped without being asked to.
const STOPPED_ON_ITS_OWN: &str =
    "stopped on its own: a component must not go on (a lost lease, or a database that refused \
     writes after a failed flush); the reason is logged above";

pub async fn run(component: Component, mut settings: Settings) -> anyhow::Result<()> {
    private_data_dir(&settings.data_dir)?;
    // The simulators stand for outside systems: they need no broker.
    if settings.nats_url.is_none() && component != Component::Simulators {
        let file = url_file(&settings.data_dir);
        let url = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "`commerce run` needs a running broker: give --nats URL (or NATS_URL), \
                 or start `commerce up` with the same --data-dir ({} not found)",
                file.display()
            )
        })?;
        settings.nats_url = Some(url.trim().to_string());
    }
    if let Some(instance) = &settings.instance {
        anyhow::ensure!(
            Component::SERVICES.contains(&component),
            "--instance is for the services ({}); {component} runs as one instance",
            Component::SERVICES.map(Component::name).join(", ")
        );
        let leases: Vec<String> = settings
            .routes()
            .all(component)
            .iter()
            .map(|at| bus::lease::key(component.name(), at.partition.unwrap_or(0)))
            .collect();
        println!(
            "commerce {component} instance {instance}: taking the lease on {}, \
             or waiting as a standby while another instance holds it",
            leases.join(", ")
        );
    }
    let mut stop = StopSignals::new()?;
    let parent_gone = parent_gone();
    let system = tokio::select! {
        system = System::run(component, settings) => system?,
        _ = stop.recv() => return Ok(()),
        _ = parent_gone.cancelled() => return Ok(()),
    };
    let endpoints = system.endpoints();
    println!("commerce {component} is up");
    if component != Component::Simulators {
        println!("  nats: {}", endpoints.nats);
    }
    print_endpoints(&endpoints);
    let stopping = system.stopping();
    let must_restart = actors::engine::host::must_restart();
    let on_its_own = tokio::select! {
        _ = stop.recv() => false,
        _ = parent_gone.cancelled() => false,
        _ = stopping.cancelled() => true,
        _ = must_restart.cancelled() => true,
    };
    system.shutdown().await;
    let on_its_own = on_its_own || must_restart.is_cancelled();
    anyhow::ensure!(!on_its_own, "commerce {component} {STOPPED_ON_ITS_OWN}");
    println!("commerce {component} stopped cleanly");
    Ok(())
}

fn print_endpoints(endpoints: &actors::system::Endpoints) {
    if let Some(http) = &endpoints.http {
        println!("  http: {http}");
    }
    if let Some(admin) = &endpoints.admin {
        println!("  admin: {admin} (/metrics, /dashboard)");
    }
    if let Some(url) = &endpoints.payment_gateway {
        println!("  payment gateway: {url}");
    }
    if let Some(url) = &endpoints.carrier {
        println!("  carrier: {url}");
    }
}

/// Ctrl-C (SIGINT), SIGTERM or SIGHUP: each means "shut down cleanly".
/// Set by a process on the children it starts (`commerce up --instances`, `bench soak`'s
/// simulators): each stops when its stdin (a pipe from that parent) closes, so none outlives a
/// parent that was killed.
pub const EXIT_WITH_PARENT: &str = "EXIT_WITH_PARENT_COMMERCE_UP";

/// Cancelled when this process should stop because the process that started it is gone;
/// never, unless [`EXIT_WITH_PARENT`] is set.
fn parent_gone() -> CancellationToken {
    let gone = CancellationToken::new();
    if std::env::var_os(EXIT_WITH_PARENT).is_some() {
        let token = gone.clone();
        // A thread of its own: a blocking read that never ends must not hold up the runtime's
        // shutdown (this thread does not keep the process alive).
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 256];
            while let Ok(1..) = std::io::stdin().read(&mut buffer) {}
            tracing::warn!("the process that started this one is gone (stdin closed): stopping");
            token.cancel();
        });
    }
    gone
}

struct StopSignals([tokio::signal::unix::Signal; 3]);

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ]))
    }

    async fn recv(&mut self) {
        let [int, term, hup] = &mut self.0;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
}
