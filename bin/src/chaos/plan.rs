//! The run's schedule, all drawn from the seed: which fault, where, when, for how long. The
//! same seed, duration and fault kinds give the same plan (what the processes then do with it is
//! up to the machine's timing; the report prints the seed and the plan to replay it).

use std::str::FromStr;

use actors::Component;
use serde::Serialize;

/// The kinds of fault `--faults` chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL a component, start it again after a while.
    Kill,
    /// SIGSTOP a component past AckWait, then SIGCONT.
    Pause,
    /// SIGKILL nats-server and restart it on the same store, or SIGSTOP it for a while.
    Broker,
    /// SIGKILL a service, delete its database, start it again (it rebuilds from its stream).
    DbLoss,
    /// The simulators: latency below and above the client timeout, error bursts, outages, an
    /// outage longer than the saga deadline.
    Simulators,
    /// The TCP proxy between a component and NATS or a simulator: latency, resets, black hole.
    Net,
    /// A crash at an exact seam (failpoints; test builds only).
    Seams,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Broker,
        Kind::DbLoss,
        Kind::Simulators,
        Kind::Net,
        Kind::Seams,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Broker => "broker",
            Kind::DbLoss => "db-loss",
            Kind::Simulators => "simulators",
            Kind::Net => "net",
            Kind::Seams => "seams",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault kind {s:?}: one of {}", names.join(", "))
            })
    }
}

/// A simulator's faults, as `PUT /v1/faults` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimFaults {
    pub latency_ms: u64,
    pub error_rate: f64,
    pub outage: bool,
}

impl SimFaults {
    /// No fault at all.
    pub const CALM: SimFaults = SimFaults {
        latency_ms: 0,
        error_rate: 0.0,
        outage: false,
    };
}

/// One fault: what it does at its start; [`Fault::lasts_ms`] says when it is undone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    Kill {
        component: &'static str,
        down_ms: u64,
    },
    Pause {
        component: &'static str,
        ms: u64,
    },
    /// `node`: which of a cluster's nodes (0 on a single server).
    KillBroker {
        node: usize,
        down_ms: u64,
    },
    PauseBroker {
        node: usize,
        ms: u64,
    },
    LoseDatabase {
        service: &'static str,
        down_ms: u64,
    },
    Simulator {
        simulator: &'static str,
        faults: SimFaults,
        ms: u64,
    },
    Network {
        link: String,
        mode: NetMode,
        ms: u64,
    },
    Seam {
        component: &'static str,
        seam: &'static str,
    },
}

/// What a proxy does during a network fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetMode {
    Latency { ms: u64 },
    Reset,
    BlackHole,
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill { .. } => Kind::Kill,
            Fault::Pause { .. } => Kind::Pause,
            Fault::KillBroker { .. } | Fault::PauseBroker { .. } => Kind::Broker,
            Fault::LoseDatabase { .. } => Kind::DbLoss,
            Fault::Simulator { .. } => Kind::Simulators,
            Fault::Network { .. } => Kind::Net,
            Fault::Seam { .. } => Kind::Seams,
        }
    }

    /// How long until it is undone (a seam is undone by its own crash, or at heal).
    pub fn lasts_ms(&self) -> u64 {
        match self {
            Fault::Kill { down_ms, .. }
            | Fault::KillBroker { down_ms, .. }
            | Fault::LoseDatabase { down_ms, .. } => *down_ms,
            Fault::Pause { ms, .. }
            | Fault::PauseBroker { ms, .. }
            | Fault::Simulator { ms, .. }
            | Fault::Network { ms, .. } => *ms,
            Fault::Seam { .. } => 0,
        }
    }
}

/// A fault and when it starts, in ms from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scheduled {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// What the plan needs to know of the system it runs against.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub duration_ms: u64,
    pub ack_wait_ms: u64,
    pub saga_deadline_ms: u64,
    /// A call to a simulator slower than this has an unknown outcome.
    pub client_timeout_ms: u64,
    /// The broker's nodes (1: a single server).
    pub nodes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub seed: u64,
    /// Faults start after this quiet start.
    pub quiet_ms: u64,
    /// Every fault is undone here at the latest; then the drain.
    pub heal_at_ms: u64,
    pub faults: Vec<Scheduled>,
}

/// Components a fault can hit: the services, the projection, the HTTP gateway.
pub fn components() -> Vec<&'static str> {
    consumers()
        .into_iter()
        .chain([Component::Gateway.name()])
        .collect()
}

/// The components that consume events: the services and the projection.
fn consumers() -> Vec<&'static str> {
    Component::with_status().map(Component::name).collect()
}

fn services() -> Vec<&'static str> {
    Component::SERVICES.map(Component::name).to_vec()
}
pub const SIMULATORS: [&str; 2] = ["payment-gateway", "carrier"];

/// The network links a proxy sits on: every component to NATS, payment to the payment
/// gateway, shipment to the carrier.
pub fn links() -> Vec<String> {
    let mut links: Vec<String> = components().iter().map(|c| format!("{c}>nats")).collect();
    links.push("payment>payment-gateway".into());
    links.push("shipment>carrier".into());
    links
}

/// Draw the plan: a quiet start (a tenth of the run, at least 3 s), then fault windows of
/// 4–12 s (one or two faults each) and fault-free windows of 3–8 s, until the heal at
/// `duration`. Every fault ends by the heal.
pub fn draw(seed: u64, kinds: &[Kind], t: Timings) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let quiet_ms = (t.duration_ms / 10).max(3_000);
    let heal_at_ms = t.duration_ms;
    let mut faults = Vec::new();
    let mut at = quiet_ms;
    while !kinds.is_empty() && at + 4_000 <= heal_at_ms {
        let window = rng.u64(4_000..=12_000);
        for _ in 0..rng.u64(1..=2) {
            let start = at + rng.u64(0..=window / 2);
            let kind = kinds[rng.usize(..kinds.len())];
            let fault = fault(&mut rng, kind, t);
            if start + fault.lasts_ms() <= heal_at_ms {
                faults.push(Scheduled {
                    at_ms: start,
                    fault,
                });
            }
        }
        at += window + rng.u64(3_000..=8_000);
    }
    faults.sort_by_key(|s| s.at_ms);
    Plan {
        seed,
        quiet_ms,
        heal_at_ms,
        faults,
    }
}

/// Which node a broker fault hits. Drawn only on a cluster, so a seed draws the same plan on a
/// single server as it always did.
fn node(rng: &mut fastrand::Rng, t: Timings) -> usize {
    if t.nodes > 1 {
        rng.usize(..t.nodes)
    } else {
        0
    }
}

fn fault(rng: &mut fastrand::Rng, kind: Kind, t: Timings) -> Fault {
    let pick = |rng: &mut fastrand::Rng, from: &[&'static str]| from[rng.usize(..from.len())];
    match kind {
        Kind::Kill => Fault::Kill {
            component: pick(rng, &components()),
            down_ms: rng.u64(300..=4_000),
        },
        Kind::Pause => Fault::Pause {
            component: pick(rng, &components()),
            ms: t.ack_wait_ms + rng.u64(500..=3_000),
        },
        Kind::Broker if rng.bool() => Fault::KillBroker {
            node: node(rng, t),
            down_ms: rng.u64(300..=3_000),
        },
        Kind::Broker => Fault::PauseBroker {
            node: node(rng, t),
            ms: rng.u64(1_000..=4_000),
        },
        Kind::DbLoss => Fault::LoseDatabase {
            service: pick(rng, &services()),
            down_ms: rng.u64(500..=3_000),
        },
        Kind::Simulators => {
            let simulator = pick(rng, &SIMULATORS);
            let (faults, ms) = match rng.u8(0..6) {
                0 => (
                    SimFaults {
                        latency_ms: rng.u64(200..=t.client_timeout_ms / 2),
                        ..SimFaults::CALM
                    },
                    rng.u64(3_000..=10_000),
                ),
                1 => (
                    SimFaults {
                        latency_ms: t.client_timeout_ms + rng.u64(1_000..=3_000),
                        ..SimFaults::CALM
                    },
                    rng.u64(5_000..=15_000),
                ),
                2 => (
                    SimFaults {
                        error_rate: 0.3 + rng.f64() * 0.6,
                        ..SimFaults::CALM
                    },
                    rng.u64(3_000..=10_000),
                ),
                3 => (
                    SimFaults {
                        outage: true,
                        ..SimFaults::CALM
                    },
                    rng.u64(2_000..=8_000),
                ),
                // Slower than the client's timeout for longer than the saga deadline: steps
                // whose outcome is unknown must be found out, not compensated.
                4 => (
                    SimFaults {
                        latency_ms: t.client_timeout_ms + rng.u64(1_000..=3_000),
                        ..SimFaults::CALM
                    },
                    t.saga_deadline_ms + rng.u64(5_000..=15_000),
                ),
                // Longer than the saga deadline: forward steps give up, compensations wait.
                _ => (
                    SimFaults {
                        outage: true,
                        ..SimFaults::CALM
                    },
                    t.saga_deadline_ms + rng.u64(2_000..=5_000),
                ),
            };
            Fault::Simulator {
                simulator,
                faults,
                ms,
            }
        }
        Kind::Net => {
            let links = links();
            let link = links[rng.usize(..links.len())].clone();
            let (mode, ms) = match rng.u8(0..3) {
                0 => (
                    NetMode::Latency {
                        ms: rng.u64(50..=800),
                    },
                    rng.u64(2_000..=8_000),
                ),
                1 => (NetMode::Reset, rng.u64(500..=3_000)),
                _ => (NetMode::BlackHole, rng.u64(1_000..=5_000)),
            };
            Fault::Network { link, mode, ms }
        }
        Kind::Seams => {
            let seam =
                bus::failpoints::CRASH_SEAMS[rng.usize(..bus::failpoints::CRASH_SEAMS.len())];
            let component = match seam {
                "payment.refunded_before_commit" => "payment",
                // After an external call: only these two make one.
                "engine.before_commit" => pick(rng, &["payment", "shipment"]),
                "consume.before_apply" | "consume.after_commit" => pick(rng, &consumers()),
                _ => pick(rng, &services()),
            };
            Fault::Seam { component, seam }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timings = Timings {
        duration_ms: 120_000,
        ack_wait_ms: 2_000,
        saga_deadline_ms: 20_000,
        client_timeout_ms: 5_000,
        nodes: 1,
    };

    /// The broker faults' nodes in the plans of seeds 0..50.
    fn broker_nodes(nodes: usize) -> Vec<usize> {
        (0..50)
            .flat_map(|seed| draw(seed, &[Kind::Broker], Timings { nodes, ..T }).faults)
            .filter_map(|s| match s.fault {
                Fault::KillBroker { node, .. } | Fault::PauseBroker { node, .. } => Some(node),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn broker_faults_hit_every_node_of_a_cluster_and_the_one_of_a_single_server() {
        assert!(broker_nodes(1).iter().all(|n| *n == 0));
        let hit: std::collections::BTreeSet<usize> = broker_nodes(3).into_iter().collect();
        assert_eq!(hit, [0, 1, 2].into());
    }

    #[test]
    fn the_seed_decides_the_plan() {
        let a = draw(7, &Kind::ALL, T);
        let b = draw(7, &Kind::ALL, T);
        let c = draw(8, &Kind::ALL, T);
        assert_eq!(a.faults, b.faults);
        assert_ne!(a.faults, c.faults);
        assert!(!a.faults.is_empty());
    }

    #[test]
    fn faults_start_after_the_quiet_start_and_end_by_the_heal() {
        for seed in 0..50 {
            let plan = draw(seed, &Kind::ALL, T);
            for s in &plan.faults {
                assert!(s.at_ms >= plan.quiet_ms, "{s:?}");
                assert!(s.at_ms + s.fault.lasts_ms() <= plan.heal_at_ms, "{s:?}");
            }
        }
    }

    #[test]
    fn only_the_chosen_kinds_are_drawn() {
        for seed in 0..20 {
            let plan = draw(seed, &[Kind::Kill, Kind::Net], T);
            assert!(plan
                .faults
                .iter()
                .all(|s| matches!(s.fault.kind(), Kind::Kill | Kind::Net)));
        }
        assert!(draw(1, &[], T).faults.is_empty());
    }

    #[test]
    fn pauses_outlast_ack_wait_and_slow_answers_outlast_the_client_timeout() {
        let mut slow_seen = false;
        for seed in 0..200 {
            for s in draw(seed, &[Kind::Pause, Kind::Simulators], T).faults {
                match s.fault {
                    Fault::Pause { ms, .. } => assert!(ms > T.ack_wait_ms),
                    Fault::Simulator { faults, .. } if faults.latency_ms > T.client_timeout_ms => {
                        slow_seen = true
                    }
                    _ => {}
                }
            }
        }
        assert!(
            slow_seen,
            "some plan has answers slower than the client timeout"
        );
    }
}
