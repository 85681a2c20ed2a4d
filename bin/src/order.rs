//! `commerce order place|show|cancel|trace`: the order service's commands, over NATS, and one
//! saga's history from the streams.

use std::time::Duration;

use actors::catalog::{LineRequest, OrderRequest, PaymentMethod};
use actors::contract::{
    Cancel, CancelRequest, IdempotencyKey, OrderReadModel, Place, PlaceRequest, ReadOrder,
};
use actors::external::payment_gateway::CardToken;
use actors::rpc::{call, call_at, DomainError, Routes};
use actors::{Component, Settings};
use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum OrderCommand {
    /// Place an order and print it (with --wait: once the saga has settled).
    Place {
        #[arg(long, default_value = "cli-user")]
        customer: String,
        /// SKU[:QUANTITY], repeatable (e.g. --item SKU-MUG:2 --item SKU-SOCKS).
        #[arg(long = "item", required = true, value_name = "SKU[:QTY]")]
        items: Vec<String>,
        /// Test card number (4000000000000002 is declined); exchanged for a token at the
        /// payment gateway before anything else sees it.
        #[arg(long, default_value = "4242424242424242", conflicts_with = "token")]
        card: String,
        /// A payment gateway token instead of a card.
        #[arg(long)]
        token: Option<String>,
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
    /// Follow one saga: the order's events as a causation tree (service, time, latency of each
    /// hop), the handlings put off (breaker refusals, timeouts) and its dead letters, read from
    /// the streams.
    Trace {
        order_id: String,
        /// The same as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: OrderCommand, settings: Settings) -> anyhow::Result<()> {
    let client = crate::client::connect(&settings).await?;
    match command {
        OrderCommand::Place {
            customer,
            items,
            card,
            token,
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
                payment: payment_method(&settings, token, &card).await?,
                shipping_address: address,
            };
            // An empty key means none, as it always has.
            let idempotency_key = idempotency_key
                .filter(|key| !key.is_empty())
                .map(IdempotencyKey::try_from)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let request = PlaceRequest {
                idempotency_key,
                order,
            };
            let js = async_nats::jetstream::new(client.clone());
            let at = actors::order::placed_by(Routes::of_broker(&js).await?, &request);
            let placed = call_at::<Place>(&client, at, &request)
                .await
                .context("order not placed")?;
            if wait {
                print(&settle(&client, &placed.order.order_id).await?)
            } else {
                print(&placed.order)
            }
        }
        OrderCommand::Show { order_id } => {
            print(&call::<ReadOrder>(&client, Component::Projection, &order_id).await?)
        }
        OrderCommand::Trace { order_id, json } => {
            let js = async_nats::jetstream::new(client);
            let history = actors::admin::history::read(&js, &order_id)
                .await?
                .with_context(|| format!("no stream holds an event about order {order_id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print!("{}", actors::admin::history::render(&history));
            }
            Ok(())
        }
        OrderCommand::Cancel { order_id } => {
            let js = async_nats::jetstream::new(client.clone());
            let at = Routes::of_broker(&js)
                .await?
                .of_order(Component::Order, &order_id);
            let request = CancelRequest {
                order_id,
                customer: None,
            };
            print(&call_at::<Cancel>(&client, at, &request).await?.order)
        }
    }
}

/// The payment gateway's token for the card (or the card behind `token`), as the HTTP gateway
/// does it: the card number goes to the payment gateway and nowhere else.
async fn payment_method(
    settings: &Settings,
    token: Option<String>,
    card: &str,
) -> anyhow::Result<PaymentMethod> {
    let base = crate::client::simulator_url("payment-gateway", settings)?;
    let http = reqwest::Client::new();
    let request = match token {
        Some(token) => http.get(format!("{base}/v1/tokens/{token}")),
        None => http
            .post(format!("{base}/v1/tokens"))
            .json(&serde_json::json!({ "card_number": card })),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("no payment gateway answers at {base}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "the payment gateway refused the card: {}",
        response.text().await.unwrap_or_default()
    );
    let card: CardToken = response.json().await?;
    Ok(PaymentMethod {
        token: card.token,
        brand: card.brand,
        last4: card.last4,
    })
}

fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    // Through a tree, so JSON kept as text (a timeline's data) is indented too.
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(value)?)?
    );
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
async fn settle(client: &async_nats::Client, id: &str) -> anyhow::Result<OrderReadModel> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The read model; not there yet (404) means the projection has not seen it.
        let order = match call::<ReadOrder>(client, Component::Projection, &id.to_string()).await {
            Ok(order) => Some(order),
            Err(DomainError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let status = order
            .as_ref()
            .and_then(|o| o.order_status.clone())
            .unwrap_or_else(|| "PENDING".into());
        spinner.set_message(format!("order {id}: {status}"));
        if let Some(order) = order.filter(|_| !matches!(status.as_str(), "PENDING" | "CANCELLING"))
        {
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
