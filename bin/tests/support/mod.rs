//! Helpers for tests that run the `commerce` binary: processes, their output, and the HTTP API.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub mod scenario;

pub const WAIT: Duration = Duration::from_secs(60);

/// `commerce` with every listener on a free port and parcels that move fast.
pub fn commerce() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_commerce"));
    cmd.env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .env("COMMERCE_HTTP_ADDR", "127.0.0.1:0")
        .env("COMMERCE_ADMIN_ADDR", "127.0.0.1:0")
        .env("COMMERCE_NATS_PORT", "0")
        .env("COMMERCE_SIMULATORS__PAYMENT_GATEWAY_ADDR", "127.0.0.1:0")
        .env("COMMERCE_SIMULATORS__CARRIER_ADDR", "127.0.0.1:0")
        .env("COMMERCE_SIMULATORS__CARRIER_PICKUP_MS", "300")
        .env("COMMERCE_SIMULATORS__CARRIER_DELIVERY_MS", "300")
        // A killed service's fetched events come back after this (the default is 30 s).
        .env("COMMERCE_ACK_WAIT_MS", "3000");
    cmd
}

/// A running `commerce` process and the lines of its stdout as they come.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn commerce");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// `commerce up <args>`.
    pub fn up(args: &[&str]) -> Proc {
        let mut cmd = commerce();
        cmd.arg("up").args(args);
        Proc::spawn(cmd)
    }

    /// `commerce up <args>` logging at `info` into `log` (stderr).
    pub fn up_logging(args: &[&str], log: &std::path::Path) -> Proc {
        let mut cmd = commerce();
        cmd.arg("up")
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).expect("log file"));
        Proc::spawn(cmd)
    }

    /// The rest of the next stdout line that starts with `prefix` (after trimming).
    pub fn line_starting(&self, prefix: &str) -> String {
        self.try_line_starting(prefix)
            .unwrap_or_else(|| panic!("no line starting {prefix:?}"))
    }

    /// [`Proc::line_starting`], or `None` if none came within [`WAIT`].
    pub fn try_line_starting(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Some(rest.to_string());
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "commerce did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C, and a clean exit.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::SIGINT);
            assert!(
                self.wait_exit().success(),
                "commerce exits cleanly on Ctrl-C"
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Ctrl-C first, so an embedded nats-server is stopped with it; SIGKILL if it hangs.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `commerce up` on `data` (default settings but free ports): the process, its broker's URL and
/// its API.
pub fn up(data: &std::path::Path) -> (Proc, String, Api) {
    started(Proc::up(&["--data-dir", data.to_str().unwrap()]), data)
}

/// A `commerce up` on `data` that is starting: the process, its broker's URL and its API, once
/// it is up.
pub fn started(up: Proc, data: &std::path::Path) -> (Proc, String, Api) {
    let Some(nats) = up.try_line_starting("nats: ") else {
        // Say why: the end of every instance's log (`up --instances`).
        for log in std::fs::read_dir(data.join("logs")).into_iter().flatten() {
            let path = log.expect("log").path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            eprintln!("== {}", path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        panic!("commerce up did not say it was up within {WAIT:?}");
    };
    let nats = nats.split_whitespace().next().unwrap().to_string();
    let api = Api::of(&up, data);
    (up, nats, api)
}

/// The admin side (`/metrics`, `/dashboard`) of the `commerce up` running on `data`, from the
/// endpoints file it writes.
pub fn admin_url(data: &std::path::Path) -> String {
    let endpoints = std::fs::read_to_string(data.join("endpoints.json")).expect("endpoints.json");
    let endpoints: Value = serde_json::from_str(&endpoints).expect("endpoints.json is JSON");
    endpoints["admin"]
        .as_str()
        .expect("the admin address")
        .to_string()
}

/// The HTTP gateway and the simulators' ledgers. Orders are placed with their customer's
/// token, everything else is asked with an operator's (minted with the data dir's key).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    pub payment_gateway: String,
    pub carrier: String,
    /// The data dir whose key signs the tokens.
    data: std::path::PathBuf,
    /// Every body the HTTP gateway answered, as sent.
    pub answers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Api {
    pub fn new(base: &str, payment_gateway: &str, carrier: &str, data: &std::path::Path) -> Api {
        // A pooled connection idle for longer than the servers' keep-alive (5 s) may be closed
        // by the server just as it is reused (hyper's IncompleteMessage): drop idle ones first.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        Api {
            http,
            base: base.to_string(),
            payment_gateway: payment_gateway.to_string(),
            carrier: carrier.to_string(),
            data: data.to_path_buf(),
            answers: Default::default(),
        }
    }

    /// The API of a `commerce up` process on `data` (from the lines it printed).
    pub fn of(up: &Proc, data: &std::path::Path) -> Api {
        let http = up.line_starting("http: ");
        let payment_gateway = up.line_starting("payment gateway: ");
        let carrier = up.line_starting("carrier: ");
        up.line_starting("Press Ctrl-C");
        Api::new(&http, &payment_gateway, &carrier, data)
    }

    /// A token for customer `id`.
    pub fn customer(&self, id: &str) -> String {
        let caller = actors::gateway::auth::Caller::Customer(id.to_string());
        actors::gateway::auth::mint(&self.data, &caller, Duration::from_secs(3600)).unwrap()
    }

    /// An operator's token.
    pub fn operator(&self) -> String {
        let caller = actors::gateway::auth::Caller::Operator;
        actors::gateway::auth::mint(&self.data, &caller, Duration::from_secs(3600)).unwrap()
    }

    async fn read(&self, response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let from_gateway = response.url().as_str().starts_with(&self.base);
        let text = response.text().await.expect("body");
        if from_gateway {
            self.answers.lock().unwrap().push(text.clone());
        }
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
        (status, body)
    }

    /// Place `order` as its customer (as an operator when it names none).
    pub async fn place(&self, order: &Value, key: Option<&str>) -> (u16, Value) {
        let token = match order["customer"].as_str() {
            Some(customer) if !customer.trim().is_empty() => self.customer(customer.trim()),
            _ => self.operator(),
        };
        let mut request = self
            .http
            .post(format!("{}/orders", self.base))
            .bearer_auth(token)
            .json(order);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.read(request.send().await.expect("POST /orders")).await
    }

    /// Place an order that must be accepted; returns its id.
    pub async fn place_ok(&self, order: &Value) -> String {
        let (status, body) = self.place(order, None).await;
        assert_eq!(status, 201, "{body}");
        body["order_id"].as_str().expect("order_id").to_string()
    }

    /// Place an order as a client does: sent again under its key while the answer is a 503
    /// (a request that met a broker restarting or a leader election); returns its id.
    pub async fn place_retrying(&self, order: &Value, key: &str) -> String {
        let mut last = (0, Value::Null);
        for _ in 0..40 {
            last = self.place(order, Some(key)).await;
            if last.0 == 201 {
                return last.1["order_id"].as_str().expect("order_id").to_string();
            }
            assert_eq!(last.0, 503, "{}", last.1);
            // A client's backoff before it tries again, not a wait for a condition.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        panic!("no order placed: {last:?}");
    }

    /// `method path` with `body`, as an operator.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        let token = self.operator();
        self.raw_as(Some(&token), method, path, body).await
    }

    /// `method path` with `body`, with `token` (or none).
    pub async fn raw_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        self.read(request.send().await.expect("request")).await
    }

    pub async fn get(&self, id: &str) -> (u16, Value) {
        self.raw(reqwest::Method::GET, &format!("/orders/{id}"), None)
            .await
    }

    pub async fn cancel(&self, id: &str) -> (u16, Value) {
        self.raw(reqwest::Method::POST, &format!("/orders/{id}/cancel"), None)
            .await
    }

    pub async fn products(&self) -> Value {
        let (status, body) = self.raw(reqwest::Method::GET, "/products", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warnings"], json!([]), "stock is known: {body}");
        body
    }

    /// Poll the order until its status is one of `statuses`.
    pub async fn wait_status(&self, id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, order) = self.get(id).await;
            if code == 200 && statuses.contains(&order["order_status"].as_str().unwrap_or_default())
            {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} never reached {statuses:?}; last seen ({code}): {order}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the payment gateway's ledger holds a refund for order `id`.
    pub async fn wait_refunded(&self, id: &str) {
        wait_until(&format!("order {id} is refunded"), || async {
            let ledger = self.ledger(&self.payment_gateway).await;
            let refunds = ledger["refunds"].as_array().cloned().unwrap_or_default();
            refunds.iter().any(|r| r["order_id"] == id)
        })
        .await;
    }

    pub async fn ledger(&self, base: &str) -> Value {
        let response = self
            .http
            .get(format!("{base}/v1/ledger"))
            .send()
            .await
            .expect("ledger");
        self.read(response).await.1
    }

    pub async fn set_faults(&self, base: &str, faults: Value) {
        let response = self
            .http
            .put(format!("{base}/v1/faults"))
            .json(&faults)
            .send()
            .await
            .expect("faults");
        assert!(response.status().is_success());
    }
}

pub fn order(customer: &str, sku: &str, quantity: i64, card: &str, address: &str) -> Value {
    json!({
        "customer": customer,
        "lines": [{ "sku": sku, "quantity": quantity }],
        "card_number": card,
        "shipping_address": address,
    })
}

/// Place `n` plain orders (customers `<prefix>-<i>`) and wait until each completed.
pub async fn place_completed(api: &Api, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let placed = order(&format!("{prefix}-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        ids.push(api.place_ok(&placed).await);
    }
    for id in &ids {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    ids
}

/// Each of `orders` was charged, and no order twice.
pub async fn charged_once(api: &Api, orders: &[String]) {
    let ledger = api.ledger(&api.payment_gateway).await;
    let charged: Vec<&str> = ledger["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["order_id"].as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = charged.iter().copied().collect();
    assert_eq!(distinct.len(), charged.len(), "an order charged twice");
    for id in orders {
        assert!(distinct.contains(id.as_str()), "{id} charged");
    }
}

pub const CARD: &str = "4242424242424242";
pub const ADDRESS: &str = "1 Main Street, Seoul";

/// Warehouse units of `sku` in a `/products` answer.
pub fn warehouse(products: &Value, sku: &str) -> i64 {
    product(products, sku)["warehouse_stock"]
        .as_i64()
        .expect("warehouse stock")
}

/// Units of `sku` at `store` in a `/products` answer.
pub fn store(products: &Value, sku: &str, store: &str) -> i64 {
    product(products, sku)["store_stock"][store]
        .as_i64()
        .unwrap_or(0)
}

fn product<'a>(products: &'a Value, sku: &str) -> &'a Value {
    products["products"]
        .as_array()
        .expect("products")
        .iter()
        .find(|p| p["sku"] == sku)
        .expect("sku in catalog")
}

/// Poll `condition` every 20 ms until it holds; panic with `what` after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(what, WAIT, condition).await
}

/// [`wait_until`] with a bound of its own, for a condition known to take long.
pub async fn wait_until_within<F, Fut>(what: &str, bound: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The read model rows of `ids`.
pub async fn rows(api: &Api, ids: &[String]) -> std::collections::BTreeMap<String, Value> {
    let mut rows = std::collections::BTreeMap::new();
    for id in ids {
        let (status, row) = api.get(id).await;
        assert_eq!(status, 200, "{id}: {row}");
        rows.insert(id.clone(), row);
    }
    rows
}

/// Wait until the projection has applied everything in every stream (its durable consumers
/// have nothing pending and nothing unacknowledged).
pub async fn projection_caught_up(js: &async_nats::jetstream::Context) {
    wait_until("the projection has caught up", || async {
        for stream in bus::Domain::ALL.map(bus::Domain::stream) {
            let Ok(mut consumer) = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    "projection",
                    stream,
                )
                .await
            else {
                return false;
            };
            match consumer.info().await {
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
                _ => return false,
            }
        }
        true
    })
    .await;
}

/// No event appears twice in a row's timeline.
pub fn assert_no_double_apply(rows: &std::collections::BTreeMap<String, Value>) {
    for (id, row) in rows {
        let timeline = row["timeline"].as_array().expect("timeline");
        let ids: std::collections::BTreeSet<&str> = timeline
            .iter()
            .map(|e| e["event_id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            ids.len(),
            timeline.len(),
            "order {id} has an event twice: {row}"
        );
    }
}

/// No card number is anywhere: not in any stream message, any file under `data` (databases,
/// the broker's store, logs), nor any answer of the HTTP gateway.
pub async fn assert_no_card_number(
    js: &async_nats::jetstream::Context,
    data: &std::path::Path,
    api: &Api,
    cards: &[&str],
) {
    let mut places = 0;
    let mut found = Vec::new();
    let mut search = |place: String, bytes: &[u8]| {
        places += 1;
        for card in cards {
            if bytes.windows(card.len()).any(|w| w == card.as_bytes()) {
                found.push(format!("{card} in {place}"));
            }
        }
    };
    for (stream, ..) in bus::streams::stream_specs() {
        let mut handle = js.get_stream(stream).await.expect("stream");
        let state = handle.info().await.expect("stream info").state.clone();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = handle.get_raw_message(sequence).await {
                let headers = format!("{:?}", message.headers);
                search(format!("{stream} #{sequence}"), &message.payload);
                search(format!("{stream} #{sequence} headers"), headers.as_bytes());
            }
        }
    }
    for file in walk(data) {
        if let Ok(bytes) = std::fs::read(&file) {
            search(file.display().to_string(), &bytes);
        }
    }
    for (i, answer) in api.answers.lock().unwrap().iter().enumerate() {
        search(format!("HTTP answer {i}"), answer.as_bytes());
    }
    assert!(places > 100, "searched {places} places");
    assert!(found.is_empty(), "card numbers found: {found:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A client of the broker of a `commerce up` on `data`, as `identity` (`operator`, or a
/// component), with the credentials `up` keeps under `data`.
pub async fn connect_as(nats: &str, data: &std::path::Path, identity: &str) -> async_nats::Client {
    let file = data.join("credentials").join(format!("{identity}.nk"));
    let seed = std::fs::read_to_string(&file).expect("credentials written by commerce up");
    async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix(bus::inbox_prefix(identity))
        .connect(nats)
        .await
        .expect("connect with credentials")
}

/// [`connect_as`] the operator.
pub async fn operator(nats: &str, data: &std::path::Path) -> async_nats::Client {
    connect_as(nats, data, "operator").await
}

/// The broker under `data` refused nothing the system itself did: every component's
/// permissions cover its work (the server logs each refusal as a "Violation").
pub fn assert_no_permission_violations(data: &std::path::Path) {
    let log = std::fs::read_to_string(data.join("nats/nats-server.log")).expect("broker log");
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "refused by the broker: {violations:#?}"
    );
}

/// What one `commerce <args> --data-dir <data>` run printed (stdout, then stderr), and whether
/// it succeeded.
pub fn cli(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = commerce()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run commerce");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Wait until `consumer`'s dead letter about order `order_id` is in `DLQ`; returns it.
pub async fn dead_letter(
    js: &async_nats::jetstream::Context,
    consumer: &str,
    order_id: &str,
) -> bus::dlq::DeadLetter {
    let dlq = bus::dlq::DeadLetters::new(js.clone());
    let filter = bus::dlq::Filter {
        consumer: Some(consumer.to_string()),
        order_id: Some(order_id.to_string()),
        ..Default::default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(page) = dlq.list(&filter, 1, 10).await {
            if let Some(letter) = page.letters.into_iter().next() {
                return letter;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter of {consumer} about {order_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events stored in `stream`, in stream order: every message but its markers (a term's or a
/// recovery's, `bus::term`; every service marks its stream when it starts with an empty
/// database).
pub async fn stream_events(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut events = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        if !bus::term::is_term_subject(&message.subject) {
            events.push(message);
        }
    }
    events
}

/// Every durable consumer of every domain stream has settled everything: no event on its way
/// to a component, none in its hands.
pub async fn all_settled(js: &async_nats::jetstream::Context) {
    use futures::TryStreamExt;
    wait_until("every consumer has settled everything", || async {
        for stream in bus::Domain::ALL.map(bus::Domain::stream) {
            let Ok(stream) = js.get_stream(stream).await else {
                return false;
            };
            let Ok(consumers) = stream.consumers().try_collect::<Vec<_>>().await else {
                return false;
            };
            if consumers
                .iter()
                .any(|info| info.num_pending > 0 || info.num_ack_pending > 0)
            {
                return false;
            }
        }
        true
    })
    .await;
}

/// Wait until durable consumer `durable` on `stream` has been handed everything and has
/// settled it (nothing pending, nothing unacknowledged).
pub async fn consumer_settled(js: &async_nats::jetstream::Context, stream: &str, durable: &str) {
    wait_until(
        &format!("{durable} on {stream} has settled everything"),
        || async {
            let Ok(mut consumer) = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    durable, stream,
                )
                .await
            else {
                return false;
            };
            matches!(consumer.info().await,
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0)
        },
    )
    .await;
}

/// A broker and simulators that outlive `commerce up`: a nats-server the test runs (admitting
/// only the identities under the data dir, as `up`'s own does) and `commerce run simulators`,
/// so `up --nats` can be stopped, a database lost, and `up` started again with the broker's
/// streams and the simulators' ledgers intact.
pub struct Outside {
    pub data: tempfile::TempDir,
    pub server: bus::NatsServer,
    pub simulators: Proc,
    pub payment_gateway: String,
    pub carrier: String,
}

impl Outside {
    pub async fn start() -> Outside {
        let data = tempfile::tempdir().unwrap();
        let server = authenticated_broker(data.path()).await;
        let mut cmd = commerce();
        cmd.args(["run", "simulators", "--data-dir"])
            .arg(data.path())
            .args(["--nats", &server.url()]);
        let simulators = Proc::spawn(cmd);
        simulators.line_starting("commerce simulators is up");
        let payment_gateway = simulators.line_starting("payment gateway: ");
        let carrier = simulators.line_starting("carrier: ");
        Outside {
            data,
            server,
            simulators,
            payment_gateway,
            carrier,
        }
    }

    /// `commerce up --nats <this broker>` calling these simulators, with `env` set; its API.
    pub fn up(&self, env: &[(&str, &str)]) -> (Proc, Api) {
        let mut cmd = commerce();
        cmd.envs(env.iter().copied())
            .env("COMMERCE_PAYMENT_GATEWAY_URL", &self.payment_gateway)
            .env("COMMERCE_CARRIER_URL", &self.carrier)
            .args(["up", "--nats", &self.server.url(), "--data-dir"])
            .arg(self.data.path());
        let up = Proc::spawn(cmd);
        let mut api = Api::of(&up, self.data.path());
        api.payment_gateway = self.payment_gateway.clone();
        api.carrier = self.carrier.clone();
        (up, api)
    }
}

/// A nats-server of the test's own that admits only the system's identities, as `commerce up`
/// makes it (their credentials under `data`, where `commerce up`/`run` find them).
pub async fn authenticated_broker(data: &std::path::Path) -> bus::server::NatsServer {
    authenticated_broker_for(data, actors::Settings::default().routes()).await
}

/// [`authenticated_broker`] for a system whose services are split as `routes` say.
pub async fn authenticated_broker_for(
    data: &std::path::Path,
    routes: actors::rpc::Routes,
) -> bus::server::NatsServer {
    let (_, access) = actors::access::Keyring::prepare_broker(data, routes).unwrap();
    let mut config = bus::server::ServerConfig::new(data.join("nats"));
    config.authorization = access;
    bus::server::NatsServer::start(config).await.unwrap()
}

/// A system of `commerce run` processes, one per component, on one broker.
pub struct Cluster {
    pub data: tempfile::TempDir,
    pub nats: String,
    pub payment_gateway: String,
    pub carrier: String,
}

impl Cluster {
    /// A broker that admits only the system's identities, as `commerce up` makes it (each
    /// `commerce run` finds its own credentials under the data dir), its streams provisioned as
    /// `streams` says, and the simulators running: the cluster, its broker, the operator's
    /// JetStream, and the simulators' process.
    pub async fn start(
        streams: &bus::StreamSettings,
    ) -> (
        Cluster,
        bus::server::NatsServer,
        async_nats::jetstream::Context,
        Proc,
    ) {
        let data = tempfile::tempdir().unwrap();
        let routes = actors::rpc::Routes::new(streams.partitions().unwrap());
        let server = authenticated_broker_for(data.path(), routes).await;
        let js = async_nats::jetstream::new(operator(&server.url(), data.path()).await);
        bus::provision(&js, streams).await.unwrap();
        let mut cluster = Cluster {
            data,
            nats: server.url(),
            payment_gateway: String::new(),
            carrier: String::new(),
        };
        let simulators = cluster.run("simulators");
        cluster.payment_gateway = simulators.line_starting("payment gateway: ");
        cluster.carrier = simulators.line_starting("carrier: ");
        (cluster, server, js, simulators)
    }

    /// `commerce run <component> <args>`, not waited for.
    pub fn spawn(&self, component: &str, args: &[&str]) -> Proc {
        self.spawn_with(component, args, &[])
    }

    /// [`Cluster::spawn`] with `env` set.
    pub fn spawn_with(&self, component: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn(self.command(component, args, env))
    }

    /// The command [`Cluster::spawn_with`] runs.
    pub fn command(&self, component: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = commerce();
        cmd.envs(env.iter().copied())
            .args(["run", component, "--data-dir"])
            .arg(self.data.path())
            .args(["--nats", &self.nats])
            .args(args)
            .env("COMMERCE_PAYMENT_GATEWAY_URL", &self.payment_gateway)
            .env("COMMERCE_CARRIER_URL", &self.carrier);
        cmd
    }

    /// The API of `gateway`, a gateway of this cluster that is up.
    pub fn api(&self, gateway: &Proc) -> Api {
        let http = gateway.line_starting("http: ");
        Api::new(
            &http,
            &self.payment_gateway,
            &self.carrier,
            self.data.path(),
        )
    }

    /// `commerce run <component>`, once it is up.
    pub fn run(&self, component: &str) -> Proc {
        let proc = self.spawn(component, &[]);
        proc.line_starting(&format!("commerce {component} is up"));
        proc
    }
}
