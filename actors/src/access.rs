//! The trust boundary on the bus: one broker identity per component, plus the operator, each
//! allowed only what its work needs.
//!
//! - A service publishes its own domain's events (`orders.>` for order), its dead letters
//!   (`dlq.<service>.>`), circuit transitions (`ops.circuit.>`) and the handlings it put off
//!   (`ops.retry.<service>.>`, its own name in the subject); it drives only its own durable
//!   consumers on the streams it listens to (and hears of their new leaders: a cue to ask the
//!   leader whether it holds the consumer's pull, whatever the announcement says), hears of its
//!   own stream's new leaders (a cue for its relay to publish again what it awaits answers for),
//!   reads one message of its own stream or of its dead letters by sequence (to re-handle one:
//!   `replay`), and answers its own micro endpoints.
//!   Deleting a dead letter is the operator's.
//! - The projection reads every domain stream and publishes no event (only its dead letters
//!   and put-off handlings).
//! - Each of them replays as a second identity, `<name>-replayer` (a service: its own stream and
//!   its dead letters, to rebuild a lost database; the projection: every domain stream, to
//!   rebuild the read model). It may only read those streams from a sequence on, and answers
//!   no requests, so the broker keeps no reply subject of what it reads (`bus::replay`).
//! - The HTTP gateway may only call the endpoints it uses.
//! - The operator (`commerce up` itself and the CLI) may publish anything, and listens only on
//!   inboxes: no identity may subscribe where a stream stores.
//! - No component may ask a direct get (its answer, a stored message itself, goes to any reply
//!   subject, so a stream could store what the asker wrote as another's event), and a replayer
//!   touches only consumers named for it (a create may change any consumer it names).
//!
//! Everyone's replies come to their own inbox (`_INBOX_<name>.>`), which nobody else may read.
//! A connection without credentials is refused. The permissions are derived from the same
//! tables the code runs on ([`Service::LISTENS`], the endpoint names), so they cannot drift.
//!
//! Credentials live in `<data-dir>/credentials/<name>.nk` (nkey seeds, 0600, directory 0700),
//! made by `commerce up` on first start and kept; the server learns only public keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bus::auth::{self, Credentials, Permissions};
use bus::{BusError, Domain};

use crate::contract::{
    Cancel, Get, InventoryService, OrderService, Part, PaymentService, Place, ReadOrder,
    RecommendationService, Service, ShipmentService, Status, StoreService,
};
use crate::engine::host::consume::{dead_letter_owner, durable_name};
use crate::rpc::{endpoint_subject, Component, Endpoint, Routes};
use crate::Settings;

/// Who connects to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BusUser {
    /// `commerce up` and the CLI: provisioning, status, operator endpoints.
    Operator,
    Component(Component),
    /// A component's replays (`<name>-replayer`).
    Replayer(Component),
}

impl BusUser {
    /// Every identity the system has (the simulators stand for outside systems: none; the
    /// gateway replays nothing).
    pub fn all() -> impl Iterator<Item = BusUser> {
        let components = Component::ALL
            .into_iter()
            .filter(|c| *c != Component::Simulators);
        std::iter::once(BusUser::Operator)
            .chain(components.clone().map(BusUser::Component))
            .chain(
                components
                    .filter(|c| *c != Component::Gateway)
                    .map(BusUser::Replayer),
            )
    }

    pub fn name(self) -> String {
        match self {
            BusUser::Operator => "operator".into(),
            BusUser::Component(c) => c.name().into(),
            BusUser::Replayer(c) => bus::replayer_name(c.name()),
        }
    }
}

/// Where identities' credentials are kept.
pub fn credentials_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials")
}

fn credentials_file(data_dir: &Path, user: BusUser) -> PathBuf {
    credentials_dir(data_dir).join(format!("{}.nk", user.name()))
}

/// The credentials each identity of this process connects with.
#[derive(Debug, Clone, Default)]
pub struct Keyring(BTreeMap<BusUser, Credentials>);

impl Keyring {
    /// Every identity's credentials under `data_dir`, made on first use and kept, and the
    /// server's `authorization` block for them (with consumers per partition as `routes` say).
    pub fn prepare(data_dir: &Path, routes: Routes) -> Result<(Keyring, String), BusError> {
        let dir = credentials_dir(data_dir);
        private_dir(&dir)?;
        let mut keyring = Keyring::default();
        let mut users = Vec::new();
        for user in BusUser::all() {
            let file = credentials_file(data_dir, user);
            let credentials = if file.is_file() {
                Credentials::from_file(&file)?
            } else {
                let (_, credentials) = auth::new_identity()?;
                auth::write_seed(&file, &credentials)?;
                credentials
            };
            let key = auth::public_key(&credentials).ok_or_else(|| BusError::Credentials {
                path: file.clone(),
                why: "not an nkey seed".into(),
            })?;
            users.push((key, permissions(user, routes)));
            keyring.0.insert(user, credentials);
        }
        Ok((keyring, auth::authorization_config(&users)))
    }

    /// [`Keyring::prepare`] for a broker this process starts: the identities, and the server's
    /// side of them (the `authorization` block, with the operator's credentials to check it is
    /// ready), as [`bus::server::ServerConfig::authorization`] takes it.
    pub fn prepare_broker(
        data_dir: &Path,
        routes: Routes,
    ) -> Result<(Keyring, Option<(String, Credentials)>), BusError> {
        let (keyring, authorization) = Keyring::prepare(data_dir, routes)?;
        let operator = keyring.get(BusUser::Operator).cloned();
        Ok((
            keyring,
            operator.map(|credentials| (authorization, credentials)),
        ))
    }

    /// The credentials for `users` of a process on a broker someone else runs: the
    /// `nats_creds` setting for the first (this process's own identity) and, beside it, its
    /// replays' (`payment.nk`, `payment-replayer.nk`), else each one's file under the data dir,
    /// else none (the broker lets anyone in).
    pub fn load(settings: &Settings, users: &[BusUser]) -> Result<Keyring, BusError> {
        let mut keyring = Keyring::default();
        for (i, user) in users.iter().enumerate() {
            let file = credentials_file(&settings.data_dir, *user);
            // The explicit file is the first user's: beside it, only its own replays' seed.
            let beside = match (&settings.nats_creds, user) {
                (Some(explicit), BusUser::Replayer(c))
                    if users.first() == Some(&BusUser::Component(*c)) =>
                {
                    Some(replayer_beside(explicit))
                }
                _ => None,
            };
            let chosen = match &settings.nats_creds {
                Some(explicit) if i == 0 => Some(explicit.clone()),
                _ => beside
                    .into_iter()
                    .chain([file])
                    .find(|candidate| candidate.is_file()),
            };
            if let Some(path) = chosen {
                keyring.0.insert(*user, Credentials::from_file(&path)?);
            }
        }
        Ok(keyring)
    }

    pub fn get(&self, user: BusUser) -> Option<&Credentials> {
        self.0.get(&user)
    }

    /// How `user` reaches the broker at `url` (and a component's replays).
    pub fn login(&self, url: &str, user: BusUser) -> bus::Login {
        let replayer = match user {
            BusUser::Component(c) => Some(BusUser::Replayer(c)),
            _ => None,
        };
        bus::Login {
            url: url.to_string(),
            name: user.name(),
            credentials: self.get(user).cloned(),
            replay: replayer.and_then(|r| self.get(r)).cloned(),
        }
    }
}

/// `payment-replayer.nk` for `payment.nk`: where a replay identity's credentials sit beside its
/// component's.
fn replayer_beside(credentials: &Path) -> PathBuf {
    let stem = credentials
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    let name = match credentials.extension() {
        Some(ext) => format!("{}.{}", bus::replayer_name(&stem), ext.to_string_lossy()),
        None => bus::replayer_name(&stem),
    };
    credentials.with_file_name(name)
}

/// `dir`, made if needed, open to its owner only (0700).
pub fn private_dir(dir: &Path) -> Result<(), BusError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| BusError::Credentials {
        path: dir.to_path_buf(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// What `user` may do on the broker, where `routes` split services by partition.
pub fn permissions(user: BusUser, routes: Routes) -> Permissions {
    let component = match user {
        BusUser::Operator => return operator(),
        BusUser::Replayer(c) => return replayer(c),
        BusUser::Component(c) => c,
    };
    let name = component.name();
    let mut p = Permissions {
        // How the streams are partitioned (`Routes::of_broker`): metadata only.
        publish: vec![format!("$JS.API.STREAM.INFO.{}", Domain::Orders.stream())],
        subscribe: vec![format!("{}.>", bus::inbox_prefix(name))],
        allow_responses: false,
    };
    let answers = |p: &mut Permissions| {
        p.allow_responses = true;
        p.subscribe.extend([
            format!("commerce.{name}.>"),
            "$SRV.*".into(),
            format!("$SRV.*.{name}"),
            format!("$SRV.*.{name}.>"),
        ]);
    };
    match component {
        Component::Gateway => {
            p.publish.extend(gateway_calls(routes));
            p.publish.push("ops.circuit.>".into());
        }
        Component::Projection => {
            answers(&mut p);
            for domain in Domain::ALL {
                reads(&mut p, domain.stream(), name);
            }
            p.publish
                .extend([format!("dlq.{name}.>"), format!("ops.retry.{name}.>")]);
        }
        Component::Simulators => {}
        service => {
            answers(&mut p);
            if let Some(own) = service.owned_domain() {
                // Events (the stream appends their partition) and term markers: never a
                // subject with a partition of the publisher's choosing.
                let prefix = own.subject_prefix();
                p.publish
                    .extend([format!("{prefix}.*.*"), format!("{prefix}.*")]);
                // An owner reads its term's last marker (`bus::term`).
                reads_one(&mut p, own.stream());
                // Its stream's new leaders: a cue for the relay to publish again what it waits
                // to hear of (`bus::relay`), whatever the announcement says.
                p.subscribe
                    .push(bus::elections::stream_subject(own.stream()));
            }
            for at in routes.all(service) {
                for (domain, _) in listens(service) {
                    reads(&mut p, domain.stream(), &durable_name(at));
                }
                // A shard of split stock files its dead letters under its own name.
                p.publish.push(format!("dlq.{}.>", dead_letter_owner(at)));
            }
            reads_one(&mut p, bus::streams::DLQ_STREAM);
            leases(&mut p, name);
            p.publish.extend([
                format!("dlq.{name}.>"),
                format!("ops.retry.{name}.>"),
                "ops.circuit.>".into(),
            ]);
        }
    }
    p.publish.sort();
    p.publish.dedup();
    p
}

/// The operator publishes anything, and listens only on inboxes: its own (`commerce`) and the
/// NATS CLI's. No identity may listen where a stream stores: a push consumer, which any identity
/// allowed to create consumers can aim anywhere, delivers only where someone listens, and what
/// it delivers to a stream's subject is stored there as if its owner had published it. The
/// operator follows events through JetStream (`nats sub --new 'orders.>'`, `nats stream view`).
fn operator() -> Permissions {
    Permissions {
        publish: vec![">".into()],
        subscribe: vec![
            "_INBOX.>".into(),
            format!("{}.>", bus::inbox_prefix(&BusUser::Operator.name())),
        ],
        allow_responses: false,
    }
}

/// Drive durable consumer `durable` on `stream`: create it, pull, ack, delete (recovery).
fn reads(p: &mut Permissions, stream: &str, durable: &str) {
    let api = "$JS.API";
    p.publish.extend([
        format!("{api}.STREAM.INFO.{stream}"),
        format!("{api}.CONSUMER.CREATE.{stream}.{durable}"),
        format!("{api}.CONSUMER.CREATE.{stream}.{durable}.>"),
        format!("{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}"),
        format!("{api}.CONSUMER.INFO.{stream}.{durable}"),
        format!("{api}.CONSUMER.DELETE.{stream}.{durable}"),
        format!("{api}.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        format!("$JS.ACK.{stream}.{durable}.>"),
        // Is the newest message it was given still there (a broker that lost the tail)?
        format!("{api}.STREAM.MSG.GET.{stream}"),
    ]);
    // A new leader that never learnt of its pull (`bus::consumer`, LEADER_SETTLE).
    p.subscribe
        .push(bus::elections::consumer_subject(stream, durable));
}

/// What `component`'s replays may do: read the streams it rebuilds from (a service: its own and
/// its dead letters; the projection: every domain stream), and nothing else.
fn replayer(component: Component) -> Permissions {
    let name = bus::replayer_name(component.name());
    let mut p = Permissions {
        publish: Vec::new(),
        subscribe: vec![format!("{}.>", bus::inbox_prefix(&name))],
        allow_responses: false,
    };
    match component {
        Component::Projection => Domain::ALL
            .into_iter()
            .for_each(|domain| replays(&mut p, &name, domain.stream())),
        Component::Gateway | Component::Simulators => {}
        service => {
            if let Some(own) = service.owned_domain() {
                replays(&mut p, &name, own.stream());
            }
            replays(&mut p, &name, bus::streams::DLQ_STREAM);
        }
    }
    p.publish.sort();
    p.publish.dedup();
    p
}

/// Read `stream` from a sequence on through consumers named for the replay identity `name`
/// ([`bus::replay::grants`]): never a consumer of another name, which could be someone else's.
/// They want no acks, and may not be sent any.
fn replays(p: &mut Permissions, name: &str, stream: &str) {
    p.publish.extend(bus::replay::grants(name, stream));
}

/// Take, renew and give back the leases on `service`'s partitions (only its own), and read
/// who holds any lease.
fn leases(p: &mut Permissions, service: &str) {
    let bucket = bus::lease::LEASES_BUCKET;
    p.publish.extend([
        format!("$KV.{bucket}.{service}.>"),
        format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        // Not direct gets (`bus::lease::provision`).
        format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"),
    ]);
}

/// Read one message of `stream` by sequence (`commerce dlq replay`: a service reads the dead
/// letter it is asked to re-handle), and the stream's state. Reading, not deleting: the
/// operator deletes.
fn reads_one(p: &mut Permissions, stream: &str) {
    p.publish.extend([
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.STREAM.INFO.{stream}"),
    ]);
}

/// The endpoints the HTTP gateway calls, and nothing else.
fn gateway_calls(routes: Routes) -> Vec<String> {
    let mut calls = vec![endpoint_subject(Component::Projection, ReadOrder::NAME)];
    for at in routes.all(Component::Inventory) {
        calls.push(at.subject(Get::<InventoryService>::NAME));
    }
    for at in routes.all(Component::Store) {
        calls.push(at.subject(Get::<StoreService>::NAME));
    }
    for order in routes.all(Component::Order) {
        calls.extend([order.subject(Place::NAME), order.subject(Cancel::NAME)]);
    }
    for component in Component::SERVICES {
        for at in routes.all(component) {
            calls.push(at.subject(Part::<OrderService>::NAME));
        }
    }
    for component in Component::with_status() {
        for at in routes.all(component) {
            calls.push(at.subject(Status::NAME));
        }
    }
    calls
}

/// What each service listens to.
fn listens(service: Component) -> &'static [(Domain, &'static [&'static str])] {
    match service {
        Component::Order => OrderService::LISTENS,
        Component::Payment => PaymentService::LISTENS,
        Component::Inventory => InventoryService::LISTENS,
        Component::Store => StoreService::LISTENS,
        Component::Shipment => ShipmentService::LISTENS,
        Component::Recommendation => RecommendationService::LISTENS,
        Component::Projection | Component::Gateway | Component::Simulators => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Placement;

    const ONE: Routes = Routes::new(bus::Partitions::ONE);

    #[test]
    fn a_split_service_drives_one_consumer_per_partition_and_the_gateway_calls_each() {
        let two = Routes::new(bus::Partitions::new(2).unwrap());
        let payment = permissions(BusUser::Component(Component::Payment), two);
        for durable in ["payment-p0", "payment-p1"] {
            let next = format!("$JS.API.CONSUMER.MSG.NEXT.ORDERS.{durable}");
            assert!(allows(&payment.publish, &next), "{durable}");
        }
        assert!(!allows(
            &payment.publish,
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.payment-p2"
        ));
        assert!(!allows(
            &payment.publish,
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.payment"
        ));
        // Inventory is split by SKU: a consumer per shard, each filing its own dead letters.
        let inventory = permissions(BusUser::Component(Component::Inventory), two);
        for allowed in [
            "$JS.API.CONSUMER.MSG.NEXT.PAYMENTS.inventory-p1",
            "$JS.API.CONSUMER.MSG.NEXT.INVENTORY.inventory-p0",
            "dlq.inventory-p1.payments.payment_approved.o1.0",
        ] {
            assert!(allows(&inventory.publish, allowed), "{allowed}");
        }
        assert!(!allows(&inventory.publish, "dlq.payment.orders.x.o1.0"));
        let gateway = permissions(BusUser::Component(Component::Gateway), two);
        for allowed in [
            "commerce.order.1.place",
            "commerce.payment.0.part",
            "commerce.inventory.1.get",
            "commerce.store.0.part",
        ] {
            assert!(allows(&gateway.publish, allowed), "{allowed}");
        }
        assert!(!allows(&gateway.publish, "commerce.order.place"));
    }

    #[test]
    fn the_services_split_are_those_that_keep_state_per_order_or_per_sku() {
        let by_sku = |placement: Placement| matches!(placement, Placement::BySku(_));
        for (component, placement) in [
            (Component::Inventory, InventoryService::PLACEMENT),
            (Component::Store, StoreService::PLACEMENT),
            (Component::Order, OrderService::PLACEMENT),
            (Component::Recommendation, RecommendationService::PLACEMENT),
        ] {
            assert_eq!(component.keeps_stock(), by_sku(placement), "{component}");
        }
        let per_order = |placement: Placement| placement == Placement::PerOrder;
        assert!(Component::Order.keeps_orders() == per_order(OrderService::PLACEMENT));
        assert!(Component::Payment.keeps_orders() == per_order(PaymentService::PLACEMENT));
        assert!(Component::Shipment.keeps_orders() == per_order(ShipmentService::PLACEMENT));
        assert!(Component::Inventory.keeps_orders() == per_order(InventoryService::PLACEMENT));
        assert!(Component::Store.keeps_orders() == per_order(StoreService::PLACEMENT));
        assert!(
            Component::Recommendation.keeps_orders() == per_order(RecommendationService::PLACEMENT)
        );
    }

    fn allows(patterns: &[String], subject: &str) -> bool {
        let subject: Vec<&str> = subject.split('.').collect();
        patterns.iter().any(|pattern| {
            let pattern: Vec<&str> = pattern.split('.').collect();
            let mut i = 0;
            for (j, token) in pattern.iter().enumerate() {
                if *token == ">" {
                    return subject.len() > j;
                }
                match subject.get(j) {
                    Some(s) if *token == "*" || token == s => i = j + 1,
                    _ => return false,
                }
            }
            i == subject.len()
        })
    }

    /// Whether two subject patterns match a subject in common.
    fn collide(a: &str, b: &str) -> bool {
        let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
        for i in 0..=a.len().max(b.len()) {
            match (a.get(i), b.get(i)) {
                (Some(&">"), Some(_)) | (Some(_), Some(&">")) | (None, None) => return true,
                (Some(x), Some(y)) if x == y || *x == "*" || *y == "*" => {}
                _ => return false,
            }
        }
        false
    }

    #[test]
    fn no_identity_listens_where_a_stream_stores() {
        assert!(collide("orders.>", "*.*.o1") && collide("*.x", "a.*"));
        assert!(!collide("orders.>", "orders") && !collide("_INBOX.>", "orders.>"));
        let stored: Vec<String> = bus::streams::stream_specs()
            .into_iter()
            .map(|(_, subjects, _, _)| subjects)
            .chain([
                format!("$KV.{}.>", bus::lease::LEASES_BUCKET),
                "$JS.>".into(),
            ])
            .collect();
        for routes in [ONE, Routes::new(bus::Partitions::new(2).unwrap())] {
            for user in BusUser::all() {
                for listens in permissions(user, routes).subscribe {
                    // A new-leader announcement of its own consumer or stream (no wildcard) is
                    // a cue, its content never read (`bus::elections`): one a push consumer
                    // delivers there costs a question to the consumer's leader, or a resend of
                    // a wait that had lasted a second. No stream stores `$JS.EVENT.>`.
                    let cue = ["CONSUMER", "STREAM"].iter().any(|of| {
                        listens.starts_with(&format!("$JS.EVENT.ADVISORY.{of}.LEADER_ELECTED."))
                    });
                    assert!(!cue || !listens.contains(['*', '>']), "{listens}");
                    for at in stored.iter().filter(|at| !(cue && at.as_str() == "$JS.>")) {
                        assert!(
                            !collide(&listens, at),
                            "{} may listen on {listens}, where a stream stores {at}",
                            user.name()
                        );
                    }
                }
            }
        }
        // The operator hears answers: to `commerce` and to the NATS CLI.
        let operator = permissions(BusUser::Operator, ONE);
        assert!(allows(&operator.subscribe, "_INBOX.x7.1"));
        assert!(allows(&operator.subscribe, "_INBOX_operator.x7.1"));
        assert!(allows(&operator.publish, "$JS.API.STREAM.DELETE.ORDERS"));
    }

    #[test]
    fn a_service_publishes_only_its_own_events() {
        let payment = permissions(BusUser::Component(Component::Payment), ONE);
        assert!(allows(&payment.publish, "payments.payment_approved.o1"));
        assert!(allows(
            &payment.publish,
            &bus::term::term_subject(Domain::Payments, 3)
        ));
        // The stream appends the partition: a publisher never picks one.
        assert!(!allows(&payment.publish, "payments.payment_approved.o1.0"));
        assert!(!allows(&payment.publish, "shipments.shipment_failed.o1"));
        assert!(!allows(&payment.publish, "orders.order_created.o1"));
        assert!(!allows(&payment.publish, "$JS.API.STREAM.DELETE.SHIPMENTS"));
        assert!(!allows(&payment.publish, "commerce.order.cancel"));
        // Its own durable consumer on what it listens to, no one else's.
        assert!(allows(
            &payment.publish,
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.payment"
        ));
        assert!(!allows(
            &payment.publish,
            "$JS.API.CONSUMER.DELETE.ORDERS.inventory"
        ));
        assert!(!allows(&payment.subscribe, "_INBOX_gateway.x"));
        // Its consumer's new leaders are announced to it, no one else's.
        assert!(allows(
            &payment.subscribe,
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.ORDERS.payment"
        ));
        assert!(!allows(
            &payment.subscribe,
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.PAYMENTS.inventory"
        ));
        // And its own stream's, for its relay; no one else's.
        assert!(allows(
            &payment.subscribe,
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.PAYMENTS"
        ));
        assert!(!allows(
            &payment.subscribe,
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.ORDERS"
        ));
    }

    #[test]
    fn a_service_reads_a_dead_letter_to_replay_it_but_only_the_operator_deletes_or_asks() {
        for service in Component::SERVICES {
            let p = permissions(BusUser::Component(service), ONE);
            let name = service.name();
            assert!(allows(&p.publish, "$JS.API.STREAM.MSG.GET.DLQ"), "{name}");
            // Single messages only of the streams it reads (the newest it was given) and of
            // its own (its term's last marker).
            if service != Component::Recommendation {
                assert!(
                    !allows(&p.publish, "$JS.API.STREAM.MSG.GET.RECOMMENDATIONS"),
                    "{name}"
                );
            }
            for own in Domain::ALL
                .into_iter()
                .filter(|d| Component::owner(*d) == service)
            {
                let get = format!("$JS.API.STREAM.MSG.GET.{}", own.stream());
                assert!(allows(&p.publish, &get), "{name}");
            }
            assert!(
                !allows(&p.publish, "$JS.API.STREAM.MSG.DELETE.DLQ"),
                "{name}"
            );
            assert!(!allows(&p.publish, "$JS.API.STREAM.PURGE.DLQ"), "{name}");
            assert!(!allows(&p.publish, "$JS.API.DIRECT.GET.DLQ"), "{name}");
            // It answers its own `replay`, and asks no one's.
            assert!(allows(&p.subscribe, &format!("commerce.{name}.replay")));
            assert!(!allows(&p.publish, "commerce.payment.replay"), "{name}");
        }
        let gateway = permissions(BusUser::Component(Component::Gateway), ONE);
        assert!(!allows(&gateway.publish, "commerce.payment.replay"));
        assert!(!allows(&gateway.publish, "$JS.API.STREAM.MSG.GET.DLQ"));
        let projection = permissions(BusUser::Component(Component::Projection), ONE);
        assert!(!allows(&projection.publish, "$JS.API.STREAM.MSG.GET.DLQ"));
        let operator = permissions(BusUser::Operator, ONE);
        assert!(allows(&operator.publish, "$JS.API.STREAM.MSG.DELETE.DLQ"));
        assert!(allows(&operator.publish, "commerce.payment.replay"));
    }

    #[test]
    fn the_gateway_calls_endpoints_and_publishes_no_event() {
        let gateway = permissions(BusUser::Component(Component::Gateway), ONE);
        assert!(allows(&gateway.publish, "commerce.order.place"));
        assert!(!allows(&gateway.publish, "commerce.projection.rebuild"));
        assert!(!allows(&gateway.publish, "commerce.payment.slow"));
        for domain in Domain::ALL {
            let event = format!("{}.anything.o1", domain.subject_prefix());
            assert!(!allows(&gateway.publish, &event), "{event}");
        }
    }

    #[test]
    fn the_projection_reads_everything_and_publishes_no_event() {
        let projection = permissions(BusUser::Component(Component::Projection), ONE);
        for domain in Domain::ALL {
            let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.projection", domain.stream());
            assert!(allows(&projection.publish, &next));
            let event = format!("{}.anything.o1", domain.subject_prefix());
            assert!(!allows(&projection.publish, &event), "{event}");
        }
    }

    #[test]
    fn replays_are_a_second_identity_that_reads_from_the_start_and_answers_nothing() {
        // A consumer of its own (`bus::replay`): the first of its names.
        let create = |stream: &str, service: Component| {
            let name = bus::replayer_name(service.name());
            format!("$JS.API.CONSUMER.CREATE.{stream}.{name}-0")
        };
        for service in Component::SERVICES {
            let own = service.owned_domain().unwrap().stream();
            let main = permissions(BusUser::Component(service), ONE);
            let replays = permissions(BusUser::Replayer(service), ONE);
            assert!(!allows(&main.publish, &create(own, service)), "{service:?}");
            assert!(
                allows(&replays.publish, &create(own, service)),
                "{service:?}"
            );
            let dead_letters = create(bus::streams::DLQ_STREAM, service);
            assert!(allows(&replays.publish, &dead_letters));
            assert!(!allows(&replays.publish, &create("ORDERS", service)) || own == "ORDERS");
            // No answers, so the broker keeps no reply subject of what it reads; no acks.
            assert!(!replays.allow_responses);
            assert!(!allows(
                &replays.publish,
                &format!("$JS.ACK.{own}.x.1.1.1.1.0")
            ));
            let event = format!(
                "{}.anything.o1",
                service.owned_domain().unwrap().subject_prefix()
            );
            assert!(!allows(&replays.publish, &event), "{event}");
            let inbox = format!(
                "{}.x",
                bus::inbox_prefix(&bus::replayer_name(service.name()))
            );
            assert!(allows(&replays.subscribe, &inbox), "{inbox}");
            assert!(!allows(
                &replays.subscribe,
                &format!("commerce.{}.>", service.name())
            ));
        }
        let projection = Component::Projection;
        let replays = permissions(BusUser::Replayer(projection), ONE);
        for domain in Domain::ALL {
            assert!(allows(
                &replays.publish,
                &create(domain.stream(), projection)
            ));
        }
        let dead_letters = create(bus::streams::DLQ_STREAM, projection);
        assert!(!allows(&replays.publish, &dead_letters));
        assert!(!BusUser::all().any(|u| u == BusUser::Replayer(Component::Gateway)));
    }

    /// A direct get answers with the stored message itself, headers and body, to whatever reply
    /// subject the asker names: a stream capturing that subject would store it as if its owner
    /// had published it. No component asks one.
    #[test]
    fn no_component_asks_a_direct_get() {
        let bucket = bus::lease::LEASES_BUCKET;
        let mut gets = vec![format!(
            "$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.payment.0"
        )];
        for (stream, ..) in bus::streams::stream_specs() {
            gets.push(format!("$JS.API.DIRECT.GET.{stream}"));
            gets.push(format!("$JS.API.DIRECT.GET.{stream}.orders.x.o1.0"));
        }
        for user in BusUser::all().filter(|u| *u != BusUser::Operator) {
            let p = permissions(user, ONE);
            for get in &gets {
                assert!(!allows(&p.publish, get), "{}: {get}", user.name());
            }
        }
    }

    /// A create on `$JS.API.CONSUMER.CREATE.<stream>` may name any consumer in its body, and
    /// changes one that exists (its filter, its limits, even into one the server deletes when
    /// idle): a replayer creates, pulls from and deletes only consumers named for it.
    #[test]
    fn a_replayer_touches_only_consumers_named_for_it() {
        for routes in [ONE, Routes::new(bus::Partitions::new(2).unwrap())] {
            // `<stream>.<durable>` of every consumer a component drives.
            let durables: Vec<String> = BusUser::all()
                .filter(|u| matches!(u, BusUser::Component(_)))
                .flat_map(|u| permissions(u, routes).publish)
                .filter_map(|g| g.strip_prefix("$JS.API.CONSUMER.MSG.NEXT.").map(Into::into))
                .collect();
            assert!(
                durables.iter().any(|d| d.starts_with("PAYMENTS.order")),
                "{durables:?}"
            );
            for user in BusUser::all().filter(|u| matches!(u, BusUser::Replayer(_))) {
                let p = permissions(user, routes);
                for durable in &durables {
                    for verb in ["CREATE", "MSG.NEXT", "INFO", "DELETE"] {
                        let call = format!("$JS.API.CONSUMER.{verb}.{durable}");
                        assert!(!allows(&p.publish, &call), "{}: {call}", user.name());
                    }
                }
                for grant in &p.publish {
                    let Some(call) = grant.strip_prefix("$JS.API.CONSUMER.") else {
                        continue;
                    };
                    let call = call.strip_prefix("MSG.").unwrap_or(call);
                    let consumer = call.split('.').nth(2).unwrap_or_default();
                    assert!(
                        consumer.starts_with(&format!("{}-", user.name())),
                        "{}: {grant}",
                        user.name()
                    );
                }
            }
        }
    }

    #[test]
    fn replay_credentials_sit_beside_their_components() {
        assert_eq!(
            replayer_beside(Path::new("/etc/commerce/payment.nk")),
            Path::new("/etc/commerce/payment-replayer.nk")
        );
        assert_eq!(
            replayer_beside(Path::new("payment.creds")),
            Path::new("payment-replayer.creds")
        );
        assert_eq!(
            replayer_beside(Path::new("/keys/payment")),
            Path::new("/keys/payment-replayer")
        );
    }
}
