//! `commerce up --instances N`: every service as N processes (`commerce run <service>
//! --instance <i> --home <partitions>`), started and kept running by `commerce up`. Partition
//! `k` is the home of instance `k mod N`; each instance stands by for the others' partitions and
//! takes them over when their home instance is gone. A process that exits is started again
//! after a second (doubling, up to half a minute, while it keeps exiting); it comes back as a
//! standby, and asks for its home partitions back. Each one's output goes to `<data-dir>/logs/<service>@<i>.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actors::Component;
use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// How long every service gets to have an instance up.
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long an exited instance waits before it is started again, at first.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// The longest wait before starting again an instance that keeps exiting.
const MAX_RESTART_AFTER: Duration = Duration::from_secs(30);
/// How often the instances are looked at.
const TICK: Duration = Duration::from_millis(250);
/// How long the instances get to stop cleanly when `commerce up` stops.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// What every instance is started with.
pub struct Launch {
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub nats: String,
    /// The payment gateway's and the carrier's URLs.
    pub payment_gateway: Option<String>,
    pub carrier: Option<String>,
    pub instances: usize,
    pub partitions: u32,
}

/// The instances of every service, while `commerce up` runs.
pub struct Instances {
    launch: Launch,
    children: BTreeMap<String, Child>,
    /// Per exited instance: when it may start again, and the wait after its next exit.
    backoff: BTreeMap<String, (Instant, Duration)>,
}

impl Instances {
    /// Start every instance and wait until each service is up: every instance, each serving
    /// its home partitions; with one partition, one instance (the others stand by).
    pub async fn start(launch: Launch) -> anyhow::Result<Instances> {
        std::fs::create_dir_all(launch.data_dir.join("logs"))?;
        let mut instances = Instances {
            launch,
            children: BTreeMap::new(),
            backoff: BTreeMap::new(),
        };
        for service in Component::SERVICES {
            for i in 1..=instances.launch.instances {
                let name = format!("{service}@{i}");
                let child = instances.spawn(service, i, true)?;
                instances.children.insert(name, child);
            }
        }
        let deadline = Instant::now() + START_WITHIN;
        let every = instances.launch.partitions > 1;
        for service in Component::SERVICES {
            let up = format!("commerce {service} is up");
            loop {
                let logs = (1..=instances.launch.instances)
                    .map(|i| instances.log(&format!("{service}@{i}")));
                if is_up(logs, &up, every) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{service} did not start within {START_WITHIN:?}; see {}",
                    instances.log_path(&format!("{service}@1")).display()
                );
                // One that failed as it started (a broker slow to answer) starts again.
                instances.restart_exited();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(instances)
    }

    /// The processes, by name (`payment@1`), for `commerce up`'s summary.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.children.keys().map(String::as_str)
    }

    /// Start again any instance that exited (after a second, doubling up to half a minute for
    /// one that keeps exiting), until `stop`; then stop them all.
    pub async fn supervise(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            self.restart_exited();
        }
        self.stop_all().await;
    }

    /// Start again each instance that exited, once its wait is over.
    fn restart_exited(&mut self) {
        let exited: Vec<String> = self
            .children
            .iter_mut()
            .filter_map(|(name, child)| {
                matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone())
            })
            .collect();
        for name in exited {
            let (at, wait) = self
                .backoff
                .entry(name.clone())
                .or_insert((Instant::now() + RESTART_AFTER, RESTART_AFTER));
            let Some((service, i)) = parse(&name).filter(|_| Instant::now() >= *at) else {
                continue;
            };
            tracing::warn!(instance = %name, "instance exited; starting it again");
            *wait = (*wait * 2).min(MAX_RESTART_AFTER);
            *at = Instant::now() + *wait;
            match self.spawn(service, i, false) {
                Ok(child) => {
                    self.children.insert(name, child);
                }
                Err(e) => tracing::error!(instance = %name, error = %e, "not started again"),
            }
        }
        // One that has run a while starts from the short wait again.
        self.backoff
            .retain(|_, (at, _)| Instant::now() < *at + MAX_RESTART_AFTER);
    }

    /// SIGTERM every instance (and close its stdin), wait for each to stop cleanly; SIGKILL
    /// one that has not within [`STOP_WITHIN`].
    async fn stop_all(&mut self) {
        for child in self.children.values_mut() {
            drop(child.stdin.take());
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for (name, mut child) in std::mem::take(&mut self.children) {
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    tracing::warn!(instance = %name, "did not stop in time; killed");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// `commerce run <service> --instance <i> --home <its partitions>`, its output in a log
    /// begun anew (`fresh`: this `commerce up`'s first start of it) or appended to.
    fn spawn(&self, service: Component, i: usize, fresh: bool) -> anyhow::Result<Child> {
        let launch = &self.launch;
        let name = format!("{service}@{i}");
        let path = self.log_path(&name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh)
            .truncate(fresh)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut cmd = Command::new(&launch.exe);
        cmd.args(["run", service.name(), "--instance", &i.to_string()])
            .arg("--data-dir")
            .arg(&launch.data_dir)
            .args(["--nats", &launch.nats]);
        if let Some(config) = &launch.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(home) = home(i, launch.instances, launch.partitions) {
            cmd.args(["--home", &home]);
        }
        if let Some(url) = &launch.payment_gateway {
            cmd.env("COMMERCE_PAYMENT_GATEWAY_URL", url);
        }
        if let Some(url) = &launch.carrier {
            cmd.env("COMMERCE_CARRIER_URL", url);
        }
        // Services listen on no address of their own; each stops when this process is gone.
        cmd.env("COMMERCE_HTTP_ADDR", "127.0.0.1:0")
            .env("COMMERCE_ADMIN_ADDR", "127.0.0.1:0")
            .env(crate::launch::EXIT_WITH_PARENT, "1")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.spawn()
            .with_context(|| format!("cannot start {}", launch.exe.display()))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        log_path(&self.launch.data_dir, name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }
}

/// Where instance `name`'s output goes.
pub fn log_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{name}.log"))
}

/// Is a service up, by its instances' logs: has every instance (`every`, over several
/// partitions, each serving its home ones) or one (the others standing by) said `up`?
pub(crate) fn is_up(logs: impl IntoIterator<Item = String>, up: &str, every: bool) -> bool {
    let mut said = logs.into_iter().map(|log| log.contains(up));
    if every {
        said.all(|s| s)
    } else {
        said.any(|s| s)
    }
}

/// `payment@2` → (payment, 2).
fn parse(name: &str) -> Option<(Component, usize)> {
    let (service, i) = name.split_once('@')?;
    Some((service.parse().ok()?, i.parse().ok()?))
}

/// The partitions instance `i` (1-based) of `instances` is the home of: `k` with
/// `k mod instances = i - 1`. `None`: one partition, every instance's home (`commerce up`
/// keeps `instances` at most the partitions when there are several).
pub(crate) fn home(i: usize, instances: usize, partitions: u32) -> Option<String> {
    let home: Vec<String> = (0..partitions)
        .filter(|k| *k as usize % instances == i - 1)
        .map(|k| k.to_string())
        .collect();
    (partitions > 1 && !home.is_empty()).then(|| home.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_k_is_the_home_of_instance_k_mod_n() {
        assert_eq!(home(1, 2, 4).as_deref(), Some("0,2"));
        assert_eq!(home(2, 2, 4).as_deref(), Some("1,3"));
        assert_eq!(home(1, 2, 1), None, "one partition: every instance's home");
        assert_eq!(parse("payment@2"), Some((Component::Payment, 2)));
        assert_eq!(parse("payment"), None);
    }
}
