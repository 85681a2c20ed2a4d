//! `commerce`: the launcher. Parses arguments, loads settings, starts things.

mod bench;
mod faults;
mod order;

use std::path::{Path, PathBuf};

use actors::settings::Overrides;
use actors::{Settings, System};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "commerce",
    version,
    about = "Choreographed commerce sagas on actors, sled and NATS JetStream"
)]
struct Cli {
    /// TOML settings file (see README: Configuration).
    #[arg(long, global = true, env = "COMMERCE_CONFIG")]
    config: Option<PathBuf>,
    /// Root directory of every service database and the embedded broker's store.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Use this NATS server instead of starting an embedded one (also: NATS_URL).
    #[arg(long = "nats", global = true, value_name = "URL")]
    nats_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything in one process: the embedded nats-server (unless --nats), the
    /// simulators, all six services and the HTTP gateway. Ctrl-C stops it cleanly.
    Up {
        /// Port for the embedded nats-server (a free one is picked if it is taken).
        #[arg(long)]
        nats_port: Option<u16>,
        /// Where the HTTP gateway listens (port 0: any free port).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Run one component in this process, on a running broker (--nats, NATS_URL, or the one a
    /// `commerce up` in the same --data-dir uses): order, payment, inventory, store, shipment,
    /// recommendation, gateway or simulators.
    Run {
        component: String,
        /// Where the HTTP gateway listens (component `gateway`).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Throw the service's database away and rebuild it from its own stream (an empty or
        /// missing database is rebuilt anyway).
        #[arg(long)]
        rebuild: bool,
    },
    /// Show streams, consumer lag, and each service's outbox depth.
    Status,
    /// Place, show or cancel an order.
    #[command(subcommand)]
    Order(order::OrderCommand),
    /// Show or change a simulator's faults (for demos): latency, error rate, outage.
    Faults {
        /// `payment-gateway` or `carrier`.
        simulator: String,
        /// Added to every call, in ms.
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Share of calls answered with 500 (0.0 to 1.0).
        #[arg(long)]
        error_rate: Option<f64>,
        /// Answer every call with 503 (true), or not (false).
        #[arg(long)]
        outage: Option<bool>,
        /// Clear every fault.
        #[arg(long, conflicts_with_all = ["latency_ms", "error_rate", "outage"])]
        clear: bool,
    },
    /// The read model: `rebuild` replays every stream into a new generation, then switches.
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// Measure the bus and the saga against their limits, in one run.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ProjectionCommand {
    /// Rebuild the order read model from sequence 1 of every stream, with a progress bar;
    /// queries keep answering from the current model until the new one has caught up.
    Rebuild,
}

/// Where `up` tells other commands which broker it is using.
fn url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats.url")
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn,actix_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (nats_port, http_addr, rebuild_flag) = match &cli.command {
        Command::Up { nats_port, http } => (*nats_port, http.clone(), None),
        Command::Run { http, rebuild, .. } => (None, http.clone(), rebuild.then_some(true)),
        _ => (None, None, None),
    };
    let flags = Overrides {
        data_dir: cli.data_dir.clone(),
        nats_url: cli.nats_url.clone(),
        nats_port,
        http_addr,
        rebuild: rebuild_flag,
    };
    let settings = Settings::load(cli.config.as_deref(), &flags)?;
    // actix's System: every service runs on its own Arbiter under it.
    actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Up { .. } => up(settings).await,
            Command::Run { component, .. } => run(&component, settings).await,
            Command::Status => status(settings).await,
            Command::Order(command) => order::run(command, settings).await,
            Command::Projection(ProjectionCommand::Rebuild) => rebuild(settings).await,
            Command::Faults {
                simulator,
                latency_ms,
                error_rate,
                outage,
                clear,
            } => {
                let change = faults::Change {
                    latency_ms,
                    error_rate,
                    outage,
                    clear,
                };
                faults::run(&simulator, change, settings).await
            }
            Command::Bench(args) => bench::run(args, settings).await,
        }
    })
}

async fn up(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let data_dir = settings.data_dir.clone();
    // Listen before starting anything: a signal during start-up must not orphan nats-server.
    let mut stop = StopSignals::new()?;
    let system = tokio::select! {
        system = System::up(settings) => system?,
        // Dropping the start-up future drops (and so kills) a nats-server it had started.
        _ = stop.recv() => {
            println!("stopped during start-up");
            return Ok(());
        }
    };
    let endpoints = system.endpoints();
    let url_file = url_file(&data_dir);
    let endpoints_file = data_dir.join("endpoints.json");
    std::fs::write(&url_file, &endpoints.nats)
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    std::fs::write(&endpoints_file, serde_json::to_string_pretty(&endpoints)?)
        .with_context(|| format!("cannot write {}", endpoints_file.display()))?;
    let kind = match system.runtime.broker {
        actors::runtime::Broker::Embedded(_) => "embedded nats-server",
        actors::runtime::Broker::External(_) => "external",
    };
    println!("commerce is up");
    println!("  nats: {} ({kind})", endpoints.nats);
    print_endpoints(&endpoints);
    println!("  data: {}", data_dir.display());
    println!("  services: {}", actors::SERVICES.join(", "));
    for (stream, outcome) in &system.runtime.streams {
        println!("  stream {stream}: {outcome:?}");
    }
    println!("Press Ctrl-C to stop.");
    stop.recv().await;
    println!("stopping…");
    let _ = std::fs::remove_file(&url_file);
    let _ = std::fs::remove_file(&endpoints_file);
    system.shutdown().await;
    println!("commerce stopped cleanly");
    Ok(())
}

async fn run(component: &str, mut settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    if settings.nats_url.is_none() {
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
    let mut stop = StopSignals::new()?;
    let system = tokio::select! {
        system = System::run(component, settings) => system?,
        _ = stop.recv() => return Ok(()),
    };
    let endpoints = system.endpoints();
    println!("commerce {component} is up");
    println!("  nats: {}", endpoints.nats);
    print_endpoints(&endpoints);
    stop.recv().await;
    system.shutdown().await;
    println!("commerce {component} stopped cleanly");
    Ok(())
}

fn print_endpoints(endpoints: &actors::system::Endpoints) {
    if let Some(http) = &endpoints.http {
        println!("  http: {http}");
    }
    if let Some(url) = &endpoints.payment_gateway {
        println!("  payment gateway: {url}");
    }
    if let Some(url) = &endpoints.carrier {
        println!("  carrier: {url}");
    }
}

/// The broker a client command talks to: --nats / NATS_URL, else the one `up` wrote down.
fn client_url(settings: &Settings) -> String {
    match &settings.nats_url {
        Some(url) => url.clone(),
        None => std::fs::read_to_string(url_file(&settings.data_dir))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    }
}

pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    let url = client_url(settings);
    tokio::time::timeout(std::time::Duration::from_secs(5), async_nats::connect(&url))
        .await
        .map_err(|_| anyhow::anyhow!("no NATS server answers at {url}; is `commerce up` running?"))?
        .with_context(|| format!("cannot connect to {url}; is `commerce up` running?"))
}

async fn status(settings: Settings) -> anyhow::Result<()> {
    let client = connect(&settings).await?;
    let js = async_nats::jetstream::new(client.clone());
    println!("nats: {}", client_url(&settings));
    for stream in bus::status::streams(&js).await? {
        print!("{stream}");
    }
    println!("services:");
    for service in actors::status_components() {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            actors::engine::host::request(&client, service, "status", Vec::new()),
        )
        .await;
        match answer {
            Ok(Ok(s)) => {
                let n = |key: &str| s[key].as_u64().unwrap_or(0);
                println!(
                    "  {service:<15} outbox depth {:>6}  relayed {:>8}  inbox {:>8}  relay failures {}",
                    n("outbox_depth"),
                    n("outbox_sent"),
                    n("inbox"),
                    n("relay_failures")
                );
                for circuit in s["circuits"].as_array().into_iter().flatten() {
                    println!(
                        "    circuit {:<18} {:<9} calls {:>7}  refused {:>6}  in flight {}",
                        circuit["dependency"].as_str().unwrap_or_default(),
                        circuit["state"].as_str().unwrap_or_default(),
                        circuit["calls"],
                        circuit["refused"],
                        circuit["in_flight"]
                    );
                }
            }
            _ => println!("  {service:<15} not running"),
        }
    }
    Ok(())
}

async fn rebuild(settings: Settings) -> anyhow::Result<()> {
    use actors::engine::host::request;
    let client = connect(&settings).await?;
    let started = request(&client, "projection", "rebuild", Vec::new())
        .await
        .context("rebuild not started")?;
    let total = started["events"].as_u64().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuilding read model [{bar:40}] {pos}/{len} events {per_sec} {msg}",
        )?
        .progress_chars("=> "),
    );
    let began = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let status = request(&client, "projection", "status", Vec::new()).await?;
        bar.set_position(status["rebuild_read"].as_u64().unwrap_or(0));
        if status["rebuilding"] == false {
            bar.finish();
            println!(
                "read model rebuilt: generation {}, {total} events in {:.2}s",
                status["generation"],
                began.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }
}

/// Ctrl-C (SIGINT), SIGTERM or SIGHUP: each means "shut down cleanly".
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
