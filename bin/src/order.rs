//! `commerce order place|show|cancel`: the order service's commands, over NATS.

use std::time::Duration;

use actors::catalog::{LineRequest, OrderRequest};
use actors::engine::host::request;
use actors::Settings;
use anyhow::Context;
use serde_json::{json, Value};

#[derive(clap::Subcommand)]
pub enum OrderCommand {
    /// Place an order and print it (with --wait: once the saga has settled).
    Place {
        #[arg(long, default_value = "cli-user")]
        customer: String,
        /// SKU[:QUANTITY], repeatable (e.g. --item SKU-MUG:2 --item SKU-SOCKS).
        #[arg(long = "item", required = true, value_name = "SKU[:QTY]")]
        items: Vec<String>,
        /// Test card number (4000000000000002 is declined).
        #[arg(long, default_value = "4242424242424242")]
        card: String,
        /// Shipping address ("undeliverable" in it makes the carrier refuse it).
        #[arg(long, default_value = "1 Main Street, Seoul")]
        address: String,
        /// The same key never creates two orders.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait (up to 60 s) until the order is confirmed, completed or cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// Show an order (the read model).
    Show { order_id: String },
    /// Ask to cancel an order (refused once the parcel has left).
    Cancel { order_id: String },
}

pub async fn run(command: OrderCommand, settings: Settings) -> anyhow::Result<()> {
    let client = crate::connect(&settings).await?;
    let order = match command {
        OrderCommand::Place {
            customer,
            items,
            card,
            address,
            idempotency_key,
            wait,
        } => {
            let lines = items
                .iter()
                .map(|item| parse_item(item))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let order = OrderRequest {
                customer,
                lines,
                card_number: card,
                shipping_address: address,
            };
            let body = json!({ "idempotency_key": idempotency_key, "order": order });
            let reply = request(&client, "order", "place", body.to_string().into_bytes())
                .await
                .context("order not placed")?;
            let order = reply["order"].clone();
            if wait {
                settle(&client, &order).await?
            } else {
                order
            }
        }
        OrderCommand::Show { order_id } => {
            request(&client, "projection", "get", order_id.into_bytes()).await?
        }
        OrderCommand::Cancel { order_id } => {
            let reply = request(&client, "order", "cancel", order_id.into_bytes()).await?;
            reply["order"].clone()
        }
    };
    println!("{}", serde_json::to_string_pretty(&order)?);
    Ok(())
}

fn parse_item(item: &str) -> anyhow::Result<LineRequest> {
    let (sku, quantity) = match item.split_once(':') {
        Some((sku, q)) => (
            sku,
            q.parse()
                .with_context(|| format!("bad quantity in {item:?}"))?,
        ),
        None => (item, 1),
    };
    Ok(LineRequest {
        sku: sku.to_string(),
        quantity,
    })
}

/// Poll the order until the saga has settled, with a spinner.
async fn settle(client: &async_nats::Client, order: &Value) -> anyhow::Result<Value> {
    let id = order["order_id"].as_str().unwrap_or_default().to_string();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The read model; not there yet (404) means the projection has not seen it.
        let order = match request(client, "projection", "get", id.clone().into_bytes()).await {
            Ok(order) => order,
            Err(e) if e.code == 404 => serde_json::Value::Null,
            Err(e) => return Err(e.into()),
        };
        let status = order["order_status"]
            .as_str()
            .unwrap_or("PENDING")
            .to_string();
        spinner.set_message(format!("order {id}: {status}"));
        if !matches!(status.as_str(), "PENDING" | "CANCELLING") {
            spinner.finish_and_clear();
            return Ok(order);
        }
        if tokio::time::Instant::now() > deadline {
            spinner.finish_and_clear();
            anyhow::bail!("order {id} is still {status} after 60 s (see `commerce status`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
