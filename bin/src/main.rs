//! `commerce`: the launcher. Parses arguments, loads settings, hands over to one module.
//!
//! # Layout
//! - `launch`: `up` and `run <component>`: start, print where things are, stop cleanly.
//! - `client`: how the client commands reach the broker.
//! - `status`, `order`, `projection`, `dlq`, `faults`, `token`, `credentials`: the commands for
//!   people.
//! - `bench`: measurements against their limits (bus, saga, read side).
//! - `chaos`: the chaos harness: seeded faults against the system, invariants checked at the end.

mod bench;
mod chaos;
mod client;
mod credentials;
mod dlq;
mod faults;
mod instances;
mod launch;
mod order;
mod projection;
mod status;
mod telemetry;
mod token;

use std::path::PathBuf;

use actors::settings::Overrides;
use actors::{Component, Settings};
use clap::{Parser, Subcommand};

/// Every component allocates on every event (sled's copy-on-write nodes, JSON); glibc's malloc
/// spent a quarter of the saga's CPU in its own bookkeeping (`bench soak`, README: Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Broker credentials of this process (an nkey seed or NATS .creds file; also NATS_CREDS).
    /// Default: its own file under <data-dir>/credentials/, written by `commerce up`. Its
    /// replays' identity is read from beside it (payment.nk: payment-replayer.nk), else from there.
    #[arg(long = "nats-creds", global = true, value_name = "FILE")]
    nats_creds: Option<PathBuf>,
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
        /// Where the admin side listens: /metrics and the live /dashboard (default
        /// 127.0.0.1:9464; keep it private, it has no authentication).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// The durable profile: the embedded nats-server fsyncs every write before it
        /// acknowledges it (`nats_sync_always`), so an OS crash or power loss loses nothing it
        /// acknowledged. Costs throughput (see `commerce bench saga --compare-durable`).
        #[arg(long)]
        durable: bool,
        /// Run the embedded broker as a cluster of N nats-servers on loopback (3: each stream
        /// kept on all three, so the loss of any one node loses nothing and stops nothing).
        #[arg(long, value_name = "N")]
        cluster: Option<usize>,
        /// Run every service as N processes (`commerce run <service> --instance <i>`), kept
        /// running by this one. With several partitions (`streams.partitions`, at least N),
        /// partition k's home is instance k mod N and the others stand by for it; with one,
        /// one instance owns each service and the others stand by.
        #[arg(long, value_name = "N", default_value_t = 1)]
        instances: usize,
    },
    /// Run one component in this process, on a running broker (--nats, NATS_URL, or the one a
    /// `commerce up` in the same --data-dir uses): order, payment, inventory, store, shipment,
    /// recommendation, projection, gateway or simulators.
    Run {
        component: Component,
        /// Where the HTTP gateway listens (component `gateway`).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Where the gateway's admin side listens: /metrics and /dashboard (component `gateway`).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Serve this component's /metrics here (any component but the gateway, whose admin
        /// side has them).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Throw the service's database away and rebuild it from its own stream (an empty or
        /// missing database is rebuilt anyway).
        #[arg(long)]
        rebuild: bool,
        /// Run as instance NAME of a service, one of several: it owns the service only while it
        /// holds the lease on it (a standby until then), and keeps its database under
        /// <data-dir>/<service>@NAME, rebuilt from the stream each time it takes over.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// With --instance: the partitions this instance is the home of (e.g. 0,2). It takes
        /// them at once and asks for them back from whoever holds them; it takes the others
        /// only when their owner is gone, and gives them back when asked. Default: all.
        #[arg(
            long,
            value_name = "PARTITIONS",
            value_delimiter = ',',
            requires = "instance"
        )]
        home: Option<Vec<u32>>,
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
    /// The dead-letter queue: list, show, replay (the service handles the event again) or
    /// discard what consumers gave up on.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Print a bearer token for the HTTP API (`Authorization: Bearer <token>`), signed with
    /// the data dir's key.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Make the broker identities under <data-dir>/credentials/ (kept if there) and print the
    /// nats-server `authorization` block that admits them: for a server someone else runs.
    Credentials,
    /// Measure the bus and the saga against their limits, in one run.
    Bench(bench::BenchArgs),
    /// The chaos harness: the whole system as separate processes on its own broker, a seeded
    /// mix of orders, seeded faults (kills, pauses, broker crashes, lost databases, slow and
    /// failing simulators, network faults), then nine invariants and a report.
    Chaos(chaos::ChaosArgs),
}

#[derive(Subcommand)]
enum ProjectionCommand {
    /// Rebuild the order read model from sequence 1 of every stream, with a progress bar;
    /// queries keep answering from the current model until the new one has caught up.
    Rebuild,
}

fn main() -> anyhow::Result<()> {
    telemetry::logs();
    // Test builds only: the seams FAILPOINTS arms (the chaos harness's crash points).
    bus::failpoints::setup().map_err(anyhow::Error::msg)?;
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Up { .. } | Command::Run { .. } | Command::Bench(_) | Command::Chaos(_)
    ) {
        end_quietly_on_closed_pipe();
    }
    let (nats_port, http_addr, admin_addr, metrics_addr, rebuild_flag, instance, home) =
        match &cli.command {
            Command::Up {
                nats_port,
                http,
                admin,
                ..
            } => (
                *nats_port,
                http.clone(),
                admin.clone(),
                None,
                None,
                None,
                None,
            ),
            Command::Run {
                http,
                admin,
                metrics,
                rebuild,
                instance,
                home,
                ..
            } => (
                None,
                http.clone(),
                admin.clone(),
                metrics.clone(),
                rebuild.then_some(true),
                instance.clone(),
                home.clone(),
            ),
            _ => (None, None, None, None, None, None, None),
        };
    let flags = Overrides {
        data_dir: cli.data_dir.clone(),
        nats_url: cli.nats_url.clone(),
        nats_creds: cli.nats_creds.clone(),
        nats_port,
        http_addr,
        admin_addr,
        metrics_addr,
        rebuild: rebuild_flag,
        instance,
        home,
        nats_sync_always: matches!(cli.command, Command::Up { durable: true, .. }).then_some(true),
        nats_cluster: match &cli.command {
            Command::Up { cluster, .. } => *cluster,
            _ => None,
        },
    };
    let settings = Settings::load(cli.config.as_deref(), &flags)?;
    let process = match &cli.command {
        Command::Run { component, .. } => component.name(),
        _ => "up",
    };
    let traces = match &cli.command {
        Command::Up { .. } | Command::Run { .. } => telemetry::traces(process)?,
        _ => None,
    };
    // actix's System: every service runs on its own Arbiter under it.
    let result = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Up { instances, .. } => {
                launch::up(settings, instances, cli.config.clone()).await
            }
            Command::Run { component, .. } => launch::run(component, settings).await,
            Command::Status => status::run(settings).await,
            Command::Order(command) => order::run(command, settings).await,
            Command::Projection(ProjectionCommand::Rebuild) => projection::rebuild(settings).await,
            Command::Dlq(command) => dlq::run(command, settings).await,
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
            Command::Token(command) => token::run(command, &settings),
            Command::Credentials => credentials::run(&settings),
            Command::Bench(args) => bench::run(args, settings).await,
            Command::Chaos(args) => chaos::run(args, settings).await,
        }
    });
    telemetry::shut_down(traces);
    result
}

/// A report piped into `head` ends quietly when the pipe closes, as other command-line tools do,
/// instead of panicking in `println!`. Only the short commands: the long-running ones write to
/// sockets, where a peer gone must be an error to handle, not a signal that ends the process.
fn end_quietly_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: the default disposition runs no handler code in this process.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
