//! Helpers for the integration tests: a real nats-server per test (free port, temp store), a
//! fresh sled store, and polling instead of sleeping.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use bus::server::{NatsServer, ServerConfig};
use bus::{Domain, Envelope, NatsCluster};
use serde_json::json;
use storage::{Commit, NewEvent, Store, StoreConfig};
use tempfile::TempDir;
use uuid::Uuid;

/// A nats-server of this test's own, with its temp store; killed on drop.
pub struct TestBroker {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    _dir: TempDir,
}

impl TestBroker {
    /// Start a server and provision every stream with the default settings.
    pub async fn start() -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(ServerConfig::new(dir.path().join("nats")))
            .await
            .expect("nats-server starts (run scripts/install-nats-server)");
        let client = bus::connect(&server.url(), "test", None)
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        bus::provision(&js, &bus::StreamSettings::default())
            .await
            .expect("provision");
        TestBroker {
            server,
            client,
            js,
            _dir: dir,
        }
    }

    /// Messages in `stream` right now.
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        s.info().await.expect("stream info").state.messages
    }
}

/// A 3-node nats-server cluster of this test's own, every stream kept on all three nodes;
/// `js` is connected to the whole cluster (any node).
pub struct TestCluster {
    pub cluster: NatsCluster,
    pub js: async_nats::jetstream::Context,
    _dir: TempDir,
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = NatsCluster::start(3, ServerConfig::new(dir.path()))
            .await
            .expect("a 3-node nats-server cluster starts (run scripts/install-nats-server)");
        let client = bus::connect(&cluster.url(), "test", None)
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        let settings = bus::StreamSettings {
            replicas: 3,
            ..bus::StreamSettings::default()
        };
        bus::provision(&js, &settings).await.expect("provision");
        TestCluster {
            cluster,
            js,
            _dir: dir,
        }
    }
}

/// A fresh service database in its own temp dir.
pub fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).expect("open store");
    (dir, store)
}

/// Poll `condition` every 20 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs from the code under test, when `RUST_LOG` asks for them.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// For loops that drive something themselves: `while !done { …; deadline.check() }`.
pub struct Deadline {
    at: Instant,
    what: &'static str,
}

impl Deadline {
    pub fn after(timeout: Duration, what: &'static str) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            what,
        }
    }

    /// Panics once the deadline has passed.
    pub fn check(&self) {
        assert!(
            Instant::now() < self.at,
            "timed out waiting for: {}",
            self.what
        );
    }
}

/// Cut the last message block of a stream in half, as an OS crash before nats-server's fsync
/// leaves it: the stream loses its tail. `store_dir` is the server's (`NatsServer::store_dir`).
pub fn cut_last_block(store_dir: &std::path::Path, stream: &str) {
    let blocks = store_dir.join(format!("jetstream/jetstream/$G/streams/{stream}/msgs"));
    let block = std::fs::read_dir(&blocks)
        .expect("the stream's blocks")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "blk"))
        .max()
        .expect("a message block");
    let len = std::fs::metadata(&block).expect("block metadata").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&block)
        .and_then(|f| f.set_len(len / 2))
        .expect("cut the block");
}

/// Commit `n` events (one per order, each with its outbox row) and flush them.
pub fn commit_orders(store: &Store, n: usize) -> HashSet<Uuid> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let order = Uuid::now_v7().to_string();
        let event =
            Envelope::new(Domain::Orders, "OrderCreated", &order, json!({ "n": i })).unwrap();
        let commit = Commit::new()
            .append(
                order,
                0,
                vec![NewEvent {
                    event_id: event.id,
                    event_type: event.event_type.clone(),
                    payload: event.to_json().unwrap(),
                }],
            )
            .publish(event.to_outbox_message().unwrap());
        store.commit(&commit).unwrap();
        ids.insert(event.id);
    }
    let _ = store.flush_blocking().unwrap();
    ids
}
