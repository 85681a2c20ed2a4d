//! `commerce status`: streams and consumer lag, then each component's outbox, inbox and circuits.

use std::time::Duration;

use actors::contract::Status;
use actors::projection::api::Sagas;
use actors::rpc::{call, call_at, Routes};
use actors::{Component, Settings};

use crate::client::{client_url, connect};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = connect(&settings).await?;
    let js = async_nats::jetstream::new(client.clone());
    println!("nats: {}", client_url(&settings));
    let streams = bus::status::streams(&js).await?;
    for stream in &streams {
        print!("{stream}");
    }
    sagas(&client).await;
    println!("services:");
    // A service split by partition answers once per partition (`payment/1`).
    let routes = Routes::of_streams(&streams);
    for component in Component::with_status().flat_map(|c| routes.all(c)) {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            call_at::<Status>(&client, component, &()),
        )
        .await;
        let Ok(Ok(s)) = answer else {
            println!("  {component:<15} not running");
            continue;
        };
        println!(
            "  {component:<15} outbox depth {:>6}  relayed {:>8}  inbox {:>8}  relay failures {}",
            s.outbox_depth, s.outbox_sent, s.inbox, s.relay_failures
        );
        println!(
            "    since start: {} redelivered, {} duplicates dropped by the inbox, {} duplicate \
             publishes dropped by the broker, {} relay waits ended by a new stream leader",
            s.redelivered, s.duplicates_dropped, s.relay_duplicates, s.relay_elections
        );
        for circuit in &s.circuits {
            println!(
                "    circuit {:<18} {:<9} calls {:>7}  refused {:>6}  in flight {}",
                circuit.dependency,
                circuit.state.name(),
                circuit.calls,
                circuit.refused,
                circuit.in_flight
            );
        }
        if let Some(model) = &s.read_model {
            println!(
                "    read model generation {}{}",
                model.generation,
                if model.rebuilding {
                    " (rebuilding)"
                } else {
                    ""
                }
            );
        }
    }
    leases(&js).await;
    Ok(())
}

/// Which instance owns each service run as several (`commerce run <service> --instance`).
async fn leases(js: &async_nats::jetstream::Context) {
    let held = match bus::lease::held(js).await {
        Ok(held) => held,
        Err(e) => return println!("leases: unknown ({e})"),
    };
    if held.is_empty() {
        return;
    }
    println!("leases:");
    for lease in held {
        let holder = match &lease.holder {
            Some(h) => format!(
                "instance {} (pid {}) since {}",
                h.instance,
                h.pid,
                chrono::DateTime::from_timestamp_millis(h.since_ms)
                    .map_or_else(|| "?".into(), |t| t.format("%H:%M:%S UTC").to_string())
            ),
            None => "an unreadable holder".into(),
        };
        println!(
            "  {:<18} held by {holder}, revision {}",
            lease.key, lease.revision
        );
    }
}

/// Open sagas, and the stuck ones by name (the projection keeps them).
async fn sagas(client: &async_nats::Client) {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        call::<Sagas>(client, Component::Projection, &()),
    )
    .await;
    let Ok(Ok(sagas)) = answer else {
        println!("sagas: unknown (the projection does not answer)");
        return;
    };
    println!(
        "sagas: {} open, {} stuck (open over {} s after their last event)",
        sagas.open, sagas.stuck, sagas.stuck_after_secs
    );
    for s in &sagas.oldest {
        println!(
            "  stuck {}  order {:<10} shipment {:<10} payment {:<9} last event {}",
            s.order_id,
            s.order_status,
            s.shipment_status.as_deref().unwrap_or("-"),
            s.payment_status.as_deref().unwrap_or("-"),
            s.last_event.format("%Y-%m-%dT%H:%M:%SZ"),
        );
    }
}
