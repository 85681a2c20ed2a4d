//! `commerce`: the launcher. Parses arguments, loads settings, starts things.

mod bench;

use std::path::{Path, PathBuf};

use actors::settings::Overrides;
use actors::{Runtime, Settings};
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
    /// Start the system: the embedded nats-server (unless --nats), the streams. Ctrl-C stops it.
    Up {
        /// Port for the embedded nats-server (a free one is picked if it is taken).
        #[arg(long)]
        nats_port: Option<u16>,
    },
    /// Show every stream, its size, and each consumer's lag.
    Status,
    /// Measure the bus and storage against raw JetStream, in one run.
    Bench(bench::BenchArgs),
}

/// Where `up` tells other commands which broker it is using.
fn url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats.url")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let nats_port = match &cli.command {
        Command::Up { nats_port } => *nats_port,
        _ => None,
    };
    let flags = Overrides {
        data_dir: cli.data_dir.clone(),
        nats_url: cli.nats_url.clone(),
        nats_port,
    };
    let settings = Settings::load(cli.config.as_deref(), &flags)?;
    match cli.command {
        Command::Up { .. } => up(settings).await,
        Command::Status => status(settings).await,
        Command::Bench(args) => bench::run(args, settings).await,
    }
}

async fn up(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let data_dir = settings.data_dir.clone();
    // Listen before starting anything: a signal during start-up must not orphan nats-server.
    let mut stop = StopSignals::new()?;
    let runtime = tokio::select! {
        runtime = Runtime::start(settings) => runtime?,
        // Dropping the start-up future drops (and so kills) a nats-server it had started.
        _ = stop.recv() => {
            println!("stopped during start-up");
            return Ok(());
        }
    };
    let url = runtime.broker.url();
    let url_file = url_file(&data_dir);
    std::fs::write(&url_file, &url)
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    let kind = match runtime.broker {
        actors::runtime::Broker::Embedded(_) => "embedded nats-server",
        actors::runtime::Broker::External(_) => "external",
    };
    println!("commerce is up");
    println!("  nats: {url} ({kind})");
    println!("  data: {}", data_dir.display());
    for (stream, outcome) in &runtime.streams {
        println!("  stream {stream}: {outcome:?}");
    }
    println!("Press Ctrl-C to stop.");
    stop.recv().await;
    println!("stopping…");
    let _ = std::fs::remove_file(&url_file);
    runtime.shutdown().await;
    println!("commerce stopped cleanly");
    Ok(())
}

async fn status(settings: Settings) -> anyhow::Result<()> {
    let url = match &settings.nats_url {
        Some(url) => url.clone(),
        None => std::fs::read_to_string(url_file(&settings.data_dir))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    };
    let client = tokio::time::timeout(std::time::Duration::from_secs(5), async_nats::connect(&url))
        .await
        .map_err(|_| anyhow::anyhow!("no NATS server answers at {url}; is `commerce up` running?"))?
        .with_context(|| format!("cannot connect to {url}; is `commerce up` running?"))?;
    let js = async_nats::jetstream::new(client);
    println!("nats: {url}");
    for stream in bus::status::streams(&js).await? {
        print!("{stream}");
    }
    Ok(())
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
