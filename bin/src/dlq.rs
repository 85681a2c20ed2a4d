//! `commerce dlq ls|show|replay|discard`: the dead-letter queue, for people.
//!
//! A replay asks the service that dead-lettered the event to handle it again (its `replay`
//! endpoint: it reads the entry itself, checks it, and reacts the way a live delivery does);
//! when the service answers that the event is applied, the entry is deleted here. A discard
//! leaves a copy marked discarded behind (hidden from `ls` and bulk replays), so a service that
//! later recovers its database still skips the event.

use actors::engine::api::{Replay, ReplayOutcome, ReplayRequest, Replayed};
use actors::rpc::{call, call_at, Address, DomainError, Routes};
use actors::{Component, Settings};
use bus::dlq::{DeadLetter, DeadLetters, Filter, DEFAULT_LIMIT};

/// Entries read per request when a replay walks everything that matches.
const WALK_PAGE: usize = 500;
/// Characters of a reason shown in `ls` (`show` has it whole).
const REASON_WIDTH: usize = 72;

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first: sequence, consumer, event, order, deliveries, reason.
    Ls {
        /// Only this consumer's (a service's name, a stock shard's such as `inventory-p1`, or
        /// projection).
        #[arg(long)]
        consumer: Option<String>,
        /// Only those about this order.
        #[arg(long = "order", value_name = "ORDER_ID")]
        order_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Start at this DLQ sequence (the next page: what the last page printed).
        #[arg(long, default_value_t = 1, value_name = "SEQ")]
        from: u64,
        /// Discarded ones too.
        #[arg(long)]
        discarded: bool,
    },
    /// Show one dead letter: where it came from, why, its headers and its payload.
    Show { seq: u64 },
    /// Have the service that dead-lettered each entry handle it again; entries it applies are
    /// removed from DLQ, the others stay (with the reason).
    #[command(group(clap::ArgGroup::new("which").required(true).multiple(true)
        .args(["seqs", "consumer", "order_id", "all", "stuck"])))]
    Replay {
        /// DLQ sequences (see `commerce dlq ls`).
        #[arg(conflicts_with_all = ["consumer", "order_id", "all", "stuck"])]
        seqs: Vec<u64>,
        /// Every dead letter of this service.
        #[arg(long)]
        consumer: Option<String>,
        /// Every dead letter about this order.
        #[arg(long = "order", value_name = "ORDER_ID")]
        order_id: Option<String>,
        /// Every dead letter of every service.
        #[arg(long)]
        all: bool,
        /// The sweep: every dead letter of each stuck saga (the oldest ones `commerce status`
        /// names; run it again for more).
        #[arg(long, conflicts_with_all = ["consumer", "order_id", "all"])]
        stuck: bool,
    },
    /// Give dead letters up for good (after a `projection rebuild`, or when an event must never
    /// be applied): no longer listed nor replayed in bulk, and still skipped by a service that
    /// recovers its database.
    Discard {
        #[arg(required = true)]
        seqs: Vec<u64>,
        /// Really discard them (without it, only show what would go).
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(command: DlqCommand, settings: Settings) -> anyhow::Result<()> {
    let client = crate::client::connect(&settings).await?;
    let dead_letters = DeadLetters::new(async_nats::jetstream::new(client.clone()));
    match command {
        DlqCommand::Ls {
            consumer,
            order_id,
            limit,
            from,
            discarded,
        } => {
            let filter = Filter {
                consumer,
                order_id,
                discarded,
            };
            ls(&dead_letters, filter, from, limit).await
        }
        DlqCommand::Show { seq } => show(&dead_letters, seq).await,
        DlqCommand::Replay {
            seqs,
            consumer,
            order_id,
            all: _,
            stuck,
        } => {
            let targets = if seqs.is_empty() {
                let orders = match stuck {
                    true => stuck_orders(&client).await?.into_iter().map(Some).collect(),
                    false => vec![order_id],
                };
                let mut letters = Vec::new();
                for order_id in orders {
                    let filter = Filter {
                        consumer: consumer.clone(),
                        order_id,
                        discarded: false,
                    };
                    letters.extend(every(&dead_letters, &filter).await?);
                }
                let (services, others): (Vec<_>, Vec<_>) = letters
                    .into_iter()
                    .partition(|letter| is_service(&letter.consumer));
                if !others.is_empty() {
                    let seqs: Vec<String> = others.iter().map(|l| l.seq.to_string()).collect();
                    println!(
                        "{} dead letter(s) of the projection (or of no service) left alone: \
                         its read model is rebuilt, not replayed (`commerce projection rebuild`, \
                         then `commerce dlq discard {}`)",
                        others.len(),
                        seqs.join(" ")
                    );
                }
                services
                    .into_iter()
                    .map(|letter| (letter.seq, Some(letter)))
                    .collect()
            } else {
                seqs.into_iter().map(|seq| (seq, None)).collect()
            };
            replay(&client, &dead_letters, targets).await
        }
        DlqCommand::Discard { seqs, yes } => discard(&dead_letters, &seqs, yes).await,
    }
}

/// The stuck sagas the projection names (the oldest first).
async fn stuck_orders(client: &async_nats::Client) -> anyhow::Result<Vec<String>> {
    let sagas = call::<actors::projection::api::Sagas>(client, Component::Projection, &())
        .await
        .map_err(|e| anyhow::anyhow!("the projection does not say which sagas are stuck: {e}"))?;
    println!(
        "{} stuck saga(s) (open over {} s after their last event); re-driving the dead letters of {}",
        sagas.stuck,
        sagas.stuck_after_secs,
        sagas.oldest.len()
    );
    Ok(sagas.oldest.into_iter().map(|s| s.order_id).collect())
}

async fn ls(
    dead_letters: &DeadLetters,
    filter: Filter,
    from: u64,
    limit: usize,
) -> anyhow::Result<()> {
    let page = dead_letters.list(&filter, from, limit).await?;
    let hidden = match page.discarded {
        0 => String::new(),
        n => format!(" ({n} discarded; --discarded lists them)"),
    };
    if page.letters.is_empty() && page.next.is_none() {
        let any = filter.consumer.is_some() || filter.order_id.is_some() || from > 1;
        let none = if any || page.discarded > 0 {
            "no dead letters match"
        } else {
            "DLQ is empty"
        };
        println!("{none}{hidden}");
        return Ok(());
    }
    println!(
        "{:>6}  {:<14}  {:<24}  {:<36}  {:>9}  REASON",
        "SEQ", "CONSUMER", "EVENT", "ORDER", "DELIVERED"
    );
    for letter in &page.letters {
        let delivered = letter
            .delivered
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        println!(
            "{:>6}  {:<14}  {:<24}  {:<36}  {:>9}  {}",
            letter.seq,
            clean(&letter.consumer),
            clean(&event_name(letter)),
            clean(&order_of(letter)),
            delivered,
            shorten(&reason(letter), REASON_WIDTH),
        );
    }
    let shown = page.letters.len();
    match page.next {
        Some(next) => println!("{shown} shown{hidden}; more from --from {next}"),
        None => println!("{shown} dead letter(s){hidden}"),
    }
    Ok(())
}

async fn show(dead_letters: &DeadLetters, seq: u64) -> anyhow::Result<()> {
    let letter = found(dead_letters, seq).await?;
    println!("DLQ #{}", letter.seq);
    if let Some(at) = letter.dead_lettered_at {
        println!("dead-lettered: {}", at.to_rfc3339());
    }
    println!("consumer:      {}", clean(&letter.consumer));
    println!("subject:       {}", clean(&letter.subject));
    let from = match (&letter.original_stream, letter.original_seq) {
        (Some(stream), Some(n)) => format!("{} #{n}", clean(stream)),
        (Some(stream), None) => clean(stream),
        _ => "-".into(),
    };
    println!("from:          {from}");
    if let Some(n) = letter.delivered {
        println!("delivered:     {n} time(s)");
    }
    match &letter.event {
        Some(event) => println!(
            "event:         {} {} (order {})",
            clean(&event.event_type),
            event.id,
            clean(&event.order_id)
        ),
        None => println!("event:         none (the payload is not an event)"),
    }
    println!("reason:        {}", clean(&letter.reason));
    if let Some(at) = &letter.discarded {
        println!(
            "discarded:     {} (not replayed in bulk; a recovery still skips it)",
            clean(at)
        );
    }
    println!("headers:");
    for (name, value) in &letter.headers {
        println!("  {}: {}", clean(name), clean(value));
    }
    println!("payload ({} bytes):", letter.payload.len());
    match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{}", clean(&String::from_utf8_lossy(&letter.payload))),
    }
    Ok(())
}

/// What happened to one entry.
enum Fate {
    /// Applied (now or before) and removed from DLQ.
    Done,
    /// Still in DLQ.
    Kept,
}

async fn replay(
    client: &async_nats::Client,
    dead_letters: &DeadLetters,
    targets: Vec<(u64, Option<DeadLetter>)>,
) -> anyhow::Result<()> {
    if targets.is_empty() {
        println!("no dead letters match");
        return Ok(());
    }
    let js = async_nats::jetstream::new(client.clone());
    let routes = Routes::of_broker(&js).await?;
    let bar = progress(targets.len());
    let mut done = 0;
    for (seq, letter) in &targets {
        let (line, fate) = replay_one(client, routes, dead_letters, *seq, letter.as_ref()).await;
        if matches!(fate, Fate::Done) {
            done += 1;
        }
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let kept = targets.len() - done;
    println!(
        "{done} of {} re-driven and removed from DLQ{}",
        targets.len(),
        if kept > 0 {
            format!("; {kept} kept")
        } else {
            String::new()
        }
    );
    if kept > 0 {
        anyhow::bail!("{kept} dead letter(s) were not re-driven (see above)");
    }
    Ok(())
}

/// Replay one entry: one line saying what happened, and its fate.
async fn replay_one(
    client: &async_nats::Client,
    routes: Routes,
    dead_letters: &DeadLetters,
    seq: u64,
    known: Option<&DeadLetter>,
) -> (String, Fate) {
    let letter = match known {
        Some(letter) => letter.clone(),
        None => match dead_letters.get(seq).await {
            Ok(Some(letter)) => letter,
            Ok(None) => return (format!("#{seq}: {}", not_there(seq)), Fate::Kept),
            Err(e) => return (format!("#{seq}: cannot read it: {e}"), Fate::Kept),
        },
    };
    let what = format!(
        "#{seq} {} {} {}",
        clean(&letter.consumer),
        clean(&event_name(&letter)),
        clean(&order_of(&letter))
    );
    let owner = Address::of_dead_letters(&letter.consumer);
    let service = match owner.map(|at| at.component) {
        Some(c) if Component::SERVICES.contains(&c) => c,
        Some(Component::Projection) => {
            let hint = format!(
                "skipped: the read model is a fold of the streams, rebuilt rather than \
                 replayed: run `commerce projection rebuild`, then `commerce dlq discard {seq}`"
            );
            return (format!("{what}: {hint}"), Fate::Kept);
        }
        _ => {
            let hint = format!("skipped: {:?} is no service", letter.consumer);
            return (format!("{what}: {hint}"), Fate::Kept);
        }
    };
    // A split service re-drives it in the partition of its order; a shard of split stock,
    // itself.
    let at = match owner.filter(|at| at.partition.is_some()) {
        Some(shard) => shard,
        None => routes.of_order(service, &order_of(&letter)),
    };
    if !routes.all(service).contains(&at) {
        let hint = format!(
            "skipped: filed under {:?}, which does not run now that {service} is split over {} \
             partitions (each shard replays its own)",
            letter.consumer,
            routes.partitions().count()
        );
        return (format!("{what}: {hint}"), Fate::Kept);
    }
    let answer = call_at::<Replay>(client, at, &ReplayRequest { seq }).await;
    let said = match answer {
        Ok(Replayed { outcome, .. }) => outcome,
        Err(DomainError::Unavailable(why)) => {
            // A 400: it answered, but runs another build than this CLI.
            let hint = if why.starts_with(actors::rpc::error::UNREADABLE) {
                format!("the {service} service and this CLI differ ({why}); kept")
            } else {
                format!("the {service} service did not answer ({why}); is it running? kept")
            };
            return (format!("{what}: {hint}"), Fate::Kept);
        }
        Err(e) => return (format!("{what}: {e}; kept"), Fate::Kept),
    };
    let result = match &said {
        ReplayOutcome::Applied => "applied".to_string(),
        ReplayOutcome::AlreadyApplied => "already applied (nothing done)".to_string(),
        ReplayOutcome::Retry { reason } => {
            return (
                format!("{what}: not now: {}; kept", clean(reason)),
                Fate::Kept,
            )
        }
        ReplayOutcome::Rejected { reason } => {
            let line = format!(
                "{what}: rejected: {}; kept (`commerce dlq discard {seq}` drops it)",
                clean(reason)
            );
            return (line, Fate::Kept);
        }
    };
    match dead_letters.delete(seq).await {
        Ok(_) => (format!("{what}: {result}; removed from DLQ"), Fate::Done),
        Err(e) => (
            format!("{what}: {result}, but not removed from DLQ ({e}); a replay again removes it"),
            Fate::Kept,
        ),
    }
}

async fn discard(dead_letters: &DeadLetters, seqs: &[u64], yes: bool) -> anyhow::Result<()> {
    let mut missing = 0;
    let mut letters = Vec::new();
    for &seq in seqs {
        match dead_letters.get(seq).await? {
            Some(letter) => letters.push(letter),
            None => {
                println!("#{seq}: {}", not_there(seq));
                missing += 1;
            }
        }
    }
    for letter in &letters {
        let what = describe(letter);
        if !yes {
            println!("would discard {what}");
            continue;
        }
        if letter.discarded.is_some() {
            println!("{what} was discarded already");
            continue;
        }
        match dead_letters.discard(letter.seq).await? {
            Some(kept) => println!(
                "discarded {what}; kept as #{} so that a recovery of {} still skips it",
                kept.seq,
                clean(&letter.consumer)
            ),
            None => {
                println!("#{}: {}", letter.seq, not_there(letter.seq));
                missing += 1;
            }
        }
    }
    if !yes && !letters.is_empty() {
        anyhow::bail!("nothing discarded: add --yes to give these up for good");
    }
    if missing > 0 {
        anyhow::bail!("{missing} of {} not found", seqs.len());
    }
    Ok(())
}

/// Every dead letter matching `filter`, oldest first.
async fn every(dead_letters: &DeadLetters, filter: &Filter) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let mut from = 1;
    loop {
        let page = dead_letters.list(filter, from, WALK_PAGE).await?;
        letters.extend(page.letters);
        match page.next {
            Some(next) => from = next,
            None => return Ok(letters),
        }
    }
}

async fn found(dead_letters: &DeadLetters, seq: u64) -> anyhow::Result<DeadLetter> {
    dead_letters
        .get(seq)
        .await?
        .ok_or_else(|| anyhow::anyhow!("#{seq}: {}", not_there(seq)))
}

fn not_there(seq: u64) -> String {
    format!("no dead letter #{seq} in DLQ (replayed or discarded already? see `commerce dlq ls`)")
}

/// Is `consumer` one of the services (which replay their dead letters)?
fn is_service(consumer: &str) -> bool {
    Address::of_dead_letters(consumer).is_some_and(|at| Component::SERVICES.contains(&at.component))
}

/// `#12 payment OrderCancelled <order> (<reason>)`.
fn describe(letter: &DeadLetter) -> String {
    format!(
        "#{} {} {} {} ({})",
        letter.seq,
        clean(&letter.consumer),
        clean(&event_name(letter)),
        clean(&order_of(letter)),
        reason(letter)
    )
}

/// The reason, marked when the entry was discarded.
fn reason(letter: &DeadLetter) -> String {
    let reason = clean(&letter.reason);
    match letter.discarded {
        Some(_) => format!("[discarded] {reason}"),
        None => reason,
    }
}

/// The event's type, or the subject when the payload is not an event.
fn event_name(letter: &DeadLetter) -> String {
    match &letter.event {
        Some(event) => event.event_type.clone(),
        None => format!("(not an event) {}", letter.subject),
    }
}

/// The order it is about: the event's, else the subject's last token.
fn order_of(letter: &DeadLetter) -> String {
    match &letter.event {
        Some(event) => event.order_id.clone(),
        // `<domain>.<event>.<order>.<partition>` as stored.
        None => bus::partition::split_stored(&letter.subject)
            .map_or(letter.subject.as_str(), |(published, _)| published)
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Text from the bus, safe for a terminal: control characters (escape sequences) escaped.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// A progress bar for many entries (hidden for one, and when stderr is not a terminal).
fn progress(n: usize) -> indicatif::ProgressBar {
    if n < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("replaying [{bar:40}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_text_has_no_escape_sequences() {
        assert_eq!(clean("ok\u{1b}[2Jx"), "ok\\u{1b}[2Jx");
        assert_eq!(clean("a\tb\nc"), "a\tb\nc");
    }

    #[test]
    fn long_reasons_are_shortened_on_a_character_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("ábcdé", 3), "áb…");
    }
}
