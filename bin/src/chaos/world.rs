//! The system under test, as the harness holds it: its own nats-server, or cluster of them
//! (admitting only the system's identities), the simulators (in this process: they are the outside world and keep
//! the ledgers), a TCP fault proxy on every link, and every component as its own OS process
//! (`commerce run <component>`), with its log under `<dir>/logs/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actors::access::Keyring;
use actors::simulators::{Simulators, StandIn};
use actors::Settings;
use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::plan::{components, links, NetMode, SimFaults};
use super::proxy::{Mode, Proxy, ProxyStats};

/// One component's process and what the harness did to it.
#[derive(Default)]
struct Proc {
    child: Option<Child>,
    /// Started with this crash seam armed.
    armed: Option<&'static str>,
    /// When it exited by itself (a seam, or a crash the harness did not cause).
    exited_at: Option<Instant>,
}

/// What happened to the processes, for the report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ProcessCounts {
    pub starts: u64,
    /// Processes that died at an armed seam.
    pub seam_crashes: u64,
    /// Processes that died otherwise (a signal the harness did not send, or a panic): a bug,
    /// which fails the run.
    pub crashes: Vec<String>,
    /// Processes that stopped with an error (e.g. no broker to start on while it was down).
    pub error_exits: Vec<String>,
}

pub struct World {
    pub dir: PathBuf,
    exe: PathBuf,
    config: PathBuf,
    /// The broker's nodes: one, or a cluster's.
    brokers: Vec<bus::NatsServer>,
    simulators: Option<Simulators>,
    pub payment_gateway: String,
    pub carrier: String,
    /// The HTTP gateway's base URL (the same port across its restarts).
    pub http: String,
    links: BTreeMap<String, Proxy>,
    /// By process: a component's name, or `<service>@<instance>` when services run as several.
    procs: BTreeMap<String, Proc>,
    /// Instances of each service (`--instances`).
    instances: usize,
    /// Which services are split by partition, and into how many (`--partitions`).
    pub routes: actors::rpc::Routes,
    /// A deliberate bug every component runs with (`--break`).
    broken: Option<&'static str>,
    /// The operator's own connection, straight to the broker.
    pub operator: async_nats::Client,
    pub counts: ProcessCounts,
}

impl World {
    /// Start everything and wait until every component is up.
    pub async fn up(
        dir: &Path,
        settings: &Settings,
        config: PathBuf,
        broken: Option<&'static str>,
        instances: usize,
    ) -> anyhow::Result<World> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let (_, access) = Keyring::prepare_broker(dir, settings.routes())?;
        let mut server = bus::server::ServerConfig::new(dir.join("nats"));
        server.authorization = access;
        server.max_procs = Some(settings.nats_cores());
        let brokers = if settings.nats_cluster > 1 {
            bus::NatsCluster::start(settings.nats_cluster, server)
                .await?
                .into_nodes()
        } else {
            vec![bus::NatsServer::start(server).await?]
        };
        let broker_url = urls(&brokers);
        let operator = super::super::client::connect(&Settings {
            data_dir: dir.to_path_buf(),
            nats_url: Some(broker_url),
            ..settings.clone()
        })
        .await?;
        let js = async_nats::jetstream::new(operator.clone());
        bus::provision(&js, &settings.streams).await?;

        let simulators = Simulators::start(&settings.simulators, StandIn::BOTH).await?;
        let (Some(payment_gateway), Some(carrier)) = (
            simulators.payment_gateway_url.clone(),
            simulators.carrier_url.clone(),
        ) else {
            anyhow::bail!("the simulators did not both start");
        };
        let mut proxies = BTreeMap::new();
        for link in links() {
            let upstream = match link.split_once('>').map(|(_, to)| to) {
                Some("payment-gateway") => socket_of(&payment_gateway)?,
                Some("carrier") => socket_of(&carrier)?,
                // The first node; a cluster's others are reached directly (see start_component).
                _ => socket_of(&brokers.first().context("no broker node")?.url())?,
            };
            proxies.insert(link.clone(), Proxy::start(&link, upstream).await?);
        }
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut world = World {
            dir: dir.to_path_buf(),
            exe: std::env::current_exe()?,
            config,
            brokers,
            simulators: Some(simulators),
            payment_gateway,
            carrier,
            http: format!("http://127.0.0.1:{http_port}"),
            links: proxies,
            procs: BTreeMap::new(),
            instances,
            routes: settings.routes(),
            broken,
            operator,
            counts: ProcessCounts::default(),
        };
        let all: Vec<String> = components()
            .into_iter()
            .flat_map(|c| world.processes(c))
            .collect();
        for process in &all {
            world.procs.insert(process.clone(), Proc::default());
            world.start_component(process, None)?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        // One instance of each is up, the others waiting for its lease; or, over several
        // partitions, every instance, each serving its home partitions.
        let every = world.routes.partitions().count() > 1;
        for component in components() {
            let up = format!("commerce {component} is up");
            loop {
                let logs = world
                    .processes(component)
                    .into_iter()
                    .map(|p| world.log(&p));
                if crate::instances::is_up(logs, &up, every) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{component} did not start within 60 s; see {}",
                    world.log_path(component).display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(world)
    }

    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.log_path(component)).unwrap_or_default()
    }

    /// The processes of `component`: itself, or its instances `<service>@a`, `@b`, ….
    fn processes(&self, component: &str) -> Vec<String> {
        let service = actors::Component::SERVICES
            .iter()
            .any(|s| s.name() == component);
        if self.instances > 1 && service {
            INSTANCES[..self.instances]
                .iter()
                .map(|i| format!("{component}@{i}"))
                .collect()
        } else {
            vec![component.to_string()]
        }
    }

    /// With instances over several partitions: the partitions instance `instance` is the home
    /// of (partition `k` is the home of instance `k mod N`).
    fn home(&self, instance: Option<&str>) -> Option<String> {
        let index = INSTANCES.iter().position(|i| Some(*i) == instance)?;
        let partitions = self.routes.partitions().count();
        crate::instances::home(index + 1, self.instances, partitions)
    }

    /// The process a fault on `component` hits: with instances, the one that owns the service
    /// (its partition 0) now, the one whose loss matters; else the first.
    async fn target(&self, component: &str) -> String {
        let processes = self.processes(component);
        if processes.len() > 1 {
            let js = async_nats::jetstream::new(self.operator.clone());
            let key = bus::lease::key(component, 0);
            let owner = bus::lease::held(&js)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|lease| lease.key == key)
                .and_then(|lease| lease.holder)
                .map(|holder| format!("{component}@{}", holder.instance));
            if let Some(owner) = owner.filter(|o| processes.contains(o)) {
                return owner;
            }
        }
        processes.into_iter().next().unwrap_or_default()
    }

    /// `commerce run <component> [--instance i]` through its proxies, unless it runs already.
    fn start_component(&mut self, process: &str, seam: Option<&'static str>) -> anyhow::Result<()> {
        let (component, instance) = match process.split_once('@') {
            Some((component, instance)) => (component, Some(instance)),
            None => (process, None),
        };
        let running = self
            .procs
            .get_mut(process)
            .is_some_and(|p| matches!(p.child.as_mut().map(Child::try_wait), Some(Ok(None))));
        if running {
            return Ok(());
        }
        let failpoints: Vec<String> = self
            .broken
            .iter()
            .map(|b| format!("{b}=return"))
            .chain(seam.map(|s| format!("{s}=1*return")))
            .collect();
        let path = self.log_path(process);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        use std::io::Write;
        writeln!(
            log,
            "--- chaos: start (FAILPOINTS={:?})",
            failpoints.join(";")
        )?;
        // Through its proxy to the first node, and straight to a cluster's others: a fault on
        // the link is then one node out of reach, and the client fails over.
        let nats = std::iter::once(format!(
            "nats://{}",
            self.links[&format!("{component}>nats")].addr()
        ))
        .chain(self.brokers.iter().skip(1).map(bus::NatsServer::url))
        .collect::<Vec<_>>()
        .join(",");
        let mut cmd = Command::new(&self.exe);
        cmd.args(["run", component, "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--nats", &nats])
            .args(instance.map(|i| ["--instance", i]).into_iter().flatten())
            .args(
                self.home(instance)
                    .map(|home| ["--home".to_string(), home])
                    .into_iter()
                    .flatten(),
            )
            .env("COMMERCE_PAYMENT_GATEWAY_URL", &self.payment_gateway)
            .env("COMMERCE_CARRIER_URL", &self.carrier)
            .env("FAILPOINTS", failpoints.join(";"))
            .env("COMMERCE_ADMIN_ADDR", "127.0.0.1:0")
            .env_remove("NATS_CREDS")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(proxy) = self.links.get(&format!("{component}>payment-gateway")) {
            cmd.env(
                "COMMERCE_PAYMENT_GATEWAY_URL",
                format!("http://{}", proxy.addr()),
            );
        }
        if let Some(proxy) = self.links.get(&format!("{component}>carrier")) {
            cmd.env("COMMERCE_CARRIER_URL", format!("http://{}", proxy.addr()));
        }
        if component == "gateway" {
            cmd.args(["--http", self.http.trim_start_matches("http://")]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {component}"))?;
        self.counts.starts += 1;
        if let Some(proc) = self.procs.get_mut(process) {
            *proc = Proc {
                child: Some(child),
                armed: seam,
                ..Proc::default()
            };
        }
        Ok(())
    }

    /// SIGKILL `component` (with instances: its owner).
    pub async fn kill(&mut self, component: &str) {
        let process = self.target(component).await;
        self.kill_process(&process);
    }

    fn kill_process(&mut self, process: &str) {
        if let Some(proc) = self.procs.get_mut(process) {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Down by plan now: not the supervisor's to start again.
            proc.exited_at = None;
        }
    }

    /// Start every process of `component` that is not running.
    pub fn start(&mut self, component: &str) -> anyhow::Result<()> {
        for process in self.processes(component) {
            self.start_component(&process, None)?;
        }
        Ok(())
    }

    /// SIGSTOP (`true`: with instances, its owner) or SIGCONT (`false`: all of them).
    pub async fn pause(&mut self, component: &str, stop: bool) {
        let processes = match stop {
            true => vec![self.target(component).await],
            false => self.processes(component),
        };
        for process in processes {
            if let Some(pid) = self.procs.get(&process).and_then(|p| p.child.as_ref()) {
                signal(pid.id(), pausing(stop));
            }
        }
    }

    /// SIGKILL the service (its owner) and delete its database; it rebuilds from its stream on
    /// start.
    pub async fn lose_database(&mut self, service: &str) -> anyhow::Result<()> {
        let process = self.target(service).await;
        self.kill_process(&process);
        // A process's name is its database's directory (`<service>@<instance>` too), or the
        // stem of one per partition (`payment@a.p1`).
        let partition = format!("{process}.p");
        for entry in std::fs::read_dir(&self.dir)? {
            let db = entry?.path();
            let name = db.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name == process
                || name
                    .strip_prefix(&partition)
                    .is_some_and(|k| k.parse::<u32>().is_ok())
            {
                std::fs::remove_dir_all(&db)
                    .with_context(|| format!("cannot delete {}", db.display()))?;
            }
        }
        Ok(())
    }

    /// Restart `component` with `seam` armed: it dies the first time it gets there.
    pub async fn arm(&mut self, component: &str, seam: &'static str) -> anyhow::Result<()> {
        let process = self.target(component).await;
        self.kill_process(&process);
        self.start_component(&process, Some(seam))
    }

    /// Every node's URL, comma-separated.
    pub fn broker_url(&self) -> String {
        urls(&self.brokers)
    }

    /// SIGKILL broker node `node`.
    pub fn kill_broker(&mut self, node: usize) {
        if let Some(broker) = self.brokers.get_mut(node) {
            broker.kill();
        }
    }

    /// Start broker node `node` again on its port and store.
    pub async fn restart_broker(&mut self, node: usize) -> anyhow::Result<()> {
        if let Some(broker) = self.brokers.get_mut(node) {
            broker.restart().await?;
        }
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) broker node `node`.
    pub fn pause_broker(&mut self, node: usize, stop: bool) {
        if let Some(broker) = self.brokers.get(node) {
            // A node already gone has nothing to pause; the schedule goes on.
            let _ = broker.pause(stop);
        }
    }

    pub async fn set_simulator(&self, simulator: &str, faults: SimFaults) -> anyhow::Result<()> {
        let base = match simulator {
            "carrier" => &self.carrier,
            _ => &self.payment_gateway,
        };
        reqwest::Client::new()
            .put(format!("{base}/v1/faults"))
            .json(&faults)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub fn set_link(&self, link: &str, mode: Option<NetMode>) {
        if let Some(proxy) = self.links.get(link) {
            proxy.set(match mode {
                None => Mode::Pass,
                Some(NetMode::Latency { ms }) => Mode::Latency(Duration::from_millis(ms)),
                Some(NetMode::Reset) => Mode::Reset,
                Some(NetMode::BlackHole) => Mode::BlackHole,
            });
        }
    }

    /// Each link's connections and resets so far.
    pub fn link_stats(&self) -> BTreeMap<String, ProxyStats> {
        self.links
            .iter()
            .map(|(link, proxy)| (link.clone(), proxy.stats()))
            .collect()
    }

    /// Start again what exited by itself (an armed seam fired, or it crashed), a second after.
    pub fn tend(&mut self) -> anyhow::Result<()> {
        let mut restart = Vec::new();
        for (process, proc) in &mut self.procs {
            if let Some(Ok(Some(status))) = proc.child.as_mut().map(Child::try_wait) {
                proc.child = None;
                proc.exited_at = Some(Instant::now());
                use std::os::unix::process::ExitStatusExt;
                let what = format!("{process}: {status}");
                match proc.armed.take() {
                    Some(_) => self.counts.seam_crashes += 1,
                    None if status.signal().is_some() || status.code() == Some(101) => {
                        self.counts.crashes.push(what)
                    }
                    None => self.counts.error_exits.push(what),
                }
            }
            if proc
                .exited_at
                .is_some_and(|at| at.elapsed() >= Duration::from_secs(1))
            {
                restart.push(process.clone());
            }
        }
        for process in restart {
            self.start_component(&process, None)?;
        }
        Ok(())
    }

    /// Undo every fault: simulators calm, links pass, broker and every component running, no
    /// seam armed.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for simulator in super::plan::SIMULATORS {
            self.set_simulator(simulator, SimFaults::CALM).await?;
        }
        for proxy in self.links.values() {
            proxy.set(Mode::Pass);
        }
        for broker in &mut self.brokers {
            if let Some(pid) = broker.pid() {
                signal(pid, Signal::SIGCONT);
            }
            if !broker.is_running() {
                broker.restart().await?;
            }
        }
        let processes: Vec<String> = self.procs.keys().cloned().collect();
        for process in processes {
            if let Some(pid) = self.procs.get(&process).and_then(|p| p.child.as_ref()) {
                signal(pid.id(), Signal::SIGCONT);
            }
            let armed = self.procs.get(&process).is_some_and(|p| p.armed.is_some());
            if armed {
                self.kill_process(&process);
            }
            self.start_component(&process, None)?;
        }
        Ok(())
    }

    /// The process ids of the components running now, and of the broker's nodes.
    pub fn pids(&self) -> (Vec<u32>, Vec<u32>) {
        let components = self
            .procs
            .values()
            .filter_map(|proc| proc.child.as_ref().map(Child::id))
            .collect();
        let brokers = self
            .brokers
            .iter()
            .filter_map(bus::NatsServer::pid)
            .collect();
        (components, brokers)
    }

    /// Stop everything: components (SIGTERM, then SIGKILL), simulators, proxies, broker.
    pub async fn stop(mut self) {
        for proc in self.procs.values_mut() {
            if let Some(pid) = proc.child.as_ref().map(Child::id) {
                signal(pid, Signal::SIGCONT);
                signal(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for proc in self.procs.values_mut() {
            if let Some(mut child) = proc.child.take() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(simulators) = self.simulators.take() {
            simulators.stop().await;
        }
        self.links.clear();
        for broker in &mut self.brokers {
            if let Some(pid) = broker.pid() {
                signal(pid, Signal::SIGCONT);
            }
            broker.stop().await;
        }
    }
}

impl Drop for World {
    /// No process outlives the harness, whatever way it ends.
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The names of a service's instances (`--instances`, at most three).
pub const INSTANCES: [&str; 3] = ["a", "b", "c"];

/// SIGSTOP to pause, SIGCONT to resume.
fn pausing(stop: bool) -> Signal {
    if stop {
        Signal::SIGSTOP
    } else {
        Signal::SIGCONT
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn urls(brokers: &[bus::NatsServer]) -> String {
    let urls: Vec<String> = brokers.iter().map(bus::NatsServer::url).collect();
    urls.join(",")
}

/// `http://127.0.0.1:7701` or `nats://127.0.0.1:4222` → the socket address.
fn socket_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .parse()
        .with_context(|| format!("{url} is not a loopback address with a port"))
}
