//! `commerce bench`: measurements as ratios to limits measured in the same run.

mod bus;
mod hops;
mod null;
mod reads;
mod saga;
mod scale;
mod soak;
mod subjects;

use actors::Settings;

/// `(event name, order id)` of every `domain` event named one of `events` stored from now on,
/// as the stream stores it: how a bench sees outcomes. Read through JetStream, not listened
/// for: no identity may listen where a stream stores (`actors::access`).
async fn stored_from_now(
    js: &async_nats::jetstream::Context,
    domain: ::bus::Domain,
    events: &[&str],
) -> anyhow::Result<impl futures::Stream<Item = (String, String)>> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use futures::StreamExt;
    let filter_subjects = events
        .iter()
        .map(|event| ::bus::partition::events(domain, event, ::bus::partition::Slice::All))
        .collect();
    let messages = js
        .get_stream(domain.stream())
        .await?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            filter_subjects,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    Ok(messages.filter_map(|message| async move {
        let message = message
            .inspect_err(|e| tracing::warn!(error = %e, "bench: reading outcomes"))
            .ok()?;
        // `<domain>.<event>.<order id>.<partition>`
        let mut tokens = message.subject.split('.').skip(1);
        let event = tokens.next()?.to_string();
        Some((event, tokens.next()?.to_string()))
    }))
}

/// The `q` quantile of sorted `samples` (NaN for none).
fn quantile(samples: &[f64], q: f64) -> f64 {
    match samples.len() {
        0 => f64::NAN,
        n => samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(clap::Subcommand)]
enum BenchWhat {
    /// Relay and consumer throughput vs raw JetStream publish/consume.
    Bus {
        /// Events per phase.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Events for the flush-per-message comparison (slow by design).
        #[arg(long, default_value_t = 1_000)]
        single_flush_events: usize,
    },
    /// End to end: orders/s and latency from `POST /orders` to `OrderConfirmed`, at offered rates.
    Saga {
        /// Orders per offered rate.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        orders: u64,
        /// Offered rates in orders/s, comma-separated; 0 sends all at once.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,0")]
        rates: Vec<u32>,
        /// Measure again with authentication and permissions off, and print the ratio.
        #[arg(long, conflicts_with_all = ["compare_durable", "compare_cluster"])]
        compare_auth: bool,
        /// Measure again with the broker fsyncing every write (`--durable`), and print the
        /// ratio.
        #[arg(long, conflicts_with = "compare_cluster")]
        compare_durable: bool,
        /// Measure again on a broker of three nodes with every stream replicated on all three
        /// (`up --cluster 3`), and print the ratio.
        #[arg(long)]
        compare_cluster: bool,
    },
    /// The saga with every component its own process, on one broker node, on a cluster of
    /// three, and on the cluster with every service run twice (`--instance`): orders/s and
    /// latency as ratios to the single node.
    Scale {
        /// Orders per offered rate.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        orders: u64,
        /// Offered rates in orders/s, comma-separated; 0 sends all at once.
        #[arg(long, value_delimiter = ',', default_value = "100,250,0")]
        rates: Vec<u32>,
    },
    /// The saga's pipeline with no domain logic (its ceiling), then the saga, as a ratio.
    Null {
        /// Orders for each.
        #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
        orders: u64,
        /// The rate the saga is offered, in orders/s: above its saturation, so it queues.
        #[arg(long, default_value_t = 2000)]
        saga_rate: u32,
    },
    /// A long steady run: orders/s, p99, RSS and disk bytes per order, per window of orders.
    Soak {
        /// Orders in all.
        #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
        orders: u64,
        /// Orders per reported window.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        window: u64,
        /// Offered orders/s. A soak order is placed and then cancelled (two sagas' work): 100/s
        /// is about half of what 2 cores carry (README: Performance).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// After each window, where its time went, hop by hop (read from the streams).
        #[arg(long)]
        hops: bool,
    },
    /// The broker alone as its streams fill: a subject per order (the saga's scheme) against
    /// 64 subjects, the same events on a fresh broker each: publish rate, PubAck latency, and
    /// nats-server's memory and CPU per message, per window.
    Subjects {
        /// Messages for each scheme.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        messages: u64,
        /// Messages per reported window.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        window: u64,
    },
    /// The read side: projection rebuild rate vs raw JetStream consume, and `GET /orders/{id}`
    /// (read model) vs `/composed` (fan-out), healthy and with one service slowed by 50 ms.
    Reads {
        /// Orders to place first (each saga runs to completion).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        orders: u64,
        /// Requests per measurement.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        requests: u64,
        /// Rounds of raw consume then rebuild (the ratio of each, and their median).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
    },
}

pub async fn run(args: BenchArgs, settings: Settings) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Bus {
            events,
            single_flush_events,
        } => bus::run(events, single_flush_events, settings).await,
        BenchWhat::Saga {
            orders,
            rates,
            compare_auth,
            compare_durable,
            compare_cluster,
        } => {
            let compare = match (compare_auth, compare_durable, compare_cluster) {
                (true, _, _) => Some(saga::Compare::Auth),
                (_, true, _) => Some(saga::Compare::Durable),
                (_, _, true) => Some(saga::Compare::Cluster),
                _ => None,
            };
            saga::run(orders as usize, &rates, settings, compare).await
        }
        BenchWhat::Scale { orders, rates } => scale::run(orders as usize, &rates).await,
        BenchWhat::Null { orders, saga_rate } => {
            null::run(orders as usize, saga_rate, settings).await
        }
        BenchWhat::Soak {
            orders,
            window,
            rate,
            hops,
        } => soak::run(orders as usize, window as usize, rate, hops, settings).await,
        BenchWhat::Subjects { messages, window } => {
            subjects::run(messages as usize, window as usize, settings).await
        }
        BenchWhat::Reads {
            orders,
            requests,
            rounds,
        } => {
            reads::run(
                orders as usize,
                requests as usize,
                rounds as usize,
                settings,
            )
            .await
        }
    }
}
