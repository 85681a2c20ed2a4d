//! The consumer's commit shape (bench bus) on three embedded engines: per applied event, three
//! lookups (inbox; the aggregate's version, read from its log: no event after the expected
//! version, and the event at it, or for a new aggregate no snapshot) and three writes (event
//! ~705 B, outbox row 561 B, inbox mark), per batch of 250 the outbox sequence (read and
//! written) and one age-index row, one atomic commit, then made durable (fsync) before the next
//! batch. Half the events start an aggregate, half are the second event of one from the batch
//! before; inbox lookups miss, as they do. CPU is the whole process's (the engines' background
//! threads too) and includes making the rows (the same for each engine). The allocator is
//! mimalloc, as in the `commerce` binary.
//! sled is driven as `storage::Store` drives it (one transaction over six trees, then its flush
//! and an fdatasync of its log); the Store's own encoding is left out, for all three alike.
//!
//!     cargo run --release --manifest-path scripts/engine-compare/Cargo.toml -- [batches] [rounds]
use redb::ReadableTable;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const BATCH: usize = 250;

struct Row {
    agg: String,
    /// The aggregate's version after this event: 1 for a new one, 2 for a second event.
    version: u64,
    event_key: Vec<u8>,
    /// The key of the event at the expected version, if the aggregate has one.
    before_key: Option<Vec<u8>>,
    event: Vec<u8>,
    outbox: Vec<u8>,
    cause: [u8; 16],
}

/// A batch: every other event is the second of an aggregate of the batch before, the others
/// start one, as a service sees an order's events.
fn batch(payload: &str, before: &[Row]) -> Vec<Row> {
    (0..BATCH)
        .map(|i| {
            let (agg, version) = match before.get(i) {
                Some(row) if i % 2 == 1 && row.version == 1 => (row.agg.clone(), 2u64),
                _ => (Uuid::now_v7().to_string(), 1),
            };
            let key = |version: u64| {
                let mut key = agg.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(&version.to_be_bytes());
                key
            };
            let event_key = key(version);
            let before_key = (version > 1).then(|| key(version - 1));
            Row {
                event: format!(
                    "{{\"aggregate_id\":\"{agg}\",\"version\":{version},\"payload\":{payload:?}}}"
                )
                .into_bytes(),
                outbox: payload.as_bytes().to_vec(),
                agg,
                version,
                event_key,
                before_key,
                cause: *Uuid::now_v7().as_bytes(),
            }
        })
        .collect()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

trait Engine {
    fn commit(&mut self, rows: &[Row], seq: &mut u64, now: u64);
    fn durable(&mut self);
}

struct Sled {
    db: sled::Db,
    trees: [sled::Tree; 6],
    log: std::fs::File,
}

impl Engine for Sled {
    fn commit(&mut self, rows: &[Row], seq: &mut u64, now: u64) {
        use sled::Transactional;
        let [events, snapshots, pending, inbox, by_age, meta] = &self.trees;
        let last = (events, snapshots, pending, inbox, by_age, meta)
            .transaction(|(e, sn, p, i, a, m)| {
                let mut s = m.get("seq")?.and_then(|v| decode_u64(&v)).unwrap_or(0);
                let mut marked = Vec::new();
                for r in rows {
                    assert!(i.get(r.cause)?.is_none());
                    assert!(e.get(r.event_key.as_slice())?.is_none());
                    match &r.before_key {
                        Some(k) => assert!(e.get(k.as_slice())?.is_some()),
                        None => assert!(sn.get(r.agg.as_bytes())?.is_none()),
                    }
                    e.insert(r.event_key.as_slice(), r.event.as_slice())?;
                    s += 1;
                    p.insert(&s.to_be_bytes(), r.outbox.as_slice())?;
                    i.insert(&r.cause, &now.to_be_bytes())?;
                    marked.extend_from_slice(&r.cause);
                }
                m.insert("seq", &s.to_be_bytes())?;
                let mut age = now.to_be_bytes().to_vec();
                age.extend_from_slice(&rows[0].cause);
                a.insert(age, marked)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(s)
            })
            .unwrap();
        *seq = last;
    }
    fn durable(&mut self) {
        self.db.flush().unwrap();
        self.log.sync_data().unwrap();
    }
}

const T: [redb::TableDefinition<&[u8], &[u8]>; 6] = [
    redb::TableDefinition::new("events"),
    redb::TableDefinition::new("snapshots"),
    redb::TableDefinition::new("pending"),
    redb::TableDefinition::new("inbox"),
    redb::TableDefinition::new("by_age"),
    redb::TableDefinition::new("meta"),
];

struct Redb(redb::Database);

impl Engine for Redb {
    fn commit(&mut self, rows: &[Row], seq: &mut u64, now: u64) {
        // A redb commit is durable when it returns (Durability::Immediate): commit and fsync
        // are one step here.
        let tx = self.0.begin_write().unwrap();
        {
            let mut e = tx.open_table(T[0]).unwrap();
            let sn = tx.open_table(T[1]).unwrap();
            let mut p = tx.open_table(T[2]).unwrap();
            let mut i = tx.open_table(T[3]).unwrap();
            let mut a = tx.open_table(T[4]).unwrap();
            let mut m = tx.open_table(T[5]).unwrap();
            let mut marked = Vec::new();
            *seq = m
                .get(b"seq".as_slice())
                .unwrap()
                .and_then(|v| decode_u64(v.value()))
                .unwrap_or(0);
            for r in rows {
                assert!(i.get(r.cause.as_slice()).unwrap().is_none());
                assert!(e.get(r.event_key.as_slice()).unwrap().is_none());
                match &r.before_key {
                    Some(k) => assert!(e.get(k.as_slice()).unwrap().is_some()),
                    None => assert!(sn.get(r.agg.as_bytes()).unwrap().is_none()),
                }
                e.insert(r.event_key.as_slice(), r.event.as_slice())
                    .unwrap();
                *seq += 1;
                p.insert(seq.to_be_bytes().as_slice(), r.outbox.as_slice())
                    .unwrap();
                i.insert(r.cause.as_slice(), now.to_be_bytes().as_slice())
                    .unwrap();
                marked.extend_from_slice(&r.cause);
            }
            m.insert(b"seq".as_slice(), seq.to_be_bytes().as_slice())
                .unwrap();
            let mut age = now.to_be_bytes().to_vec();
            age.extend_from_slice(&rows[0].cause);
            a.insert(age.as_slice(), marked.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    fn durable(&mut self) {}
}

struct Fjall {
    keyspace: fjall::Keyspace,
    parts: Vec<fjall::PartitionHandle>,
}

impl Engine for Fjall {
    fn commit(&mut self, rows: &[Row], seq: &mut u64, now: u64) {
        let [e, sn, p, i, a, m] = &self.parts[..] else {
            unreachable!()
        };
        // Single writer here (a service's one actor), so reads before the batch are the checks.
        let mut b = self.keyspace.batch();
        let mut marked = Vec::new();
        *seq = m
            .get("seq")
            .unwrap()
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0);
        for r in rows {
            assert!(i.get(r.cause).unwrap().is_none());
            assert!(e.get(r.event_key.as_slice()).unwrap().is_none());
            match &r.before_key {
                Some(k) => assert!(e.get(k.as_slice()).unwrap().is_some()),
                None => assert!(sn.get(r.agg.as_bytes()).unwrap().is_none()),
            }
            b.insert(e, r.event_key.as_slice(), r.event.as_slice());
            *seq += 1;
            b.insert(p, seq.to_be_bytes(), r.outbox.as_slice());
            b.insert(i, r.cause, now.to_be_bytes());
            marked.extend_from_slice(&r.cause);
        }
        b.insert(m, "seq", seq.to_be_bytes());
        let mut age = now.to_be_bytes().to_vec();
        age.extend_from_slice(&rows[0].cause);
        b.insert(a, age, marked);
        b.commit().unwrap();
    }
    fn durable(&mut self) {
        self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

/// CPU time of the whole process so far (every thread, the engines' background ones too).
fn cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn run(name: &str, engine: &mut dyn Engine, batches: usize, payload: &str) {
    let mut seq = 0;
    let cpu_before = cpu();
    let (mut commit, mut durable) = (Duration::ZERO, Duration::ZERO);
    let mut rows = Vec::new();
    for n in 0..batches {
        rows = batch(payload, &rows);
        let t = Instant::now();
        engine.commit(&rows, &mut seq, n as u64);
        commit += t.elapsed();
        let t = Instant::now();
        engine.durable();
        durable += t.elapsed();
    }
    let cpu_spent = cpu() - cpu_before;
    let events = (batches * BATCH) as f64;
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events;
    println!(
        "{name:6} commit {:5.1} µs/event, durable {:4.1} µs/event: {:7.0} events/s; CPU {:5.1} µs/event",
        per_event(commit),
        per_event(durable),
        events / (commit + durable).as_secs_f64(),
        per_event(cpu_spent)
    );
}

fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(160);
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let payload = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{}\",\"source\":\"payments\",\"type\":\"PaymentApproved\",\"subject\":\"{}\",\"time\":\"2026-12-04T15:00:00.000Z\",\"datacontenttype\":\"application/json\",\"data\":{{\"amount\":12900,\"currency\":\"EUR\",\"authorization\":\"auth_0123456789\",\"items\":[{{\"sku\":\"SKU-1\",\"qty\":2,\"unit_price\":6450}}],\"shipping_address\":\"Example Street 1, 12345 Example City\"}},\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\",\"causationid\":\"{}\",\"aggregateversion\":1}}",
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7()
    );
    println!(
        "{batches} batches of {BATCH} events per engine, {rounds} rounds, event {} B",
        payload.len()
    );
    // The same cache for each, and each round in another order (the disk may still be writing
    // back what the engine before wrote).
    const CACHE: usize = 64 << 20;
    let names = ["events", "snapshots", "pending", "inbox", "by_age", "meta"];
    for round in 0..rounds {
        // TMPDIR must be on the disk measured (not a tmpfs: fsync would cost nothing).
        let dir = tempfile::tempdir().unwrap();
        for engine in (0..3).map(|i| (i + round) % 3) {
            match engine {
                0 => {
                    let db = sled::Config::new()
                        .path(dir.path().join("sled"))
                        .cache_capacity(CACHE as u64)
                        .mode(sled::Mode::HighThroughput)
                        .open()
                        .unwrap();
                    let trees = names.map(|n| db.open_tree(n).unwrap());
                    let log = std::fs::File::open(dir.path().join("sled/db")).unwrap();
                    run("sled", &mut Sled { db, trees, log }, batches, &payload);
                }
                1 => {
                    let redb = redb::Builder::new()
                        .set_cache_size(CACHE)
                        .create(dir.path().join("redb"))
                        .unwrap();
                    run("redb", &mut Redb(redb), batches, &payload);
                }
                _ => {
                    let keyspace = fjall::Config::new(dir.path().join("fjall"))
                        .cache_size(CACHE as u64)
                        .open()
                        .unwrap();
                    let parts = names
                        .iter()
                        .map(|n| {
                            keyspace
                                .open_partition(n, fjall::PartitionCreateOptions::default())
                                .unwrap()
                        })
                        .collect();
                    run("fjall", &mut Fjall { keyspace, parts }, batches, &payload);
                }
            }
        }
    }
}
