//! `commerce bench saga`: the whole system in this process (fresh data dir and broker), orders
//! offered over HTTP at fixed rates (open loop: sends do not wait for answers), latency measured
//! from the start of `POST /orders` to the moment `OrderConfirmed` is on the bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::catalog::{LineRequest, OrderForm};
use actors::contract::OrderView;
use actors::gateway::auth::{mint, Caller};
use actors::runtime::Broker;
use actors::{Settings, System};
use anyhow::Context;
use futures::StreamExt;

/// When each order's `OrderConfirmed` (or `OrderCancelled`) was seen.
#[derive(Default)]
struct Outcomes {
    confirmed: HashMap<String, Instant>,
    cancelled: usize,
}

/// The whole system in this process, on a fresh data dir, broker and free ports.
pub(super) async fn system(
    mut settings: Settings,
) -> anyhow::Result<(System, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    settings.data_dir = dir.path().to_path_buf();
    settings.nats_url = None;
    settings.nats_port = 0;
    settings.http_addr = "127.0.0.1:0".into();
    settings.admin_addr = "127.0.0.1:0".into();
    settings.simulators.payment_gateway_addr = "127.0.0.1:0".into();
    settings.simulators.carrier_addr = "127.0.0.1:0".into();
    let system = System::up(settings).await?;
    let endpoints = system.endpoints();
    let http = endpoints.http.clone().context("the gateway is not up")?;
    eprintln!("bench: system up at {http} (nats {})", endpoints.nats);
    Ok((system, http, dir))
}

/// The API's operator token of a system this bench started (none with `auth` off), as the
/// header every bench request carries: each request is checked as a real one is.
pub fn operator_token(system: &System) -> anyhow::Result<reqwest::header::HeaderMap> {
    operator_token_for(&system.runtime.settings)
}

/// [`operator_token`] of the system `settings` describe (its data dir holds the signing key).
pub fn operator_token_for(settings: &Settings) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if settings.auth {
        let day = Duration::from_secs(24 * 3600);
        let token = mint(&settings.data_dir, &Caller::Operator, day)?;
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    Ok(headers)
}

/// A payment token for the test card, from the system's payment gateway, as a card form gets
/// one in the browser: the bench's orders carry it, so the gateway's card exchange (a call to
/// the payment gateway per order) is not what is measured.
pub async fn card_token(system: &System) -> anyhow::Result<String> {
    let url = system
        .endpoints()
        .payment_gateway
        .context("the bench's system has no payment gateway")?;
    card_token_at(&url).await
}

/// A payment token for the test card from the payment gateway at `url`.
pub async fn card_token_at(url: &str) -> anyhow::Result<String> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/tokens"))
        .json(&serde_json::json!({ "card_number": "4242424242424242" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["token"]
        .as_str()
        .map(str::to_string)
        .context("the payment gateway gave no token")
}

/// The operator's connection of a system this bench started.
pub fn operator(system: &System) -> anyhow::Result<async_nats::Client> {
    system
        .runtime
        .operator
        .clone()
        .context("the bench's system has no operator connection")
}

/// What a second measurement turns off, to show what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Authentication and permissions.
    Auth,
    /// The broker's fsync of every write (`--durable`).
    Durable,
    /// The broker as a cluster of three nodes with every stream on all three (`--cluster 3`).
    Cluster,
}

impl Compare {
    fn name(self) -> &'static str {
        match self {
            Compare::Auth => "auth",
            Compare::Durable => "durable",
            Compare::Cluster => "cluster of 3",
        }
    }

    fn is_on(self, settings: &Settings) -> bool {
        match self {
            Compare::Auth => settings.auth,
            Compare::Durable => settings.nats_sync_always,
            Compare::Cluster => settings.nats_cluster > 1,
        }
    }

    fn toggled(self, settings: &Settings) -> Settings {
        let mut other = settings.clone();
        match self {
            Compare::Auth => other.auth = !other.auth,
            Compare::Durable => other.nats_sync_always = !other.nats_sync_always,
            Compare::Cluster => other.nats_cluster = if other.nats_cluster > 1 { 1 } else { 3 },
        }
        other
    }
}

/// Measure at each rate; with `compare`, again on a system with that turned the other way, and
/// print the first as a ratio to the second (on to off).
pub async fn run(
    orders: usize,
    rates: &[u32],
    settings: Settings,
    compare: Option<Compare>,
) -> anyhow::Result<()> {
    let label = |settings: &Settings| match compare {
        Some(c) if c.is_on(settings) => format!("{} on", c.name()),
        Some(c) => format!("{} off", c.name()),
        None => "default".to_string(),
    };
    let first = measure(orders, rates, settings.clone(), true).await?;
    print_table(&label(&settings), orders, &first);
    for round in &first {
        let at = match round.rate {
            0 => offered(0),
            rate => format!("{rate}/s"),
        };
        super::hops::print(&at, &round.hops);
    }
    let Some(compare) = compare else {
        return Ok(());
    };
    let other = compare.toggled(&settings);
    let second = measure(orders, rates, other.clone(), false).await?;
    print_table(&label(&other), orders, &second);
    let (on, off) = if compare.is_on(&settings) {
        (&first, &second)
    } else {
        (&second, &first)
    };
    println!();
    println!("{} on as a ratio to off:", compare.name());
    println!("{:>14} {:>14} {:>10}", "offered/s", "achieved", "p99");
    for (on, off) in on.iter().zip(off) {
        println!(
            "{:>14} {:>14.3} {:>10.3}",
            offered(on.rate),
            on.achieved / off.achieved,
            on.p99 / off.p99
        );
    }
    Ok(())
}

pub(super) fn offered(rate: u32) -> String {
    if rate == 0 {
        "all at once".to_string()
    } else {
        rate.to_string()
    }
}

pub(super) fn print_table(label: &str, orders: usize, results: &[RoundResult]) {
    println!();
    println!(
        "End to end ({label}), POST /orders → OrderConfirmed, {orders} orders per offered rate:"
    );
    println!(
        "{:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "offered/s", "achieved/s", "p50 ms", "p99 ms", "max ms", "CPU ms/o", "nats ms/o", "read ms"
    );
    let ms = |v: f64| match v.is_nan() {
        true => "-".to_string(),
        false => format!("{v:.2}"),
    };
    for r in results {
        println!(
            "{:>14} {:>14.1} {:>10.1} {:>10.1} {:>10.1} {:>10} {:>10} {:>10}",
            offered(r.rate),
            r.achieved,
            r.p50,
            r.p99,
            r.max,
            ms(r.cpu_per_order.0),
            ms(r.cpu_per_order.1),
            ms(r.read_trail_ms)
        );
    }
}

/// One fresh system, each rate offered in turn; with `hops`, where each round's time went.
pub(super) async fn measure(
    orders: usize,
    rates: &[u32],
    settings: Settings,
    hops: bool,
) -> anyhow::Result<Vec<RoundResult>> {
    let running = Running::start(settings).await?;
    let js = async_nats::jetstream::new(operator(&running.system)?);
    let broker = running.broker_pid();
    let cpu = || super::soak::cpu_now(broker.as_deref());
    let mut results = Vec::new();
    for (round, &rate) in rates.iter().enumerate() {
        // Around the offer alone: reading the hops back afterwards is not the orders' cost.
        let offered = async {
            let before = cpu();
            let mut result = running.load.offer(round, orders, rate, HELD).await?;
            let after = cpu();
            result.spent(orders, before, after);
            result.read_trail_ms = read_model_trail(&js, result.last_confirmed).await?;
            Ok(result)
        };
        let (mut result, hops) = super::hops::around(&js, hops, offered).await?;
        result.hops = hops.unwrap_or_default();
        results.push(result);
    }
    running.stop().await;
    Ok(results)
}

/// How long after `last_confirmed` the read model had applied every event stored (the
/// projection's consumer on every domain stream with nothing pending or unacknowledged), in ms:
/// what the read side trails the saga by at the end of a round.
async fn read_model_trail(
    js: &async_nats::jetstream::Context,
    last_confirmed: Instant,
) -> anyhow::Result<f64> {
    let projection = actors::Component::Projection.name();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut behind = 0;
        for domain in bus::Domain::ALL {
            let stream = js.get_stream_no_info(domain.stream()).await?;
            let info = stream.consumer_info(projection).await?;
            behind += info.num_pending + info.num_ack_pending as u64;
        }
        if behind == 0 {
            return Ok(last_confirmed.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read model is still {behind} events behind 120 s after the round"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A bench order's address: the carrier books it and never picks it up, so the saga ends at
/// `OrderConfirmed` and tracking is not measured.
pub(super) const HELD: &str = "1 Bench Street [hold]";

/// A system this bench started, and its load.
pub(super) struct Running {
    pub system: System,
    pub load: Load,
    pub dir: tempfile::TempDir,
}

impl Running {
    pub async fn start(settings: Settings) -> anyhow::Result<Running> {
        Running::start_with(settings, false).await
    }

    /// With `cancel_confirmed`, the customer cancels each order as soon as it is confirmed (a
    /// held parcel is never picked up, so the cancel succeeds: refund and release), so stock
    /// stays flat however many orders a long run places.
    pub async fn start_with(settings: Settings, cancel_confirmed: bool) -> anyhow::Result<Running> {
        let (system, http, dir) = system(settings).await?;
        let load = Load::start(
            operator(&system)?,
            http,
            operator_token(&system)?,
            card_token(&system).await?,
            cancel_confirmed,
        )
        .await?;
        Ok(Running { system, load, dir })
    }

    /// The embedded nats-server's process id (none for a cluster or an outside broker).
    pub fn broker_pid(&self) -> Option<String> {
        match &self.system.runtime.broker {
            Broker::Embedded(server) => server.pid().map(|pid| pid.to_string()),
            Broker::Cluster(_) | Broker::External(_) => None,
        }
    }

    pub async fn stop(self) {
        self.load.stop();
        self.system.shutdown().await;
    }
}

/// Orders offered over a system's API, each one's outcome watched on the bus.
pub(super) struct Load {
    http: String,
    web: reqwest::Client,
    token: String,
    outcomes: Arc<Mutex<Outcomes>>,
    watch: actix_rt::task::JoinHandle<()>,
    /// Sends answered 503 ("retry") or not answered, and sent again.
    pub retries: Arc<std::sync::atomic::AtomicU64>,
}

impl Load {
    /// Watch `operator`'s bus for outcomes and send to the API at `http` with `headers`,
    /// paying with card token `token`. With `cancel_confirmed`, see [`Running::start_with`].
    pub async fn start(
        operator: async_nats::Client,
        http: String,
        headers: reqwest::header::HeaderMap,
        token: String,
        cancel_confirmed: bool,
    ) -> anyhow::Result<Load> {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let web = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .default_headers(headers)
            .build()?;
        // Reading before any order is sent.
        let stored = super::stored_from_now(
            &async_nats::jetstream::new(operator),
            bus::Domain::Orders,
            &["order_confirmed", "order_cancelled"],
        )
        .await?;
        let watch = {
            let outcomes = outcomes.clone();
            let (web, http) = (web.clone(), http.clone());
            actix_rt::spawn(async move {
                let mut stored = std::pin::pin!(stored);
                while let Some((event, order_id)) = stored.next().await {
                    let ok = event == "order_confirmed";
                    if ok && cancel_confirmed {
                        let cancel = web.post(format!("{http}/orders/{order_id}/cancel"));
                        actix_rt::spawn(async move {
                            if let Err(e) = cancel.send().await {
                                tracing::warn!(error = %e, "bench cancel not sent");
                            }
                        });
                    }
                    let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                    if ok {
                        o.confirmed.entry(order_id).or_insert_with(Instant::now);
                    } else if !cancel_confirmed {
                        o.cancelled += 1;
                    }
                }
            })
        };
        Ok(Load {
            http,
            web,
            token,
            outcomes,
            watch,
            retries: Arc::default(),
        })
    }

    pub fn stop(self) {
        self.watch.abort();
    }
}

pub(super) struct RoundResult {
    pub rate: u32,
    pub achieved: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Where the time went (filled where it was measured).
    pub hops: Vec<super::hops::Hop>,
    /// CPU time per order of this process (every component, the gateway, the load) and of the
    /// embedded nats-server, in ms (NaN where not measured): what an order costs, however
    /// loaded the machine is, so two builds compare better by it than by latency.
    pub cpu_per_order: (f64, f64),
    /// When the round's last order was confirmed.
    pub last_confirmed: Instant,
    /// How long after that the read model had applied the round (NaN where not measured).
    pub read_trail_ms: f64,
}

impl RoundResult {
    /// `orders` done in `elapsed`, each taking one of `latencies`.
    pub fn of(rate: u32, orders: usize, elapsed: Duration, latencies: &[Duration]) -> RoundResult {
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| super::quantile(&ms, q);
        RoundResult {
            rate,
            achieved: orders as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            hops: Vec::new(),
            cpu_per_order: (f64::NAN, f64::NAN),
            last_confirmed: Instant::now(),
            read_trail_ms: f64::NAN,
        }
    }

    /// Record the CPU its `orders` took: (ours, the broker's) in ms, read `before` and `after`.
    pub fn spent(&mut self, orders: usize, before: (f64, f64), after: (f64, f64)) {
        let per_order = |spent: f64| spent / orders as f64;
        self.cpu_per_order = (per_order(after.0 - before.0), per_order(after.1 - before.1));
    }
}

impl Load {
    /// Offer `orders` orders shipping to `address` at `rate`/s (0: all at once) and wait until
    /// every one is confirmed; then forget them, so a long run's bookkeeping stays flat.
    pub async fn offer(
        &self,
        round: usize,
        orders: usize,
        rate: u32,
        address: &str,
    ) -> anyhow::Result<RoundResult> {
        let (web, http, token, outcomes) = (&self.web, &self.http, &self.token, &self.outcomes);
        let label = if rate == 0 {
            "all at once".to_string()
        } else {
            format!("{rate} orders/s")
        };
        let bar = super::bus::progress(&format!("saga at {label}"), orders);
        let skus = ["SKU-MUG", "SKU-SOCKS", "SKU-TSHIRT"];
        let started = Instant::now();
        let mut sends = Vec::with_capacity(orders);
        for i in 0..orders {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
            }
            let order = OrderForm {
                customer: Some(format!("bench-{round}-{i}")),
                lines: vec![LineRequest {
                    sku: skus[i % skus.len()].into(),
                    quantity: 1,
                }],
                card_number: None,
                payment_token: Some(token.to_string()),
                shipping_address: address.into(),
            };
            // As a client does: one key per order, retried while the answer is "not now".
            let request = web
                .post(format!("{http}/orders"))
                .header("Idempotency-Key", format!("bench-{}", uuid::Uuid::now_v7()))
                .json(&order);
            let retries = self.retries.clone();
            sends.push(actix_rt::spawn(async move {
                let sent = Instant::now();
                let mut attempt = 0u32;
                let response = loop {
                    let Some(again) = request.try_clone() else {
                        return Err("the request cannot be sent twice".to_string());
                    };
                    let retry = match again.send().await {
                        Ok(response) if response.status() == 503 => {
                            response.text().await.unwrap_or_default()
                        }
                        Ok(response) => break response,
                        Err(e) => e.to_string(),
                    };
                    attempt += 1;
                    if attempt > 40 {
                        return Err(format!(
                            "POST /orders: gave up after {attempt} tries: {retry}"
                        ));
                    }
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))))
                        .await;
                };
                if response.status() != 201 {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("POST /orders answered {status}: {body}"));
                }
                let order: OrderView = response.json().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((order.order_id, sent))
            }));
        }
        let mut sent = Vec::with_capacity(orders);
        for send in sends {
            sent.push(
                send.await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
        }

        let deadline = Instant::now() + Duration::from_secs(120);
        let latencies = loop {
            let done: Vec<Option<Duration>> = {
                let o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                anyhow::ensure!(
                    o.cancelled == 0,
                    "{} bench orders were cancelled",
                    o.cancelled
                );
                sent.iter()
                    .map(|(id, at)| o.confirmed.get(id).map(|c| c.duration_since(*at)))
                    .collect()
            };
            let confirmed = done.iter().flatten().count();
            bar.set_position(confirmed as u64);
            if confirmed == orders {
                break done.into_iter().flatten().collect::<Vec<_>>();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {confirmed}/{orders} orders confirmed after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        bar.finish();
        let last = {
            let o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
            sent.iter()
                .filter_map(|(id, _)| o.confirmed.get(id))
                .max()
                .copied()
        };
        let elapsed = last.map_or(started.elapsed(), |l| l.duration_since(started));
        {
            let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
            for (id, _) in &sent {
                o.confirmed.remove(id);
            }
        }
        let mut result = RoundResult::of(rate, orders, elapsed, &latencies);
        result.last_confirmed = last.unwrap_or_else(Instant::now);
        Ok(result)
    }
}
