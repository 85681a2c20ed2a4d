//! `commerce projection rebuild`: replay every stream into a new read model, with a progress bar.

use actors::contract::{Rebuild, Status};
use actors::rpc::call;
use actors::{Component, Settings};
use anyhow::Context;

use crate::client::connect;

pub async fn rebuild(settings: Settings) -> anyhow::Result<()> {
    let client = connect(&settings).await?;
    let started = call::<Rebuild>(&client, Component::Projection, &())
        .await
        .context("rebuild not started")?;
    let bar = indicatif::ProgressBar::new(started.events);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuilding read model [{bar:40}] {pos}/{len} events {per_sec} {msg}",
        )?
        .progress_chars("=> "),
    );
    let began = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let status = call::<Status>(&client, Component::Projection, &()).await?;
        let model = status.read_model.unwrap_or_default();
        bar.set_position(model.rebuild_read);
        if !model.rebuilding {
            bar.finish();
            // A failed rebuild leaves the old generation in place (the projection logs why).
            anyhow::ensure!(
                model.generation >= started.generation,
                "the rebuild of generation {} failed: queries still read generation {} (see the \
                 projection's log)",
                started.generation,
                model.generation
            );
            println!(
                "read model rebuilt: generation {}, {} events in {:.2}s",
                model.generation,
                started.events,
                began.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }
}
